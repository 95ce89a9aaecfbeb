"""Full text-to-video generation latency at Wan scale: the softmax teacher at 50 CFG steps vs 4-step linear students.

``python benchmarks/e2e.py --generation`` (this module's ``main``). One generation is what a
user's ``WanPipeline(...)(prompt)`` call costs, all of it measured in the same run on one GPU:

* text encoding: a UMT5 encoder at umt5-xxl's real config (Wan's text encoder: 24 layers,
  d_model 4096, 5.7 B parameters) with random weights, on 512 tokens (the pipeline pads to
  ``max_sequence_length``); the tokenizer is a word-level one built in memory (no hub; its
  cost is negligible and the encoder sees the same 512 tokens);
* the denoising loop: diffusers' own ``WanPipeline`` loop around ``WanTransformer3DModel`` at
  the config's real shape (random weights, bf16, regional ``torch.compile`` of the blocks:
  each block compiled once, shared by all variants);
* the VAE decode: diffusers ``AutoencoderKLWan`` at Wan 2.1's real config (random weights,
  bf16), eager -- and compiled as the user's best case by ``vae_compile.compile_vae_decode``: the
  decoder's per-frame call at steady state (latent frames 2 onwards) through one static graph, frames 0
  and 1 eager. ``vae.decoder.compile()`` instead compiles a graph for every state of the decoder's
  feature cache (frame 0, frame 1, frames >= 2 made dynamic, plus a stride variant with inductor: four
  graphs at Wan's block structure on CPU); see ``benchmarks/vae_compile.py``;
* the rest of the pipeline call (latent preparation, scheduler steps, CFG combination,
  postprocessing to ``--output-type``, default ``pt``: the video stays a GPU tensor).

Variants: ``teacher``: softmax attention, 50 UniPC steps, CFG at Wan's scale 5 (2 transformer
forwards per step, text encoded twice: prompt and negative prompt); ``student 0.5`` /
``student 0.7``: that fraction of self-attention linear (evenly spread, ``--feature-map``
relu), guidance-distilled (one forward per step), sampling in 4 steps on its own grid through
``lincompress.sampler.run_sampler`` (the recorded-grid Euler scheduler a distilled artifact
ships with). ``--full-step-students 0.7``: guidance-distilled students that keep the teacher's
sampler (its 50 UniPC steps through the pipeline, ``guidance_scale=1``: one forward per step) --
what a ``--student-guidance distilled`` artifact without a distillation stage runs. Weights are
random: latency does not depend on them.

What is measured vs multiplied, per row:

* ``measured``: one full pipeline call, wall time (CUDA-synchronised), split by synchronising
  hooks into text encoder, transformer (sum over its forwards), VAE decode and the rest;
* ``composed``: text-encoder call x calls + ``forward_ms`` (median of timed single forwards at
  the real latent) x forwards + VAE decode (timed alone) + the rest (the same resolution's
  measured student run). The teacher's 50-step loop at 14B/720p (100 forwards of ~10 s) does
  not fit a 9-minute job, so there it is composed; at 1.3B both are reported, which validates
  the composition (``composition_error``).

The compiled-VAE rows come last in each shape (after the eager rows, so a slow VAE compile never
costs the headline numbers): the compiled decode is timed alone and one full generation of the
first student is measured with it; the other compiled-VAE rows are composed. The JSON's
``vae_compile`` records the method and dynamo's counters for the warm-up decode (the compile: one
graph), the timed decodes and that generation (no compile, no eager fallback); anything else is
printed as a WARNING and listed under ``vae_compile.warnings``. The VAE is eager again afterwards.
Every variant's block graph is compiled by its first timed forward; the teacher also gets a 2-step
warm-up generation (the pipeline's UniPC scheduler hands the transformer integer timesteps).
Speed-ups use measured totals where a row has one, else composed ones (the JSON says which).
Expected runtime on one H200 (both shapes, defaults): about 8 minutes, of which ~1 minute is the
measured 50-step teacher at 1.3B; ``--deadline-s 500`` keeps it inside a 10-minute job.
Bar: the 0.5-linear 4-step distilled student at >= 16x at the 1.3B shape. ``--deadline-s``
stops starting measurements that would not finish; the JSON is rewritten after each one.
``--tiny`` runs toy sizes on the CPU (checks the script, measures nothing real).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import e2e  # noqa: E402  (Wan configs, builder, discovery, SDPA backend choice, regional compile)
import vae_compile  # noqa: E402  (the compiled VAE decode and dynamo's counters)
from lincompress import atomic  # noqa: E402
from lincompress import benchmarking as bm  # noqa: E402

UMT5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32,
                relative_attention_max_distance=128, feed_forward_proj="gated-gelu", vocab_size=256384)
UMT5_TINY = dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, relative_attention_num_buckets=8,
                 feed_forward_proj="gated-gelu", vocab_size=64)
VAE_TINY = dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
                latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
TEXT_TOKENS = 512
CFG_SCALE = 5.0  # WanPipeline's default
TEACHER_STEPS = 50
STUDENT_STEPS = 4
PROMPT = "a red fox running through fresh snow in a pine forest at sunrise"


@dataclass(frozen=True)
class Shape:
    config: str  # e2e.CONFIGS key
    height: int
    width: int
    frames: int
    flow_shift: float  # Wan's UniPC flow shift at this resolution (3 at 480p, 5 at 720p)


SHAPES = {
    "wan-1.3b": Shape("wan-1.3b", 480, 832, 81, 3.0),
    "wan-14b-720p": Shape("wan-14b-720p", 720, 1280, 81, 5.0),
}
TINY_SHAPES = {"tiny": Shape("tiny", 64, 64, 9, 3.0)}


# --------------------------------------------------------------------------- building


def word_tokenizer(vocab_size: int):
    """A T5-style tokenizer (``$A </s>``, pad 0, eos 1) over the prompt's words, built in memory."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(PROMPT.split()))
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *words])}
    assert len(vocab) <= vocab_size
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


@contextmanager
def _building(device: torch.device, dtype: torch.dtype):
    """Modules created directly on ``device`` in ``dtype`` (no float32 CPU copy of 5.7 B parameters first)."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_text_encoder(config: dict[str, Any], device: torch.device, dtype: torch.dtype):
    from transformers import UMT5Config, UMT5EncoderModel

    with _building(device, dtype):
        model = UMT5EncoderModel(UMT5Config(**config, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                                            tie_word_embeddings=False))
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def build_vae(config: dict[str, Any], device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan

    with _building(device, dtype):
        vae = AutoencoderKLWan(**config)
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def make_pipeline(transformer, text_encoder, tokenizer, vae, flow_shift: float):
    from diffusers import UniPCMultistepScheduler, WanPipeline

    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=flow_shift)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=scheduler)


def student_sampler(shift: float):
    """What a Distill(student_steps=4, student_guidance="distilled") artifact records for this shape."""
    from lincompress.guidance import GuidanceConfig
    from lincompress.recovery.sampling import few_step_grid
    from lincompress.sampler import SamplerConfig

    sigmas = tuple(round(float(s), 6) for s in few_step_grid(shift, STUDENT_STEPS))
    return SamplerConfig(STUDENT_STEPS, sigmas, GuidanceConfig(scale=CFG_SCALE, negative_prompt="", student="distilled"))


# --------------------------------------------------------------------------- timing


class Clock:
    """Synchronising hooks: seconds spent in the text encoder, the transformer and the VAE decode during one call."""

    def __init__(self, pipe, device: torch.device) -> None:
        self.device = device
        self.totals = {"text_s": 0.0, "denoise_s": 0.0, "vae_s": 0.0}
        self.calls = {"text_s": 0, "denoise_s": 0, "vae_s": 0}
        self._start: dict[str, float] = {}
        self._handles = []
        for key, module in (("text_s", pipe.text_encoder), ("denoise_s", pipe.transformer)):
            self._handles.append(module.register_forward_pre_hook(lambda *a, k=key: self._begin(k)))
            self._handles.append(module.register_forward_hook(lambda *a, k=key: self._end(k)))
        self._vae = pipe.vae
        decode = pipe.vae.decode

        def timed_decode(*args, **kwargs):
            self._begin("vae_s")
            try:
                return decode(*args, **kwargs)
            finally:
                self._end("vae_s")

        pipe.vae.decode = timed_decode  # our own VAE instance; removed in close()

    def _begin(self, key: str) -> None:
        bm.synchronize(self.device)
        self._start[key] = time.perf_counter()

    def _end(self, key: str) -> None:
        bm.synchronize(self.device)
        self.totals[key] += time.perf_counter() - self._start.pop(key)
        self.calls[key] += 1

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        del self._vae.decode


def generate(pipe, variant: dict[str, Any], shape: Shape, steps: int | None, device: torch.device, output_type: str):
    """One pipeline call: the pipeline's own scheduler (the teacher with CFG, a full-step distilled student at
    guidance scale 1: no negative prompt, one forward per step), or a few-step student through run_sampler."""
    from lincompress.sampler import run_sampler

    kwargs = dict(height=shape.height, width=shape.width, num_frames=shape.frames, output_type=output_type,
                  max_sequence_length=TEXT_TOKENS, generator=torch.Generator(device=device).manual_seed(0))
    if variant["sampler"] is None and variant["cfg"]:
        return pipe(prompt=PROMPT, negative_prompt="", num_inference_steps=steps, guidance_scale=CFG_SCALE, **kwargs)
    if variant["sampler"] is None:
        return pipe(prompt=PROMPT, num_inference_steps=steps, guidance_scale=1.0, **kwargs)
    return run_sampler(pipe, PROMPT, variant["sampler"], **kwargs)


def measured_generation(pipe, variant, shape, device, output_type) -> dict[str, Any]:
    clock = Clock(pipe, device)
    try:
        bm.synchronize(device)
        start = time.perf_counter()
        out = generate(pipe, variant, shape, variant["steps"], device, output_type)
        bm.synchronize(device)
        total = time.perf_counter() - start
    finally:
        clock.close()
    frames = out.frames
    finite = bool(torch.isfinite(torch.as_tensor(frames[0] if isinstance(frames, list) else frames).float()).all())
    row = {k: round(v, 4) for k, v in clock.totals.items()}
    row.update(total_s=round(total, 4), other_s=round(total - sum(clock.totals.values()), 4),
               text_calls=clock.calls["text_s"], forwards=clock.calls["denoise_s"], output_finite=finite)
    return row


def median_time(fn, device: torch.device, reps: int) -> float:
    times = []
    for _ in range(reps):
        bm.synchronize(device)
        start = time.perf_counter()
        fn()
        bm.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------- one shape


@dataclass
class Run:
    args: argparse.Namespace
    start: float = field(default_factory=time.perf_counter)
    results: dict[str, Any] = field(default_factory=dict)

    def left(self) -> float:
        return self.args.deadline_s - (time.perf_counter() - self.start)

    def save(self) -> None:
        if self.args.json:
            atomic.write_json(self.args.json, self.results)


def run_shape(run: Run, shape: Shape, text_encoder, tokenizer, device: torch.device, dtype: torch.dtype,
              tiny: bool) -> None:
    a = run.args
    config = (e2e.TINY_CONFIGS if tiny else e2e.CONFIGS)[shape.config]
    result: dict[str, Any] = {"config": shape.config, "note": config.note, "pixels": [shape.height, shape.width, shape.frames],
                              "latent": list(config.latent), "video_tokens": config.tokens, "rows": []}
    run.results["configs"].append(result)
    print(f"\n== {shape.config}: {config.note}, {shape.height}x{shape.width}x{shape.frames}", flush=True)
    t0 = time.perf_counter()
    transformer = e2e.build_wan(config, device, dtype)
    sites, candidates = e2e.find_sites(transformer, config, device, dtype)
    vae = build_vae(VAE_TINY if tiny else {}, device, dtype)
    pipe = make_pipeline(transformer, text_encoder, tokenizer, vae, shape.flow_shift)
    result["build_s"] = round(time.perf_counter() - t0, 2)
    backend = None
    if device.type == "cuda":
        backend, result["sdpa_backend_ms"] = e2e.pick_sdpa_backend(config, device, dtype)
    result["sdpa_backend"] = backend.name if backend is not None else "default"
    from lincompress.selection import heuristic_selection

    variants = [{"name": f"teacher (softmax, {a.teacher_steps} steps, CFG)", "selection": None, "sampler": None,
                 "steps": a.teacher_steps, "cfg": True}]
    for t in a.targets:
        variants.append({"name": f"student {t:g} linear ({STUDENT_STEPS} steps, distilled guidance)", "target_linear": t,
                         "selection": heuristic_selection(candidates, t, "uniform"),
                         "sampler": student_sampler(shape.flow_shift), "steps": STUDENT_STEPS, "cfg": False})
    for t in a.full_step_students:
        variants.append({"name": f"student {t:g} linear ({a.teacher_steps} steps, distilled guidance)", "target_linear": t,
                         "selection": heuristic_selection(candidates, t, "uniform"), "sampler": None,
                         "steps": a.teacher_steps, "cfg": False})
    if a.compile:
        e2e.compile_blocks(transformer)
    latent_kwargs = e2e.wan_inputs(config, config.latent, TEXT_TOKENS, device, dtype)  # as the pipeline feeds it
    sdpa = nullcontext()
    if backend is not None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # the transformer's softmax layers on the fastest backend; the text encoder's biased attention
        # (UMT5's relative position bias) has no cuDNN kernel and falls through to the next one
        fallbacks = [b for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH) if b != backend]
        sdpa = sdpa_kernel([backend, *fallbacks], set_priority=True)
    decode_latent = torch.randn(1, *config.latent, device=device, dtype=dtype)
    with sdpa, torch.no_grad():
        # text encoder: one call of the pipeline's own prompt encoding (512 tokens)
        encode = lambda: pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, max_sequence_length=TEXT_TOKENS,  # noqa: E731
                                            device=device)
        encode()
        result["text_encoder_call_s"] = round(median_time(encode, device, 3), 4)
        vae.decode(decode_latent)  # cuDNN autotuning and allocator growth stay out of the numbers
        vae_times = {"eager": median_time(lambda: vae.decode(decode_latent), device, a.vae_reps)}
        result["vae_decode_s"] = {"eager": round(vae_times["eager"], 4)}
        print(f"  text encoder {result['text_encoder_call_s']:.3f} s/call; VAE decode eager {vae_times['eager']:.3f} s",
              flush=True)
        run.save()
        rows = []
        for variant in variants:  # timed forwards + full generations with the eager VAE
            ctx = (bm.fixed_in_place(transformer, sites, variant["selection"], a.feature_map)
                   if variant["selection"] is not None else nullcontext())
            try:
                with ctx:
                    row = measure_variant(run, pipe, variant, shape, latent_kwargs, device, vae_times, result)
            except Exception as exc:  # noqa: BLE001 - record, go on
                traceback.print_exc()
                row = {"variant": variant["name"], "error": bm.exception_line(exc)}
            rows.append((variant, row))
            result["rows"].append(row)
            run.save()
            bm.release_memory(device)
        # the compiled VAE (the user's best case): its decode time, and one full generation of the first student
        if a.compile_vae and run.left() > a.vae_compile_estimate_s:
            compiled_vae_rows(run, pipe, vae, decode_latent, rows, transformer, sites, shape, device, vae_times, result)
        elif a.compile_vae:
            print("  VAE compile: skipped (deadline)", flush=True)
        finish_shape(result, vae_times)
    run.save()
    if a.compile:
        e2e.uncompile_blocks(transformer)
    del pipe, transformer, vae
    torch._dynamo.reset()
    bm.release_memory(device)


def compiled_vae_rows(run: Run, pipe, vae, decode_latent, rows, transformer, sites, shape, device, vae_times,
                      result) -> None:
    """Decode time with ``vae_compile.compile_vae_decode`` and one measured generation of the first student with it.

    Dynamo's counters are recorded for the warm-up decode (the compile: one graph expected), the timed decodes and
    the generation (both: nothing compiled, nothing fallen back to eager); the VAE is eager again afterwards.
    """
    a = run.args
    counts = vae_compile.DynamoCounts.now
    phases: dict[str, vae_compile.DynamoCounts] = {}
    info: dict[str, Any] = {"method": vae_compile.METHOD, "backend": a.compile_backend}
    result["vae_compile"] = info
    before = counts()
    undo = vae_compile.compile_vae_decode(vae, a.compile_backend)
    try:
        t1 = time.perf_counter()
        vae.decode(decode_latent)
        bm.synchronize(device)
        result["vae_compile_s"] = round(time.perf_counter() - t1, 2)
        warm = counts()
        phases["warmup"] = warm - before
        vae_times["compiled"] = median_time(lambda: vae.decode(decode_latent), device, a.vae_reps)
        timed = counts()
        phases["timed_decodes"] = timed - warm
        result["vae_decode_s"]["compiled"] = round(vae_times["compiled"], 4)
        print(f"  VAE decode compiled {vae_times['compiled']:.3f} s (compiled in {result['vae_compile_s']} s; "
              f"{phases['warmup'].graphs} graph(s))", flush=True)
        variant, row = next(((v, r) for v, r in rows if v["sampler"] is not None and "error" not in r), (None, None))
        estimate = row and row["forwards"] * row["forward_ms"] / 1e3 + vae_times["compiled"] + 5
        if variant is not None and run.left() > estimate + 10:
            with bm.fixed_in_place(transformer, sites, variant["selection"], a.feature_map):
                row["measured_compiled_vae"] = measured_generation(pipe, variant, shape, device, a.output_type)
            phases["generation"] = counts() - timed
            print_measured(row["measured_compiled_vae"], "compiled")
    finally:
        undo()
        info.update({phase: c.to_dict() for phase, c in phases.items()})
    warnings = vae_compile.steady_state_warnings(phases)
    if warnings:
        info["warnings"] = warnings
    for w in warnings:
        print(f"  WARNING compiled VAE not at steady state -- {w}: its rows do not measure compiled speed", flush=True)


def print_measured(m: dict[str, Any], mode: str) -> None:
    print(f"    measured ({mode} VAE): {m['total_s']:.2f} s = text {m['text_s']:.2f} + transformer "
          f"{m['denoise_s']:.2f} ({m['forwards']} forwards) + VAE {m['vae_s']:.2f} + other {m['other_s']:.2f}",
          flush=True)


def measure_variant(run: Run, pipe, variant, shape, latent_kwargs, device, vae_times, result) -> dict[str, Any]:
    a = run.args
    cfg = variant["cfg"]
    forwards = variant["steps"] * (2 if cfg else 1)
    row: dict[str, Any] = {"variant": variant["name"], "target_linear": variant.get("target_linear", 0.0),
                           "num_linear": len(variant["selection"] or []), "steps": variant["steps"], "cfg": cfg,
                           "forwards": forwards, "text_calls": 2 if cfg else 1}
    if variant["sampler"] is not None:
        row["sampler_sigmas"] = list(variant["sampler"].sigmas)
    model = pipe.transformer
    t0 = time.perf_counter()
    model(**latent_kwargs)  # compiles this variant's block graph (first call), grows the allocator
    bm.synchronize(device)
    row["first_forward_s"] = round(time.perf_counter() - t0, 2)
    times = [median_time(lambda: model(**latent_kwargs), device, 1)]
    more = max(0, min(a.forward_reps - 1, int(a.forward_budget_s // max(times[0], 1e-6))))  # 14B: one timed forward
    times += [median_time(lambda: model(**latent_kwargs), device, 1) for _ in range(more)]
    forward_s = statistics.median(times)
    row["forward_ms"], row["forward_reps"] = round(forward_s * 1e3, 2), len(times)
    print(f"  {variant['name']}: forward {forward_s * 1e3:,.1f} ms ({row['forward_reps']} timed; first call "
          f"{row['first_forward_s']} s)", flush=True)
    full_estimate = forwards * forward_s + vae_times["eager"] + row["text_calls"] * result["text_encoder_call_s"] + 2
    if cfg and variant["steps"] > a.max_measured_teacher_steps:
        print(f"    full {variant['steps']}-step teacher generation: not measured (--max-measured-teacher-steps); "
              "composed", flush=True)
        return row
    if run.left() < full_estimate * (1.15 if cfg else 1.0) + 10:
        print(f"    full generation: skipped (deadline; ~{full_estimate:.0f} s); composed", flush=True)
        return row
    if variant["sampler"] is None:  # the pipeline's own scheduler hands the transformer other timestep dtypes:
        # compile for them first
        generate(pipe, variant, shape, 2, device, a.output_type)
    row["measured_eager_vae"] = measured_generation(pipe, variant, shape, device, a.output_type)
    print_measured(row["measured_eager_vae"], "eager")
    return row


def finish_shape(result: dict[str, Any], vae_times: dict[str, float]) -> None:
    """Composed totals for every row, composition error where both exist, speed-ups against the teacher."""
    rows = [r for r in result["rows"] if "error" not in r]
    others = [r["measured_eager_vae"]["other_s"] for r in rows if "sampler_sigmas" in r and "measured_eager_vae" in r]
    other = statistics.median(others) if others else 0.0
    for r in rows:
        for mode, vae_s in vae_times.items():
            text = r["text_calls"] * result["text_encoder_call_s"]
            denoise = r["forwards"] * r["forward_ms"] / 1e3
            r[f"composed_{mode}_vae"] = {"total_s": round(text + denoise + vae_s + other, 4), "text_s": round(text, 4),
                                         "denoise_s": round(denoise, 4), "vae_s": round(vae_s, 4), "other_s": round(other, 4)}
            measured = r.get(f"measured_{mode}_vae")
            if measured:
                r[f"composition_error_{mode}_vae"] = round(r[f"composed_{mode}_vae"]["total_s"] / measured["total_s"] - 1, 4)
    teacher = next((r for r in rows if r["cfg"]), None)
    if teacher is None:
        return
    base_kind = "measured" if "measured_eager_vae" in teacher else "composed"
    base = teacher[f"{base_kind}_eager_vae"]["total_s"]
    result["teacher_latency_s"], result["teacher_latency_kind"] = base, base_kind
    for r in rows:
        for mode in vae_times:
            kind = "measured" if f"measured_{mode}_vae" in r else "composed"
            total = r[f"{kind}_{mode}_vae"]["total_s"]
            r[f"speedup_{mode}_vae"] = round(base / total, 3)
            r[f"speedup_{mode}_vae_kind"] = kind


def table(results: dict[str, Any]) -> str:
    env = results["environment"]
    s = results["settings"]
    lines = [f"Device: {env['device']} | torch {env['torch']} | batch 1 | text encoder: {s['text_encoder']} | VAE: "
             f"{s['vae']} | transformer: {s['compile']} | output_type {s['output_type']}", "",
             "| model | variant | steps x forwards | VAE | latency s | text | transformer | VAE s | other | speed-up | kind |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for cfg in results["configs"]:
        for r in cfg["rows"]:
            if "error" in r:
                lines.append(f"| {cfg['config']} | {r['variant']} | | | failed: {r['error'][:60]} | | | | | | |")
                continue
            for mode in ("eager", "compiled"):
                kind = r.get(f"speedup_{mode}_vae_kind")
                if kind is None:
                    continue
                parts = r[f"{kind}_{mode}_vae"]
                lines.append(f"| {cfg['config']} | {r['variant']} | {r['steps']} x {r['forwards'] // r['steps']} | {mode} | "
                             f"{parts['total_s']:.2f} | {parts['text_s']:.2f} | {parts['denoise_s']:.2f} | "
                             f"{parts['vae_s']:.2f} | {parts['other_s']:.2f} | {r[f'speedup_{mode}_vae']:.2f}x | {kind} |")
    compiled = [(c["config"], c["vae_compile"]) for c in results["configs"] if "warmup" in c.get("vae_compile", {})]
    if compiled:
        lines += ["", f"Compiled VAE: {s['compile_vae']} ({s['compile_backend']})."]
        for name, info in compiled:
            after = sum(info[p]["compiles"] for p in ("timed_decodes", "generation") if p in info)
            lines.append(f"{name}: {info['warmup']['graphs']} graph(s) at warm-up, {after} compile(s) after it"
                         + (f"; WARNING {'; '.join(info['warnings'])}" if info.get("warnings") else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="wan-1.3b,wan-14b-720p", help=f"comma-separated, from {', '.join(SHAPES)}")
    p.add_argument("--targets", default="0.5,0.7", help="linear fractions of the 4-step students")
    p.add_argument("--full-step-students", default="",
                   help="linear fractions of guidance-distilled students at the teacher's steps (pipeline scheduler, no CFG)")
    p.add_argument("--feature-map", default="relu")
    p.add_argument("--teacher-steps", type=int, default=TEACHER_STEPS)
    p.add_argument("--max-measured-teacher-steps", type=int, default=TEACHER_STEPS,
                   help="measure the teacher's full loop only up to this many steps (the rest is composed)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="eager transformer blocks")
    p.add_argument("--no-compile-vae", dest="compile_vae", action="store_false", help="no compiled-VAE rows")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--vae-compile-estimate-s", type=float, default=120.0)
    p.add_argument("--forward-reps", type=int, default=3, help="at most this many timed single forwards per variant")
    p.add_argument("--forward-budget-s", type=float, default=6.0, help="seconds of timed forwards per variant (sets reps)")
    p.add_argument("--vae-reps", type=int, default=2)
    p.add_argument("--output-type", default="pt", help="the pipeline's output_type (pt: a GPU tensor; np: numpy)")
    p.add_argument("--deadline-s", type=float, default=500.0, help="start no measurement that would end after this")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "e2e_generation.json")
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true", help="toy sizes on the CPU: checks the script, measures nothing real")
    a = p.parse_args(argv)
    a.targets = [float(t) for t in a.targets.split(",") if t.strip()]
    a.full_step_students = [float(t) for t in a.full_step_students.split(",") if t.strip()]
    shapes = TINY_SHAPES if a.tiny else SHAPES
    names = ["tiny"] if a.tiny else [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in shapes]
    if unknown:
        p.error(f"unknown --configs {unknown[0]!r}; choose from {', '.join(shapes)}")
    if a.tiny:
        a.teacher_steps, a.max_measured_teacher_steps = 3, 3
    device = bm.resolve_device("cpu" if a.tiny else a.device)
    dtype = e2e.prepare_run(device)
    run = Run(a)
    run.results = {
        "environment": bm.environment(device),
        "settings": {"configs": names, "targets": a.targets, "full_step_students": a.full_step_students, "feature_map": a.feature_map, "teacher_steps": a.teacher_steps,
                     "student_steps": STUDENT_STEPS, "cfg_scale": CFG_SCALE, "text_tokens": TEXT_TOKENS,
                     "output_type": a.output_type, "compile": "regional block.compile()" if a.compile else "eager",
                     "compile_vae": vae_compile.METHOD if a.compile_vae else None,
                     "compile_backend": a.compile_backend, "tiny": a.tiny,
                     "text_encoder": "UMT5EncoderModel, umt5-xxl config, random weights" if not a.tiny else "tiny UMT5",
                     "vae": "AutoencoderKLWan, Wan 2.1 config, random weights" if not a.tiny else "tiny AutoencoderKLWan"},
        "configs": [],
    }
    t0 = time.perf_counter()
    umt5 = UMT5_TINY if a.tiny else UMT5_XXL
    text_encoder = build_text_encoder(umt5, device, dtype)
    tokenizer = word_tokenizer(umt5["vocab_size"])
    run.results["text_encoder_parameters"] = sum(p.numel() for p in text_encoder.parameters())
    run.results["text_encoder_build_s"] = round(time.perf_counter() - t0, 2)
    print(f"text encoder: {run.results['text_encoder_parameters'] / 1e9:.2f} B parameters, built in "
          f"{run.results['text_encoder_build_s']} s", flush=True)
    for name in names:
        if run.left() < 60:
            run.results.setdefault("skipped", []).append(name)
            print(f"\n== {name}: skipped (deadline)", flush=True)
            continue
        try:
            run_shape(run, shapes[name], text_encoder, tokenizer, device, dtype, a.tiny)
        except Exception as exc:  # noqa: BLE001 - keep what was measured
            traceback.print_exc()
            run.results["configs"][-1].setdefault("error", bm.exception_line(exc))
            torch._dynamo.reset()
            bm.release_memory(device)
        run.save()
    first = next((c for c in run.results["configs"] if c["config"] in ("wan-1.3b", "tiny")), None)
    bar = next((r for r in (first or {}).get("rows", []) if r.get("target_linear") == 0.5 and "speedup_eager_vae" in r), None)
    if bar is not None:
        run.results["bar"] = {"wanted": 16.0, "speedup_eager_vae": bar["speedup_eager_vae"],
                              "speedup_compiled_vae": bar.get("speedup_compiled_vae"),
                              "met": bar["speedup_eager_vae"] >= 16.0}
    run.results["wall_s"] = round(time.perf_counter() - run.start, 1)
    run.results["table_md"] = table(run.results)
    run.save()
    print("\n" + run.results["table_md"], flush=True)
    return run.results


if __name__ == "__main__":
    main()
