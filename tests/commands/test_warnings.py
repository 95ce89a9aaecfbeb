"""The CLI's warnings: one line with flag names, said by rank 0 alone (the torchrun run: tests/distributed)."""

from __future__ import annotations

import warnings

import pytest

from lincompress.commands._warnings import shown_warnings
from lincompress.config import Arg, ArgumentWarning, default_flag
from lincompress.errors import LinCompressWarning


def _warn_twice() -> None:
    warnings.warn(ArgumentWarning("{} makes 0 of 3 sites linear", Arg("target_linear", 0.1)))
    warnings.warn(LinCompressWarning("the model is on cuda:0"))


@pytest.mark.parametrize("rank, lines", [(None, ["warning: --target-linear 0.1 makes 0 of 3 sites linear",
                                                 "warning: the model is on cuda:0"]),
                                         ("0", ["warning: --target-linear 0.1 makes 0 of 3 sites linear",
                                                "warning: the model is on cuda:0"]),
                                         ("1", [])])
def test_only_rank_0_shows_the_warnings_every_rank_meets(monkeypatch, capsys, rank, lines):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)  # torchrun's variable: no process group exists yet
    with shown_warnings(default_flag):
        _warn_twice()
    captured = capsys.readouterr()
    assert captured.err.splitlines() == lines and captured.out == ""


def test_other_warnings_keep_pythons_display_on_every_rank(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with pytest.warns(UserWarning, match="torch says"):  # not ours: shown as Python shows it, not swallowed
        with shown_warnings(default_flag):
            warnings.warn(UserWarning("torch says"))
