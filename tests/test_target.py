"""model.py contract: every way to get it wrong gives one clear TargetError line."""

from __future__ import annotations

import textwrap

import pytest

from lincompress import Target, load_target
from lincompress.errors import LinCompressError, TargetError


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


# -- prompts, guidance and resolution -------------------------------------------------------------------


def _tiny_target(**kwargs):
    import torch

    model = torch.nn.Linear(2, 2)
    return Target(model=model, example_inputs=lambda b: {"x": torch.zeros(b, 2)}, **kwargs)


def _encoder(prompts):
    import torch

    return {"encoder_hidden_states": torch.tensor([[float(len(p))] for p in prompts])}


def test_prompt_and_guidance_fields_are_validated_in_one_line():
    import torch

    with pytest.raises(TargetError, match=r"Target\(prompts=...\) needs prompt_encoder"):
        _tiny_target(prompts=["a cat"])
    with pytest.raises(TargetError, match="either conditions=fn or prompts"):
        _tiny_target(prompts=["a cat"], prompt_encoder=_encoder, conditions=lambda b, g: {})
    with pytest.raises(TargetError, match="needs an unconditional input for CFG"):
        _tiny_target(guidance_scale=5.0, conditions=lambda b, g: {"c": torch.zeros(b, 1)})
    with pytest.raises(TargetError, match="finite number > 0"):
        _tiny_target(guidance_scale=float("nan"))
    with pytest.raises(TargetError, match="negative_prompt=...\\) needs prompt_encoder"):
        _tiny_target(negative_prompt="blurry")
    target = _tiny_target(prompt_encoder=_encoder, guidance_scale=3.0)  # no prompts: the shipped default set
    from lincompress.prompts import default_prompts

    assert target.prompts == default_prompts() and target.prompt_info()["size"] == len(default_prompts())
    assert target.negative_conditions(2)["encoder_hidden_states"].tolist() == [[0.0], [0.0]]  # the empty prompt
    assert _tiny_target(guidance_scale=1.0).teacher_guidance_scale == 1.0  # unguided needs no negative


def test_target_options_copy_the_users_target_and_refuse_what_does_not_apply(tmp_path):
    from lincompress.target import TargetOptions

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n# comment\na dog running\n")
    user = _tiny_target(prompt_encoder=_encoder, prompts=["a bird"])
    applied = TargetOptions(prompts_file=str(prompts), guidance_scale=2.0, negative_prompt="ugly").apply(user)
    assert applied is not user and applied.prompts == ["a cat", "a dog running"] and applied.guidance_scale == 2.0
    assert applied.negative_conditions(1)["encoder_hidden_states"].tolist() == [[4.0]]  # "ugly" encoded
    assert user.prompts == ["a bird"] and user.guidance_scale is None  # the user's object is untouched
    assert applied.extras["target_options"].guidance_scale == 2.0  # what an artifact records
    with pytest.raises(TargetError, match="height=64 applies to diffusers pipelines") as exc:
        TargetOptions(height=64).apply(user)
    assert exc.value.render(lambda name: "--" + name).startswith("--height 64 applies")  # the CLI's wording
    with pytest.raises(TargetError, match="has no prompt_encoder"):
        TargetOptions(prompts=("a cat",)).apply(_tiny_target())
    with pytest.raises(TargetError, match="either prompts or prompts_file"):
        TargetOptions(prompts=("a",), prompts_file=str(prompts))
    with pytest.raises(LinCompressError, match="width=-3 must be >= 1"):
        TargetOptions(width=-3)
    with pytest.raises(LinCompressError, match="guidance_scale=inf must be a finite number"):
        TargetOptions(guidance_scale=float("inf"))
    (tmp_path / "empty.txt").write_text("# only a comment\n")
    with pytest.raises(LinCompressError, match="prompts_file='.*empty.txt' holds no prompts"):
        TargetOptions(prompts_file=str(tmp_path / "empty.txt"))  # refused when made, before any model loads
    with pytest.raises(LinCompressError, match="missing.txt' does not exist"):
        TargetOptions(prompts_file=str(tmp_path / "missing.txt"))
    assert TargetOptions(height=8, guidance_scale=2.0).updated(height=16, frames=3).given() == {
        "guidance_scale": 2.0, "height": 16, "frames": 3}
    assert TargetOptions(prompts_file=str(prompts)).updated(prompts=["x"]).given() == {"prompts": ["x"]}


def test_model_py_returning_a_pipeline_gets_prompts_guidance_and_resolution(tmp_path, repo):
    from lincompress.target import TargetOptions, resolution_warning

    path = _write(tmp_path, f"""
        import sys
        sys.path.insert(0, {str(repo / "tests")!r})
        from pipelines import wan

        def build():
            return wan().pipe
    """)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox in the snow\na sailboat at sunset\n")
    options = TargetOptions(prompts_file=str(prompts), guidance_scale=2.5, height=32, width=32, frames=5,
                            max_sequence_length=8)
    target = load_target(path, options)
    assert target.prompts == ["a red fox in the snow", "a sailboat at sunset"] and target.guidance_scale == 2.5
    assert target.latent_shape == (4, 2, 4, 4) and target.resolution.tokens == 8 and resolution_warning(target) is None
    assert target.inputs(1)["encoder_hidden_states"].shape == (1, 8, 16)
    assert target.extras["pipeline"] == "WanPipeline" and target.name == tmp_path.name


def test_a_bare_relative_model_py_is_named_after_its_directory(tmp_path, monkeypatch, repo):
    """``lincompress inspect model.py`` run where model.py lives: the name must not be empty ("": 8 sites)."""
    import shutil

    project = tmp_path / "my_dit"
    project.mkdir()
    shutil.copy(repo / "tests" / "commands" / "tiny_model.py", project / "model.py")
    (project / "model.py").write_text((project / "model.py").read_text().replace(
        'name="tiny-dit"', 'name="model"').replace(
        "TESTS = Path(__file__).resolve().parents[1]", f"TESTS = Path({str(repo / 'tests')!r})"))
    monkeypatch.chdir(project)
    assert load_target("model.py").name == "my_dit"
    assert load_target("./model.py").name == "my_dit"
    pipeline = tmp_path / "my_pipeline"
    pipeline.mkdir()
    _write(pipeline, f"""
        import sys
        sys.path.insert(0, {str(repo / "tests")!r})
        from pipelines import wan

        def build():
            return wan().pipe
    """)
    monkeypatch.chdir(pipeline)
    assert load_target("model.py").name == "my_pipeline"  # was "" for a pipeline
