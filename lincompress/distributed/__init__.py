"""Several processes (GPUs) for one run: PyTorch's process groups, FSDP2 and elastic launcher.

How to run on N GPUs::

    lincompress optimize model.py --out DIR --nproc N            # starts N processes itself
    torchrun --nproc-per-node N -m lincompress optimize model.py --out DIR
    # Python: in each of the N processes (torchrun script.py, or your own launcher)
    torch.distributed.init_process_group("cuda:nccl,cpu:gloo")   # or lincompress.distributed.init_from_env()
    lincompress.compress("model.py", out_dir="DIR", ...)         # every rank calls it; rank 0 writes

The library never starts processes: ``compress`` / ``recover`` / ``passes.Recover`` detect an
initialised process group (``torch.distributed.is_initialized()``) and train data-parallel
over it; the ``nproc`` option, when given, must equal its size. Backends: NCCL for CUDA
tensors (with gloo for CPU objects), gloo on CPU.

Modules: ``context`` (rank, world, device, the collectives decisions go through),
``sharding`` (FSDP2 per transformer block, training copies, replicated scores),
``launch`` (``--nproc``: the elastic launcher, failures reported as one line),
``passes`` (passes that write shared files run on rank 0 only). The trainer's use of
them is ``lincompress.recovery.data_parallel``.
"""

from lincompress.distributed.context import DistributedContext, initialized, is_main, rank, world_size

__all__ = ["DistributedContext", "init_from_env", "initialized", "is_main", "rank", "world_size"]


def init_from_env(device: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment; True when this call created it."""
    from lincompress.distributed.launch import init_from_env as _init

    return _init(device)
