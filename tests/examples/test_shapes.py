"""The shapes world (rendering, condition encoding, analytic metrics) and the shipped teacher."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SHAPES = Path(__file__).resolve().parents[2] / "examples" / "shapes"


def _load(name: str):
    key = f"lincompress_examples_shapes_{name}"  # the names model.py registers, so both share one module
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, SHAPES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


world = _load("world")


def _batch(n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    conds = world.sample_conditions(n, g)
    return world.render(conds, g), conds


def test_rendering_is_deterministic_and_seed_dependent():
    a, ca = _batch(seed=3)
    b, cb = _batch(seed=3)
    c, _ = _batch(seed=4)
    assert ca == cb
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (24, *world.LATENT_SHAPE)
    assert a.min() >= -1 and a.max() <= 1


def test_rendered_object_has_the_asked_colour_and_moves_the_asked_way():
    cond = world.Condition(shape=0, colour=0, direction=0, speed=1)  # red square, east, fast
    clip = world.render([cond], torch.Generator().manual_seed(0))[0]  # (3, F, H, W)
    frames = (clip + 1) / 2
    red, green = frames[0], frames[1]
    assert red.max() == pytest.approx(1.0) and green.max() == pytest.approx(0.0)
    xs = torch.arange(world.SIZE, dtype=torch.float32)
    cx = [(red[f].sum(0) * xs).sum() / red[f].sum() for f in range(world.FRAMES)]
    steps = torch.tensor([cx[f + 1] - cx[f] for f in range(world.FRAMES - 1)])
    assert torch.allclose(steps, torch.full_like(steps, 2.0), atol=0.05)  # 2 px per frame to the right


def test_condition_embeddings_are_fixed():
    """The shipped teacher was trained on exactly these embeddings; they must never change."""
    tables = world.embedding_tables()
    expected = {"colour": (-1.676502, 13.58918), "shape": (1.174943, -29.03383),
                "direction": (0.724132, -4.29385), "speed": (0.492011, 13.96902)}
    for name, (first, total) in expected.items():
        assert float(tables[name][0, 0]) == pytest.approx(first, abs=1e-5)
        assert float(tables[name].sum()) == pytest.approx(total, abs=1e-3)
    conds = [world.Condition(1, 2, 3, 0), world.Condition(1, 2, 3, 1)]
    emb = world.encode(conds)
    assert emb.shape == (2, world.TEXT_LEN, world.TEXT_DIM)
    assert torch.equal(emb[0, :3], emb[1, :3]) and not torch.equal(emb[0, 3], emb[1, 3])


def test_metrics_score_correct_clips_high():
    clips, conds = _batch(48)
    scores = world.summarize(world.score_clips(world.to_frames(clips), conds))
    for key in ("presence", "colour_correct", "class_correct", "direction_correct", "world_score"):
        assert scores[key] == 1.0, key
    assert scores["smoothness_px"] < 0.1
    assert scores["temporal_consistency"] > 0.95
    assert scores["speed_error"] < 0.05


@pytest.mark.parametrize("wrong, metric", [
    (lambda c: dataclasses.replace(c, colour=(c.colour + 1) % 6), "colour_correct"),
    (lambda c: dataclasses.replace(c, direction=(c.direction + 4) % 8), "direction_correct"),
    (lambda c: dataclasses.replace(c, shape=(c.shape + 1) % 3), "class_correct"),
])
def test_metrics_score_wrong_clips_low(wrong, metric):
    clips, conds = _batch(48)
    scores = world.summarize(world.score_clips(world.to_frames(clips), [wrong(c) for c in conds]))
    assert scores[metric] == 0.0
    assert scores["world_score"] <= 0.75


def test_metrics_catch_reversed_time_and_frozen_and_empty_clips():
    clips, conds = _batch(16)
    reversed_clips = clips.flip(2)  # played backwards: the motion is reversed
    assert world.summarize(world.score_clips(world.to_frames(reversed_clips), conds))["direction_cos"] < -0.99
    frozen = clips[:, :, :1].expand_as(clips)  # the first frame repeated: no motion
    assert world.summarize(world.score_clips(world.to_frames(frozen), conds))["direction_correct"] == 0.0
    empty = world.summarize(world.score_clips(world.to_frames(torch.full_like(clips, -1.0)), conds))
    assert empty["presence"] == 0.0 and empty["world_score"] == 0.0


def test_shipped_teacher_loads_as_a_target():
    from lincompress.target import load_target

    target = load_target(SHAPES / "model.py")
    teacher = _load("teacher")
    n_params = sum(p.numel() for p in target.model.parameters())
    assert 5e6 < n_params < 20e6
    assert len(target.model.transformer.blocks) >= 8
    assert (SHAPES / "teacher.safetensors").stat().st_size <= 20e6
    kwargs = target.inputs(2)
    with torch.no_grad():
        out = target.model(**kwargs)[0]
    assert out.shape == (2, *world.LATENT_SHAPE)
    cond = target.conditions(3, torch.Generator().manual_seed(0))
    assert cond["encoder_hidden_states"].shape == (3, world.TEXT_LEN, world.TEXT_DIM)
    assert target.scheduler.config.shift == teacher.SHIFT
    assert "world" in target.extras


def test_shipped_teacher_draws_what_it_is_asked_for():
    """A few CPU samples of the shipped teacher are scored by the analytic world metrics."""
    teacher = _load("teacher")
    model = teacher.load_teacher()
    g = torch.Generator().manual_seed(11)
    conds = world.sample_conditions(6, g)
    noise = torch.randn(6, *world.LATENT_SHAPE, generator=g)
    clips = teacher.euler_sample(model, noise, world.encode(conds), steps=12)
    scores = world.summarize(world.score_clips(world.to_frames(clips), conds))
    assert scores["presence"] == 1.0
    assert scores["colour_correct"] >= 5 / 6
    assert scores["class_correct"] >= 4 / 6
    assert scores["smoothness_px"] < 1.0


def test_captions_are_the_worlds_prompts_and_the_empty_prompt_is_the_fixed_null_condition():
    conds = world.all_conditions()
    assert len(conds) == 288 and len(set(conds)) == 288
    assert all(world.parse_caption(c.describe()) == c for c in conds)
    encoder = world.CaptionEncoder()
    out = encoder([conds[5].describe(), "", conds[7].describe()])["encoder_hidden_states"]
    torch.testing.assert_close(out[0], world.encode([conds[5]])[0])
    torch.testing.assert_close(out[1], world.null_embedding())
    assert world.null_embedding().pow(2).mean().sqrt() == pytest.approx(1.0, abs=0.2)  # like the attribute tables
    assert not any(torch.allclose(world.null_embedding()[i], t[j]) for t in world.embedding_tables().values()
                   for i in range(world.TEXT_LEN) for j in range(t.shape[0]))
    with pytest.raises(ValueError, match="unknown colour 'purple'"):
        world.parse_caption("a purple circle moving east, slow")


def test_the_target_is_conditioned_on_captions_with_the_teachers_guidance_scale():
    from lincompress.target import load_target

    teacher = _load("teacher")
    target = load_target(SHAPES / "model.py")
    assert target.prompt_info()["size"] == 288 and target.negative_prompt == ""
    assert target.guidance_scale == teacher.guidance_scale()
    torch.testing.assert_close(target.negative_conditions(2)["encoder_hidden_states"], world.encode_null(2))
    meta = teacher.teacher_metadata()
    assert target.guidance_scale == (float(meta.get("guidance_scale", 1.0)) if meta.get("cond_dropout") else 1.0)


def test_train_teacher_fine_tunes_with_condition_dropout_and_records_the_swept_guidance_scale(tmp_path):
    import json
    import os
    import subprocess

    teacher = _load("teacher")
    cmd = [sys.executable, str(SHAPES / "train_teacher.py"), "--init", str(SHAPES / "teacher.safetensors"),
           "--out", str(tmp_path), "--cond-dropout", "0.5", "--max-steps", "2", "--batch", "2", "--eval-samples", "1",
           "--sample-steps", "1", "--guidance-sweep", "1,2.5", "--sweep-samples", "1", "--log-every", "1", "--no-pictures"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny run: one thread beats two on a shared CI core
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, env=env)
    meta = teacher.teacher_metadata(tmp_path / "teacher.safetensors")
    assert meta["cond_dropout"] == 0.5 and meta["guidance_scale"] == 2.5  # the only scale above 1
    assert [r["scale"] for r in meta["guidance_sweep"]] == [1.0, 2.5]
    events = [json.loads(line).get("event") for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert events.count("guidance_sweep") == 2 and "guidance_chosen" in events
    assert teacher.guidance_scale(tmp_path / "teacher.safetensors") == 2.5
    assert (tmp_path / "teacher.safetensors").stat().st_size <= 20e6
