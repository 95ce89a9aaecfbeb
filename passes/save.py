"""Save: write the fixed model as an artifact directory (its recipe + the weights it adds or changes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lincompress.config import MISSING, PassConfig, option
from lincompress.pipeline import BasePass, State


@dataclass
class SaveConfig(PassConfig):
    out_dir: str = option(MISSING, cli="--out", help="Artifact directory to write.")
    overwrite: bool = option(False, help="Replace an artifact lincompress wrote in the output directory (its files only).")


class Save(BasePass):
    name = "save"
    config_class = SaveConfig
    requires = ("fixed",)
    produces = ("artifact",)
    main_process_only = True  # several processes: rank 0 writes the artifact (lincompress.distributed.passes)

    @property
    def planned_outputs(self) -> dict[str, Path]:  # later passes' preflights (Report) check where it will write
        return {"artifact": Path(self.config.out_dir)}

    def check(self, state: State) -> None:
        from lincompress.artifacts import check_out_dir

        check_out_dir(self.config.out_dir, self.config.overwrite)

    def run(self, state: State) -> State:
        from lincompress.artifacts import save_artifact

        state.outputs["artifact"] = save_artifact(state, Path(self.config.out_dir), overwrite=self.config.overwrite)
        return state
