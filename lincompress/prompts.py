"""Text prompts as recovery's condition source: prompt sets, their encoded cache, per-draw sampling.

A real text-to-video pipeline is conditioned on what its text encoder makes of a
prompt, so the data-free recovery draws its conditions from a *prompt set* encoded by
the pipeline's own ``encode_prompt`` (or any ``encoder(list[str]) -> {model kwarg:
[N, ...] tensor}``). The text encoder runs once per prompt; the embeddings are cached
as safetensors chunks under a directory keyed by a hash of the prompts and of the
encoder's identity, so an interrupted encoding resumes and a changed prompt set or
encoder never reuses stale embeddings. Without prompts, the default set shipped in
``lincompress/data/prompts.txt`` (a few hundred varied video prompts) is used.

Cache layout (``cache_dir/<key>/``)::

    manifest.json            {"format", "version", "key", "num_prompts", "prompts_sha256",
                              "encoder", "chunk_size", "keys", "chunks": [{"index", "file", "count"}]}
    prompts.txt              the prompts, one per line (for people)
    chunk-00000.safetensors  {model kwarg: [count, ...]} for prompts [0, chunk_size), ...
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from lincompress import atomic
from lincompress.config import Arg, ArgumentError, literal
from lincompress.errors import LinCompressError, TargetError

PromptEncoder = Callable[[list[str]], dict[str, Tensor]]
CACHE_FORMAT = "lincompress-prompt-embeddings"
CACHE_VERSION = 1
DEFAULT_CHUNK = 16


def parse_prompts(text: str) -> list[str]:
    """One prompt per line; blank lines and ``#`` comments are skipped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def default_prompts() -> list[str]:
    """The shipped default prompt set (``lincompress/data/prompts.txt``)."""
    text = resources.files("lincompress").joinpath("data/prompts.txt").read_text(encoding="utf-8")
    return parse_prompts(text)


def read_prompts(path: str | Path, argument: str | None = None) -> list[str]:
    """Prompts from a text file, one per line; a one-line error if it is missing or holds none.

    ``argument`` names the option the path came from (``prompts_file``): the error is then an
    ``ArgumentError`` the CLI prints with its flag (``--prompts p.txt holds no prompts``).
    """
    path = Path(path)

    def fail(problem: str) -> LinCompressError:
        if argument is None:
            return LinCompressError(f"prompts file {path} {problem}")
        return ArgumentError("{} " + literal(problem), Arg(argument, str(path)))

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail("does not exist; give a text file with one prompt per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"is unreadable ({exc}); give a UTF-8 text file, one prompt per line") from None
    prompts = parse_prompts(text)
    if not prompts:
        raise fail("holds no prompts; write one prompt per line")
    return prompts


def check_prompts(prompts: Any, who: str = "prompts", allow_empty: bool = False) -> list[str]:
    """A non-empty list of strings, each non-blank unless ``allow_empty`` (a bare string is refused, not split into letters)."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise TargetError(f"{who} must be a list of strings, got {type(prompts).__name__}; e.g. {who}=['a cat running']")
    out = list(prompts)
    if not out:
        raise TargetError(f"{who} is empty; give at least one prompt (or none, for the default prompt set)")
    bad = next((p for p in out if not isinstance(p, str) or (not allow_empty and not p.strip())), None)
    if bad is not None or any(not isinstance(p, str) for p in out):
        raise TargetError(f"{who} must hold non-empty strings; found {bad!r}")
    return out


def prompt_set_hash(prompts: Sequence[str]) -> str:
    """sha256 of the prompts, in order (what the artifact records as the prompt-set identity)."""
    digest = hashlib.sha256()
    for p in prompts:
        digest.update(p.encode("utf-8") + b"\n")
    return digest.hexdigest()


def tensors_hash(tensors: dict[str, Tensor]) -> str:
    """sha256 of named tensors (names, shapes, dtypes, values): identity of a condition or an encoder's output."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tuple(value.shape)}|{value.dtype}".encode())
        digest.update(value.float().numpy().tobytes() if value.is_floating_point() else value.to(torch.int64).numpy().tobytes())
    return digest.hexdigest()


def encoder_identity(encoder: PromptEncoder) -> str:
    """``encoder.identity`` when it has one (pipeline encoders: weights fingerprint), else a probe of its output.

    The probe encodes one fixed string: a deterministic encoder of other weights gives
    other tensors, so its cache key changes with it.
    """
    identity = getattr(encoder, "identity", None)
    if identity:
        return str(identity)
    name = getattr(encoder, "__qualname__", type(encoder).__qualname__)
    return f"{name}:{tensors_hash(_checked(encoder, ['a probe prompt'], 1))}"


def _checked(encoder: PromptEncoder, prompts: list[str], count: int) -> dict[str, Tensor]:
    try:
        out = encoder(prompts)
    except LinCompressError:
        raise
    except Exception as exc:  # user / pipeline code: one line naming what failed
        raise TargetError(f"encoding prompts failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, dict) or not out:
        raise TargetError(f"the prompt encoder returned {type(out).__name__}; return a dict of model kwargs -> tensors")
    bad = [k for k, v in out.items() if not isinstance(v, Tensor) or v.dim() == 0 or v.shape[0] != count]
    if bad:
        raise TargetError(f"the prompt encoder's {bad[0]!r} is not a tensor with one row per prompt ({count})")
    return {k: v.detach().cpu() for k, v in out.items()}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def cache_key(prompts: Sequence[str], identity: str) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "prompts": prompt_set_hash(prompts), "encoder": identity}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def encode_prompts(
    prompts: Sequence[str], encoder: PromptEncoder, cache_dir: str | Path | None = None, *,
    chunk_size: int = DEFAULT_CHUNK, identity: str | None = None,
    progress: Callable[[int, int], None] | None = None, allow_empty: bool = False,
) -> dict[str, Tensor]:
    """Encode every prompt once; with ``cache_dir``, resumably through safetensors chunks (see the module doc).

    ``allow_empty`` admits the empty string (CFG's default negative prompt).
    """
    prompts = check_prompts(prompts, allow_empty=allow_empty)
    if chunk_size < 1:
        raise LinCompressError(f"chunk_size must be at least 1, got {chunk_size}")
    if cache_dir is None:
        parts = [_checked(encoder, list(prompts[i:i + chunk_size]), len(prompts[i:i + chunk_size]))
                 for i in range(0, len(prompts), chunk_size)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    identity = identity or encoder_identity(encoder)
    key = cache_key(prompts, identity)
    folder = Path(cache_dir) / key
    manifest_path = folder / "manifest.json"
    header = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key, "num_prompts": len(prompts),
              "prompts_sha256": prompt_set_hash(prompts), "encoder": identity, "chunk_size": chunk_size}
    manifest = _read_json(manifest_path)
    chunks: dict[int, dict[str, Any]] = {}
    if manifest and all(manifest.get(k) == v for k, v in header.items()):
        chunks = {int(c["index"]): c for c in manifest.get("chunks", []) if (folder / c["file"]).is_file()}
    if not (folder / "prompts.txt").is_file():
        atomic.write_text(folder / "prompts.txt", "\n".join(prompts) + "\n")
    total = -(-len(prompts) // chunk_size)
    parts: list[dict[str, Tensor]] = []
    for index in range(total):
        batch = list(prompts[index * chunk_size:(index + 1) * chunk_size])
        part = None
        if index in chunks:
            try:
                part = load_file(str(folder / chunks[index]["file"]))
            except Exception:  # a corrupt chunk is re-encoded, never trusted
                part = None
            if part is not None and any(v.shape[0] != len(batch) for v in part.values()):
                part = None
        if part is None:
            part = _checked(encoder, batch, len(batch))
            name = f"chunk-{index:05d}.safetensors"
            atomic.write_safetensors(folder / name, part, {"format": CACHE_FORMAT, "key": key,
                                                           "first": str(index * chunk_size), "count": str(len(batch))})
            chunks[index] = {"index": index, "file": name, "count": len(batch)}
            atomic.write_json(manifest_path, {**header, "keys": sorted(part),
                                              "chunks": [chunks[i] for i in sorted(chunks)]})
        parts.append(part)
        if progress is not None:
            progress(index + 1, total)
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        raise LinCompressError(f"prompt cache {folder} mixes chunks with different tensors; delete it and re-run")
    return {k: torch.cat([p[k] for p in parts]) for k in sorted(keys)}


class PromptConditions:
    """A ``Target.conditions`` source made of prompts: ``(batch, generator) -> {kwarg: [batch, ...]}``.

    Each draw picks ``batch`` prompts uniformly (from ``generator``, so resumed training
    replays the same prompts). ``prepare(cache_dir)`` encodes the whole set through the
    cache; a draw before ``prepare`` encodes it in memory. ``example(batch)`` encodes
    only the first prompt, for example inputs (``inspect`` never encodes the whole set).
    """

    def __init__(self, prompts: Sequence[str], encoder: PromptEncoder) -> None:
        self.prompts = check_prompts(prompts)
        self.encoder = encoder
        self.embeddings: dict[str, Tensor] | None = None
        self._first: dict[str, Tensor] | None = None

    @property
    def size(self) -> int:
        return len(self.prompts)

    @property
    def sha256(self) -> str:
        return prompt_set_hash(self.prompts)

    def prepare(self, cache_dir: str | Path | None = None, progress: Callable[[int, int], None] | None = None
                ) -> dict[str, Tensor]:
        if self.embeddings is None:
            self.embeddings = encode_prompts(self.prompts, self.encoder, cache_dir, progress=progress)
        return self.embeddings

    def example(self, batch: int) -> dict[str, Tensor]:
        if self.embeddings is not None:
            first = {k: v[:1] for k, v in self.embeddings.items()}
        else:
            if self._first is None:
                self._first = _checked(self.encoder, self.prompts[:1], 1)
            first = self._first
        return {k: v.expand(batch, *v.shape[1:]).clone() for k, v in first.items()}

    def __call__(self, batch: int, generator: torch.Generator) -> dict[str, Tensor]:
        embeddings = self.prepare()
        index = torch.randint(self.size, (batch,), generator=generator)
        return {k: v[index] for k, v in embeddings.items()}


class PromptNegative:
    """The unconditional branch of CFG from a (negative) prompt: ``(batch) -> {kwarg: [batch, ...]}``, encoded once."""

    def __init__(self, prompt: str, encoder: PromptEncoder) -> None:
        if not isinstance(prompt, str):
            raise TargetError(f"negative_prompt must be a string, got {type(prompt).__name__}")
        self.prompt = prompt
        self.encoder = encoder
        self._encoded: dict[str, Tensor] | None = None

    def prepare(self, cache_dir: str | Path | None = None) -> dict[str, Tensor]:
        if self._encoded is None:
            self._encoded = encode_prompts([self.prompt], self.encoder, cache_dir, allow_empty=True)
        return self._encoded

    def __call__(self, batch: int) -> dict[str, Tensor]:
        return {k: v.expand(batch, *v.shape[1:]).clone() for k, v in self.prepare().items()}

