"""The config of the few-step distillation stage (``passes.Distill``), apart from the training code.

``DistillConfig`` = the stage's own fields (``student_steps``, ``distill_steps``,
``distill_objective``, ...) followed by every how-to-train field of ``RecoveryConfig``
(``lr``, ``batch_size``, ``device``, ``seed``, ``samples``, ``student_guidance``, ...),
taken from ``RecoveryConfig``'s own declarations rather than repeated: one declaration,
so ``lincompress optimize`` has one ``--lr`` for both stages and ``compress(lr=...)`` sets
both. Only ``objective``, ``steps`` and ``objective_options`` are left out (the stage has
``distill_objective`` and ``distill_steps`` instead). Replaying a recipe imports this
module, never ``lincompress.recovery``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, dataclass
from typing import Any

from lincompress.config import Arg, ArgumentError, PassConfig, field_default, option
from lincompress.recovery_config import RecoveryConfig

DISTILL_OBJECTIVES: tuple[str, ...] = ("dmd2", "adm")
FAKE_TRAINABLE: tuple[str, ...] = ("all", "attention")
NOT_SHARED: tuple[str, ...] = ("objective", "steps", "objective_options")  # the stage's own fields replace these


@dataclass
class DistillFields(PassConfig):
    """The distillation stage's own fields (``DistillConfig`` adds RecoveryConfig's training fields)."""

    student_steps: int = option(4, low=1, help="Sampler steps of the distilled student (few-step distillation stage); "
                                               "its sigma grid is recorded in the artifact.")
    distill_objective: str = option("dmd2", choices=DISTILL_OBJECTIVES,
                                    help="dmd2: distribution matching with a fake-score network; adm: ADM's score "
                                         "difference with the student as its own score estimate.")
    distill_steps: int | None = option(None, low=0, help="Training steps of the distillation stage (0: record the "
                                                          "sampler without training) [default: --steps].")
    distill_lr: float | None = option(None, low=0.0, help="Learning rate of the student's base parameters while "
                                                          "distilling [default: --lr].")
    distill_regression: float | None = option(
        None, low=0.0, help="Weight of the regression term on cached teacher (noise -> sample) pairs "
                            "[default: 0.25 with --samples >= 1, else 0].")
    distill_grad_steps: int = option(1, low=1, help="Student sampler steps that carry gradient (1: the step being "
                                                    "trained, DMD2's backward simulation; more costs activation memory).")
    fake_updates: int = option(5, low=1, help="DMD2: fake-score updates per student update (two time-scale updates).")
    fake_lr: float | None = option(None, low=0.0, help="DMD2: learning rate of the fake-score network "
                                                       "[default: the student's].")
    fake_train: str = option("all", choices=FAKE_TRAINABLE, help="DMD2: which fake-score parameters train (attention: "
                                                                 "the attention modules only, less optimizer memory).")


def _training_fields() -> list[tuple[str, Any, Any]]:
    """RecoveryConfig's how-to-train fields with their declarations (default, checks, help, CLI form)."""
    hints = typing.get_type_hints(RecoveryConfig)
    out = []
    for f in dataclasses.fields(RecoveryConfig):
        if f.name in NOT_SHARED or not f.init:
            continue
        kwargs: dict[str, Any] = {"metadata": f.metadata}
        if f.default is not MISSING:
            kwargs["default"] = f.default
        else:
            kwargs["default_factory"] = f.default_factory
        out.append((f.name, hints[f.name], dataclasses.field(**kwargs)))
    return out


def check_processes(processes: int | None, distill_steps: int | None, group: bool = False) -> None:
    """Refuse to train the distillation stage on several processes, before any work.

    DMD2's fake-score network and its optimizer are built by the objective itself and are not
    data-parallel: on N processes each would train apart. ``processes``: the ``nproc`` option,
    or (``group=True``) the size of the running process group. ``distill_steps`` None: the
    default (``steps``), which trains; 0 only records the sampler and runs anywhere.
    """
    if processes is None or processes <= 1 or distill_steps == 0:
        return
    why = ("the distillation stage ({}) trains on one process only (it is not data-parallel: "
           "DMD2's fake-score network and its optimizer would train apart on every process)")
    if group:
        raise ArgumentError(why + f", and this process is one of {processes} of a process group (torchrun, "
                            "torch.distributed.init_process_group); run distillation in a single process",
                            Arg("student_steps"))
    raise ArgumentError(why + ", and {} asks for several; run distillation on one process: leave out {}",
                        Arg("student_steps"), Arg("nproc", processes), Arg("nproc"))


def _check(self: Any) -> None:
    if self.distill_steps is None:
        self.distill_steps = field_default(RecoveryConfig, "steps")
    check_processes(self.nproc, self.distill_steps)
    if self.distill_grad_steps > self.student_steps:
        raise ArgumentError("{} must be <= {} (gradient through more steps than the student samples)",
                            Arg("distill_grad_steps", self.distill_grad_steps), Arg("student_steps", self.student_steps))


def _recovery_config(self: Any) -> RecoveryConfig:
    """The trainer's settings for this stage: the shared fields, with the stage's objective, steps and lr."""
    shared = {name: getattr(self, name) for name, _, _ in _training_fields()}
    if self.distill_lr is not None:
        shared["lr"] = self.distill_lr
    return RecoveryConfig(objective=self.distill_objective, steps=self.distill_steps, **shared)


DistillConfig = dataclasses.make_dataclass(
    "DistillConfig", _training_fields(), bases=(DistillFields,),
    namespace={"__module__": __name__, "check": _check, "recovery_config": _recovery_config,
               "__doc__": "How ``passes.Distill`` trains the few-step student: the stage's own fields, then "
                          "RecoveryConfig's training fields (shared with ``passes.Recover``)."},
)
