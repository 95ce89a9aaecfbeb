"""Artifact directories: ``lincompress.json`` + ``weights.safetensors`` (+ report, engines).

The manifest (format version 2) stores the *recipe*: every recorded model change of the
run, in order, as ``{"pass", "package", "config", "metadata"}`` (``pipeline.RecipeStep``).
``apply`` replays it on the *original* model through each pass's ``restore`` (looked up
by name in ``lincompress.registry``, so a third-party pass works wherever it is
installed), then loads the weights: every tensor the recipe added (the linear sites'
parameters, anything a third-party pass added) plus the base parameters training
changed. Beside the recipe the manifest keeps a summary for people and tools (selection,
candidates, feature map, metrics, versions), the base model's fingerprint, and how the
model samples (``guidance``, ``prompts``, ``resolution``, ``target_options``: see
``lincompress.target_record``; ``open_artifact`` rebuilds the target from them).

Loading checks the format version, the weights' checksum and the base model's identity,
and refuses anything that does not match with a one-line ``ArtifactError``. ``apply`` is
transactional: it validates what it can before touching the model, and if replaying or
loading fails anyway, the model is put back exactly as it was.

Format version 1 (``sites`` + ``selection`` + ``feature_map``, replayed as hybridize + fix)
is still read: it is translated to the equivalent recipe.
"""

from __future__ import annotations

import copy
import json
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from lincompress import atomic, registry
from lincompress.attention import SITES_ATTR, CallOrderError
from lincompress.config import Arg, ArgumentError, PassConfig, literal
from lincompress.errors import ArtifactError, LinCompressError
from lincompress.pipeline import RecipeStep, State

if TYPE_CHECKING:
    from lincompress.discovery import SiteInfo
    from lincompress.sampler import SamplerConfig
    from lincompress.target import Target

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "lincompress.json"
WEIGHTS = "weights.safetensors"
PROMPTS_FILE = "prompts.json"  # a prompt set the user stated, copied into the artifact (lincompress.target_record)


class ArtifactArgumentError(ArgumentError, ArtifactError):
    """An artifact problem whose fix is an argument (rendered as a flag by the CLI)."""


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]
    weights: dict[str, torch.Tensor]

    @property
    def version(self) -> int:
        return int(self.manifest["format_version"])

    @property
    def recipe(self) -> list[RecipeStep]:
        if self.version == 1:
            return _v1_recipe(self.manifest)
        return [RecipeStep.from_dict(step) for step in self.manifest["recipe"]]

    @property
    def base_model(self) -> dict[str, Any]:
        return self.manifest["base_model"]

    @property
    def selection(self) -> list[str]:
        return list(self.manifest["selection"])

    @property
    def candidates(self) -> list[str]:
        return list(self.manifest.get("candidates") or [s.name for s in self.sites if s.candidate])

    @property
    def feature_map(self) -> str | None:
        return self.manifest.get("feature_map")

    @property
    def sampler(self) -> SamplerConfig | None:
        """The few-step sampler the model was distilled for; None: it keeps the teacher's sampler."""
        from lincompress.sampler import SamplerError, sampler_from_manifest

        try:
            return sampler_from_manifest(self.manifest)
        except SamplerError as exc:
            raise ArtifactError(f"{self.path / MANIFEST}: {exc}; re-run `lincompress optimize`") from None

    @property
    def sites(self) -> list[SiteInfo]:
        from lincompress.discovery import SiteInfo

        if self.version == 1:
            return [SiteInfo.from_dict(s) for s in self.manifest["sites"]]
        for step in self.recipe:
            if "sites" in step.metadata:
                return [SiteInfo.from_dict(s) for s in step.metadata["sites"]]
        return []


def _v1_recipe(manifest: dict[str, Any]) -> list[RecipeStep]:
    """What a format-1 artifact meant: hybridize every candidate with its feature map, then fix the selection."""
    hybridize = {"feature_map": manifest["feature_map"], "eps": float(manifest.get("eps", 1e-6))}
    return [RecipeStep("hybridize", hybridize, {"sites": manifest["sites"]}),
            RecipeStep("fix", {}, {"selection": list(manifest["selection"])})]


def _versions() -> dict[str, str]:
    import lincompress

    versions = {"lincompress": lincompress.__version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import diffusers

        versions["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return versions



# --------------------------------------------------------------------------- saving


def artifact_tensors(state: State) -> dict[str, torch.Tensor]:
    """What the recipe added to the original model (site parameters, ...) plus base parameters training changed."""
    base = set(state.target.model.state_dict()) if state.target.model is not state.model else set()
    return {name: tensor for name, tensor in state.model.state_dict().items()
            if name not in base or f"{SITES_ATTR}." in name or name in state.modified_parameters}


ARTIFACT_FILES = (MANIFEST, WEIGHTS, PROMPTS_FILE)


def check_out_dir(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse, before any work, an artifact directory where writing would touch what lincompress did not write
    (or replace an artifact without ``overwrite``); nothing is created. See ``lincompress.outputs``."""
    from lincompress.outputs import OutputDir

    OutputDir(out_dir).check(ARTIFACT_FILES, replace=overwrite, what="an artifact", replace_arg=Arg("overwrite", True))


def _candidates(state: State) -> list[str]:
    from lincompress.discovery import SiteInfo

    for step in state.recipe:
        if "sites" in step.metadata:
            return [s.name for s in map(SiteInfo.from_dict, step.metadata["sites"]) if s.candidate]
    return [s.name for s in state.candidates]


def _sampler_record(state: State) -> dict[str, Any]:
    """``{"sampler": ...}`` from the last recipe step that recorded one (Distill), else nothing: the teacher's sampler."""
    for step in reversed(state.recipe):
        if "sampler" in step.metadata:
            return {"sampler": step.metadata["sampler"]}
    return {}


def save_artifact(state: State, out_dir: Path, overwrite: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write manifest + weights atomically (weights first, so a manifest never points at missing weights)."""
    from lincompress.fingerprint import model_fingerprint
    from lincompress.target_record import target_record

    if state.selection is None or not state.fixed:
        raise LinCompressError("save needs a fixed model; run passes.Fix() before saving")
    from lincompress.outputs import OutputDir

    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    outputs = OutputDir(out_dir)
    stale = [rel for rel in outputs.record if rel not in ARTIFACT_FILES] if overwrite else []  # about the old one
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = atomic.write_safetensors(out_dir / WEIGHTS, artifact_tensors(state), {"format": "lincompress"})
    weights_sha = atomic.sha256_file(weights_path)
    sampling = target_record(state.target, state.recipe, out_dir)  # guidance, prompts, resolution (+ prompts.json)
    candidates = _candidates(state)
    manifest = {
        "format_version": FORMAT_VERSION,
        "base_model": {
            "class": type(state.target.model).__name__,
            "fingerprint": state.base_hash or model_fingerprint(state.target.model),
            **source_paths(out_dir, state.target.extras.get("source")),
            "name": state.target.name,
        },
        "recipe": [step.to_dict() for step in state.recipe],
        "selection": list(state.selection),
        "num_linear": len(state.selection),
        "candidates": candidates,
        "num_candidates": len(candidates),
        "feature_map": state.feature_map,
        "selection_method": state.selection_method,
        "target_linear": state.target_linear,
        "metrics": state.metrics,
        "modified_parameters": sorted(state.modified_parameters),
        "weights": {"file": WEIGHTS, "sha256": weights_sha},
        "versions": _versions(),
        **sampling,
        **_sampler_record(state),
        **(extra or {}),
    }
    atomic.write_json(out_dir / MANIFEST, manifest)
    written = [WEIGHTS, MANIFEST] + ([sampling["prompts"]["file"]] if (sampling["prompts"] or {}).get("file") else [])
    outputs.add(written, hashes={WEIGHTS: weights_sha})
    outputs.forget(stale)  # the replaced artifact's reports, evaluations, exports (files of ours only)
    return out_dir


# --------------------------------------------------------------------------- reading


_REQUIRED = {1: ("sites", "selection", "feature_map", "base_model", "weights"),
             2: ("recipe", "selection", "base_model", "weights")}


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_shape(manifest: dict[str, Any], version: int, path: Path) -> None:
    """Every field loading reads has the type it must have: a hand-edited or damaged manifest fails here, in one line."""
    def bad(where: str, expected: str) -> ArtifactError:
        return ArtifactError(f"{path}: {where} must be {expected}; the manifest was edited or is damaged, re-run "
                             "`lincompress optimize`")

    base, weights = manifest["base_model"], manifest["weights"]
    if not isinstance(base, dict) or not isinstance(base.get("fingerprint"), str):
        raise bad("base_model", "an object with a string fingerprint")
    for key in ("class", "name", "source", "source_absolute"):
        if base.get(key) is not None and not isinstance(base[key], str):
            raise bad(f"base_model.{key}", "a string")
    if not isinstance(weights, dict) or not isinstance(weights.get("sha256"), str) \
            or not isinstance(weights.get("file"), str) or Path(weights["file"]).name != weights["file"] \
            or weights["file"] in ("", ".", ".."):
        raise bad("weights", "an object with a file name inside the artifact and its sha256")
    if not _is_str_list(manifest["selection"]):
        raise bad("selection", "a list of site names")
    if manifest.get("candidates") is not None and not _is_str_list(manifest["candidates"]):
        raise bad("candidates", "a list of site names")
    if manifest.get("feature_map") is not None and not isinstance(manifest["feature_map"], str):
        raise bad("feature_map", "a feature map name")
    if version == 1:
        _check_sites(manifest["sites"], "sites", bad)
        return
    recipe = manifest["recipe"]
    if not isinstance(recipe, list):
        raise bad("recipe", "a list of {'pass', 'config', 'metadata'} steps")
    for i, step in enumerate(recipe, 1):
        if not isinstance(step, dict) or not isinstance(step.get("pass"), str) or not step["pass"]:
            raise bad(f"recipe step {i}", "an object naming its 'pass'")
        for key in ("config", "metadata"):
            if step.get(key) is not None and not isinstance(step[key], dict):
                raise bad(f"recipe step {i} ({literal(step['pass'])}) {key}", "an object")
        if step.get("package") is not None and not isinstance(step["package"], str):
            raise bad(f"recipe step {i} ({literal(step['pass'])}) package", "a distribution name")
        if isinstance(step.get("metadata"), dict) and "sites" in step["metadata"]:
            _check_sites(step["metadata"]["sites"], f"recipe step {i} ({literal(step['pass'])}) metadata.sites", bad)
    _check_records(manifest, bad)


def _check_records(manifest: dict[str, Any], bad: Any) -> None:
    """The format-2 records of how the model samples (``lincompress.target_record``, ``lincompress.sampler``)."""
    from lincompress.guidance import GuidanceConfig
    from lincompress.sampler import SamplerConfig
    from lincompress.target import TargetOptions

    def parses(key: str, parse: Any, expected: str) -> None:
        if manifest.get(key) is None:
            return
        try:
            parse(manifest[key])
        except (LinCompressError, TypeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise bad(key, f"{expected} ({first})") from None

    parses("guidance", lambda g: GuidanceConfig.from_dict(g if isinstance(g, dict) else _not_object()),
           "a guidance record {'scale', 'negative_prompt', 'student'}")
    parses("sampler", SamplerConfig.from_dict, "a sampler record {'steps', 'sigmas', ...}")
    parses("target_options", lambda t: TargetOptions.from_dict(t if isinstance(t, dict) else _not_object()),
           "the recorded target options")
    prompts = manifest.get("prompts")
    if prompts is not None:
        file = prompts.get("file") if isinstance(prompts, dict) else None
        if not isinstance(prompts, dict) or not isinstance(prompts.get("sha256"), str) \
                or isinstance(prompts.get("size"), bool) or not isinstance(prompts.get("size"), int) \
                or (file is not None and (not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."))):
            raise bad("prompts", "a prompt-set record {'sha256', 'size'[, 'file' inside the artifact]}")
    if manifest.get("resolution") is not None and not isinstance(manifest["resolution"], dict):
        raise bad("resolution", "a resolution record {'height', 'width', 'frames', ...}")
    for key, kind in (("metrics", dict), ("modified_parameters", list)):
        if manifest.get(key) is not None and not isinstance(manifest[key], kind):
            raise bad(key, "an object" if kind is dict else "a list")


def _not_object() -> Any:
    raise TypeError("not a JSON object")


_JSON_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}


def _check_sites(sites: Any, where: str, bad: Any) -> None:
    """A list of ``SiteInfo`` records, each with every field it has of its type (bool is not an int here).

    Unknown keys are left alone, as ``SiteInfo.from_dict`` does (a newer version's fields).
    """
    import dataclasses

    from lincompress.discovery import SiteInfo

    fields = dataclasses.fields(SiteInfo)
    if not isinstance(sites, list):
        raise bad(where, "a list of site records")
    for n, site in enumerate(sites):
        if not isinstance(site, dict):
            raise bad(f"{where}[{n}]", "a site record")
        for f in fields:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if f.name not in site:
                if required:
                    raise bad(f"{where}[{n}]", f"a site record with {literal(repr(f.name))}")
                continue
            value, types = site[f.name], _JSON_TYPES[str(f.type)]
            if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
                raise bad(f"{where}[{n}].{f.name}", f"of type {f.type}")


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """Parse and check an artifact's ``lincompress.json`` (format version, required keys, every field's type); no weights."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{out_dir} is not a lincompress artifact (no {MANIFEST}); give the directory "
                            "`lincompress optimize --out` (or passes.Save) wrote")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is corrupt ({exc.__class__.__name__}); re-run `lincompress optimize`") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{manifest_path} has format version {version!r}, this lincompress reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; re-create the artifact with `lincompress optimize` "
            "(or use the lincompress version that wrote it)"
        )
    for key in _REQUIRED[version]:
        if key not in manifest:
            raise ArtifactError(f"{manifest_path} lacks {key!r}; the artifact is incomplete, re-run `lincompress optimize`")
    _check_shape(manifest, version, manifest_path)
    return manifest


def read_artifact(out_dir: str | Path) -> Artifact:
    """Parse and verify an artifact directory (format version, weights checksum)."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    weights_path = out_dir / manifest["weights"]["file"]
    if not weights_path.is_file():
        raise ArtifactError(f"{weights_path} is missing; the artifact is incomplete, re-run `lincompress optimize`")
    if atomic.sha256_file(weights_path) != manifest["weights"]["sha256"]:
        raise ArtifactError(f"{weights_path} does not match its checksum in {MANIFEST}; the file is corrupt or was replaced")
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{weights_path} is not readable safetensors ({exc}); re-run `lincompress optimize`") from None
    return Artifact(out_dir, manifest, weights)


# --------------------------------------------------------------------------- replaying a recipe


@dataclass
class ResolvedStep:
    number: int  # 1-based position in the recipe
    name: str
    restore: Any  # pass_class.restore
    config: PassConfig
    metadata: dict[str, Any]


def resolve_recipe(recipe: list[RecipeStep | dict[str, Any]], where: str) -> list[ResolvedStep]:
    """Find every step's pass and validate its config, before anything is changed."""
    out = []
    for i, step in enumerate(recipe, 1):
        step = step if isinstance(step, RecipeStep) else RecipeStep.from_dict(step)
        try:
            cls = registry.get("passes", step.name)
        except LinCompressError:
            raise ArtifactError(
                f"{where}: recipe step {i} uses the pass {step.name!r}, which is not installed here; install "
                f"{step.package!r} (it registers {step.name!r} in the entry-point group lincompress.passes)"
            ) from None
        config_class = getattr(cls, "config_class", None)
        restore = getattr(cls, "restore", None)
        if not (isinstance(config_class, type) and issubclass(config_class, PassConfig) and callable(restore)):
            raise ArtifactError(f"{where}: recipe step {i} names {step.name!r}, which is not a recorded pass "
                                "(it has no PassConfig config_class and restore)")
        try:
            config = config_class.from_dict(step.config)
        except LinCompressError as exc:
            raise ArtifactError(f"{where}: recipe step {i} ({step.name}) has an invalid config: {exc}") from None
        out.append(ResolvedStep(i, step.name, restore, config, step.metadata))
    return out


def replay(model: nn.Module, recipe: list[RecipeStep | dict[str, Any]], where: str = "recipe") -> nn.Module:
    """Rebuild the recorded structure on ``model`` (in place): each step's ``restore``, in order. No weights."""
    steps = resolve_recipe(recipe, where)
    with unchanged_on_error(model):
        for step in steps:
            model = _restore_step(model, step, where)
    return model


def _restore_step(model: nn.Module, step: ResolvedStep, where: str) -> nn.Module:
    try:
        restored = step.restore(model, step.config, step.metadata)
    except LinCompressError as exc:
        raise ArtifactError(f"{where}: recipe step {step.number} ({step.name}) does not fit this model: {exc}") from None
    except Exception as exc:  # a pass's own failure: one line, the model is rolled back by the caller
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ArtifactError(f"{where}: recipe step {step.number} ({step.name}) failed: "
                            f"{type(exc).__name__}: {first}") from exc
    return restored if isinstance(restored, nn.Module) else model


@contextmanager
def unchanged_on_error(model: nn.Module) -> Iterator[None]:
    """If the block raises, every module of ``model`` gets back its class and attributes (no tensor copies).

    Restores undo structure only (classes, child modules, parameter/buffer tables, hooks);
    tensor *values* are not snapshotted, so the block must validate before it copies values.
    """
    snapshot = [(m, m.__class__, {k: (copy.copy(v) if isinstance(v, (dict, set, list)) else v)
                                  for k, v in m.__dict__.items()}) for m in model.modules()]
    try:
        yield
    except BaseException:
        for module, cls, attrs in snapshot:
            module.__class__ = cls
            module.__dict__.clear()
            module.__dict__.update(attrs)
        raise


def _check_weights(model: nn.Module, weights: dict[str, torch.Tensor], added: set[str], where: str) -> None:
    expected = model.state_dict()
    unknown = sorted(set(weights) - set(expected))
    if unknown:
        raise ArtifactError(f"{where}: weights name parameters the model does not have ({unknown[0]}, ...); "
                            "wrong base model or a changed recipe")
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ArtifactError(f"{where}: weight {name} has shape {tuple(tensor.shape)} but the model's is "
                                f"{tuple(expected[name].shape)}; wrong base model")
    missing = sorted(added - set(weights))
    if missing:
        raise ArtifactError(f"{where}: the recipe adds {missing[0]} but the weights do not hold it; the artifact is "
                            "incomplete, re-run `lincompress optimize`")


def apply(model: nn.Module, artifact: str | Path | Artifact, check_base: bool = True,
          check_inputs: dict[str, Any] | None = None) -> nn.Module:
    """Turn the original ``model`` into the artifact's model, in place, and return it.

    ``pipe.transformer = lincompress.apply(pipe.transformer, out_dir)`` is all a diffusers
    user needs. Everything is checked first (files, base model, every recipe step's pass and
    config); ``check_inputs`` (``model(**kwargs)`` arguments, e.g. ``target.inputs(1)``) runs
    one forward of the rebuilt model before its weights load, so recorded sites that do not
    match the model's attention calls fail here, in one line. If replaying, that check or
    loading fails, ``model`` is left exactly as it was.
    """
    from lincompress.fingerprint import model_fingerprint
    from lincompress.rewrite import check_call_order

    art = artifact if isinstance(artifact, Artifact) else read_artifact(artifact)
    where = str(art.path)
    base = art.base_model
    if check_base and model_fingerprint(model) != base["fingerprint"]:
        raise ArtifactArgumentError(
            f"{literal(where)} was made from a different {literal(base['class'])} (fingerprint mismatch); apply it to the model it was "
            "optimised from, or pass {} if you changed the weights on purpose", Arg("check_base", False)
        )
    steps = resolve_recipe(art.recipe, where)
    before = set(model.state_dict())
    with unchanged_on_error(model):
        for step in steps:
            model = _restore_step(model, step, where)
        if check_inputs is not None:
            try:
                check_call_order(model, check_inputs)
            except CallOrderError as exc:
                raise ArtifactError(f"{where}: the recorded attention sites do not fit this model's forward: {exc}"
                                    ) from None
            except Exception as exc:  # the rebuilt model's own failure: one line, the model is rolled back
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ArtifactError(f"{where}: a forward of the rebuilt model on check_inputs failed: "
                                    f"{type(exc).__name__}: {first}") from exc
        added = {k for k in model.state_dict() if k not in before}
        _check_weights(model, art.weights, added, where)
        model.load_state_dict(art.weights, strict=False)
    return model


def source_paths(out_dir: str | Path, source: str | Path | None) -> dict[str, str | None]:
    """How the manifest records model.py: relative to the artifact (survives moving both together) + absolute."""
    if not source:
        return {"source": None, "source_absolute": None}
    absolute = Path(source).resolve()
    try:
        relative = Path(os.path.relpath(absolute, Path(out_dir).resolve())).as_posix()
    except ValueError:  # another drive (Windows): only the absolute path exists
        relative = str(absolute)
    return {"source": relative, "source_absolute": str(absolute)}


def recorded_model_py(artifact: Artifact) -> Path | None:
    """The artifact's model.py: its recorded path relative to the artifact, else the absolute one, if it exists."""
    base = artifact.base_model
    for recorded in (base.get("source"), base.get("source_absolute")):
        if recorded:
            path = artifact.path / recorded  # an absolute path stays itself
            if path.is_file():
                return path
    return None


def open_artifact(out_dir: str | Path, model: str | Path | None = None, **target_options: Any
                  ) -> tuple[Artifact, Target]:
    """Read the artifact once, build its model.py once, apply it: ``(artifact, target)``.

    ``model``: the model.py to build (default: the one the artifact records, found relative to
    the artifact first). Whichever it is, the base-model fingerprint must match. The target is
    rebuilt as the artifact was made (its recorded prompts, guidance and resolution,
    ``lincompress.target_record``); ``target_options`` (TargetOptions fields, e.g.
    ``height=480``) replace recorded ones. ``target.model`` is the artifact's model (the
    freshly built original, converted in place).
    """
    from lincompress.target import load_target
    from lincompress.target_record import recorded_options

    artifact = read_artifact(out_dir)
    source = Path(model) if model is not None else recorded_model_py(artifact)
    if source is None:
        recorded = artifact.base_model.get("source_absolute") or artifact.base_model.get("source")
        raise ArtifactArgumentError(
            f"{literal(out_dir)} was made from {literal(recorded)}, which is not there any more; pass {{}} with the "
            "model.py it was made from (its fingerprint is checked)", Arg("model", "model.py"))
    target = load_target(source, recorded_options(artifact, **target_options))
    apply(target.model, artifact, check_inputs=target.inputs(1))
    return artifact, target


def load(out_dir: str | Path, model: str | Path | None = None) -> nn.Module:
    """Rebuild the artifact's model from its model.py (``model``, default: the recorded one)."""
    return open_artifact(out_dir, model)[1].model
