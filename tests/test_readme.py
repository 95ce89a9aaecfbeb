"""Every ```python block of README.md runs as written (the Python API snippets must stay true).

A block that cannot run here is preceded by ``<!-- readme-test: skip -- <why> -->``; the reason
is shown as the skip reason and must say why. Blocks run in a scratch directory that sees the
repository's ``examples/``, one fresh namespace each, on one thread.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"(?:<!-- readme-test: skip -- (?P<skip>[^\n]*?) -->\n)?```python\n(?P<code>.*?)```", re.DOTALL)


def _blocks() -> list[tuple[str, str, str | None]]:
    text = README.read_text(encoding="utf-8")
    out = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code")) + 1
        heading = ([h for h in re.findall(r"^#+ (.+)$", text[:match.start()], re.MULTILINE)] or ["top"])[-1]
        out.append((f"README.md:{line} ({heading})", match.group("code"), match.group("skip")))
    return out


BLOCKS = _blocks()


def test_the_readme_has_python_blocks_and_every_skip_says_why():
    assert len(BLOCKS) >= 4
    for where, _, skip in BLOCKS:
        assert skip is None or len(skip.split()) >= 5, f"{where}: a skipped block must say why it cannot run"


@pytest.mark.parametrize(("where", "code", "skip"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_readme_python_block_runs(where, code, skip, tmp_path, monkeypatch, one_thread):
    if skip is not None:
        pytest.skip(skip)
    (tmp_path / "examples").symlink_to(README.parent / "examples")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, where, "exec"), namespace)  # noqa: S102
    if "mto.apply_mode" in code:  # the ModelOpt block: the fixed model has the learned selection
        import lincompress.modelopt as lm

        assert lm.linear_sites(namespace["model"]) == namespace["state"].selection
