"""Progress bar (rich) and the JSONL metrics log of a recovery run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lincompress import atomic


class MetricsLog:
    """One JSON object per logged step, appended and flushed (a log, not state: resume truncates it).

    ``write=False`` keeps the records in memory only (the ranks of a process group other than 0).
    """

    def __init__(self, path: str | Path, write: bool = True) -> None:
        self.path = Path(path)
        self.write = write
        self.records: list[dict[str, Any]] = []

    def resume_at(self, step: int) -> None:
        """Keep the records up to ``step`` (the checkpoint's) and rewrite the file atomically."""
        self.records = [r for r in self.read(self.path) if r.get("step", 0) <= step]
        if self.write:
            atomic.write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def start(self) -> None:
        self.records = []
        if self.write:
            atomic.write_text(self.path, "")

    def append(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.records.append(clean)
        if self.write:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(clean) + "\n")

    @staticmethod
    def read(path: str | Path) -> list[dict[str, Any]]:
        path = Path(path)
        if not path.is_file():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                continue
        return records


class TrainingProgress:
    """A rich bar: step, loss, linear sites so far, elapsed and ETA. ``enabled=False`` prints nothing."""

    def __init__(self, total: int, num_sites: int, target_k: int | None, enabled: bool = True, start: int = 0,
                 label: str = "recover") -> None:
        self.num_sites = num_sites
        self.target_k = target_k
        self.progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("objective {task.fields[loss]}"), TextColumn("linear {task.fields[linear]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), disable=not enabled,
        )
        self.task = self.progress.add_task("recover", total=total, completed=start, loss="-", linear="-")

    def __enter__(self) -> TrainingProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, step: int, loss: float, num_linear: int) -> None:
        target = f"/{self.target_k}" if self.target_k is not None else ""
        self.progress.update(self.task, completed=step, loss=f"{loss:.4g}",
                             linear=f"{num_linear}{target} of {self.num_sites}")
