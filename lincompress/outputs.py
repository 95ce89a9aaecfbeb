"""Output directories: lincompress writes only where it may, and replaces only what it wrote.

Every directory lincompress writes files into (an artifact, ``eval --out``, exports) keeps a
record of the files it wrote there, ``.lincompress-files.json`` (relative path -> size,
modification time and SHA-256). A file is *ours* while it is recorded and unchanged since; everything else is the
user's. The rules, checked before any work starts:

* a path that is a file, or lies under one, is refused (one line naming both);
* a non-empty directory with nothing of ours is refused at once (the user's project, say);
* a file we are about to write that exists and is not ours is refused, whatever the flags;
* a file of ours is replaced only when the caller allows it (``optimize --overwrite`` for an
  artifact; ``eval`` and ``export`` replace their own earlier outputs);
* files we did not write are never touched, even in a directory of ours.

``.lincompress-work`` (training state; see ``lincompress.api.WORK_DIR``) and the record
itself are reserved names: a directory holding only them is ours (an interrupted run).
Artifacts written before this record existed are recognised by their ``lincompress.json``;
the names lincompress writes into an artifact count as ours there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lincompress import atomic
from lincompress.config import Arg, ArgumentError, literal

RECORD = ".lincompress-files.json"
WORK_DIR = ".lincompress-work"  # training state inside an artifact directory (checkpoints, caches)
_RESERVED = (RECORD, WORK_DIR)
_FORMAT, _VERSION = "lincompress-files", 1
# what an artifact directory written before the record existed holds (lincompress.json marks one)
_LEGACY = ("lincompress.json", "weights.safetensors", "report.md", "recovery_loss.png", "selection_scores.png",
           "metrics.jsonl", "eval.json", "eval.md", "eval_grid.png", "eval.gif")


class OutputError(ArgumentError):
    """An output path that would overwrite, or write under, something lincompress must not touch."""


def _refuse(problem: str, arg: str | None, advice: str = "choose another", *arguments: Arg) -> OutputError:
    """``problem; <advice> <arg>``: the argument as ``out_dir`` / ``--out``, or "path" when there is none.

    ``advice`` may hold ``{}`` placeholders for ``arguments`` (they come first).
    """
    if arg is None:
        return OutputError(f"{problem}; {advice} path", *arguments)
    return OutputError(f"{problem}; {advice} {{}}", *arguments, Arg(arg))


def check_location(path: str | Path, arg: str | None = "out_dir", kind: str = "directory") -> Path:
    """Refuse a ``path`` that cannot be a ``kind`` ("directory" or "file") because something is in the way."""
    path = Path(path)
    if kind == "directory" and path.exists() and not path.is_dir():
        raise _refuse(f"{literal(path)} is a file, not a directory", arg)
    if kind == "file" and path.is_dir():
        raise _refuse(f"{literal(path)} is a directory, not a file", arg)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise _refuse(f"{literal(path)} lies under {literal(parent)}, which is a file", arg)
            break
    return path


def _exist(paths: list[str]) -> str:
    return ", ".join(paths) + (" exists" if len(paths) == 1 else " exist")


class OutputDir:
    """A directory lincompress writes into, with the record of the files it wrote there.

    ``arg`` names the argument that chose the directory (``out_dir``: ``--out`` on the CLI), or
    None when it is not a choice of the caller's.
    """

    def __init__(self, path: str | Path, arg: str | None = "out_dir") -> None:
        self.path = check_location(path, arg)
        self.arg = arg
        self._record: dict[str, dict[str, Any]] | None = None

    # -- what is ours -------------------------------------------------------------------
    @property
    def record(self) -> dict[str, dict[str, Any]]:
        """Relative path -> ``{"size", "sha256"}`` of every file lincompress wrote here."""
        if self._record is None:
            self._record = self._read()
        return self._record

    def _read(self) -> dict[str, dict[str, Any]]:
        path = self.path / RECORD
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                files = data["files"] if data.get("format") == _FORMAT else {}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                files = {}  # unreadable: nothing counts as ours, so nothing is overwritten
            return {k: v for k, v in files.items() if isinstance(v, dict)}
        if (self.path / "lincompress.json").is_file():  # an artifact from before the record
            return {name: {"legacy": True} for name in _LEGACY if (self.path / name).is_file()}
        return {}

    def is_ours(self, rel: str) -> bool:
        entry = self.record.get(rel)
        path = self.path / rel
        if entry is None or not path.is_file():
            return False
        if entry.get("legacy"):
            return True
        stat = path.stat()
        if stat.st_size != entry.get("size"):
            return False
        return stat.st_mtime_ns == entry.get("mtime_ns") or atomic.sha256_file(path) == entry.get("sha256")

    def entries(self) -> list[str]:
        """Every file (relative path) under the directory except the reserved names."""
        if not self.path.is_dir():
            return []
        out = []
        for root, dirs, files in os.walk(self.path):
            rel_root = Path(root).relative_to(self.path)
            if rel_root == Path("."):
                dirs[:] = [d for d in dirs if d not in _RESERVED]
            out += [(rel_root / f).as_posix() for f in files if not (rel_root == Path(".") and f in _RESERVED)]
            out += [(rel_root / d).as_posix() + "/" for d in dirs if not os.listdir(Path(root) / d)]  # empty dirs
        return sorted(out)

    def foreign(self) -> list[str]:
        return [e for e in self.entries() if not self.is_ours(e)]

    # -- the check before any work ---------------------------------------------------------
    def check(self, names: Iterable[str], *, replace: bool, what: str = "outputs",
              replace_arg: Arg | None = None) -> None:
        """Refuse before any work if writing ``names`` (relative paths; ``dir/`` for a whole subdirectory) would
        touch a file that is not ours, or one of ours without ``replace``.

        ``what`` names what is there for the message ("an artifact"); ``replace_arg`` is the
        argument that allows replacing it (``overwrite=True``), if any.
        """
        entries = self.entries()
        if not entries:
            return
        mine = [e for e in entries if self.is_ours(e)]
        if not mine:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise _refuse(f"{literal(self.path)} holds files lincompress did not write ({literal(shown)})", self.arg,
                          "choose an empty or new")
        self._check_targets(entries, names, replace=replace, what=literal(self.path) + " already holds " + literal(what),
                            replace_arg=replace_arg)

    def check_files(self, names: Iterable[str], *, replace: bool, replace_arg: Arg | None = None) -> None:
        """Refuse before any work if writing the files ``names`` here would touch a file that is not ours, or one
        of ours without ``replace``. Unlike ``check``, other files may be in the directory (a user's project
        folder receiving one exported file): only the named files matter."""
        names = list(names)
        for name in names:
            check_location(self.path / name, self.arg, kind="file")
        self._check_targets(self.entries(), names, replace=replace, replace_arg=replace_arg,
                            what=_exist([literal(self.path / n) for n in names if (self.path / n).exists()]))

    def _check_targets(self, entries: list[str], names: Iterable[str], *, replace: bool, what: str,
                       replace_arg: Arg | None) -> None:
        names = list(names)
        targets = [e for e in entries if any(e == n or (n.endswith("/") and e.startswith(n)) for n in names)]
        for entry in targets:
            if not self.is_ours(entry):
                raise _refuse(f"{literal(self.path / entry)} was not written by lincompress (or was changed since) "
                              "and would be overwritten", self.arg, "move it away or choose another")
        if targets and not replace:
            if replace_arg is None:
                raise _refuse(what, self.arg)
            raise _refuse(what, self.arg, "pass {} or choose another", replace_arg)

    # -- recording what was written ----------------------------------------------------------
    def add(self, paths: Iterable[str | Path], hashes: dict[str, str] | None = None) -> None:
        """Record files just written (paths absolute or relative to the directory); ``hashes``: known SHA-256s."""
        record = {k: v for k, v in self.record.items() if not v.get("legacy")}
        if len(record) != len(self.record):  # a legacy artifact: its files become recorded ones
            record.update({k: self._entry(self.path / k) for k, v in self.record.items() if v.get("legacy")})
        for p in paths:
            path = Path(p) if Path(p).is_absolute() else self.path / p
            rel = path.relative_to(self.path).as_posix()
            record[rel] = self._entry(path, (hashes or {}).get(rel))
        self._write(record)

    def forget(self, rels: Iterable[str]) -> None:
        """Delete files of ours (never another file) and drop them from the record."""
        record = dict(self.record)
        for rel in rels:
            if self.is_ours(rel):
                (self.path / rel).unlink()
            record.pop(rel, None)
        self._write(record)

    @staticmethod
    def _entry(path: Path, sha256: str | None = None) -> dict[str, Any]:
        stat = path.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256 or atomic.sha256_file(path)}

    def _write(self, record: dict[str, dict[str, Any]]) -> None:
        self._record = record
        atomic.write_json(self.path / RECORD, {"format": _FORMAT, "version": _VERSION, "files": dict(sorted(record.items()))})

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Record every file created or changed under the directory while the block runs (for writers that
        choose their own file names, like the exporters)."""
        before = self._stat()
        try:
            yield
        finally:
            after = self._stat()
            changed = [rel for rel, stat in after.items() if before.get(rel) != stat]
            if changed:
                self.add(changed)

    def _stat(self) -> dict[str, tuple[int, int]]:
        out = {}
        for rel in self.entries():
            if not rel.endswith("/"):
                st = (self.path / rel).stat()
                out[rel] = (st.st_size, st.st_mtime_ns)
        return out
