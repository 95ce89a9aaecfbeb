"""Resuming into an ``out_dir`` that holds a finished artifact: this run, already done, or another run's artifact.

``compress(..., out_dir=OUT, resume=True | "auto")`` continues the checkpoint in
``OUT/.lincompress-work``; after success that directory is removed and only the artifact is
left, so there is nothing to resume. Starting again would silently retrain and replace the
artifact. Instead the artifact is compared with the run asked for -- the base model's
fingerprint, every recorded pass and its config, the sites named in ``include``, and how the
target samples (guidance, prompts, resolution, target options) -- before any work:

* the same run: it is done; ``finished_run`` returns its ``State``, read from the artifact
  (the model rebuilt on a copy of the original; nothing is trained, ``history`` is empty);
* another run: refused in one line naming the first difference and ``overwrite``.

A work directory still there (an interrupted run, or ``keep_work``) is resumed as usual.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from lincompress.artifacts import MANIFEST, Artifact, apply, read_artifact
from lincompress.config import Arg, literal
from lincompress.errors import ArtifactError, LinCompressError
from lincompress.outputs import WORK_DIR, OutputError
from lincompress.pipeline import RecordedPass, State
from lincompress.target import Target


def finished_run(out_dir: str | Path, passes: list[Any], target: Target) -> State | None:
    """The State of the finished artifact in ``out_dir`` when ``passes`` on ``target`` made it; None when there is
    no finished artifact there, or a work directory to resume; an ``OutputError`` when another run made it."""
    out = Path(out_dir)
    if (out / WORK_DIR).exists() or not (out / MANIFEST).is_file():
        return None
    try:
        artifact = read_artifact(out)
    except ArtifactError as exc:
        raise OutputError(f"nothing to resume: {literal(out)} holds an artifact that cannot be read ({literal(exc)}); "
                          "pass {} to replace it, or choose another {}", Arg("overwrite", True), Arg("out_dir")) from None
    difference = _difference(artifact, passes, target)
    if difference is not None:
        template, arguments = difference
        raise OutputError(f"nothing to resume: {literal(out)} holds the finished artifact of another run ({template}); "
                          "pass {} to replace it, or choose another {}", *arguments, Arg("overwrite", True),
                          Arg("out_dir"))
    return _state(artifact, target)


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _difference(artifact: Artifact, passes: list[Any], target: Target) -> tuple[str, tuple[Arg, ...]] | None:
    """The first way ``artifact`` differs from the run of ``passes`` on ``target`` (a message template and its
    arguments), or None."""
    from lincompress.fingerprint import model_fingerprint
    from lincompress.target_record import target_record

    if model_fingerprint(target.model) != artifact.base_model.get("fingerprint"):
        return "made from another base model: the fingerprints differ", ()
    planned = [p for p in passes if isinstance(p, RecordedPass)]
    recorded = artifact.recipe
    if [p.name for p in planned] != [step.name for step in recorded]:
        return (f"passes {literal(' -> '.join(s.name for s in recorded))} there, "
                f"{literal(' -> '.join(p.name for p in planned))} here"), ()
    for p, step in zip(planned, recorded):
        try:
            was = _json(type(p.config).from_dict(step.config).to_dict())
        except LinCompressError:
            return f"its {literal(p.name)} settings are not this version's", ()
        now = _json(p.config.to_dict())
        for key, value in now.items():
            if was.get(key) != value:
                return _there_here(key, was.get(key), value)
    include = next((sorted(p.config.include) for p in passes if p.name == "find-attention"), [])
    included = sorted(site.name for site in artifact.sites if site.included)
    if include != included:
        return _there_here("include", included, include)
    return _target_difference(artifact.manifest, _json(target_record(target, recorded, None)))


def _target_difference(manifest: dict[str, Any], now: dict[str, Any]) -> tuple[str, tuple[Arg, ...]] | None:
    """How the target samples: the stated options first (as arguments), then the prompt set, then the rest."""
    was_options, now_options = manifest.get("target_options") or {}, now["target_options"]
    for key in sorted(set(was_options) | set(now_options)):
        if was_options.get(key) != now_options.get(key):
            return _there_here(key, was_options.get(key), now_options.get(key))
    was_prompts, now_prompts = manifest.get("prompts") or {}, now["prompts"] or {}
    if was_prompts.get("sha256") != now_prompts.get("sha256"):
        return f"another prompt set: {_prompts(was_prompts)} there, {_prompts(now_prompts)} here", ()
    for key in ("guidance", "resolution"):
        if manifest.get(key) != now[key]:
            return (f"another {key}: {literal(json.dumps(manifest.get(key)))} there, "
                    f"{literal(json.dumps(now[key]))} here"), ()
    return None


def _prompts(record: dict[str, Any]) -> str:
    size = record.get("size") or 0
    return "none" if not size else f"{size} prompt" + ("s" if size != 1 else "")


def _there_here(name: str, was: Any, now: Any) -> tuple[str, tuple[Arg, ...]]:
    """``steps=2 there, steps=3 here`` (``--steps 2 there, --steps 3 here``); an unset side reads ``no steps``."""
    sides = [("no {}", Arg(name)) if value is None or value == [] else ("{}", Arg(name, value)) for value in (was, now)]
    return f"{sides[0][0]} there, {sides[1][0]} here", (sides[0][1], sides[1][1])


def _state(artifact: Artifact, target: Target) -> State:
    """The State the finished run ended with, from its artifact (the original model is left untouched)."""
    from lincompress.passes.recover import DISTILL_REPORT_DIR
    from lincompress.recovery.report import REPORT_MD

    manifest = artifact.manifest
    model = apply(copy.deepcopy(target.model), artifact, check_base=False)  # (the fingerprint matched)
    outputs = {"artifact": artifact.path}
    for key, rel in (("report", REPORT_MD), ("distill_report", f"{DISTILL_REPORT_DIR}/{REPORT_MD}")):
        if (artifact.path / rel).is_file():
            outputs[key] = artifact.path / rel
    return State(target=target, model=model, sites=artifact.sites, base_hash=artifact.base_model["fingerprint"],
                 feature_map=artifact.feature_map, target_linear=manifest.get("target_linear"),
                 selection_method=manifest.get("selection_method"), selection=artifact.selection, fixed=True,
                 recipe=artifact.recipe, metrics=dict(manifest.get("metrics") or {}),
                 modified_parameters=set(manifest.get("modified_parameters") or ()), outputs=outputs)
