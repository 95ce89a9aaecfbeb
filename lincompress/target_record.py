"""What an artifact records about the target it was made for, and that target rebuilt from the record.

A compressed model was trained for one way of sampling: the teacher's classifier-free
guidance (scale, negative prompt), the student's guidance mode, a prompt set, a
resolution. ``save_artifact`` stores, beside the recipe::

    "guidance":       {"scale", "negative_prompt", "student"}     (GuidanceConfig)
    "prompts":        {"sha256", "size"[, "file": "prompts.json"]}  (None without prompts)
    "resolution":     {"height", "width", "frames", "tokens", "defaulted"}  (pipeline targets)
    "target_options": the TargetOptions the user stated (--guidance-scale, --height, ...)

A prompt set the user stated (``--prompts FILE``, ``prompts=[...]``) is copied into the
artifact as ``prompts.json``, so the artifact alone says what it was conditioned on.
``recorded_options(artifact)`` turns the record back into the ``TargetOptions`` that
rebuild the same target from its model.py (``open_artifact``, ``eval``, ``bench``) at the
recorded resolution and prompts, not the pipeline's defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lincompress import atomic
from lincompress.artifacts import PROMPTS_FILE, Artifact, read_manifest
from lincompress.errors import ArtifactError, LinCompressError
from lincompress.guidance import GuidanceConfig, student_guidance_of
from lincompress.prompts import check_prompts, prompt_set_hash
from lincompress.target import Target, TargetOptions


def target_record(target: Target, recipe: list[Any], out_dir: Path | None) -> dict[str, Any]:
    """The manifest fields describing how ``target`` samples (writes ``prompts.json`` for stated prompts into
    ``out_dir``; None: only describe them, to compare with an artifact's record)."""
    options = target.extras.get("target_options")
    options = options if isinstance(options, TargetOptions) else None
    prompts = target.prompt_info()
    if prompts is not None and options is not None and options.states_prompts:
        if out_dir is not None:
            atomic.write_text(Path(out_dir) / PROMPTS_FILE,
                              json.dumps(list(target.prompts), indent=0, ensure_ascii=False))
        prompts = {**prompts, "file": PROMPTS_FILE}
    return {
        "guidance": GuidanceConfig.from_target(target, student_guidance_of(recipe)).to_dict(),
        "prompts": prompts,
        "resolution": target.resolution.to_dict() if target.resolution is not None else None,
        "target_options": options.to_dict() if options is not None else {},
    }


def _recorded_prompts(path: Path, record: Any) -> list[str] | None:
    """The stated prompt set stored in the artifact (checked against its recorded hash), or None."""
    if not isinstance(record, dict) or not record.get("file"):
        return None
    file = path / record["file"]
    try:
        prompts = check_prompts(json.loads(file.read_text(encoding="utf-8")), "the recorded prompts")
    except FileNotFoundError:
        raise ArtifactError(f"{file} is missing; the artifact records its prompt set there, copy the whole "
                            "artifact directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, LinCompressError) as exc:
        raise ArtifactError(f"{file} is corrupt ({exc}); re-run `lincompress optimize`") from None
    if prompt_set_hash(prompts) != record.get("sha256"):
        raise ArtifactError(f"{file} does not match the prompt-set hash in the manifest; the file was changed")
    return prompts


def recorded_options(artifact: Any, **overrides: Any) -> TargetOptions:
    """The ``TargetOptions`` an artifact was made with (its stated prompts, guidance, resolution), with ``overrides``.

    ``artifact``: an artifact directory or a read ``Artifact``. ``overrides``: TargetOptions
    fields; those that are not None replace the recorded ones (new prompts replace the
    recorded prompt set). Artifacts made before this record was kept give the overrides alone.
    """
    if isinstance(artifact, Artifact):
        path, manifest = Path(artifact.path), artifact.manifest
    else:
        path, manifest = Path(artifact), read_manifest(artifact)
    record = manifest.get("target_options") or {}
    try:
        recorded = TargetOptions.from_dict(record) if isinstance(record, dict) else None
    except LinCompressError as exc:
        raise ArtifactError(f"{path}: the recorded target options are invalid ({exc}); re-run `lincompress optimize`"
                            ) from None
    if recorded is None:
        raise ArtifactError(f"{path}: the recorded target options are not a mapping; re-run `lincompress optimize`")
    prompts = _recorded_prompts(path, manifest.get("prompts"))
    if prompts is not None:
        recorded = recorded.updated(prompts=prompts)
    return recorded.updated(**overrides)
