"""Artifact directories: ``lincompress.json`` + ``weights.safetensors`` (+ report, engines).

The JSON says everything needed to rebuild the fixed model on top of the *original*
weights: which sites exist (owner path, call index, head shape), which are linear, the
feature map, and the fingerprint of the base model it was made from. Weights hold the
linear sites' parameters plus any base parameter that training changed. Loading checks
the format version, the weights' checksum and the base model's identity, and refuses
anything that does not match with a one-line ``ArtifactError``.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from lincompress import atomic
from lincompress.attention import SITES_ATTR
from lincompress.discovery import SiteInfo
from lincompress.errors import ArtifactError, LinCompressError
from lincompress.fingerprint import model_fingerprint
from lincompress.pipeline import State
from lincompress.rewrite import fix_model, hybridize_model

FORMAT_VERSION = 1
MANIFEST = "lincompress.json"
WEIGHTS = "weights.safetensors"


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]
    weights: dict[str, torch.Tensor]

    @property
    def sites(self) -> list[SiteInfo]:
        return [SiteInfo.from_dict(s) for s in self.manifest["sites"]]

    @property
    def selection(self) -> list[str]:
        return list(self.manifest["selection"])


def _versions() -> dict[str, str]:
    import lincompress

    versions = {"lincompress": lincompress.__version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import diffusers

        versions["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return versions


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifact_tensors(state: State) -> dict[str, torch.Tensor]:
    """Linear-site parameters, plus base parameters that training modified."""
    tensors = {}
    for name, tensor in state.model.state_dict().items():
        if f"{SITES_ATTR}." in name or name in state.modified_parameters:
            tensors[name] = tensor
    return tensors


def _prepare_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ArtifactError(f"{out_dir} exists and is not a directory; choose another --out")
    if out_dir.is_dir():
        if (out_dir / MANIFEST).exists() and not overwrite:
            raise ArtifactError(f"{out_dir} already holds an artifact; pass --overwrite or choose another --out")
        foreign = [p.name for p in out_dir.iterdir() if not p.name.startswith(".")]
        if foreign and not (out_dir / MANIFEST).exists() and not overwrite:
            raise ArtifactError(f"{out_dir} is not empty and holds no artifact; choose an empty or new --out")
    out_dir.mkdir(parents=True, exist_ok=True)


def save_artifact(state: State, out_dir: Path, overwrite: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write manifest + weights atomically (weights first, so a manifest never points at missing weights)."""
    if state.selection is None or not state.settings.get("fixed"):
        raise LinCompressError("save needs a fixed model; run passes.Fix() before saving")
    _prepare_dir(out_dir, overwrite)
    weights_path = atomic.write_safetensors(out_dir / WEIGHTS, artifact_tensors(state), {"format": "lincompress"})
    candidates = [s.name for s in state.candidates]
    manifest = {
        "format_version": FORMAT_VERSION,
        "base_model": {
            "class": type(state.target.model).__name__,
            "fingerprint": state.base_hash or model_fingerprint(state.target.model),
            "source": state.target.extras.get("source"),
            "name": state.target.name,
        },
        "sites": [s.to_dict() for s in state.sites],
        "candidates": candidates,
        "selection": list(state.selection),
        "num_linear": len(state.selection),
        "num_candidates": len(candidates),
        "feature_map": state.settings.get("feature_map"),
        "eps": state.settings.get("eps", 1e-6),
        "settings": {k: v for k, v in state.settings.items() if k not in ("feature_map", "eps")},
        "metrics": state.metrics,
        "modified_parameters": sorted(state.modified_parameters),
        "weights": {"file": WEIGHTS, "sha256": _sha256(weights_path)},
        "versions": _versions(),
        **(extra or {}),
    }
    atomic.write_json(out_dir / MANIFEST, manifest)
    return out_dir


def read_artifact(out_dir: str | Path) -> Artifact:
    """Parse and verify an artifact directory (format version, weights checksum)."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{out_dir} is not a lincompress artifact (no {MANIFEST}); pass the --out directory of `optimize`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is corrupt ({exc.__class__.__name__}); re-run `lincompress optimize`") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path} has format version {version!r}, this lincompress reads {FORMAT_VERSION}; "
            "re-create the artifact with this version"
        )
    for key in ("sites", "selection", "feature_map", "base_model", "weights"):
        if key not in manifest:
            raise ArtifactError(f"{manifest_path} lacks {key!r}; the artifact is incomplete, re-run `lincompress optimize`")
    weights_path = out_dir / manifest["weights"]["file"]
    if not weights_path.is_file():
        raise ArtifactError(f"{weights_path} is missing; the artifact is incomplete, re-run `lincompress optimize`")
    if _sha256(weights_path) != manifest["weights"]["sha256"]:
        raise ArtifactError(f"{weights_path} does not match its checksum in {MANIFEST}; the file is corrupt or was replaced")
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"{weights_path} is not readable safetensors ({exc}); re-run `lincompress optimize`") from None
    return Artifact(out_dir, manifest, weights)


def apply(model: nn.Module, out_dir: str | Path, check_base: bool = True) -> nn.Module:
    """Turn the original ``model`` into the artifact's fixed model, in place, and return it.

    ``pipe.transformer = lincompress.apply(pipe.transformer, out_dir)`` is all a
    diffusers user needs.
    """
    artifact = read_artifact(out_dir)
    base = artifact.manifest["base_model"]
    if check_base:
        fingerprint = model_fingerprint(model)
        if fingerprint != base["fingerprint"]:
            raise ArtifactError(
                f"{out_dir} was made from a different {base['class']} (fingerprint mismatch); apply it to the model it was "
                "optimised from, or pass check_base=False if you changed the weights on purpose"
            )
    hybridize_model(model, artifact.sites, artifact.manifest["feature_map"], float(artifact.manifest.get("eps", 1e-6)))
    fix_model(model, artifact.selection)
    missing = sorted(set(artifact.weights) - set(model.state_dict()))
    if missing:
        raise ArtifactError(f"{out_dir}: weights name parameters the model does not have ({missing[0]}, ...); wrong base model")
    model.load_state_dict(artifact.weights, strict=False)
    return model


def load(out_dir: str | Path) -> nn.Module:
    """Rebuild the fixed model from the model.py recorded in the artifact."""
    from lincompress.target import load_target

    artifact = read_artifact(out_dir)
    source = artifact.manifest["base_model"].get("source")
    if not source or not Path(source).is_file():
        raise ArtifactError(
            f"{out_dir} records no loadable model.py ({source!r}); use lincompress.apply(model, out_dir) with your model"
        )
    return apply(load_target(source).model, out_dir)
