"""Training checkpoints: trained parameters, optimizer, every RNG stream, step and history.

No pickle: tensors go to ``ckpt-<step>.safetensors`` (parameters ``model.*``, optimizer
state ``opt.<param>.<key>``, RNG states ``rng.*``), everything else to
``ckpt-<step>.json``; ``latest.json`` (written last, atomically) names the pair, so a
crash mid-save leaves the previous checkpoint in force. Older pairs are deleted once
the pointer moved.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from lincompress import atomic
from lincompress.errors import LinCompressError

LATEST = "latest.json"


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """Every random stream training may touch: the trainer's generator, torch (CPU, CUDA), python, numpy."""
    np_state = np.random.get_state()
    return {
        "gen": generator.get_state().clone(),
        "torch": torch.get_rng_state().clone(),
        "cuda": [s.clone() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["gen"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


@dataclass
class Checkpoint:
    step: int
    params: dict[str, Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    extra: dict[str, Any]


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"opt.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: str | Path, step: int, params: dict[str, Tensor], optimizer: dict[str, Any], rng: dict[str, Any],
    extra: dict[str, Any],
) -> Path:
    directory = Path(directory)
    stem = f"ckpt-{step:07d}"
    opt_tensors, opt_meta = _split_optimizer(optimizer)
    tensors = {f"model.{k}": v for k, v in params.items()} | opt_tensors
    tensors["rng.gen"], tensors["rng.torch"] = rng["gen"], rng["torch"]
    tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(rng["cuda"])})
    atomic.write_safetensors(directory / f"{stem}.safetensors", tensors, {"format": "lincompress-checkpoint"})
    meta = {"step": step, "optimizer": opt_meta, "rng": {"python": rng["python"], "numpy": rng["numpy"],
            "cuda": len(rng["cuda"])}, "extra": extra}
    atomic.write_json(directory / f"{stem}.json", meta)
    atomic.write_json(directory / LATEST, {"step": step, "stem": stem})
    for old in directory.glob("ckpt-*"):
        if not old.name.startswith(stem + "."):
            old.unlink(missing_ok=True)
    return directory / f"{stem}.safetensors"


def latest_step(directory: str | Path) -> int | None:
    try:
        return int(json.loads((Path(directory) / LATEST).read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_checkpoint(directory: str | Path) -> Checkpoint | None:
    """The checkpoint ``latest.json`` points at, or None when there is none."""
    directory = Path(directory)
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    try:
        stem = json.loads(pointer.read_text(encoding="utf-8"))["stem"]
        meta = json.loads((directory / f"{stem}.json").read_text(encoding="utf-8"))
        tensors = load_file(str(directory / f"{stem}.safetensors"))
    except Exception as exc:  # corrupt files: refuse with the fix, never half-load
        raise LinCompressError(f"checkpoint in {directory} is unreadable ({exc}); delete {directory} to start over") from None
    params = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    rng = {"gen": tensors["rng.gen"], "torch": tensors["rng.torch"],
           "cuda": [tensors[f"rng.cuda.{i}"] for i in range(meta["rng"]["cuda"])],
           "python": meta["rng"]["python"], "numpy": meta["rng"]["numpy"]}
    return Checkpoint(int(meta["step"]), params, _join_optimizer(tensors, meta["optimizer"]), rng, meta["extra"])
