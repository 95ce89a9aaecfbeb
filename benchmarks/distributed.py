"""Multi-GPU recovery (FSDP2): Wan-14B-shaped memory and s/step on N GPUs; Wan-1.3B-shaped scaling, 1 vs N GPUs.

    python benchmarks/distributed.py --nproc 2                                   # both parts, 2 GPUs
    python benchmarks/distributed.py --part wan14b --nproc 4 --frames 21 13 5    # 720p latent, largest that fits
    python benchmarks/distributed.py --part scaling --nproc 2
    python benchmarks/distributed.py --smoke                                     # CPU, gloo, 2 processes, tiny Wan

Part ``wan14b``: diffusers ``WanTransformer3DModel`` at the Wan2.1-14B shape (40 layers, 40 x 128
heads, 14.3B parameters), random bf16 weights, 720p latent ``(16, F, 90, 160)``; teacher and
student sharded with FSDP2 over ``--nproc`` GPUs, ADM (4 sampler steps, gradient through the
last), gradient checkpointing, selective transfer (all sites hybrid), batch 1 per GPU. The
first of ``--frames`` that fits is timed (each try is its own torchrun job, so an OOM cannot
hang the next); reported: per-GPU peak memory, s/step, samples/s.

Part ``scaling``: the Wan2.1-1.3B shape (fp32 weights, bf16 autocast; FSDP2 bf16 parameters
/ fp32 reduction) at 480p ``(16, F, 60, 104)``, ADM as ``benchmarks/recovery.py`` times it. The
global batch is the same in both runs: 1 GPU with ``grad_accum = N`` against N GPUs with
``grad_accum = 1`` -- the equivalence ``lincompress.recovery.data_parallel`` guarantees, so
both draw the same ADM stop indices and do the same work per step. Reported: s/step of each,
throughput ratio and scaling efficiency (ratio / N).

Every configuration runs as ``python -m torch.distributed.run --standalone --nproc-per-node P
benchmarks/distributed.py --worker ...``; ``NCCL_NVLS_ENABLE=0`` is forced in the workers (no
NVLink multicast). Writes ``benchmarks/results/distributed.json`` (``--out``) and prints a table;
a run of one ``--part`` keeps the other part's earlier result in that file (each part records its
own GPUs, device and versions), so the two parts can be measured by separate commands.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lincompress import atomic  # noqa: E402

WAN13 = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
             text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
             qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN14B = dict(WAN13, num_attention_heads=40, ffn_dim=13824, num_layers=40)
TINY = dict(WAN13, num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=3,
            rope_max_seq_len=64)
SPATIAL = {"wan14b": (90, 160), "scaling": (60, 104), "smoke": (4, 6)}  # 720p, 480p latents; toy
TEXT_TOKENS = {"wan14b": 512, "scaling": 512, "smoke": 8}


# ----------------------------------------------------------------------------- worker (one torchrun job)
def _model(config: dict, dtype, device):
    """A random-weight Wan transformer: built on the meta device, then filled in place (fast, no fp32 copy)."""
    import torch
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    with torch.device("meta"):
        model = WanTransformer3DModel(**config).to(dtype)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or name.endswith("scale_shift_table")):
                p.fill_(1.0 if "norm" in name else 0.0)
            elif p.dim() == 1:
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
    rope = WanRotaryPosEmbed(config["attention_head_dim"], config["patch_size"], config["rope_max_seq_len"])
    for name, buffer in rope.named_buffers():  # the real rotary tables, in their own dtype
        model.rope.register_buffer(name, buffer.to(device), persistent=False)
    return model.eval()


def _target(part: str, frames: int, device):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from lincompress import Target

    config = {"wan14b": WAN14B, "scaling": WAN13, "smoke": TINY}[part]
    dtype = torch.bfloat16 if part == "wan14b" else torch.float32
    model = _model(config, dtype, device)
    latent = (16, frames, *SPATIAL[part])
    text_dim, tokens = config["text_dim"], TEXT_TOKENS[part]

    def conditions(batch: int, generator: torch.Generator) -> dict:
        return {"encoder_hidden_states": torch.randn(batch, tokens, text_dim, generator=generator).to(dtype)}

    def example_inputs(batch: int) -> dict:  # a small latent: discovery only needs the structure
        g = torch.Generator().manual_seed(1)
        return {"hidden_states": torch.randn(batch, 16, 1, 4, 4, generator=g).to(dtype),
                "timestep": torch.full((batch,), 500.0),
                "encoder_hidden_states": torch.randn(batch, 8, text_dim, generator=g).to(dtype), "return_dict": False}

    return Target(model=model, example_inputs=example_inputs, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0),
                  conditions=conditions, latent_shape=latent, name=f"wan-{part}")


def worker(args) -> None:
    import dataclasses

    import torch

    from lincompress import Pipeline, passes
    from lincompress.distributed import init_from_env
    from lincompress.distributed.context import local_rank
    from lincompress.recovery.selective import SelectiveConfig
    from lincompress.recovery.trainer import RecoveryConfig, Trainer

    cuda = args.device == "cuda"
    init_from_env(args.device)
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    # building / discovery run on the CPU; CPU training (--smoke) takes one thread per process in every run, so
    # the 1- and N-process timings compare the same work rather than thread oversubscription of tiny ops
    torch.set_num_threads(1 if not cuda else max(1, (os.cpu_count() or 2) // world))
    t0 = time.perf_counter()
    target = _target(args.worker, args.frame, "cpu")
    row: dict = {"nproc": world, "grad_accum": args.grad_accum, "latent": list(target.latent_shape),
                 "video_tokens": args.frame * SPATIAL[args.worker][0] * SPATIAL[args.worker][1] // 4,
                 "params": sum(p.numel() for p in target.model.parameters()),
                 "dtype": str(next(target.model.parameters()).dtype).removeprefix("torch.")}
    small = dataclasses.replace(target, latent_shape=(16, 1, 4, 4))
    state = Pipeline([passes.FindAttention(), passes.Hybridize(feature_map=args.feature_map)]).run(small)
    row["sites"] = len(state.candidates)
    row["setup_s"] = round(time.perf_counter() - t0, 1)
    grad_steps = 1 if args.worker == "wan14b" else None  # 14B: gradient through the last sampler step only
    config = RecoveryConfig(objective="adm", objective_options={"sampler_steps": 4, "grad_steps": grad_steps},
                            steps=1000, batch_size=1, grad_accum=args.grad_accum, lr=1e-5,
                            gradient_checkpointing=True, samples=0, device=args.device, seed=0)
    work = Path(tempfile.mkdtemp(prefix="lincompress-dist-bench-")) if rank == 0 else None
    if dist.is_initialized():
        box = [str(work) if work else None]
        dist.broadcast_object_list(box, src=0)
        work = Path(box[0])
    trainer = Trainer(target, state.model, config, work, selective=SelectiveConfig(target_linear=0.7), progress=False)
    ctx = trainer._context(None)
    device = trainer.device
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)
        if dist.is_initialized():
            dist.barrier()

    times = []
    for step in range(args.warmup + args.timed_steps):
        sync()
        start = time.perf_counter()
        trainer._train_step(ctx, step)
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    peaks = [peak] * world
    if dist.is_initialized():
        dist.all_gather_object(peaks, peak)
    row.update({"ok": True, "s_per_step": sum(times) / len(times), "steps_s": times,
                "samples_per_s": world * args.grad_accum / (sum(times) / len(times)),
                "peak_memory_gib_per_gpu": peaks, "peak_memory_gib": max(peaks) if cuda else None,
                "device": torch.cuda.get_device_name(device) if cuda else "cpu", "local_rank": local_rank()})
    if dist.is_initialized():
        dist.barrier()  # every rank is done with the work dir
        dist.destroy_process_group()
    if rank == 0:
        shutil.rmtree(work, ignore_errors=True)  # metrics of a timing run: nothing to keep
        Path(args.row_file).write_text(json.dumps(row, indent=1))


# ----------------------------------------------------------------------------- driver
def _job(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run one torchrun job in its own process group; past ``timeout`` the whole group (workers too) is stopped."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for signum, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        stdout, stderr = proc.communicate()
        stderr += f"\ntimed out after {timeout:g} s (--job-timeout)"
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def job_error(stderr: str) -> str:
    """What a failed job died of: out of memory, a timeout, else the last ``...Error: message`` line of its output.

    torchrun ends a failure with its own summary (rules of ``=``, ``ChildFailedError``), which names no cause.
    """
    if "OutOfMemoryError" in stderr or "CUDA out of memory" in stderr:
        return "out of memory"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if lines and lines[-1].startswith("timed out after"):
        return lines[-1]
    causes = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*:", line)
              and "ChildFailedError" not in line]
    return (causes or [line for line in lines if set(line) - set("=-")] or ["?"])[-1][:300]


def _run(part: str, nproc: int, frame: int, grad_accum: int, args) -> dict:
    """One configuration as its own torchrun job; a failed job (an OOM) is a row with ``ok: False``."""
    row_file = Path(tempfile.mkstemp(prefix="row-", suffix=".json")[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", __file__,
           "--worker", part, "--frame", str(frame), "--grad-accum", str(grad_accum), "--row-file", str(row_file),
           "--device", args.device, "--timed-steps", str(args.timed_steps), "--warmup", str(args.warmup),
           "--feature-map", args.feature_map]
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    print(f"[{part}] {nproc} process(es), {frame} latent frame(s), grad_accum {grad_accum}", flush=True)
    start = time.perf_counter()
    done = _job(cmd, env, args.job_timeout)
    row = json.loads(row_file.read_text()) if done.returncode == 0 and row_file.stat().st_size else {
        "nproc": nproc, "grad_accum": grad_accum, "ok": False, "returncode": done.returncode,
        "error": job_error(done.stderr), "stderr_tail": done.stderr[-3000:]}
    row_file.unlink(missing_ok=True)
    row["frames"], row["job_s"] = frame, round(time.perf_counter() - start, 1)
    peak = f", peak {row['peak_memory_gib']:.1f} GiB/GPU" if row.get("peak_memory_gib") is not None else ""
    ok = f"{row['s_per_step']:.3f} s/step{peak}" if row["ok"] else row["error"]
    print(f"[{part}]   -> {ok}", flush=True)
    if not row["ok"] and args.verbose:
        print(done.stderr[-4000:], file=sys.stderr)
    return row


def part_wan14b(args) -> dict:
    out: dict = {"attempts": [], "shape": "Wan2.1-14B", "latent_hw": list(SPATIAL["wan14b"]), "nproc": args.nproc}
    for frame in args.frames:
        row = _run("wan14b", args.nproc, frame, 1, args)
        out["attempts"].append(row)
        if row["ok"]:
            out["result"] = row
            break
    return out


def part_scaling(args, part: str = "scaling") -> dict:
    frame = args.scaling_frames
    one = _run(part, 1, frame, args.nproc, args)  # the same global batch: N micro-batches on one GPU ...
    many = _run(part, args.nproc, frame, 1, args)  # ... and one on each of N GPUs
    out = {"shape": "Wan2.1-1.3B" if part == "scaling" else "tiny Wan", "frames": frame, "global_batch": args.nproc,
           "nproc": args.nproc, "1": one, str(args.nproc): many}
    if one["ok"] and many["ok"]:
        out["throughput_ratio"] = one["s_per_step"] / many["s_per_step"]
        out["scaling_efficiency"] = out["throughput_ratio"] / args.nproc
    return out


def table(results: dict) -> str:
    lines = ["| part | GPUs | latent | tokens | s/step | samples/s | peak GiB/GPU |", "|---|---|---|---|---|---|---|"]
    rows = []
    if "wan14b" in results and "result" in results["wan14b"]:
        rows.append(("Wan-14B", results["wan14b"]["result"]))
    for key in ("scaling", "smoke"):
        if key in results:
            rows += [(results[key]["shape"], results[key][n]) for n in ("1", str(results[key]["nproc"]))]
    for name, r in rows:
        if r.get("ok"):
            peak = r.get("peak_memory_gib_per_gpu") or []
            lines.append(f"| {name} | {r['nproc']} | {r['latent']} | {r['video_tokens']} | {r['s_per_step']:.3f} | "
                         f"{r['samples_per_s']:.3f} | {', '.join(f'{p:.1f}' for p in peak if p is not None) or '-'} |")
    for key in ("scaling", "smoke"):
        if key in results and "throughput_ratio" in results[key]:
            lines.append(f"\n{results[key]['shape']}: {results[key]['nproc']} GPUs give {results[key]['throughput_ratio']:.2f}x "
                         f"the throughput of 1 (efficiency {results[key]['scaling_efficiency']:.0%})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nproc", type=int, default=2, help="GPUs (processes) of the multi-GPU runs")
    parser.add_argument("--part", choices=("all", "wan14b", "scaling"), default="all")
    parser.add_argument("--frames", type=int, nargs="+", default=[21, 13, 5, 1],
                        help="Wan-14B: latent frames at 720p to try, largest first (21 = 81 video frames)")
    parser.add_argument("--scaling-frames", type=int, default=21, help="Wan-1.3B scaling: latent frames at 480p")
    parser.add_argument("--timed-steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--feature-map", default="hedgehog")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu (gloo)")
    parser.add_argument("--smoke", action="store_true", help="CPU, gloo, tiny Wan, 1 vs 2 processes: checks the script")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    parser.add_argument("--job-timeout", type=float, default=3600,
                        help="seconds one configuration (a torchrun job: setup + steps) may take; then it is stopped")
    parser.add_argument("--verbose", action="store_true", help="print a failed job's stderr")
    parser.add_argument("--worker", choices=("wan14b", "scaling", "smoke"), help=argparse.SUPPRESS)
    parser.add_argument("--frame", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--grad-accum", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--row-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        args.nproc, args.scaling_frames, args.timed_steps, args.feature_map = 2, 1, 1, "relu"
    if args.device == "cuda" and torch.cuda.device_count() < args.nproc:
        raise SystemExit(f"--nproc {args.nproc} needs {args.nproc} GPUs; this machine has {torch.cuda.device_count()}")
    import lincompress

    facts = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
             "lincompress": lincompress.__version__, "feature_map": args.feature_map}
    measured: dict = {}
    if args.smoke:
        measured["smoke"] = part_scaling(args, "smoke")
    else:
        if args.part in ("all", "scaling"):
            measured["scaling"] = part_scaling(args)
        if args.part in ("all", "wan14b"):
            measured["wan14b"] = part_wan14b(args)
    path = args.out / ("distributed_smoke.json" if args.smoke else "distributed.json")
    results = merge_results(path, {part: {**facts, **value} for part, value in measured.items()})
    args.out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, results)
    print(table(results))
    return results


def merge_results(path: Path, measured: dict) -> dict:
    """This run's parts over the parts an earlier run wrote to ``path`` (kept when this run did not measure them)."""
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    parts = {k: v for k, v in earlier.items() if k in ("wan14b", "scaling", "smoke") and isinstance(v, dict)}
    return {**parts, **measured}


if __name__ == "__main__":
    main()
