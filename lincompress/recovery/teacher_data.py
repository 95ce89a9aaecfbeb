"""Data-free teacher trajectories: the original model's own samples, cached on disk.

Each shard holds ``shard_size`` samples: the noise, the conditions, every visited
point ``x_t`` of the teacher's Euler sampler with its sigma and teacher velocity, and
the final sample. With classifier-free guidance the sampler integrates the guided
velocity ``v`` and the shard also keeps the two branches (``v_cond``, ``v_uncond``), which
a student that keeps CFG is trained on. Shards are safetensors; ``manifest.json`` lists the finished ones
and the settings they were made with. Both are written atomically, so an
interrupted run leaves only complete shards, and a re-run reuses them (shard i is
always generated from seed + i, so the cache does not depend on where it stopped).

With a process group (``parallel``, several processes) each rank makes its round-robin
share of the missing shards, in turns: in every turn each rank makes one shard (a rank
with none left makes a throw-away one, since the sharded teacher's all-gathers are
collectives), rank 0 adds the turn's shards to the manifest, and at the end every rank
loads the whole cache. Shard i is still made from seed + i: the cache is the one a
single process makes, in the same format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from lincompress import atomic
from lincompress.config import Arg, ArgumentError
from lincompress.distributed.context import DistributedContext
from lincompress.errors import LinCompressError
from lincompress.fingerprint import model_fingerprint
from lincompress.prompts import tensors_hash
from lincompress.recovery.sampling import ConditionSource, Guidance, ModelCaller, euler_sample, latent_shape, sigma_grid
from lincompress.target import Target

MANIFEST = "manifest.json"
CACHE_VERSION = 2


@dataclass
class TeacherData:
    """All cached trajectories in memory (CPU): latents ``[S, ...]``, points ``[S, T, ...]``."""

    noise: Tensor  # [S, *latent]
    sample: Tensor  # [S, *latent]: the teacher's final x_0
    x: Tensor  # [S, T, *latent]: visited points
    v: Tensor  # [S, T, *latent]: teacher velocity there
    sigmas: Tensor  # [T]
    cond: dict[str, Tensor]  # [S, ...]
    v_cond: Tensor | None = None  # [S, T, *latent]: the conditional branch (guided caches only)
    v_uncond: Tensor | None = None  # [S, T, *latent]: the unconditional branch

    @property
    def guided(self) -> bool:
        return self.v_cond is not None and self.v_uncond is not None

    @property
    def num_samples(self) -> int:
        return self.noise.shape[0]

    @property
    def num_points(self) -> int:
        return self.sigmas.numel()

    def cond_at(self, index: Tensor) -> dict[str, Tensor]:
        return {k: v[index] for k, v in self.cond.items()}

    def _draw(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        s = torch.randint(self.num_samples, (batch,), generator=generator)
        t = torch.randint(self.num_points, (batch,), generator=generator)
        return s, t

    def points(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """A random batch of trajectory points: (x_t, sigma, v_teacher, cond); v_teacher is the guided velocity."""
        s, t = self._draw(batch, generator)
        return self.x[s, t], self.sigmas[t], self.v[s, t], self.cond_at(s)

    def branch_points(self, batch: int, generator: torch.Generator
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Like ``points`` (same draws) with the two branches: (x_t, sigma, v_cond, v_uncond, cond)."""
        if not self.guided:
            raise LinCompressError("these teacher trajectories were made without guidance; they hold no CFG branches")
        s, t = self._draw(batch, generator)
        return self.x[s, t], self.sigmas[t], self.v_cond[s, t], self.v_uncond[s, t], self.cond_at(s)

    def eval_points(self, limit: int) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """A fixed set of points (every step of the first samples), for before/after comparisons."""
        n = max(1, min(self.num_samples, -(-limit // self.num_points)))
        s = torch.arange(n).repeat_interleave(self.num_points)
        t = torch.arange(self.num_points).repeat(n)
        return self.x[s, t], self.sigmas[t], self.v[s, t], self.cond_at(s)


def conditions_key(target: Target, guidance: Guidance, seed: int) -> str:
    """Identity of what the trajectories are conditioned on: a probe draw of the conditions (+ the negative ones).

    A changed prompt set, encoder or condition function changes the draw, so a cache made
    for other conditions is never reused.
    """
    probe = ConditionSource(target)(2, torch.Generator().manual_seed(seed))
    if guidance.active:
        probe = {**probe, **{f"negative.{k}": v for k, v in guidance.uncond({}, 2, torch.device("cpu")).items()}}
    return tensors_hash(probe)[:24]


def _settings(target: Target, teacher: nn.Module, steps: int, shard_size: int, seed: int, guidance: Guidance,
              fingerprint: str | None = None) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "teacher": fingerprint or model_fingerprint(teacher),
        "latent_shape": list(latent_shape(target)),
        "steps": steps,
        "shard_size": shard_size,
        "seed": seed,
        "sigmas": [round(float(s), 6) for s in sigma_grid(target.scheduler, steps)],
        "guidance_scale": guidance.scale if guidance.active else 1.0,
        "conditions": conditions_key(target, guidance, seed),
    }


def shared_cache_dir(root: Path, target: Target, teacher: nn.Module, steps: int, shard_size: int, seed: int,
                     guidance: Guidance, fingerprint: str | None = None) -> Path:
    """The cache of these settings under a directory shared between runs: ``root/teacher-<settings hash>``.

    Each teacher and setting gets its own subdirectory, so runs sharing ``root`` reuse each
    other's trajectories and never overwrite a cache made with other settings.
    ``fingerprint``: the teacher's ``model_fingerprint``, when ``teacher`` is a sharded copy.
    """
    settings = _settings(target, teacher, steps, shard_size, seed, guidance, fingerprint)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / f"teacher-{key}"


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


@torch.no_grad()
def _make_shard(
    teacher: nn.Module, caller: ModelCaller, conditions: ConditionSource, guidance: Guidance, shape: tuple[int, ...],
    sigmas: Tensor, count: int, seed: int, device: torch.device, autocast: bool,
) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cond = conditions(count, gen)
    noise = torch.randn(count, *shape, generator=gen)
    cond_dev = {k: v.to(device) for k, v in cond.items()}
    xs, vs, vcs, vus = [], [], [], []

    def forward(model: nn.Module, x: Tensor, sigma: Tensor, c: dict[str, Tensor]) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return caller(model, x, sigma, c).float()

    def velocity(x: Tensor, sigma: Tensor) -> Tensor:
        if not guidance.active:
            return forward(teacher, x, sigma, cond_dev)
        v_c, v_u = guidance.branches(forward, teacher, x, sigma, cond_dev)
        vcs.append(v_c.float().cpu())
        vus.append(v_u.float().cpu())
        return guidance.combine(v_c, v_u)

    def record(i: int, x: Tensor, sigma: Tensor, v: Tensor) -> None:
        xs.append(x.float().cpu())
        vs.append(v.float().cpu())

    sample = euler_sample(velocity, noise.to(device), sigmas.to(device), on_step=record)
    shard = {"noise": noise, "sample": sample.float().cpu(), "x": torch.stack(xs, 1), "v": torch.stack(vs, 1),
             "sigmas": sigmas[:-1].clone()}
    if guidance.active:
        shard.update({"v_cond": torch.stack(vcs, 1), "v_uncond": torch.stack(vus, 1)})
    shard.update({f"cond.{k}": v.detach().cpu() for k, v in cond.items()})
    return shard


def build_teacher_cache(
    target: Target, teacher: nn.Module, cache_dir: str | Path, samples: int, steps: int = 8, shard_size: int = 4,
    seed: int = 0, device: str | torch.device = "cpu", autocast: bool = False, progress: Any = None,
    guidance: Guidance | None = None, parallel: DistributedContext | None = None, fingerprint: str | None = None,
) -> Path:
    """Generate (or finish) ``samples`` teacher trajectories under ``cache_dir``; returns the manifest path.

    ``guidance`` (default: the target's own, ``Guidance(target)``) makes them guided.
    A manifest made with other settings (teacher weights, steps, latent shape, guidance,
    conditions...) is not reused: the cache starts over, so stale trajectories never train a model.
    ``parallel``: the process group's context; every rank calls this, each makes its share
    (``fingerprint`` is then the unsharded teacher's ``model_fingerprint``).
    """
    if samples < 1:
        raise ArgumentError("{} must be at least 1 to build teacher data", Arg("samples", samples))
    ctx = parallel or DistributedContext()
    cache_dir = Path(cache_dir)
    device = torch.device(device)
    guidance = guidance if guidance is not None else Guidance(target)
    settings = _settings(target, teacher, steps, shard_size, seed, guidance, fingerprint)
    manifest_path = cache_dir / MANIFEST
    num_shards = -(-samples // shard_size)

    def count(index: int) -> int:
        return min(shard_size, samples - index * shard_size)

    shards: list[dict[str, Any]] = []
    if ctx.is_main:  # one reader of the shared manifest: every rank plans from the same view
        manifest = _read_manifest(manifest_path)
        if manifest and manifest.get("settings") == settings:
            shards = [s for s in manifest.get("shards", []) if (cache_dir / s["file"]).is_file()
                      and (s["index"] >= num_shards or s["samples"] == count(s["index"]))]
    shards = ctx.broadcast(shards)
    done = {s["index"] for s in shards}
    caller, conditions = ModelCaller(target, target.scheduler), ConditionSource(target)
    shape, sigmas = tuple(settings["latent_shape"]), sigma_grid(target.scheduler, steps)
    teacher.eval()
    for index in ctx.assign([i for i in range(num_shards) if i not in done]):
        made = None
        if index is None:  # nothing left for this rank: keep the sharded teacher's collectives in step
            _make_shard(teacher, caller, conditions, guidance, shape, sigmas, 1, seed, device, autocast)
        else:
            tensors = _make_shard(teacher, caller, conditions, guidance, shape, sigmas, count(index), seed + index,
                                  device, autocast)
            name = f"shard-{index:05d}.safetensors"
            atomic.write_safetensors(cache_dir / name, tensors, {"format": "lincompress-teacher"})
            made = {"index": index, "file": name, "samples": count(index)}
        shards += [s for s in ctx.all_gather(made) if s is not None]
        shards.sort(key=lambda s: s["index"])
        if ctx.is_main:
            atomic.write_json(manifest_path, {"settings": settings, "shards": shards, "samples": samples})
            if progress is not None:
                progress(sum(s["index"] < num_shards for s in shards), num_shards)
    if ctx.is_main:
        atomic.write_json(manifest_path, {"settings": settings, "shards": shards, "samples": samples})
    ctx.barrier()  # the manifest is complete before any rank reads the cache
    return manifest_path


def load_teacher_cache(cache_dir: str | Path, samples: int | None = None) -> TeacherData:
    """Load the shards listed in the manifest (the first ``samples`` samples, by default all)."""
    cache_dir = Path(cache_dir)
    manifest = _read_manifest(cache_dir / MANIFEST)
    if not manifest or not manifest.get("shards"):
        raise LinCompressError(f"{cache_dir} holds no teacher data; build it first (the Recover pass does)")
    parts: list[dict[str, Tensor]] = []
    for shard in manifest["shards"]:
        try:
            parts.append(load_file(str(cache_dir / shard["file"])))
        except Exception as exc:  # corrupt or missing shard: say which, and how to recover
            raise LinCompressError(f"teacher shard {cache_dir / shard['file']} is unreadable ({exc}); delete it and re-run") from None
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "sigmas"}
    if samples is not None:
        cat = {k: v[:samples] for k, v in cat.items()}
    cond = {k.split(".", 1)[1]: v for k, v in cat.items() if k.startswith("cond.")}
    return TeacherData(cat["noise"], cat["sample"], cat["x"], cat["v"], parts[0]["sigmas"], cond,
                       cat.get("v_cond"), cat.get("v_uncond"))
