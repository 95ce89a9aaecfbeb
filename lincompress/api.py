"""The library's front door: ``compress`` (the standard recipe) and ``recover`` (train a hybrid).

    state = lincompress.compress("model.py", target_linear=0.7, steps=2000, out_dir="out/lin70")
    state = lincompress.recover(hybrid, target, target_linear=0.5, steps=500)

Both take the options of the passes they run as keyword arguments: any field of
``FindAttentionConfig``, ``HybridizeConfig``, ``SelectConfig``, ``SelectiveConfig``,
``GreedySelectConfig`` or ``RecoveryConfig`` (a name several of them have, like
``target_linear`` or ``seed``, goes to each), and of ``TargetOptions`` (the prompt set,
the teacher's guidance, a pipeline's resolution: ``prompts_file=``, ``guidance_scale=``,
``height=``...; applied to the model.py's target, or to a copy of a given Target). An
option the chosen recipe does not use is an error, not silently ignored. ``lincompress optimize`` is ``compress`` with these
options as flags.

Several GPUs: call ``compress`` / ``recover`` in every process of an initialised process group
(``torch.distributed.init_process_group``, e.g. under ``torchrun``; ``lincompress.distributed.init_from_env()``
makes it from torchrun's environment). Recovery then trains data-parallel with FSDP2 over the group
(``nproc=``, when given, must equal its size), rank 0 writes the artifact and the report, and every
rank returns the same trained model (``lincompress.distributed``).
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from lincompress.artifacts import check_out_dir
from lincompress.config import Arg, ArgumentError, PassConfig, config_fields, field_default
from lincompress.distill_config import DistillConfig, DistillFields
from lincompress.errors import LinCompressError
from lincompress.outputs import WORK_DIR  # inside out_dir: teacher cache, checkpoints, metrics (what resume continues)
from lincompress.pipeline import Pipeline, State
from lincompress.recovery_config import RecoveryConfig, SelectiveConfig
from lincompress.selection import HEURISTICS
from lincompress.target import Target, TargetOptions, configure_target

SELECTIONS: tuple[str, ...] = ("learned", *HEURISTICS, "greedy")
_SET_BY_SELECT = ("strategy", "sites")  # SelectConfig fields that `select` decides


def _homes() -> dict[str, type[PassConfig]]:
    """Every config whose fields compress/recover accept, by the step it configures."""
    from lincompress.passes.find_attention import FindAttentionConfig
    from lincompress.passes.hybridize import HybridizeConfig
    from lincompress.passes.select import SelectConfig
    from lincompress.passes.selective_transfer import GreedySelectConfig

    return {"target": TargetOptions, "discovery": FindAttentionConfig, "hybridization": HybridizeConfig,
            "heuristic selection": SelectConfig, "learned selection (select='learned')": SelectiveConfig, "greedy selection": GreedySelectConfig,
            "recovery": RecoveryConfig, "distillation": DistillConfig}


def option_names() -> list[str]:
    """Every keyword option ``compress`` accepts (besides its own arguments)."""
    names = {f.name for cls in _homes().values() for f in config_fields(cls)} - set(_SET_BY_SELECT) - {"copy"}
    return sorted(names)


def _dispatch(options: dict[str, Any], used: list[str], context: tuple[Arg, ...]) -> dict[str, dict[str, Any]]:
    """Route each option to every used config that has the field; refuse unknown and unused ones."""
    homes = _homes()
    known = option_names()
    out: dict[str, dict[str, Any]] = {label: {} for label in used}
    for name, value in options.items():
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ArgumentError(f"unknown option {{}}{hint}; the options are: {', '.join(known)}", Arg(name))
        targets = [label for label in used if any(f.name == name for f in config_fields(homes[label]))]
        if not targets:
            owner = next(label for label, cls in homes.items() if any(f.name == name for f in config_fields(cls)))
            template = "{} configures " + owner + ", which this run does not do (" + ", ".join("{}" for _ in context) + ")"
            raise ArgumentError(template, Arg(name, value), *context)
        for label in targets:
            out[label][name] = value
    return out


def _selection_pass(select: str | list[str], opts: dict[str, dict[str, Any]], label: str) -> Any:
    from lincompress import passes

    if isinstance(select, list):
        return passes.HeuristicSelect(sites=select, **opts.get(label, {}))
    if select == "learned":
        return passes.SelectiveTransfer(**opts.get(label, {}))
    if select == "greedy":
        return passes.GreedySelect(**opts.get(label, {}))
    return passes.HeuristicSelect(strategy=select, **opts.get(label, {}))


def _selection_label(select: str | list[str]) -> str:
    if isinstance(select, list) or select in HEURISTICS:
        return "heuristic selection"
    return "learned selection (select='learned')" if select == "learned" else "greedy selection"


def _check_select(select: Any, steps: int) -> str | list[str]:
    if isinstance(select, (list, tuple)):
        if not all(isinstance(s, str) for s in select):
            raise ArgumentError("{} must be one of " + ", ".join(SELECTIONS) + " or a list of site names", Arg("select"))
        return list(select)
    if select is None:
        return "learned" if steps > 0 else "uniform"
    if select not in SELECTIONS:
        raise ArgumentError(f"{{}} is unknown; choose one of {', '.join(SELECTIONS)}, or give a list of site names",
                            Arg("select", select))
    if select == "learned" and steps == 0:
        raise ArgumentError("{} trains the selection; give {} > 0 or pick a heuristic {}",
                            Arg("select", "learned"), Arg("steps"), Arg("select"))
    return select


def _target_options(opts: dict[str, dict[str, Any]]) -> TargetOptions | None:
    return TargetOptions(**opts["target"]) if opts.get("target") else None


def _steps(options: dict[str, Any]) -> int:
    return RecoveryConfig(steps=options.get("steps", field_default(RecoveryConfig, "steps"))).steps


def _distillation(options: dict[str, Any], steps: int) -> bool:
    """Is the few-step stage asked for (``student_steps``)? Its own options without it are refused."""
    if "student_steps" in options:
        if steps == 0 and "distill_steps" not in options:
            raise ArgumentError("{} trains a distillation stage for {} steps; give {} > 0, or {} (0: record the "
                                "few-step sampler without training)", Arg("student_steps", options["student_steps"]),
                                Arg("steps"), Arg("steps"), Arg("distill_steps"))
        return True
    for f in config_fields(DistillFields):
        if f.name in options:
            raise ArgumentError("{} configures the few-step distillation stage; give {} to run it",
                                Arg(f.name, options[f.name]), Arg("student_steps"))
    return False


def compress(
    target: Target | str | Path, *, out_dir: str | Path | None = None, select: str | list[str] | None = None,
    resume: bool | str = False, overwrite: bool = False, keep_work: bool = False, progress: bool = True,
    **options: Any,
) -> State:
    """The standard recipe: find -> hybridize -> select (+ recover) (+ distill) -> fix (-> save + report).

    target: a ``Target`` or the path of a model.py.
    select: "learned" (selective transfer, trained by recovery; the default when steps > 0),
        "uniform" / "first" / "last" (the default with steps=0: uniform), "greedy", or a list
        of site names.
    out_dir: write the artifact (and the recovery report) there; training state lives in
        ``out_dir/.lincompress-work`` (the distillation stage's in its ``distill/``), so
        ``resume=True`` continues an interrupted run in the stage it was in (an error when
        there is nothing to continue; ``resume="auto"`` continues one if there is one, else
        starts). When the work directory is gone because the run finished, either of them
        finds the finished artifact: made by this same run (base model, recorded configs,
        target record), nothing runs and the State is read from it (``history`` empty);
        made by another run, it is refused naming ``overwrite`` (``lincompress.finished_run``).
        ``overwrite=True`` starts over, replacing what an earlier run wrote.
    keep_work: keep the work directory (checkpoints, teacher cache) after success; by default
        only the artifact and report remain.
    options: fields of the pass configs (see the module docstring), e.g. ``target_linear=0.7,
        objective="adm", steps=2000, feature_map="relu", lr=1e-5``; ``student_steps=4`` adds the
        few-step distillation stage (``passes.Distill``, trained for ``distill_steps`` [default:
        ``steps``] steps) after recovery.
    Returns the final ``State`` (``.model`` is the fixed model; the original is untouched).
    """
    from lincompress import passes

    if any(name in options for name in (*_SET_BY_SELECT, "copy")):
        bad = next(name for name in (*_SET_BY_SELECT, "copy") if name in options)
        raise ArgumentError("{} is not an option of compress; choose the selection with {}", Arg(bad), Arg("select"))
    steps = _steps(options)
    distill = _distillation(options, steps)
    if steps == 0:
        options.pop("steps", None)  # the switch that leaves recovery out, not a recovery option
        if resume is True and not (distill and options.get("distill_steps")):
            raise ArgumentError("{} continues an interrupted training run, and this run trains nothing ({})",
                                Arg("resume", True), Arg("steps", 0))
    select = _check_select(select, steps)
    label = _selection_label(select)
    used = ["target", "discovery", "hybridization", label] + (["recovery"] if steps > 0 else []) + (["distillation"] if distill else [])
    opts = _dispatch(options, used, (Arg("select", select), Arg("steps", steps)))
    recipe: list[Any] = [passes.FindAttention(**opts["discovery"]), passes.Hybridize(**opts["hybridization"]),
                         _selection_pass(select, opts, label)]
    if steps > 0:
        work_dir = Path(out_dir) / WORK_DIR if out_dir is not None else None
        recipe.append(passes.Recover(work_dir=work_dir, resume=resume, overwrite=overwrite, progress=progress,
                                     **opts["recovery"]))
    if distill:
        opts["distillation"].setdefault("distill_steps", steps)  # default: as many steps as recovery
        work_dir = Path(out_dir) / WORK_DIR / "distill" if out_dir is not None else None
        # resume=True continues the stage the run was in: an earlier stage's checkpoint means this one may not have begun
        later = ("auto" if resume else False) if steps > 0 else resume
        recipe.append(passes.Distill(work_dir=work_dir, resume=later, overwrite=overwrite, progress=progress,
                                     **opts["distillation"]))
    recipe.append(passes.Fix())
    if out_dir is not None:
        replace = overwrite or bool(resume)
        check_out_dir(out_dir, replace)  # before the model is even built
        recipe += [passes.Save(out_dir, overwrite=replace), passes.Report(out_dir, overwrite=replace)]
    pipeline = Pipeline(recipe)  # every option is validated: now load the model
    target = configure_target(target, _target_options(opts))
    if out_dir is not None and resume and not overwrite:  # the run may be finished already (its work dir gone)
        from lincompress.finished_run import finished_run

        done = finished_run(out_dir, recipe, target)
        if done is not None:
            return done
    state = pipeline.run(target)
    if out_dir is not None and not keep_work:  # done: checkpoints and caches only served a resume
        from lincompress.distributed import is_main

        if is_main():  # several processes: rank 0 alone, after the Save and Report it ran
            shutil.rmtree(Path(out_dir) / WORK_DIR, ignore_errors=True)
        for gone in ("recovery_dir", "distill_dir", "cache_dir"):
            state.outputs.pop(gone, None)
    return state


def recover(
    model: nn.Module, target: Target | str | Path, *, select: str | list[str] = "learned",
    work_dir: str | Path | None = None, resume: bool | str = False, overwrite: bool = False, progress: bool = True,
    **options: Any,
) -> State:
    """Train the hybrid ``model`` against ``target.model`` (the original, the teacher), in place.

    ``model`` carries hybrid sites: made by ``passes.Hybridize`` or by the ModelOpt mode
    ``linear_attention`` with ``select=None``. ``select`` is "learned" (selective transfer:
    ``target_linear`` of the sites become linear, chosen by training), a heuristic
    ("uniform" / "first" / "last"), "greedy" or a list of site names. ``options``: fields of
    ``RecoveryConfig``, of the selection's config (``target_linear``, ``steps``,
    ``objective``, ``lr``, ...) and of ``TargetOptions`` (``guidance_scale``, ``prompts_file``...). The returned ``State`` has ``.selection`` (the sites that
    became linear: fix them with ``passes.Fix`` or a second ``mto.apply_mode``), ``.metrics``
    and ``.modified_parameters``; ``.model`` is ``model``, trained. ``work_dir``, ``resume``,
    ``overwrite``: as for ``passes.Recover``.
    """
    from lincompress import passes

    steps = _steps(options)
    select = _check_select(select, steps)
    label = _selection_label(select)
    opts = _dispatch(options, ["target", label, "recovery"], (Arg("select", select),))
    recipe = [_selection_pass(select, opts, label),
              passes.Recover(work_dir=work_dir, resume=resume, overwrite=overwrite, progress=progress,
                             **opts["recovery"])]
    pipeline = Pipeline(recipe)  # every option is validated: now load the model
    target = configure_target(target, _target_options(opts))
    if model is target.model:
        raise LinCompressError("recover trains a hybridized copy against the original: pass the hybrid as model and "
                               "a Target whose model is the unconverted original")
    state = State.for_hybrid(target, model)
    return pipeline.run(state)
