"""Save: write the fixed model as an artifact directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lincompress.artifacts import save_artifact
from lincompress.pipeline import State


@dataclass
class Save:
    out_dir: str | Path
    overwrite: bool = False
    name: str = "save"

    def run(self, state: State) -> State:
        state.outputs["artifact"] = save_artifact(state, Path(self.out_dir), overwrite=self.overwrite)
        return state
