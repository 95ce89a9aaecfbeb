"""Training checkpoints on ``torch.distributed.checkpoint`` (DCP): named state dicts, verified, atomic.

A checkpoint is a set of *named states*, each any object with ``state_dict()`` /
``load_state_dict(sd)`` (DCP's ``Stateful`` protocol): the trainer saves ``model`` (the
trained parameters, ``ParameterState``), ``optimizer`` (FQN-keyed, ``OptimizerState``),
``rng`` (every random stream, ``RNGState``), ``regularizer``, ``initial`` (what
"without recovery" is measured with) and ``objective`` when the objective keeps state of
its own (an auxiliary network and its optimizer). A state dict is a tree of ``str``-keyed
dicts whose leaves are tensors or JSON values: the tensors go through ``dcp.save`` (so a
sharded FSDP2 model saves its DTensors shard by shard and loads onto any number of ranks),
everything else into ``checkpoint.json``. No pickle: DCP's own ``.metadata`` file is the
only pickled file, and it is read only after its checksum matched.

Layout of ``directory`` (the trainer's ``work_dir/checkpoints``)::

    latest.json              pointer: {"format", "version", "step", "dir", "sha256" of checkpoint.json}
    step-0000040/            one complete checkpoint
        .metadata, *.distcp  DCP's files (one data file per rank)
        checkpoint.json      step, non-tensor state, extra (JSON), sha256 of every DCP file

``save_checkpoint`` writes into ``.partial-step-N/``, renames it to ``step-N/`` once every
file is written and hashed (saving step N again: ``step-N.<time>/``), then moves the pointer (atomic rename) and only then deletes
older checkpoints: a crash or kill -9 at any moment leaves the previous checkpoint in force.
``load_checkpoint`` verifies the chain pointer -> checkpoint.json -> every file before reading
a tensor, and refuses a corrupt or foreign checkpoint with a one-line ``CheckpointError``
naming the file. With a process group (multi-GPU), every rank calls both functions; rank 0
alone writes JSON, renames and hashes (the directory must be on a filesystem all ranks share).

Usage (any extra state is one more name)::

    states = {"model": ParameterState(params), "optimizer": OptimizerState(model, optimizer),
              "rng": RNGState(generator), "objective": objective}
    save_checkpoint(directory, step, states, extra={"elapsed": 12.5})
    info = load_checkpoint(directory, states)   # None when there is none; info.step, info.extra
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lincompress import atomic
from lincompress.errors import LinCompressError

FORMAT = "lincompress-checkpoint"
VERSION = 2
LATEST = "latest.json"
INFO = "checkpoint.json"
_STEP_PREFIX, _PARTIAL_PREFIX = "step-", ".partial-step-"
_TENSOR = "$tensor"  # marks where a tensor sits in the JSON tree


class CheckpointError(LinCompressError):
    """A checkpoint that is missing, corrupt, foreign, or does not fit the run resuming from it."""


@dataclass
class CheckpointInfo:
    step: int
    path: Path  # the step directory
    extra: dict[str, Any]
    states: tuple[str, ...]  # the names of the states it holds


# --------------------------------------------------------------------------- named states


class ParameterState:
    """Named tensors (trained parameters) loaded back *in place*, so sharded DTensors keep their sharding."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        self.tensors = dict(tensors)

    def state_dict(self) -> dict[str, Any]:
        return {name: t.detach() for name, t in self.tensors.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = sorted(set(self.tensors) - set(state))
        if missing:
            raise CheckpointError(f"the checkpoint lacks the trained tensor {missing[0]}; resume with the same "
                                  "model and training settings (train=...)")
        for name, t in self.tensors.items():
            if state[name].data_ptr() != t.data_ptr():  # not loaded in place already
                t.copy_(state[name])


class TensorDict:
    """A plain ``{name: tensor}`` state that ``load_state_dict`` replaces (shapes come from the checkpoint)."""

    def __init__(self, tensors: Mapping[str, Tensor] | None = None) -> None:
        self.tensors: dict[str, Tensor] = dict(tensors or {})

    def state_dict(self) -> dict[str, Any]:
        return dict(self.tensors)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tensors = dict(state)


class OptimizerState:
    """One or more optimizers over ``module``, keyed by parameter FQN (DCP's ``get_optimizer_state_dict``).

    FQN keys (not torch's positional indices) are what lets DCP reshard optimizer state
    across ranks; for a plain module it is a relabelling and loads back bit-exactly.
    """

    def __init__(self, module: nn.Module, optimizers: torch.optim.Optimizer | Iterable[torch.optim.Optimizer]) -> None:
        self.module = module
        self.optimizers = optimizers if isinstance(optimizers, torch.optim.Optimizer) else tuple(optimizers)

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.module, self.optimizers)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        state = {"state": state.get("state", {}), "param_groups": [
            {**g, "betas": tuple(g["betas"])} if isinstance(g.get("betas"), list) else g for g in state["param_groups"]]}
        set_optimizer_state_dict(self.module, self.optimizers, state)


class RNGState:
    """Every random stream training may touch: its generator, torch (CPU, CUDA), python, numpy.

    ``capture()`` freezes the current streams (the trainer captures them at the start of a
    step, so a checkpoint of step N replays step N+1 exactly); ``state_dict`` returns the
    captured streams, or the live ones when nothing was captured.
    """

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self.captured: dict[str, Any] | None = None

    def capture(self) -> dict[str, Any]:
        self.captured = self._now()
        return self.captured

    def _now(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        version, internal, gauss = random.getstate()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {
            "generator": self.generator.get_state().clone(), "torch": torch.get_rng_state().clone(),
            "cuda": {str(i): s.clone() for i, s in enumerate(cuda)},
            "python": [version, list(internal), gauss],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        }

    def state_dict(self) -> dict[str, Any]:
        return self.captured if self.captured is not None else self._now()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch"])
        cuda = [state["cuda"][str(i)] for i in range(len(state["cuda"]))]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        self.captured = None


# --------------------------------------------------------------------------- tensors vs JSON


def _split(tree: Any, path: str) -> tuple[Any, Any]:
    """``(tensor tree, JSON tree)``: tensors leave the JSON tree, which keeps a marker where each was."""
    if isinstance(tree, Tensor):
        return tree, {_TENSOR: f"{str(tree.dtype).removeprefix('torch.')}{list(tree.shape)}"}
    if isinstance(tree, Mapping):
        tensors, plain = {}, {}
        for key, value in tree.items():
            if not isinstance(key, str):
                raise TypeError(f"checkpoint state {path}: keys must be strings, got {key!r} "
                                "(an optimizer's state goes through OptimizerState, which keys it by name)")
            t, p = _split(value, f"{path}.{key}")
            if t is not None:
                tensors[key] = t
            plain[key] = p
        return (tensors or None), plain
    if isinstance(tree, (list, tuple)):
        items = [_split(v, f"{path}[{i}]") for i, v in enumerate(tree)]
        if any(t is not None for t, _ in items):
            raise TypeError(f"checkpoint state {path}: tensors must sit in dicts, not lists")
        return None, [p for _, p in items]
    if tree is None or isinstance(tree, (str, bool, int, float)):
        return None, tree
    raise TypeError(f"checkpoint state {path}: {type(tree).__name__} is neither a tensor nor a JSON value")


def _join(plain: Any, tensors: Mapping[str, Any] | Tensor | None, where: str) -> Any:
    if isinstance(plain, dict) and set(plain) == {_TENSOR}:
        if not isinstance(tensors, Tensor):
            raise CheckpointError(f"{where} misses a tensor its {INFO} lists; the checkpoint is incomplete")
        return tensors
    if isinstance(plain, dict):
        sub = tensors if isinstance(tensors, Mapping) else {}
        return {k: _join(v, sub.get(k), where) for k, v in plain.items()}
    return plain


# --------------------------------------------------------------------------- process-group helpers


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank() -> int:
    return torch.distributed.get_rank() if _distributed() else 0


def _barrier() -> None:
    if _distributed():
        torch.distributed.barrier()


def _broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (an error found by rank 0 fails every rank the same way)."""
    if not _distributed():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def _quiet_dcp() -> Iterator[None]:
    """DCP warns on every call without a process group; single-process is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


# --------------------------------------------------------------------------- saving


def save_checkpoint(directory: str | Path, step: int, states: Mapping[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write the named ``states`` as checkpoint ``step`` (atomically; the previous one goes only after).

    ``extra`` is JSON (run facts a resumed run must report as the uninterrupted one would).
    Returns the checkpoint's directory. Every rank of a process group calls it.
    """
    import torch.distributed.checkpoint as dcp

    directory = Path(directory)
    name = f"{_STEP_PREFIX}{step:07d}"
    partial, final = directory / f"{_PARTIAL_PREFIX}{step:07d}", directory / name
    tensors: dict[str, Any] = {}
    plain: dict[str, Any] = {}
    for key, state in states.items():
        t, p = _split(state.state_dict(), key)
        plain[key] = p
        if t is not None:
            tensors[key] = t
    if _rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)  # left by a crash mid-save
        partial.mkdir(parents=True)
    _barrier()
    with _quiet_dcp():
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(partial, sync_files=True), no_dist=not _distributed())
    _barrier()
    if _rank() == 0:
        files = {p.name: atomic.sha256_file(p) for p in sorted(partial.iterdir()) if p.is_file()}
        info = {"format": FORMAT, "version": VERSION, "step": step, "states": plain, "extra": extra or {},
                "files": files, "torch": torch.__version__}
        atomic.write_json(partial / INFO, info)
        if final.exists():  # the same step saved again: a new name, so the pointer's target stays whole
            final = directory / f"{name}.{time.time_ns()}"
        os.replace(partial, final)
        atomic.fsync_dir(directory)
        pointer = {"format": FORMAT, "version": VERSION, "step": step, "dir": final.name,
                   "sha256": atomic.sha256_file(final / INFO)}
        atomic.write_json(directory / LATEST, pointer)
        atomic.fsync_dir(directory)
        for old in directory.iterdir():  # only now that the pointer moved
            if old.is_dir() and old.name != final.name and old.name.startswith((_STEP_PREFIX, _PARTIAL_PREFIX)):
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return Path(_broadcast(str(final)))


# --------------------------------------------------------------------------- reading


def _pointer(directory: Path) -> dict[str, Any] | None:
    path = directory / LATEST
    if not path.is_file():
        return None
    try:
        pointer = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({type(exc).__name__}); delete {directory} to start over") from None
    if not isinstance(pointer, dict) or pointer.get("format") != FORMAT or pointer.get("version") != VERSION \
            or not isinstance(pointer.get("step"), int) or not isinstance(pointer.get("dir"), str):
        raise CheckpointError(f"{path} is not a checkpoint pointer this lincompress writes (format {FORMAT} "
                              f"version {VERSION}); delete {directory} to start over")
    return pointer


def read_checkpoint_info(directory: str | Path) -> CheckpointInfo | None:
    """The latest checkpoint's step and extra, verified (every file's checksum); None when there is none."""
    directory = Path(directory)
    pointer = _pointer(directory)
    if pointer is None:
        return None
    step_dir = directory / Path(pointer["dir"]).name
    info_path = step_dir / INFO
    if not info_path.is_file():
        raise CheckpointError(f"{info_path} is missing (named by {directory / LATEST}); delete {directory} to start over")
    if atomic.sha256_file(info_path) != pointer.get("sha256"):
        raise CheckpointError(f"{info_path} does not match its checksum in {directory / LATEST}; the checkpoint is "
                              f"corrupt: delete {directory} to start over")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    for file, digest in info["files"].items():
        path = step_dir / file
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; the checkpoint is incomplete: delete {directory} to start over")
        if atomic.sha256_file(path) != digest:
            raise CheckpointError(f"{path} does not match its checksum in {info_path}; the checkpoint is corrupt: "
                                  f"delete {directory} to start over")
    return CheckpointInfo(int(info["step"]), step_dir, info.get("extra", {}), tuple(info["states"]))


def latest_step(directory: str | Path) -> int | None:
    """The step the pointer names (not verified: for messages), None without a readable one."""
    try:
        pointer = _pointer(Path(directory))
    except CheckpointError:
        return None
    return None if pointer is None else int(pointer["step"])


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def load_checkpoint(directory: str | Path, states: Mapping[str, Any],
                    check: Callable[[CheckpointInfo], None] | None = None) -> CheckpointInfo | None:
    """Restore the named ``states`` from the latest checkpoint in ``directory``; None when there is none.

    Every file is verified first; then ``check(info)`` may refuse the checkpoint (by raising)
    before anything is loaded. Tensors load into the live tensors of each state's
    ``state_dict()`` where shapes match (in place: what sharded DTensors need), else into new
    CPU tensors shaped by the checkpoint; then each state's ``load_state_dict`` gets its full
    tree. Every rank calls it.
    """
    import torch.distributed.checkpoint as dcp

    directory = Path(directory)
    verdict: Any
    if _rank() == 0:
        try:
            verdict = read_checkpoint_info(directory)
        except CheckpointError as exc:
            verdict = exc
    else:
        verdict = None
    verdict = _broadcast(verdict)
    if isinstance(verdict, CheckpointError):
        raise verdict
    if verdict is None:
        return None
    info: CheckpointInfo = verdict
    if check is not None:
        check(info)
    lacking = [name for name in states if name not in info.states]
    if lacking:
        raise CheckpointError(f"the checkpoint in {info.path} holds no {lacking[0]!r} state (it has "
                              f"{', '.join(info.states) or 'none'}); it was written by a run with other settings")
    plain = json.loads((info.path / INFO).read_text(encoding="utf-8"))["states"]
    reader = dcp.FileSystemReader(info.path)
    try:
        metadata = reader.read_metadata()
    except Exception as exc:  # verified files, yet unreadable: another torch's format
        raise CheckpointError(f"{info.path} is not readable by this torch {torch.__version__} ({type(exc).__name__}); "
                              f"delete {directory} to start over") from None
    live = {name: states[name].state_dict() for name in states}
    template: dict[str, Any] = {}
    for key, meta in metadata.state_dict_metadata.items():
        path = tuple(metadata.planner_data[key]) if metadata.planner_data and key in metadata.planner_data else (key,)
        if path[0] not in states or not hasattr(meta, "size"):
            continue
        current = _get(live, path)
        if isinstance(current, Tensor) and tuple(current.shape) == tuple(meta.size) and current.dtype == meta.properties.dtype:
            _set(template, path, current)
        else:
            _set(template, path, torch.empty(tuple(meta.size), dtype=meta.properties.dtype))
    try:
        with _quiet_dcp():
            dcp.load(template, storage_reader=reader, no_dist=not _distributed())
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{info.path} could not be loaded ({type(exc).__name__}: {first}); "
                              f"delete {directory} to start over") from None
    for name, state in states.items():
        state.load_state_dict(_join(plain[name], template.get(name), str(info.path)))
    return info
