"""Train the shapes teacher with flow matching (reproducible: seeded, time- or step-limited).

As shipped (H100, two stages; see teacher.py for why):

    python examples/shapes/train_teacher.py --plain --out STAGE1 --seconds 455 --batch 96
    python examples/shapes/train_teacher.py --init STAGE1/teacher.safetensors --out OUT \
        --seconds 250 --batch 96 --lr 2e-4 --warmup 100

Classifier-free guidance (the shipped teacher, a third stage fine-tuned from stage 2):

    python examples/shapes/train_teacher.py --init examples/shapes/teacher.safetensors --out OUT \
        --cond-dropout 0.1 --seconds 120 --batch 96 --lr 1e-4 --warmup 100 --guidance-sweep 1,1.5,2,3,4,6

``--cond-dropout p`` replaces each clip's condition by the empty prompt's fixed embedding
(``world.null_embedding()``) with probability p, so the model also learns the
unconditional velocity. ``--guidance-sweep`` then samples the EMA model with CFG at each
scale and records the best one above 1 (highest world score, then lowest speed error +
jitter) as ``guidance_scale`` in the weights' metadata: the scale ``model.py`` samples with.

CPU smoke run: ``--out /tmp/t --max-steps 3 --batch 4 --eval-samples 2 --sample-steps 2 --no-pictures``.

Each step renders a fresh batch of clips from random world conditions (no dataset),
draws t = shift(u), u ~ U(0, 1), forms x_t = (1 - t) x0 + t eps and regresses the
velocity eps - x0 (MSE), bf16 autocast on CUDA, AdamW + warm-up + cosine decay, EMA of
the weights. Writes into --out: ``teacher.safetensors`` (EMA weights, fp16, config in
the metadata; re-written every --checkpoint-seconds so a killed run still leaves one),
``train_log.jsonl`` (one JSON line per log interval, plus world-metric evaluations of
the EMA model's samples), ``samples.png`` (12 captioned clips, frames left to right)
and ``samples.gif`` (a 4 x 4 grid of animated clips).

Depends on torch, diffusers, safetensors, pillow; not on lincompress.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import teacher as T  # noqa: E402
import world as W  # noqa: E402


def showcase_conditions() -> list[W.Condition]:
    """12 fixed conditions covering every shape, colour, speed and 8 directions (the README sheet)."""
    return [W.Condition(shape=i % 3, colour=i % 6, direction=(3 * i) % 8, speed=(i // 3) % 2) for i in range(12)]


def sample_sheet(clips: torch.Tensor, captions: list[str], path: Path, scale: int = 2) -> None:
    """Rows = clips, columns = frames, caption on the left."""
    from PIL import Image, ImageDraw

    frames = (W.to_frames(clips) * 255).round().to(torch.uint8).cpu()  # (n, F, H, W, 3)
    n, nf, h, w, _ = frames.shape
    cell, pad, label = w * scale, 2, 190
    sheet = Image.new("RGB", (label + nf * (cell + pad), n * (cell + pad)), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        y = i * (cell + pad)
        draw.text((4, y + cell // 2 - 6), captions[i], fill=(230, 230, 230))
        for f in range(nf):
            img = Image.fromarray(frames[i, f].numpy()).resize((cell, cell), Image.NEAREST)
            sheet.paste(img, (label + f * (cell + pad), y))
    sheet.save(path)


def sample_gif(clips: torch.Tensor, path: Path, cols: int = 4, scale: int = 3) -> None:
    from PIL import Image

    frames = (W.to_frames(clips) * 255).round().to(torch.uint8).cpu()
    n, nf, h, w, _ = frames.shape
    rows = math.ceil(n / cols)
    cell, pad = w * scale, 2
    images = []
    for f in range(nf):
        canvas = Image.new("RGB", (cols * (cell + pad), rows * (cell + pad)), (40, 40, 40))
        for i in range(n):
            img = Image.fromarray(frames[i, f].numpy()).resize((cell, cell), Image.NEAREST)
            canvas.paste(img, ((i % cols) * (cell + pad), (i // cols) * (cell + pad)))
        images.append(canvas)
    images[0].save(path, save_all=True, append_images=images[1:], duration=150, loop=0)


def cfg_sample(model: torch.nn.Module, noise: torch.Tensor, conditions: list, steps: int, scale: float,
               device: torch.device) -> torch.Tensor:
    """Euler samples; classifier-free guided against the empty prompt when ``scale`` != 1."""
    null = W.encode_null(len(conditions)).to(device) if scale != 1.0 else None
    return T.euler_sample(model, noise, W.encode(conditions).to(device), steps, guidance_scale=scale, null_embeddings=null)


@torch.no_grad()
def evaluate(model: torch.nn.Module, n: int, steps: int, seed: int, device: torch.device,
             scale: float = 1.0) -> dict[str, float]:
    """World metrics of ``n`` samples (fixed seed) from ``model``, guided at ``scale``."""
    g = torch.Generator().manual_seed(seed)
    conditions = W.sample_conditions(n, g)
    noise = torch.randn(n, *W.LATENT_SHAPE, generator=g).to(device)
    clips = cfg_sample(model, noise, conditions, steps, scale, device)
    return W.summarize(W.score_clips(W.to_frames(clips), conditions))


def pick_guidance(sweep: list[dict]) -> float:
    """The best scale above 1: highest world score, then the lowest speed error + jitter (pixels)."""
    guided = [r for r in sweep if r["scale"] > 1.0] or sweep
    best = min(guided, key=lambda r: (-r["world_score"], r["speed_error"] + r["smoothness_px"]))
    return float(best["scale"])


def parse_scales(text: str) -> list[float]:
    try:
        scales = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise SystemExit(f"--guidance-sweep {text!r}: give comma-separated numbers, e.g. 1,1.5,2,3") from None
    if not scales or any(v <= 0 for v in scales):
        raise SystemExit(f"--guidance-sweep {text!r}: scales must be > 0")
    return scales


def save_weights(model: torch.nn.Module, path: Path, meta: dict) -> None:
    state = {k: v.detach().to(torch.float16).cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
    tmp.replace(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=400.0, help="training time budget (stops at whichever limit comes first)")
    p.add_argument("--max-steps", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-seconds", type=float, default=100.0, help="world-metric evaluation interval")
    p.add_argument("--checkpoint-seconds", type=float, default=120.0)
    p.add_argument("--eval-samples", type=int, default=64)
    p.add_argument("--sample-steps", type=int, default=30)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the transformer blocks (CUDA only)")
    p.add_argument("--plain", action="store_true", help="stage 1: the bare transformer, without coordinate channels")
    p.add_argument("--init", type=Path, default=None, help="start from these weights (a --plain run's are expanded)")
    p.add_argument("--cond-dropout", type=float, default=0.0,
                   help="probability of training a clip on the empty prompt instead of its condition (learns CFG's unconditional mode)")
    p.add_argument("--guidance-sweep", default=None,
                   help="after training, CFG scales to evaluate (e.g. 1,1.5,2,3,4,6); the best one above 1 is recorded")
    p.add_argument("--sweep-samples", type=int, default=128, help="samples per scale of --guidance-sweep")
    p.add_argument("--no-pictures", action="store_true", help="skip samples.png / samples.gif (quick smoke runs)")
    args = p.parse_args()
    if not 0.0 <= args.cond_dropout < 1.0:
        raise SystemExit(f"--cond-dropout must be in [0, 1), got {args.cond_dropout}")
    scales = parse_scales(args.guidance_sweep) if args.guidance_sweep else []

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "train_log.jsonl"
    log_path.write_text("")

    def log(record: dict) -> None:
        with open(log_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)

    t_setup = time.perf_counter()
    model = T.make_transformer(3) if args.plain else T.make_model()
    if args.init is not None:
        from safetensors.torch import load_file

        init_state = load_file(str(args.init))
        if args.plain or any(k.startswith("transformer.") for k in init_state):
            model.load_state_dict({k: v.float() for k, v in init_state.items()})
        else:
            T.init_from_plain(model, init_state)
    model = model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    data_gen = torch.Generator().manual_seed(args.seed + 1)  # scenes and conditions
    noise_gen = torch.Generator(device=device).manual_seed(args.seed + 2)  # eps and t
    meta = {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in T.CONFIG.items()} | ({"in_channels": 3} if args.plain else {}),
        "coordinate_channels": not args.plain,
        "shift": T.SHIFT, "seed": args.seed, "batch": args.batch, "lr": args.lr, "ema": args.ema,
        "params": n_params, "plain": args.plain, "init": str(args.init) if args.init else None, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cond_dropout": args.cond_dropout,
    }
    if args.init is not None and args.cond_dropout == 0.0:  # fine-tuning a CFG teacher keeps its unconditional mode
        from safetensors import safe_open

        with safe_open(str(args.init), framework="pt") as fh:
            init_meta = fh.metadata() or {}
        meta["cond_dropout"] = json.loads(init_meta.get("cond_dropout", "0") or "0")
    if scales and not meta["cond_dropout"]:
        raise SystemExit("--guidance-sweep needs a model with an unconditional mode: train with --cond-dropout")
    log({"event": "start", **meta, "seconds_budget": args.seconds})
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    null = W.null_embedding().to(device)

    def loss_fn(net: torch.nn.Module) -> torch.Tensor:
        x0, emb, _ = W.sample_batch(args.batch, data_gen, device)
        if args.cond_dropout > 0:  # condition dropout: the empty prompt in place of the condition
            drop = (torch.rand(args.batch, generator=data_gen) < args.cond_dropout).to(device)
            emb = torch.where(drop[:, None, None], null.expand_as(emb), emb)
        eps = torch.randn(x0.shape, generator=noise_gen, device=device)
        t = T.shift_t(torch.rand(args.batch, generator=noise_gen, device=device))
        tb = t.view(-1, 1, 1, 1, 1)
        xt = (1 - tb) * x0 + tb * eps
        with autocast:
            pred = net(hidden_states=xt, timestep=t * 1000, encoder_hidden_states=emb, return_dict=False)[0]
        return F.mse_loss(pred.float(), eps - x0)

    net = model
    if device.type == "cuda" and not args.no_compile:
        # Regional compilation of the repeated Wan blocks (fuses the memory-bound elementwise work);
        # any failure falls back to eager with the same (still untouched) weights.
        compiled = copy.deepcopy(model)
        try:
            getattr(compiled, "transformer", compiled).compile_repeated_blocks(fullgraph=False)
            loss_fn(compiled).backward()  # compile now; the gradients are discarded
            compiled.zero_grad(set_to_none=True)
            compiled.load_state_dict(model.state_dict())
            model = net = compiled
            opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
            log({"event": "compiled", "seconds": round(time.perf_counter() - t_setup, 1)})
        except Exception as exc:  # noqa: BLE001 - any compiler failure: train eagerly
            log({"event": "compile_failed", "error": f"{type(exc).__name__}: {exc}"[:500]})

    start = time.perf_counter()
    last_eval = last_ckpt = start
    step = 0
    t50 = 0.0
    # A cosine schedule needs a horizon: the step limit, or an estimate from the time budget at step 200.
    horizon = args.max_steps
    while step < args.max_steps:
        elapsed = time.perf_counter() - start
        if elapsed > args.seconds:
            break
        if step == 50:
            t50 = elapsed
        if step == 200 and args.max_steps == 1_000_000:  # steps/second measured after warm-up
            horizon = 200 + int((args.seconds - elapsed) / ((elapsed - t50) / 150))
            log({"event": "horizon", "steps": horizon})
        lr_scale = min(1.0, (step + 1) / args.warmup)
        if horizon < 1_000_000:
            lr_scale *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, horizon))))
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_scale

        loss = loss_fn(net)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        step += 1
        now = time.perf_counter()
        if step % args.log_every == 0 or step <= 3:
            log({"step": step, "loss": round(loss.item(), 5), "grad_norm": round(float(grad_norm), 4),
                 "lr": opt.param_groups[0]["lr"], "seconds": round(now - start, 1)})
        if now - last_ckpt > args.checkpoint_seconds:
            save_weights(ema, args.out / "teacher.safetensors", {**meta, "steps": step})
            last_ckpt = now
        if now - last_eval > args.eval_seconds:
            metrics = evaluate(ema, args.eval_samples, 20, seed=1234, device=device)
            log({"event": "eval", "step": step, "seconds": round(now - start, 1), "sample_steps": 20,
                 **{k: round(v, 4) for k, v in metrics.items()}})
            last_eval = time.perf_counter()

    train_seconds = time.perf_counter() - start
    final_meta = {**meta, "steps": step, "train_seconds": round(train_seconds, 1)}
    save_weights(ema, args.out / "teacher.safetensors", final_meta)
    metrics = evaluate(ema, args.eval_samples, args.sample_steps, seed=1234, device=device)
    log({"event": "final", "step": step, "train_seconds": round(train_seconds, 1), "sample_steps": args.sample_steps,
         "eval_samples": args.eval_samples, "guidance_scale": 1.0, **{k: round(v, 4) for k, v in metrics.items()}})
    scale = 1.0
    if scales:
        sweep = []
        for value in scales:
            m = evaluate(ema, args.sweep_samples, args.sample_steps, seed=4321, device=device, scale=value)
            sweep.append({"scale": value, **{k: round(v, 4) for k, v in m.items()}})
            log({"event": "guidance_sweep", "sample_steps": args.sample_steps, "samples": args.sweep_samples, **sweep[-1]})
        scale = pick_guidance(sweep)
        final_meta["guidance_scale"] = scale
        final_meta["guidance_sweep"] = [{k: r[k] for k in ("scale", "world_score", "speed_error", "smoothness_px", "haze")}
                                        for r in sweep]
        save_weights(ema, args.out / "teacher.safetensors", final_meta)
        log({"event": "guidance_chosen", "guidance_scale": scale})
    if args.no_pictures:
        log({"event": "done", "seconds": round(time.perf_counter() - start, 1)})
        return
    conditions = showcase_conditions()
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(len(conditions), *W.LATENT_SHAPE, generator=g).to(device)
    clips = cfg_sample(ema, noise, conditions, args.sample_steps, scale, device)
    sample_sheet(clips, [c.describe() for c in conditions], args.out / "samples.png")
    g = torch.Generator().manual_seed(8)
    conditions = W.sample_conditions(16, g)
    noise = torch.randn(16, *W.LATENT_SHAPE, generator=g).to(device)
    sample_gif(cfg_sample(ema, noise, conditions, args.sample_steps, scale, device), args.out / "samples.gif")
    log({"event": "done", "seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
