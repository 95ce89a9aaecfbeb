"""Side-by-side pictures of teacher vs compressed samples (Pillow).

``comparison_grid``: per sample two rows of frames (teacher above, compressed below)
with a caption; ``comparison_gif``: an animation, each cell teacher | compressed.
Frames are ``(N, F, H, W, 3)`` in [0, 1].
"""

from __future__ import annotations

import io
import math

import torch
from torch import Tensor


def _uint8(frames: Tensor) -> Tensor:
    return (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def _scale_for(size: int) -> int:
    return max(1, 64 // max(1, size))


def comparison_grid(teacher: Tensor, student: Tensor, captions: list[str] | None = None) -> bytes:
    """PNG bytes: for each sample a caption line, the teacher's frames, the compressed model's frames."""
    from PIL import Image, ImageDraw

    t, s = _uint8(teacher), _uint8(student)
    n, nf, h, w, _ = t.shape
    scale = _scale_for(max(h, w))
    ch, cw, pad, label, text_h = h * scale, w * scale, 2, 84, 14
    row_h = text_h + 2 * (ch + pad) + 6
    sheet = Image.new("RGB", (label + nf * (cw + pad), n * row_h), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        y0 = i * row_h
        draw.text((4, y0 + 1), f"#{i}" + (f"  {captions[i]}" if captions else ""), fill=(230, 230, 230))
        for r, (frames, name) in enumerate(((t, "teacher"), (s, "compressed"))):
            y = y0 + text_h + r * (ch + pad)
            draw.text((4, y + ch // 2 - 6), name, fill=(200, 200, 200))
            for f in range(nf):
                img = Image.fromarray(frames[i, f].numpy()).resize((cw, ch), Image.NEAREST)
                sheet.paste(img, (label + f * (cw + pad), y))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def comparison_gif(teacher: Tensor, student: Tensor, cols: int = 4, duration_ms: int = 150) -> bytes:
    """Animated GIF bytes; each cell shows teacher (left) | compressed (right) of one sample."""
    from PIL import Image

    t, s = _uint8(teacher), _uint8(student)
    n, nf, h, w, _ = t.shape
    scale = _scale_for(max(h, w))
    ch, cw, pad = h * scale, w * scale, 4
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    cell_w = 2 * cw + 1
    images = []
    for f in range(nf):
        canvas = Image.new("RGB", (cols * (cell_w + pad), rows * (ch + pad)), (40, 40, 40))
        for i in range(n):
            x, y = (i % cols) * (cell_w + pad), (i // cols) * (ch + pad)
            canvas.paste(Image.fromarray(t[i, f].numpy()).resize((cw, ch), Image.NEAREST), (x, y))
            canvas.paste(Image.fromarray(s[i, f].numpy()).resize((cw, ch), Image.NEAREST), (x + cw + 1, y))
        images.append(canvas)
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return buf.getvalue()
