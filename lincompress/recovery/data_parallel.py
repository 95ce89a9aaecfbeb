"""Recovery over the processes of a process group: what the trainer asks at its few distributed points.

Equivalence to one process (what ``tests/distributed`` checks): a step is made of
``nproc x grad_accum`` micro-batches of ``batch_size`` samples. Micro-batch slot ``j`` draws
every random number from its own generator, seeded ``seed`` for slot 0 (the one-process,
no-accumulation run: exactly the generator lincompress always used) and a hash of
``(seed, j)`` for the others; rank ``r`` runs slots ``r*grad_accum ... (r+1)*grad_accum - 1``.
Draws that decide how many forwards a micro-batch makes (ADM's stop index) come from a
stream of the step (``Context.shared_generator``), the same for every micro-batch and rank:
FSDP2's all-gathers are collectives, so every rank must call each block equally often.
So N processes with ``grad_accum=A`` draw the same samples, noise, timesteps and ADM stop
indices as one process with ``grad_accum=N*A``, and average the same gradients (FSDP2's
reduce-scatter for sharded parameters, one all-reduce for the replicated selection
scores): the runs agree up to float summation order, and so make the same selection
unless two scores tie within rounding. Logged losses are the mean over every micro-batch.
A checkpoint holds every slot's generator, so it resumes on any number of processes that
keeps ``nproc x grad_accum`` (the global batch).
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import torch
from torch import nn

from lincompress.devices import resolve_device
from lincompress.distributed.context import DistributedContext
from lincompress.distributed import sharding
from lincompress.errors import LinCompressWarning
from lincompress.recovery.checkpoint import RNGState


def _hash_seed(*parts: object) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def stream_seed(seed: int, slot: int) -> int:
    """The seed of micro-batch slot ``slot``'s generator: ``seed`` itself for slot 0."""
    return int(seed) if slot == 0 else _hash_seed("lincompress-micro-batch", seed, slot)


class MicroBatchStreams:
    """This rank's micro-batch generators (+ the global torch / CUDA / python / numpy streams): the ``rng`` state.

    ``capture()`` freezes the streams at a step's start; ``state_dict()`` gathers every
    rank's slots, so the checkpoint holds all ``slots`` of them (one copy, whatever the
    number of processes) and ``load_state_dict`` takes the slots this rank runs.
    """

    def __init__(self, seed: int, per_rank: int, ctx: DistributedContext) -> None:
        self.ctx, self.seed = ctx, int(seed)
        self.slots = per_rank * ctx.world_size
        self.local = list(range(ctx.rank * per_rank, (ctx.rank + 1) * per_rank))
        self.generators = [torch.Generator().manual_seed(stream_seed(seed, j)) for j in self.local]
        self._globals = RNGState(self.generators[0])
        self.captured: dict[str, Any] | None = None

    def shared(self, step: int) -> torch.Generator | None:
        """Step ``step``'s shared draws (``Context.shared_generator``): a fresh generator, the same on every call.

        Counter-based (seeded by the step), so it needs no checkpoint; None with a single
        micro-batch per step, where the micro-batch's own stream serves (as it always did).
        """
        return None if self.slots == 1 else torch.Generator().manual_seed(_hash_seed("lincompress-step", self.seed, step))

    def _now(self) -> dict[str, Any]:
        return {"globals": self._globals._now(),
                "streams": {str(j): g.get_state().clone() for j, g in zip(self.local, self.generators)}}

    def capture(self) -> dict[str, Any]:
        self.captured = self._now()
        return self.captured

    def state_dict(self) -> dict[str, Any]:
        mine = self.captured if self.captured is not None else self._now()
        streams: dict[str, Any] = {}
        for part in self.ctx.all_gather(mine["streams"]):
            streams.update(part)
        return {"globals": mine["globals"], "streams": streams}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from lincompress.recovery.checkpoint import CheckpointError

        missing = [j for j in self.local if str(j) not in state["streams"]]
        if missing:
            raise CheckpointError(f"the checkpoint holds no random stream for micro-batch {missing[0]}; resume with "
                                  "the same number of micro-batches per step (nproc x grad_accum)")
        self._globals.load_state_dict(state["globals"])
        for j, g in zip(self.local, self.generators):
            g.set_state(state["streams"][str(j)])
        self.captured = None


class DataParallel:
    """The trainer's distributed wiring: one object, consulted at a few well-defined points.

    One process (no process group, or a group of one): the modules move to the device and
    every method is what the single-process trainer always did. Several: models are trained
    as FSDP2-sharded training copies (``lincompress.distributed.sharding``).
    """

    def __init__(self, ctx: DistributedContext) -> None:
        self.ctx = ctx
        self.replicated: list[nn.Parameter] = []  # in model order: every rank reduces them in one order
        self.roots: dict[str, nn.Module] = {}
        self.blocks: dict[str, list[str]] = {}

    @classmethod
    def create(cls, device: str | None, nproc: int | None) -> DataParallel:
        """Checks ``nproc`` against the running process group (one line naming the fix when they disagree)."""
        return cls(DistributedContext.create(resolve_device(device), nproc))

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def active(self) -> bool:
        return self.ctx.active

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    def training_copy(self, module: nn.Module) -> nn.Module:
        """What training shards: a copy of ``module``'s structure over its tensors (several processes), else itself."""
        if not self.active:
            return module
        where = next((p.device for p in module.parameters() if p.device.type != "cpu"), None)
        if where is not None:
            warnings.warn(LinCompressWarning(
                f"{type(module).__name__}'s parameters are on {where}: they stay there, whole, while FSDP2 trains a "
                "sharded copy; build the model on the CPU to give that memory to training"), stacklevel=3)
        return sharding.training_copy(module)

    def place(self, modules: dict[str, tuple[nn.Module, str]], mixed_precision: bool) -> None:
        """The one place the run's modules reach their device: ``{name: (module, role)}``.

        role: ``"trained"`` (the student: the optimizer steps it once per step), ``"frozen"`` (the
        teacher) or ``"auxiliary"`` (an objective's own trainable network, stepped inside its loss).
        One process: ``module.to(device)``. Several: FSDP2 per transformer block (bf16 parameters and
        fp32 gradient reduction with ``mixed_precision``). Parameters FSDP2 cannot or must not shard
        stay replicated: the student's selection scores and every 0-dim parameter. The student's are
        averaged once per step (``reduce_replicated_grads``), an auxiliary module's in its backward.
        """
        for name, (module, role) in modules.items():
            if not self.active:
                module.to(self.device)
                continue
            replicated = sharding.replicated_parameters(module, scores=role == "trained")
            if role == "trained":
                self.replicated += replicated
            elif role == "auxiliary":
                sharding.average_in_backward(self.ctx, replicated)
            self.blocks[name] = sharding.shard(module, self.ctx, replicated=replicated,
                                               mixed_precision=mixed_precision, trainable=role != "frozen")
            self.roots[name] = module

    def parameters_changed(self) -> None:
        """Parameters were written outside an optimizer step (checkpoint, "without recovery" weights).

        FSDP2 keeps a root's gathered parameters after a forward without backward; dropping them
        makes the next forward gather the new values.
        """
        if not self.active:
            return
        from torch.distributed.fsdp import FSDPModule

        for root in self.roots.values():
            for module in root.modules():
                if isinstance(module, FSDPModule):
                    module.reshard()

    def sync_gradients(self, module: nn.Module, sync: bool) -> None:
        """Reduce ``module``'s gradients in the coming backward (the last micro-batch) or keep them local."""
        if self.active:
            module.set_requires_gradient_sync(sync)

    def reduce_replicated_grads(self) -> None:
        sharding.reduce_replicated_grads(self.ctx, self.replicated)

    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        return sharding.clip_grad_norm_(self.ctx, params, max_norm)

    def copy_back(self, original: nn.Module, trained: nn.Module, names: list[str]) -> None:
        """After training: the trained values (and site modes) into the module the caller gave."""
        if trained is not original:
            sharding.copy_back(original, trained, names)

    def check_replicated(self, params: dict[str, nn.Parameter]) -> None:
        """Every rank holds the same replicated values (the selection scores); raise naming the first that differs."""
        if not self.active:
            return
        replicated = {id(p) for p in self.replicated}
        names = sorted(n for n, p in params.items() if id(p) in replicated)
        if not names:
            return
        mine = torch.stack([params[n].detach().float().reshape(()).cpu() for n in names])
        ranks = self.ctx.all_gather(mine)
        for other in ranks[1:]:
            if not torch.equal(other, ranks[0]):
                bad = names[int((other != ranks[0]).nonzero()[0])]
                raise RuntimeError(f"replicated parameter {bad} differs between ranks: {ranks}")
