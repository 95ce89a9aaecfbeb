"""FSDP2 for recovery: transformer blocks, training copies, sharding, and gradients of replicated tensors.

Block rule (``transformer_blocks``): a diffusers model names its blocks in
``_no_split_modules`` (``WanTransformerBlock``...): the outermost submodules of those
classes are the blocks. Any other model: the children of its largest ``nn.ModuleList``
whose children are all of one class (``model.blocks``). No blocks: the whole model is one
FSDP unit (it works; it only saves less memory). The same blocks are what activation
checkpointing recomputes when the model has no gradient checkpointing of its own.

What is sharded and what is replicated: every parameter FSDP2 can shard is, per block
(base weights, feature maps -- they are used only inside their block's forward). The
selection scores (``score_logit``, 0-dim) and any other 0-dim parameter stay
*replicated*: a full copy on every rank, outside FSDP (``ignored_params``), because the
selection regulariser reads and changes them outside any forward. Their gradients are
averaged over ranks once per step (``reduce_replicated_grads``), so every rank applies
the same update to the same values and takes the same freeze / harden decisions.

The models sharded are *training copies* (``training_copy``): module trees of their own
whose tensors start as views of the originals, so FSDP2 (which changes classes and
parameters in place) never touches the user's teacher or the hybrid the pipeline holds;
``copy_back`` writes the trained values into the original at the end.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from lincompress.attention import HybridAttention
from lincompress.distributed.context import DistributedContext


def _class_name(module: nn.Module) -> str:
    cls = getattr(type(module), "_lincompress_original_class", type(module))
    return cls.__name__


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's transformer blocks, ``(path, module)`` in model order (see the module docstring for the rule)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    if names:
        found: list[tuple[str, nn.Module]] = []
        for path, module in model.named_modules():
            if path and _class_name(module) in names and not any(path.startswith(f"{p}.") for p, _ in found):
                found.append((path, module))
        if found:
            return found
    best: tuple[int, str, nn.ModuleList] | None = None
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) >= 2 and len({_class_name(m) for m in module}) == 1:
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[0]:
                best = (size, path, module)
    if best is None:
        return []
    _, path, blocks = best
    return [(f"{path}.{i}" if path else str(i), block) for i, block in enumerate(blocks)]


def training_copy(model: nn.Module) -> nn.Module:
    """A new module tree for ``model`` whose parameters and buffers are new tensors viewing the same storage.

    Costs no tensor memory. FSDP2 moves, shards and replaces the copy's tensors; ``model``
    keeps its own objects, device and values.
    """
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b.detach()
    return copy.deepcopy(model, memo)


def replicated_parameters(model: nn.Module, scores: bool = True) -> list[nn.Parameter]:
    """Parameters every rank keeps whole, in model order: the selection scores and any 0-dim parameter.

    FSDP2 cannot shard a 0-dim tensor; the scores are also read and changed outside any forward.
    """
    score_ids = {id(m.score_logit) for m in model.modules() if isinstance(m, HybridAttention)} if scores else set()
    return [p for p in model.parameters() if p.dim() == 0 or id(p) in score_ids]


def shard(model: nn.Module, ctx: DistributedContext, *, replicated: Iterable[nn.Parameter] = (),
          mixed_precision: bool = False, trainable: bool = True) -> list[str]:
    """``fully_shard`` each transformer block of ``model`` and then its root; returns the block paths.

    mixed_precision: parameters all-gathered in bf16, gradients reduced in fp32 (on CUDA with
        autocast; on CPU the same policy keeps fp32). Inputs are not cast: autocast does that,
        as on one GPU.
    trainable: a frozen model (the teacher) reshards its root after forward too -- it has no
        backward, so nothing needs its parameters afterwards.
    ``replicated`` parameters stay outside FSDP; they are moved to the device here (copied:
    the original's storage is never trained in place).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if mixed_precision else None,
                                  reduce_dtype=torch.float32, cast_forward_inputs=False)
    wanted = {id(p) for p in replicated}
    own = [p for p in model.parameters() if id(p) in wanted]
    with torch.no_grad():
        for p in own:
            p.data = p.data.to(ctx.device, copy=True)
    blocks = transformer_blocks(model)
    for _, block in blocks:
        fully_shard(block, mesh=ctx.mesh, reshard_after_forward=True, mp_policy=policy, ignored_params=set(own) or None)
    fully_shard(model, mesh=ctx.mesh, reshard_after_forward=not trainable, mp_policy=policy,
                ignored_params=set(own) or None)
    return [path for path, _ in blocks]


def checkpoint_blocks(model: nn.Module) -> int:
    """Recompute each transformer block's activations in backward (``torch.utils.checkpoint``); returns how many.

    For models without gradient checkpointing of their own. The block keeps its class and
    parameter names (its ``forward`` is wrapped), so FSDP2, checkpoints and artifacts see the
    same model.
    """
    from torch.utils.checkpoint import checkpoint

    blocks = transformer_blocks(model)
    for _, block in blocks:
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed
    return len(blocks)


# --------------------------------------------------------------------------- tensors of a sharded model


def is_sharded(t: Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """This rank's shard of a sharded tensor (in place: writes reach the parameter); a plain tensor itself."""
    return t.to_local() if is_sharded(t) else t


def full(t: Tensor) -> Tensor:
    """The whole tensor on every rank (an all-gather for a sharded one), detached, on CPU."""
    value = t.full_tensor() if is_sharded(t) else t
    return value.detach().to("cpu", copy=True)


@torch.no_grad()
def copy_full_(dst: Tensor, src: Tensor) -> None:
    """Write the whole tensor ``src`` into ``dst``, sharded or not (each rank keeps its shard of it)."""
    if is_sharded(dst):
        from torch.distributed.tensor import distribute_tensor

        part = distribute_tensor(src.to(dst.device_mesh.device_type).to(dst.dtype), dst.device_mesh, dst.placements,
                                 src_data_rank=None)
        dst.to_local().copy_(part.to_local())
    else:
        dst.copy_(src)


@torch.no_grad()
def equal_locally(a: Tensor, b: Tensor) -> bool:
    """``torch.equal`` on this rank: of the shards for two tensors sharded alike, of the tensors otherwise."""
    if a.shape != b.shape or a.dtype != b.dtype or is_sharded(a) != is_sharded(b):
        return False
    if is_sharded(a):
        return a.placements == b.placements and torch.equal(local(a), local(b))
    return torch.equal(a, b)


@torch.no_grad()
def reduce_replicated_grads(ctx: DistributedContext, params: Iterable[nn.Parameter]) -> None:
    """Average the gradients of replicated parameters over ranks (one all-reduce); ``params`` in one order on all ranks.

    A parameter gets a gradient when any rank has one (the others count zero), so the
    optimizer sees exactly what one process running every rank's micro-batches would.
    """
    if not ctx.active:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float64, device=ctx.device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float64)
                      for p in params] + [present])
    torch.distributed.all_reduce(flat)
    sizes = [p.numel() for p in params]
    grads, seen = flat[: sum(sizes)].split(sizes), flat[sum(sizes):]
    for p, g, s in zip(params, grads, seen):
        p.grad = (g / ctx.world_size).to(p.dtype).reshape(p.shape) if s > 0 else None


def average_in_backward(ctx: DistributedContext, params: Iterable[nn.Parameter]) -> None:
    """Average these replicated parameters' gradients over ranks as soon as a backward accumulates them.

    For an objective's own network, whose optimizer steps inside its loss: averaging is
    linear, so a gradient accumulated over several backwards is averaged correctly too.
    """
    if not ctx.active:
        return

    def hook(p: Tensor) -> None:
        torch.distributed.all_reduce(p.grad)
        p.grad.div_(ctx.world_size)

    for p in params:
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(hook)


@torch.no_grad()
def clip_grad_norm_(ctx: DistributedContext, params: list[nn.Parameter], max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over sharded and replicated parameters: the global L2 norm, on every rank.

    Single process: exactly torch's. Sharded gradients contribute through their DTensor norm
    (summed over ranks), replicated ones once.
    """
    if not ctx.active:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if is_sharded(g)]
    plain = [g for g in grads if not is_sharded(g)]
    squares = torch.zeros((), dtype=torch.float64, device=ctx.device)
    if sharded:
        norm = torch.nn.utils.get_total_norm(sharded)
        norm = norm.full_tensor() if is_sharded(norm) else norm
        squares = squares + norm.to(ctx.device, torch.float64) ** 2
    if plain:
        squares = squares + torch.nn.utils.get_total_norm(plain).to(ctx.device, torch.float64) ** 2
    total = squares.sqrt().to(torch.float32)
    if math.isfinite(max_norm):
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            local(g).mul_(coef.to(local(g).device, local(g).dtype))
    return total


def copy_back(original: nn.Module, trained: nn.Module, names: Iterable[str]) -> None:
    """Write the trained values of ``names`` (and every site's mode) from the training copy into ``original``.

    Every rank gathers each tensor in turn (one parameter in memory at a time), so the
    original is the trained model on every rank, on its own device and dtype.
    """
    params = dict(trained.named_parameters())
    targets = dict(original.named_parameters())
    with torch.no_grad():
        for name in names:
            value = full(params[name])
            targets[name].copy_(value.to(targets[name].device, targets[name].dtype))
    modes = {n: m.mode for n, m in trained.named_modules() if isinstance(m, HybridAttention)}
    for n, m in original.named_modules():
        if isinstance(m, HybridAttention) and n in modes:
            m.set_mode(modes[n])
