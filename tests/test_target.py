"""model.py contract: every way to get it wrong gives one clear TargetError line."""

from __future__ import annotations

import textwrap

import pytest

from lincompress import Target, load_target
from lincompress.errors import TargetError


def _write(tmp_path, body: str):
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(body))
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    with pytest.raises(TargetError, match="does not exist") as exc:
        load_target(tmp_path / "nope.py")
    assert "model.py" in _one_line(exc)


def test_no_build(tmp_path):
    with pytest.raises(TargetError, match=r"defines no build\(\)") as exc:
        load_target(_write(tmp_path, "x = 1\n"))
    _one_line(exc)


def test_import_error_is_reported(tmp_path):
    with pytest.raises(TargetError, match="importing .* failed: ModuleNotFoundError") as exc:
        load_target(_write(tmp_path, "import not_a_module_xyz\n"))
    _one_line(exc)


def test_build_raising(tmp_path):
    with pytest.raises(TargetError, match=r"build\(\) raised RuntimeError: boom") as exc:
        load_target(_write(tmp_path, "def build():\n    raise RuntimeError('boom')\n"))
    _one_line(exc)


def test_wrong_return_type(tmp_path):
    with pytest.raises(TargetError, match=r"build\(\) returned int") as exc:
        load_target(_write(tmp_path, "def build():\n    return 3\n"))
    _one_line(exc)


def test_target_model_must_be_module():
    with pytest.raises(TargetError, match="must be a torch.nn.Module"):
        Target(model="not a module", example_inputs=lambda b: {})


def test_example_inputs_must_return_dict(tmp_path):
    path = _write(tmp_path, """
        import torch
        from lincompress import Target
        def build():
            return Target(model=torch.nn.Linear(2, 2), example_inputs=lambda b: torch.zeros(b, 2))
    """)
    with pytest.raises(TargetError, match="returned Tensor; return a dict"):
        load_target(path).inputs(1)


def test_good_model_py_loads_with_name_and_source(repo):
    target = load_target(repo / "examples" / "tiny_wan" / "model.py")
    assert target.name == "tiny-wan"
    assert target.extras["source"].endswith("model.py")
    assert set(target.inputs(2)) >= {"hidden_states", "timestep", "encoder_hidden_states"}
