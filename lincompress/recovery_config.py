"""The configs of recovery training and of selective transfer, apart from the training code.

``passes.Recover`` / ``passes.SelectiveTransfer`` record these configs in a recipe, and
replaying a recipe (``lincompress.apply``, exporters) must not import the training stack,
so they live here and not in ``lincompress.recovery``. ``lincompress.recovery.trainer``
and ``lincompress.recovery.selective`` re-export them.

Each field is a CLI flag of ``lincompress optimize`` (``lincompress/commands/_options.py``):
add a field here and it is there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lincompress.config import Arg, ArgumentError, PassConfig, device_option, nproc_option, option, seed_option
from lincompress.guidance import STUDENT_GUIDANCE
from lincompress.selection import target_linear_option

TRAINABLE: tuple[str, ...] = ("all", "attention", "feature_maps")


def _objective_names() -> tuple[str, ...]:
    from lincompress.recovery.objectives import OBJECTIVES

    return tuple(OBJECTIVES)


@dataclass
class RecoveryConfig(PassConfig):
    """How ``passes.Recover`` trains the hybrid against the original model.

    ``objective`` and ``objective_options`` are checked by the objective itself
    (``lincompress.recovery.objectives.make_objective``) when ``Recover`` is built.
    """

    objective: str = option("adm", cli_choices=_objective_names, help="Recovery objective.")
    steps: int = option(2000, low=0, help="Recovery training steps (0: none).")
    objective_options: dict[str, Any] = option(
        default_factory=dict, cli=False, help="Keyword arguments of the objective (the CLI: --<objective>-<option>).")
    batch_size: int = option(1, low=1, help="Samples per micro-batch.")
    lr: float = option(1e-5, low=0.0, help="Learning rate of the base model's parameters.")
    lr_feature_maps: float = option(1e-3, low=0.0, help="Learning rate of the feature maps.")
    lr_score: float | None = option(None, low=0.0, help="Learning rate of the selection scores [default: 10/steps].")
    weight_decay: float = option(0.0, low=0.0, help="AdamW weight decay (not applied to the scores).")
    train: str = option("all", choices=TRAINABLE,
                        help="Which parameters train: all, attention (attention modules + sites), feature_maps (sites only).")
    grad_accum: int = option(1, low=1, help="Micro-batches per optimizer step on each process (a step trains on "
                                            "nproc x grad_accum x batch_size samples).")
    grad_clip: float = option(1.0, help="Gradient-norm clip (<= 0: none; non-finite gradients still stop the run).")
    checkpoint_every: int | None = option(None, low=1, record=False,
                                          help="Steps between checkpoints [default: a tenth of --steps, at least 1].")
    checkpoint_minutes: float = option(5.0, low=0.0, record=False,
                                       help="Also checkpoint when this many minutes passed since the last one (0: off).")
    log_scores_every: int = option(1, low=1, help="Steps between recorded selection-score snapshots.")
    gradient_checkpointing: bool = option(False, help="Recompute activations in backward (less memory).")
    compile: bool = option(False, record=False,
                           help="torch.compile each transformer block of the student, teacher and any auxiliary "
                                "network for the run (regional; compile time is paid in the first steps).")
    compile_backend: str = option("inductor", record=False, help="torch.compile backend of --compile.")
    autocast: bool | None = option(None, help="bf16 autocast [default: on CUDA, off on CPU].")
    device: str | None = device_option()
    nproc: int | None = nproc_option()
    seed: int = seed_option()
    samples: int = option(8, low=0, help="Teacher trajectories to generate and cache (0: none).")
    teacher_steps: int = option(8, low=1, help="Teacher sampler steps per trajectory.")
    shard_size: int = option(4, low=1, help="Teacher trajectories per cache shard.")
    cache_dir: str | None = option(
        None, cli="--cache", metavar="DIR", record=False,
        help="Directory for teacher trajectories and prompt embeddings, shareable between runs (one subdirectory per "
             "teacher and settings) [default: the work directory, removed after success].")
    eval_points: int = option(16, low=1, help="Cached teacher points for the before/after velocity error.")
    compare_without_recovery: bool = option(
        True, help="Also measure the final selection with untrained weights (a CPU copy).")
    student_guidance: str = option(
        "cfg", choices=STUDENT_GUIDANCE,
        help="cfg: the student keeps classifier-free guidance; distilled: one forward learns the guided teacher.")
    cfg_batched: bool = option(
        True, help="Run CFG's two branches as one forward of batch 2B (--no-cfg-batched: two forwards, less memory).")

    def check(self) -> None:
        if not self.objective:
            raise ArgumentError("{} must name an objective", Arg("objective", self.objective))


@dataclass
class SelectiveConfig(PassConfig):
    """The selection regulariser of selective transfer (``passes.SelectiveTransfer``)."""

    target_linear: float = target_linear_option()
    constraint_weight: float = option(10.0, low=0.0,
                                      help="Weight of the term pulling the number of linear sites to the target.")
    binarize_weight: float = option(0.5, low=0.0, help="Weight of the term pushing each score to 0 or 1.")
    beta_start: float = option(20.0, low=0.0, low_open=True, help="Binarisation exponent at the start (high: inactive).")
    beta_end: float = option(2.0, low=0.0, low_open=True, help="Binarisation exponent at the end (low: pushes hard).")
    warmup: float = option(0.3, low=0.0, high=1.0, cli="--selection-warmup",
                           help="Fraction of the steps before binarisation starts (the constraint settles first).")
    freeze_threshold: float = option(0.02, low=0.0, high=1.0, help="A site whose score falls below this is frozen linear.")
    harden_at: float = option(0.8, low=0.0, high=1.0, low_open=True,
                              help="Fraction of the steps after which the exact-K selection is fixed.")

    def check(self) -> None:
        if self.beta_start < self.beta_end:
            raise ArgumentError("{} must be >= {} (the exponent decays from high to low)",
                                Arg("beta_start", self.beta_start), Arg("beta_end", self.beta_end))
