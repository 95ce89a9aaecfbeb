"""What a recovery checkpoint costs at Wan-1.3B scale: save, verify + load, size on disk.

    python benchmarks/checkpoint.py --json benchmarks/results/checkpoint.json      # 1.42 B params, GPU if present
    python benchmarks/checkpoint.py --tiny --json /tmp/checkpoint.json             # 2 M params, CPU: checks the script

The state is what the trainer saves with ``train=all``: fp32 trained parameters, their
AdamW moments (two more copies), the RNG streams, on the device training runs on. Each
save goes through ``lincompress.recovery.checkpoint.save_checkpoint`` (torch.distributed.
checkpoint files into a partial directory, SHA-256 of every file, rename, pointer); the
time of hashing alone is measured separately on the written files, so the table shows
what the integrity check adds. A second save replaces the first (both exist until it
is complete: twice the size on disk at the peak). The load verifies every checksum,
reads into a fresh model + optimizer and is checked bit-exact against the saved one.
Sizes are the directory's bytes; throughput is bytes / seconds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lincompress import atomic  # noqa: E402
from lincompress.recovery.checkpoint import (  # noqa: E402
    OptimizerState, ParameterState, RNGState, load_checkpoint, save_checkpoint,
)

WAN13_PARAMS = 1_420_000_000  # Wan2.1-1.3B's transformer, as trained with train=all


def _model(params: int, width: int, device: torch.device) -> nn.Module:
    """Square linear layers (no bias) holding ``params`` parameters: the tensor count of a real DiT, not its math."""
    layers = max(1, round(params / width**2))
    torch.manual_seed(0)
    return nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(layers)).to(device)


def _trained(params: int, width: int, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = _model(params, width, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()  # AdamW state exists: exp_avg, exp_avg_sq, step
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def _states(model: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> dict[str, Any]:
    return {"model": ParameterState(dict(model.named_parameters())), "optimizer": OptimizerState(model, optimizer),
            "rng": RNGState(generator)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    params, width = (2_000_000, 256) if args.tiny else (args.params, args.width)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="lincompress-ckpt-bench-"))
    directory = root / "checkpoints"
    shutil.rmtree(directory, ignore_errors=True)
    model, optimizer = _trained(params, width, device)
    generator = torch.Generator().manual_seed(0)
    n_params = sum(p.numel() for p in model.parameters())
    rows = []
    try:
        for step in (1, 2):
            _sync(device)
            start = time.perf_counter()
            path = save_checkpoint(directory, step, _states(model, optimizer, generator), {"elapsed": 0.0})
            save_s = time.perf_counter() - start
            start = time.perf_counter()
            for file in sorted(path.iterdir()):
                atomic.sha256_file(file)
            hash_s = time.perf_counter() - start
            size = _bytes(path)
            rows.append({"what": f"save step {step}" + (" (replaces step 1)" if step == 2 else ""), "seconds": save_s,
                         "hash_seconds": hash_s, "bytes": size, "gb_per_s": size / save_s / 1e9})
            print(f"{rows[-1]['what']}: {save_s:.2f} s for {size / 1e9:.2f} GB ({rows[-1]['gb_per_s']:.2f} GB/s); "
                  f"SHA-256 of the files alone: {hash_s:.2f} s")
        fresh = _model(params, width, device)
        fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-5)
        _sync(device)
        start = time.perf_counter()
        info = load_checkpoint(directory, _states(fresh, fresh_opt, torch.Generator()))
        _sync(device)
        load_s = time.perf_counter() - start
        exact = all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters())) and all(
            torch.equal(optimizer.state[a]["exp_avg_sq"], fresh_opt.state[b]["exp_avg_sq"])
            for a, b in zip(model.parameters(), fresh.parameters()))
        size = _bytes(info.path)
        rows.append({"what": "verify + load", "seconds": load_s, "bytes": size, "gb_per_s": size / load_s / 1e9,
                     "bit_exact": exact})
        print(f"verify + load: {load_s:.2f} s ({rows[-1]['gb_per_s']:.2f} GB/s), bit-exact: {exact}")
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {"benchmark": "checkpoint", "device": name, "torch": torch.__version__, "params": n_params,
               "parameter_tensors": len(list(model.parameters())), "dtype": "float32", "rows": rows,
               "directory": str(root)}
    if args.json:
        atomic.write_json(args.json, results)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=WAN13_PARAMS, help="Trained parameters (default: Wan2.1-1.3B).")
    parser.add_argument("--width", type=int, default=4096, help="Width of the square layers holding them.")
    parser.add_argument("--device", default=None, help="cuda or cpu [default: cuda when available].")
    parser.add_argument("--dir", default=None, help="Where to write the checkpoints [default: a temporary directory].")
    parser.add_argument("--tiny", action="store_true", help="2 M parameters: checks the script on a CPU in seconds.")
    parser.add_argument("--json", default=None, help="Write the results here.")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
