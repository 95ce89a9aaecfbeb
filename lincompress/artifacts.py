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
from lincompress.attention import SITES_ATTR
from lincompress.config import Arg, ArgumentError, PassConfig, literal
from lincompress.errors import ArtifactError, LinCompressError
from lincompress.pipeline import RecipeStep, State

if TYPE_CHECKING:
    from lincompress.discovery import SiteInfo
    from lincompress.target import Target

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "lincompress.json"
WEIGHTS = "weights.safetensors"


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


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to write an artifact where it would clobber something (nothing is created)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ArtifactArgumentError(f"{literal(out_dir)} exists and is not a directory; choose another {{}}", Arg("out_dir"))
    if out_dir.is_dir() and not overwrite:
        if (out_dir / MANIFEST).exists():
            raise ArtifactArgumentError(f"{literal(out_dir)} already holds an artifact; pass {{}} or choose another {{}}",
                                Arg("overwrite", True), Arg("out_dir"))
        if any(not p.name.startswith(".") for p in out_dir.iterdir()):
            raise ArtifactArgumentError(f"{literal(out_dir)} is not empty and holds no artifact; choose an empty or new {{}}",
                                Arg("out_dir"))


def _candidates(state: State) -> list[str]:
    from lincompress.discovery import SiteInfo

    for step in state.recipe:
        if "sites" in step.metadata:
            return [s.name for s in map(SiteInfo.from_dict, step.metadata["sites"]) if s.candidate]
    return [s.name for s in state.candidates]


def save_artifact(state: State, out_dir: Path, overwrite: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write manifest + weights atomically (weights first, so a manifest never points at missing weights)."""
    from lincompress.fingerprint import model_fingerprint
    from lincompress.target_record import target_record

    if state.selection is None or not state.fixed:
        raise LinCompressError("save needs a fixed model; run passes.Fix() before saving")
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = atomic.write_safetensors(out_dir / WEIGHTS, artifact_tensors(state), {"format": "lincompress"})
    sampling = target_record(state.target, state.recipe, out_dir)  # guidance, prompts, resolution (+ prompts.json)
    candidates = _candidates(state)
    manifest = {
        "format_version": FORMAT_VERSION,
        "base_model": {
            "class": type(state.target.model).__name__,
            "fingerprint": state.base_hash or model_fingerprint(state.target.model),
            "source": state.target.extras.get("source"),
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
        "weights": {"file": WEIGHTS, "sha256": atomic.sha256_file(weights_path)},
        "versions": _versions(),
        **sampling,
        **(extra or {}),
    }
    atomic.write_json(out_dir / MANIFEST, manifest)
    return out_dir


# --------------------------------------------------------------------------- reading


_REQUIRED = {1: ("sites", "selection", "feature_map", "base_model", "weights"),
             2: ("recipe", "selection", "base_model", "weights")}


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """Parse and check an artifact's ``lincompress.json`` (format version, required keys, recipe shape); no weights."""
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
    recipe = manifest.get("recipe", [])
    if not isinstance(recipe, list) or not all(isinstance(s, dict) and isinstance(s.get("pass"), str) for s in recipe):
        raise ArtifactError(f"{manifest_path} has a malformed recipe (a list of {{'pass', 'config', 'metadata'}} "
                            "steps is expected); re-run `lincompress optimize`")
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


def apply(model: nn.Module, artifact: str | Path | Artifact, check_base: bool = True) -> nn.Module:
    """Turn the original ``model`` into the artifact's model, in place, and return it.

    ``pipe.transformer = lincompress.apply(pipe.transformer, out_dir)`` is all a diffusers
    user needs. Everything is checked first (files, base model, every recipe step's pass and
    config); if replaying or loading still fails, ``model`` is left exactly as it was.
    """
    from lincompress.fingerprint import model_fingerprint

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
        added = {k for k in model.state_dict() if k not in before}
        _check_weights(model, art.weights, added, where)
        model.load_state_dict(art.weights, strict=False)
    return model


def open_artifact(out_dir: str | Path, **target_options: Any) -> tuple[Artifact, Target]:
    """Read the artifact once, build its recorded model.py once, apply it: ``(artifact, target)``.

    The target is rebuilt as the artifact was made (its recorded prompts, guidance and
    resolution, ``lincompress.target_record``); ``target_options`` (TargetOptions fields,
    e.g. ``height=480``) replace recorded ones. ``target.model`` is the artifact's model
    (the freshly built original, converted in place).
    """
    from lincompress.target import load_target
    from lincompress.target_record import recorded_options

    artifact = read_artifact(out_dir)
    source = artifact.base_model.get("source")
    if not source or not Path(source).is_file():
        raise ArtifactError(
            f"{out_dir} records no loadable model.py ({source!r}); use lincompress.apply(model, out_dir) with your model"
        )
    target = load_target(source, recorded_options(artifact, **target_options))
    apply(target.model, artifact)
    return artifact, target


def load(out_dir: str | Path) -> nn.Module:
    """Rebuild the artifact's model from the model.py recorded in it."""
    return open_artifact(out_dir)[1].model
