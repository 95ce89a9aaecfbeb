"""Where this process stands in a process group, and the few collectives training agrees through.

Every decision that changes what the ranks do next (stop on a signal, write a checkpoint
now, which teacher shards to make, did rank 0's file work fail) is taken through one of
these collectives, so no rank waits in a collective another rank skipped. Without a
process group (or with one of a single process) every method is the identity and costs
nothing: the one-process run is the special case of the same code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from lincompress.config import Arg, ArgumentError
from lincompress.errors import LinCompressError


def initialized() -> bool:
    """Is a process group running (``torch.distributed.init_process_group`` called)?"""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def is_main() -> bool:
    """Rank 0 (or no process group): the process that writes shared files and prints."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its host (torchrun's ``LOCAL_RANK``): which GPU it drives."""
    value = os.environ.get("LOCAL_RANK")
    if value is not None:
        return int(value)
    if torch.cuda.is_available() and initialized():
        return rank() % torch.cuda.device_count()
    return 0


class PeerFailed(LinCompressError):
    """Rank 0 failed in a step the other ranks waited for; they stop with its message."""


def _backend_serves(device: torch.device) -> bool:
    """Can the default group's backend run collectives on ``device`` (nccl: cuda, gloo: cpu)?"""
    backend = str(dist.get_backend()).lower()
    if ":" in backend:  # "cpu:gloo,cuda:nccl"
        return any(part.split(":", 1)[0] == device.type for part in backend.split(","))
    wanted = {"cuda": ("nccl",), "cpu": ("gloo",)}.get(device.type, ())
    return backend in wanted or backend not in ("nccl", "gloo", "mpi")  # a custom backend: trust its owner


def backend_for(device: torch.device) -> str:
    """The backend a process group for ``device`` is made with: NCCL for CUDA tensors (gloo for CPU objects), gloo on CPU."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


class DistributedContext:
    """Rank, world size, this rank's device and the 1-D device mesh FSDP2 shards over.

    Build it with ``DistributedContext.create(device, nproc)``: with an initialised process
    group of N > 1 processes it is *active* (FSDP2, split data, rank-0 file work); without one
    (or with N = 1) it is the single-process context whose collectives do nothing.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, device: torch.device | None = None, mesh: Any = None) -> None:
        self.rank, self.world_size = rank, world_size
        self.device = device if device is not None else torch.device("cpu")
        self.mesh = mesh

    @classmethod
    def current(cls) -> DistributedContext:
        """This process's rank and world size, for collectives over plain objects (paths, results) outside training."""
        return cls(rank(), world_size())

    @classmethod
    def create(cls, device: torch.device, nproc: int | None = None) -> DistributedContext:
        """The context of this process for training on ``device``; checks ``nproc`` against the process group.

        ``nproc`` (the ``nproc`` option) is the number of processes the run expects: ``None``
        takes whatever the process group has (1 without one).
        """
        world = world_size()
        if nproc is not None and nproc != world:
            if not initialized():
                raise ArgumentError(
                    f"{{}} needs {nproc} processes in a process group: `lincompress optimize --nproc {nproc}` starts "
                    f"them, or run under `torchrun --nproc-per-node {nproc}` and call torch.distributed."
                    "init_process_group() in each process before lincompress", Arg("nproc", nproc))
            raise ArgumentError(f"{{}}, but this process group has {world} processes; give {{}} or leave it out",
                                Arg("nproc", nproc), Arg("nproc", world))
        if world == 1:
            return cls(device=device)
        if device.type == "cuda":
            if device.index is not None and device.index != local_rank():
                raise ArgumentError(f"{{}}: with several processes each one drives its own GPU (cuda:LOCAL_RANK, "
                                    f"here cuda:{local_rank()}); give {{}}", Arg("device", str(device)),
                                    Arg("device", "cuda"))
            device = torch.device("cuda", local_rank())
            torch.cuda.set_device(device)
        if not _backend_serves(device):
            raise LinCompressError(
                f"the process group's backend {dist.get_backend()} cannot run collectives on {device.type}; initialise "
                f"it with torch.distributed.init_process_group(backend={backend_for(device)!r})")
        from torch.distributed.device_mesh import init_device_mesh

        return cls(rank(), world, device, init_device_mesh(device.type, (world,)))

    # -- facts ---------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Several processes: FSDP2, split data, collectives."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"DistributedContext(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    # -- collectives (the identity without a process group) ------------------------------
    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def max(self, value: int) -> int:
        if not self.active:
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.int64, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def any(self, flag: bool) -> bool:
        return bool(self.max(int(bool(flag))))

    def all(self, flag: bool) -> bool:
        return not self.any(not flag)

    def mean_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each logged number (a key some rank lacks counts as absent there)."""
        if not self.active:
            return dict(logs)
        gathered = self.all_gather(logs)
        keys = list(dict.fromkeys(k for g in gathered for k in g))
        return {k: math.fsum(g[k] for g in gathered if k in g) / sum(1 for g in gathered if k in g) for k in keys}

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it writes a shared cache), then the others (they read it).

        A failure on rank 0 reaches the others as ``PeerFailed`` with its message, instead of
        leaving them waiting.
        """
        if not self.active:
            yield
            return
        if self.is_main:
            try:
                yield
            except BaseException as exc:
                self.broadcast(f"{type(exc).__name__}: {exc}" if not isinstance(exc, LinCompressError) else str(exc))
                raise
            self.broadcast(None)
        else:
            failure = self.broadcast(None)
            if failure is not None:
                raise PeerFailed(f"rank 0 failed: {failure}")
            yield

    # -- splitting work ---------------------------------------------------------------
    def assign(self, items: Sequence[Any]) -> list[Any]:
        """This rank's share of ``items`` (round-robin), padded with ``None`` so every rank gets as many turns."""
        mine = list(items[self.rank::self.world_size])
        turns = -(-len(items) // self.world_size)
        return mine + [None] * (turns - len(mine))

    def rows(self, n: int) -> tuple[torch.Tensor, int]:
        """This rank's contiguous block of ``range(n)`` and how many of it are real.

        Every rank gets ``ceil(n / world)`` indices (the last ones repeat a real index), so all
        ranks make the same number of forwards -- FSDP's all-gathers are collectives.
        """
        per = -(-n // self.world_size)
        start = min(n, self.rank * per)
        real = max(0, min(n, start + per) - start)
        index = torch.arange(start, start + real)
        if real < per:
            index = torch.cat([index, torch.full((per - real,), max(0, min(start, n - 1)), dtype=torch.long)])
        return index, real
