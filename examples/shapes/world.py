"""A procedural video world: one coloured shape moving in a straight line on black.

A *condition* is four attributes -- shape class, colour, direction and speed -- encoded
as a short text-like token sequence (one fixed embedding per attribute value, one token
per attribute), so a DiT conditions on it through cross-attention like a text-to-video
model. What is *not* in the condition (start position, size) is sampled, so the model
has to produce a distribution, not one clip.

Clips are ``(3, FRAMES, SIZE, SIZE)`` tensors in [-1, 1] (the model's latent space is
pixel space). Everything is deterministic given a seed: the embeddings come from a
PCG64 bit stream (whose output NumPy guarantees across versions) through our own
Box-Muller transform, and scenes come from a seeded ``torch.Generator`` on the CPU.

The *empty prompt* -- the null condition of classifier-free guidance -- is one more fixed
sequence from the same bit stream (``null_embedding``), not learnt: the teacher learns
its unconditional mode by seeing it in place of the condition (condition dropout in
``train_teacher.py``). Captions (``Condition.describe()``) are the world's prompts;
``CaptionEncoder`` maps them (and the empty prompt) to embeddings, so the world plugs into
lincompress's prompt-conditioned recovery like a text encoder.

``score_clips`` measures, analytically from the pixels, whether a clip shows what its
condition asks for (colour, shape class, motion direction and speed, smooth motion,
temporal consistency) -- the VBench-style world metrics of ``lincompress eval``.

This module depends on torch and numpy only, so the training script can run it anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

FRAMES = 8
SIZE = 32
CHANNELS = 3
LATENT_SHAPE = (CHANNELS, FRAMES, SIZE, SIZE)
TEXT_DIM = 64
EMBED_SEED = 20251023
NULL_SEED = EMBED_SEED + 200  # the empty prompt's fixed embedding

SHAPES = ("square", "circle", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
PALETTE = torch.tensor(
    [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]
)
DIRECTIONS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")
SPEEDS = ("slow", "fast")
SPEED_PX = (1.0, 2.0)  # pixels per frame
ATTRIBUTES = (("colour", COLOURS), ("shape", SHAPES), ("direction", DIRECTIONS), ("speed", SPEEDS))
TEXT_LEN = len(ATTRIBUTES)  # one token per attribute, in the order of a caption: "a red circle moving east, slow"

# Area of the shape divided by the area of its bounding box, for the analytic shape classifier.
FILL_RATIO = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}
RADIUS_RANGE = (4.5, 6.0)


@dataclass(frozen=True)
class Condition:
    """One world condition; attribute values are indices into SHAPES, COLOURS, DIRECTIONS, SPEEDS."""

    shape: int
    colour: int
    direction: int
    speed: int

    def __post_init__(self) -> None:
        for name, values in ATTRIBUTES:
            value = getattr(self, name)
            if not 0 <= value < len(values):
                raise ValueError(f"{name} index {value} out of range 0..{len(values) - 1}")

    def describe(self) -> str:
        return f"a {COLOURS[self.colour]} {SHAPES[self.shape]} moving {DIRECTIONS[self.direction]}, {SPEEDS[self.speed]}"

    def velocity(self) -> tuple[float, float]:
        """(vx, vy) in pixels per frame, image coordinates (y grows downwards)."""
        angle = self.direction * math.pi / 4
        speed = SPEED_PX[self.speed]
        return speed * math.cos(angle), -speed * math.sin(angle)

    def to_dict(self) -> dict[str, str]:
        return {name: values[getattr(self, name)] for name, values in ATTRIBUTES}


def sample_conditions(n: int, generator: torch.Generator) -> list[Condition]:
    """``n`` conditions drawn uniformly from the world's attribute grid."""
    draws = [torch.randint(0, len(values), (n,), generator=generator) for _, values in ATTRIBUTES]
    by_name = {name: d for (name, _), d in zip(ATTRIBUTES, draws)}
    return [
        Condition(shape=int(by_name["shape"][i]), colour=int(by_name["colour"][i]),
                  direction=int(by_name["direction"][i]), speed=int(by_name["speed"][i]))
        for i in range(n)
    ]


def _gaussian_table(rows: int, dim: int, seed: int) -> torch.Tensor:
    """Standard normal values from PCG64's raw bit stream (stable across NumPy versions)."""
    count = rows * dim
    raw = np.random.PCG64(seed).random_raw(count + (count % 2))
    u = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)  # (0, 1)
    u1, u2 = u[0::2], u[1::2]
    radius = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])[:count]
    return torch.from_numpy(z.reshape(rows, dim).astype(np.float32))


def embedding_tables() -> dict[str, torch.Tensor]:
    """One fixed (values, TEXT_DIM) table per attribute, entries of about unit RMS.

    Shapes, colours and speeds get independent random vectors. Directions are
    "semantic", as a text encoder's would be (north-east lies between north and east):
    ``(a cos(theta) + b sin(theta) + c) / sqrt(3)`` for fixed random a, b, c.
    """
    tables = {name: _gaussian_table(len(values), TEXT_DIM, EMBED_SEED + i) for i, (name, values) in enumerate(ATTRIBUTES)}
    a, b, c = _gaussian_table(3, TEXT_DIM, EMBED_SEED + 100)
    theta = torch.arange(len(DIRECTIONS), dtype=torch.float32)[:, None] * (2 * math.pi / len(DIRECTIONS))
    tables["direction"] = (a * torch.cos(theta) + b * torch.sin(theta) + c) / math.sqrt(3)
    return tables


_TABLES: dict[str, torch.Tensor] | None = None


def encode(conditions: list[Condition]) -> torch.Tensor:
    """The text-like embedding sequence, ``(len(conditions), TEXT_LEN, TEXT_DIM)``."""
    global _TABLES
    if _TABLES is None:
        _TABLES = embedding_tables()
    rows = []
    for c in conditions:
        rows.append(torch.stack([_TABLES[name][getattr(c, name)] for name, _ in ATTRIBUTES]))
    return torch.stack(rows) if rows else torch.zeros(0, TEXT_LEN, TEXT_DIM)


def null_embedding() -> torch.Tensor:
    """The empty prompt's embedding, ``(TEXT_LEN, TEXT_DIM)``: fixed (PCG64 stream), entries of about unit RMS."""
    return _gaussian_table(TEXT_LEN, TEXT_DIM, NULL_SEED)


def encode_null(n: int) -> torch.Tensor:
    """``n`` copies of the empty prompt's embedding, ``(n, TEXT_LEN, TEXT_DIM)``."""
    return null_embedding()[None].expand(n, -1, -1).clone()


def all_conditions() -> list[Condition]:
    """Every condition of the world (3 x 6 x 8 x 2 = 288), in a fixed order."""
    return [Condition(shape=s, colour=c, direction=d, speed=v)
            for s in range(len(SHAPES)) for c in range(len(COLOURS))
            for d in range(len(DIRECTIONS)) for v in range(len(SPEEDS))]


def parse_caption(text: str) -> Condition | None:
    """``"a red circle moving east, slow"`` -> its Condition; the empty prompt -> None (the null condition)."""
    words = text.strip().lower().replace(",", " ").split()
    if not words:
        return None
    if len(words) != 6 or words[0] != "a" or words[3] != "moving":
        raise ValueError(f"{text!r} is not a shapes caption; write e.g. 'a red circle moving north-east, fast'")
    names = {"colour": words[1], "shape": words[2], "direction": words[4], "speed": words[5]}
    values = {}
    for name, options in ATTRIBUTES:
        if names[name] not in options:
            raise ValueError(f"{text!r}: unknown {name} {names[name]!r}; choose one of {', '.join(options)}")
        values[name] = options.index(names[name])
    return Condition(**values)


class CaptionEncoder:
    """The world's "text encoder": captions -> ``{"encoder_hidden_states": (n, TEXT_LEN, TEXT_DIM)}``.

    The empty prompt encodes to ``null_embedding()``. ``identity`` keys lincompress's
    embedding cache (the tables are fixed by their seeds).
    """

    identity = f"shapes-world-captions:{EMBED_SEED}:{NULL_SEED}:{TEXT_LEN}x{TEXT_DIM}"

    def __call__(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        conditions = [parse_caption(p) for p in prompts]
        rows = [encode_null(1)[0] if c is None else encode([c])[0] for c in conditions]
        return {"encoder_hidden_states": torch.stack(rows) if rows else torch.zeros(0, TEXT_LEN, TEXT_DIM)}


def _sdf(shape: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, negative inside) of each shape, selected per clip."""
    square = torch.maximum(dx.abs(), dy.abs()) - radius
    circle = torch.sqrt(dx * dx + dy * dy) - radius
    # Upward triangle with apex (0, -r) and base from (-r, r) to (r, r): fills half its bounding box.
    inv5 = 1 / math.sqrt(5)
    triangle = torch.maximum(dy - radius, torch.maximum((-2 * dx - dy - radius) * inv5, (2 * dx - dy - radius) * inv5))
    return torch.where(shape == 0, square, torch.where(shape == 1, circle, triangle))


def render(conditions: list[Condition], generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """Clips ``(n, 3, FRAMES, SIZE, SIZE)`` in [-1, 1]; scene randomness (position, size) from ``generator``."""
    n = len(conditions)
    u = torch.rand(n, 3, generator=generator)
    radius = RADIUS_RANGE[0] + (RADIUS_RANGE[1] - RADIUS_RANGE[0]) * u[:, 0]
    velocity = torch.tensor([c.velocity() for c in conditions], dtype=torch.float32).reshape(n, 2)
    travel = velocity * (FRAMES - 1)
    margin = radius + 1.0
    lo = margin[:, None] - travel.clamp(max=0)
    hi = (SIZE - margin[:, None]) - travel.clamp(min=0)
    start = lo + (hi - lo) * u[:, 1:]
    shape = torch.tensor([c.shape for c in conditions]).reshape(n, 1, 1, 1)
    colour = PALETTE[torch.tensor([c.colour for c in conditions], dtype=torch.long)].reshape(n, 3)

    start, velocity, radius, shape, colour = (t.to(device) for t in (start, velocity, radius, shape, colour))
    frame = torch.arange(FRAMES, device=device, dtype=torch.float32)
    centre = start[:, None, :] + frame[None, :, None] * velocity[:, None, :]  # (n, F, 2)
    coords = torch.arange(SIZE, device=device, dtype=torch.float32) + 0.5
    dx = coords[None, None, None, :] - centre[:, :, 0, None, None]  # (n, F, 1, W)
    dy = coords[None, None, :, None] - centre[:, :, 1, None, None]  # (n, F, H, 1)
    dx, dy = torch.broadcast_tensors(dx, dy)
    alpha = (0.5 - _sdf(shape, dx, dy, radius.reshape(n, 1, 1, 1))).clamp(0, 1)  # (n, F, H, W), anti-aliased edge
    clip = alpha[:, None] * colour[:, :, None, None, None]  # black background
    return clip * 2 - 1


def sample_batch(n: int, generator: torch.Generator, device: torch.device | str = "cpu"):
    """(clips, embeddings, conditions) for training: random conditions, rendered and encoded."""
    conditions = sample_conditions(n, generator)
    return render(conditions, generator, device), encode(conditions).to(device), conditions


def to_frames(latents: torch.Tensor) -> torch.Tensor:
    """Model latents ``(n, 3, F, H, W)`` in [-1, 1] -> frames ``(n, F, H, W, 3)`` in [0, 1]."""
    return ((latents.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1)


# ----------------------------------------------------------------------------- metrics


def _nearest(values: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    return torch.cdist(values[None], references[None])[0].argmin(-1)


def score_clips(frames: torch.Tensor, conditions: list[Condition]) -> dict[str, list[float]]:
    """Analytic world metrics per clip; ``frames`` is ``(n, F, H, W, 3)`` in [0, 1].

    The object is whatever is brighter than the black background (foreground strength
    ``fg`` = max over RGB; ``alpha`` = fg rescaled so 0.15 -> 0 and 0.85 -> 1).

    * presence: fraction of frames with at least 8 object pixels (fg > 0.5).
    * colour_correct / colour_error: the object's mean chroma (colour / its max channel,
      over fg > 0.5 pixels of all frames) is nearest to the asked palette colour / its L2
      distance to it.
    * class_correct / fill_ratio: soft area / (soft width x soft height) per frame, median
      over frames (1 for a square, pi/4 for a circle, 1/2 for the triangle); the class is
      the nearest of the three.
    * direction_correct / direction_cos / speed_error: a least-squares line through the
      per-frame centroids gives the velocity; correct when its angle is within 22.5 deg of
      the asked direction and its speed is at least half the asked speed.
    * smoothness_px: RMS distance of the centroids from that line (pixels, lower is better).
    * temporal_consistency: 1 - (coefficient of variation of the object's area over
      frames) - (mean per-frame chroma drift from the clip's mean chroma), clipped at 0.
    * haze: mean fg of the background pixels (fg <= 0.5), i.e. smear and noise.
    * world_score: mean of presence, colour_correct, class_correct, direction_correct.
    """
    if frames.dim() != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (n, F, H, W, 3), got {tuple(frames.shape)}")
    if len(conditions) != frames.shape[0]:
        raise ValueError(f"{frames.shape[0]} clips but {len(conditions)} conditions")
    frames = frames.detach().float().cpu().clamp(0, 1)
    n, nf, h, w, _ = frames.shape
    fg = frames.max(-1).values  # (n, F, H, W)
    alpha = ((fg - 0.15) / 0.7).clamp(0, 1)
    solid = fg > 0.5
    fill_refs = torch.tensor([FILL_RATIO[s] for s in SHAPES])
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    t = torch.arange(nf, dtype=torch.float32)
    out: dict[str, list[float]] = {k: [] for k in (
        "presence", "colour_correct", "colour_error", "class_correct", "fill_ratio", "direction_correct",
        "direction_cos", "speed_error", "smoothness_px", "temporal_consistency", "haze", "world_score")}
    for i, cond in enumerate(conditions):
        counts = solid[i].flatten(1).sum(1)  # (F,)
        present = counts >= 8
        presence = present.float().mean().item()
        # colour
        if solid[i].any():
            pixels = frames[i][solid[i]]  # (P, 3)
            mean_rgb = pixels.mean(0)
            chroma = mean_rgb / mean_rgb.max().clamp(min=1e-6)
            colour_idx = int(_nearest(chroma[None], PALETTE)[0])
            colour_error = float((chroma - PALETTE[cond.colour]).norm())
        else:
            chroma, colour_idx, colour_error = torch.zeros(3), -1, float(PALETTE[cond.colour].norm())
        # shape, per present frame
        a = alpha[i]
        area = a.flatten(1).sum(1)  # (F,)
        width = a.max(1).values.sum(1)  # soft column occupancy (F,)
        height = a.max(2).values.sum(1)
        fills = area / (width * height).clamp(min=1e-6)
        fill = float(fills[present].median()) if present.any() else 0.0
        class_idx = int(_nearest(torch.tensor([[fill]]), fill_refs[:, None])[0]) if present.any() else -1
        # motion
        weight = a.flatten(1).sum(1).clamp(min=1e-6)
        cx = (a.sum(1) * xs).sum(1) / weight
        cy = (a.sum(2) * ys).sum(1) / weight
        expected = torch.tensor(cond.velocity())
        if int(present.sum()) >= 2:
            tp = t[present]
            design = torch.stack([torch.ones_like(tp), tp], 1)
            coef = torch.linalg.lstsq(design, torch.stack([cx[present], cy[present]], 1)).solution  # (2, 2)
            velocity = coef[1]
            residual = torch.stack([cx[present], cy[present]], 1) - design @ coef
            smooth = float(residual.pow(2).sum(1).mean().sqrt())
        else:
            velocity, smooth = torch.zeros(2), float(max(h, w))
        speed = float(velocity.norm())
        cos = float(velocity @ expected / (velocity.norm() * expected.norm()).clamp(min=1e-6))
        direction_ok = cos >= math.cos(math.pi / 8) and speed >= 0.5 * float(expected.norm())
        # temporal consistency
        if present.any():
            area_p = area[present]
            area_cv = float(area_p.std(unbiased=False) / area_p.mean().clamp(min=1e-6))
            drifts = []
            for f in torch.nonzero(present).flatten().tolist():
                px = frames[i, f][solid[i, f]]
                c = px.mean(0)
                drifts.append(float((c / c.max().clamp(min=1e-6) - chroma).norm()))
            consistency = max(0.0, 1.0 - area_cv - sum(drifts) / len(drifts))
        else:
            consistency = 0.0
        background = ~solid[i]
        haze = float(fg[i][background].mean()) if background.any() else 1.0
        colour_ok = float(colour_idx == cond.colour)
        class_ok = float(class_idx == cond.shape)
        out["presence"].append(presence)
        out["colour_correct"].append(colour_ok)
        out["colour_error"].append(colour_error)
        out["class_correct"].append(class_ok)
        out["fill_ratio"].append(fill)
        out["direction_correct"].append(float(direction_ok))
        out["direction_cos"].append(cos)
        out["speed_error"].append(abs(speed - float(expected.norm())))
        out["smoothness_px"].append(smooth)
        out["temporal_consistency"].append(consistency)
        out["haze"].append(haze)
        out["world_score"].append((presence + colour_ok + class_ok + float(direction_ok)) / 4)
    return out


def summarize(scores: dict[str, list[float]]) -> dict[str, float]:
    """Mean of each per-clip metric."""
    return {k: (sum(v) / len(v) if v else float("nan")) for k, v in scores.items()}


class ShapesWorld:
    """The world as ``lincompress eval`` sees it (``Target.extras["world"]``).

    Protocol: ``sample_conditions(n, generator) -> list``, ``condition_inputs(conds) -> model
    kwargs``, ``to_frames(latents) -> (n, F, H, W, 3) in [0, 1]``, ``score(frames, conds) ->
    {metric: per-clip values}``, ``describe(cond) -> str``, ``render(conds, generator)``.
    """

    name = "shapes"
    latent_shape = LATENT_SHAPE
    higher_is_better = {
        "presence": True, "colour_correct": True, "colour_error": False, "class_correct": True, "fill_ratio": None,
        "direction_correct": True, "direction_cos": True, "speed_error": False, "smoothness_px": False,
        "temporal_consistency": True, "haze": False, "world_score": True,
    }

    def sample_conditions(self, n: int, generator: torch.Generator) -> list[Condition]:
        return sample_conditions(n, generator)

    def condition_inputs(self, conditions: list[Condition]) -> dict[str, torch.Tensor]:
        return {"encoder_hidden_states": encode(conditions)}

    def null_inputs(self, n: int) -> dict[str, torch.Tensor]:
        """The unconditional (empty prompt) inputs of classifier-free guidance."""
        return {"encoder_hidden_states": encode_null(n)}

    def to_frames(self, latents: torch.Tensor) -> torch.Tensor:
        return to_frames(latents)

    def score(self, frames: torch.Tensor, conditions: list[Condition]) -> dict[str, list[float]]:
        return score_clips(frames, conditions)

    def describe(self, condition: Condition) -> str:
        return condition.describe()

    def render(self, conditions: list[Condition], generator: torch.Generator) -> torch.Tensor:
        return render(conditions, generator)
