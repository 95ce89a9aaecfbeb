"""`lincompress bench` and lincompress.benchmarking, on CPU with the shipped tiny example.

No timing assertions beyond sanity: numbers exist, are positive and finite, and the
rows are the models asked for.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from lincompress import benchmarking as bm
from lincompress.attention import iter_sites
from lincompress.cli import main
from lincompress.errors import LinCompressError, LinCompressWarning

FAST = ["--warmup", "1", "--reps", "2", "--sampling-reps", "1", "--device", "cpu"]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_writes_json_with_every_row(repo, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        ["bench", str(repo / "examples/tiny_wan/model.py"), "--targets", "0.5,1.0", "--steps", "2",
         "--feature-map", "relu", "--json", str(out), *FAST],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "original" in result.output and "linear 0.5" in result.output
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [r["variant"] for r in rows] == ["original", "linear 0.5", "linear 1"]
    assert [r["num_linear"] for r in rows] == [0, 3, 6]
    assert all(r["num_candidates"] == 6 for r in rows)
    assert rows[1]["linear_sites"] == ["blocks.1.attn1#0", "blocks.3.attn1#0", "blocks.5.attn1#0"]
    for r in rows:
        assert _positive(r["forward_ms"]) and _positive(r["sampling_ms"])
        assert r["forward"]["min_ms"] <= r["forward_ms"] <= r["forward"]["max_ms"]
        assert r["forward"]["reps"] == 2 and r["sampling"]["reps"] == 1
        assert _positive(r["speedup_forward"]) and _positive(r["speedup_sampling"])
        assert r["peak_memory_bytes"] is None  # CPU: no device memory figure
        assert r["output_finite"] is True
    assert rows[0]["speedup_forward"] == pytest.approx(1.0)
    s = report["settings"]
    assert s["steps"] == 2 and s["targets"] == [0.5, 1.0] and s["feature_map"] == "relu" and s["compile"] is False
    assert s["dtype"] == "float32" and s["sampler"].startswith("FlowMatchEulerDiscreteScheduler")
    env = report["environment"]
    assert env["device_type"] == "cpu" and env["device"] and env["torch"] == torch.__version__
    assert env["linear_attention_backend"] == "pytorch reference"


def test_bench_an_artifact(repo, tmp_path):
    from lincompress import Pipeline, load_target, passes

    target = load_target(repo / "examples/tiny_wan/model.py")
    Pipeline([passes.FindAttention(), passes.Hybridize(feature_map="elu1"), passes.HeuristicSelect(0.5, "first"),
              passes.Fix(), passes.Save(tmp_path / "art")]).run(target)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", str(repo / "examples/tiny_wan/model.py"), "--artifact",
                                       str(tmp_path / "art"), "--steps", "1", "--json", str(out), *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [r["num_linear"] for r in report["rows"]] == [0, 3]
    assert report["rows"][1]["linear_sites"] == ["blocks.0.attn1#0", "blocks.1.attn1#0", "blocks.2.attn1#0"]
    assert report["settings"]["feature_map"] == "elu1" and report["settings"]["selection"].startswith("artifact")
    assert all(_positive(r["forward_ms"]) for r in report["rows"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--targets", "0.5,abc"], "not a number"),
        (["--targets", "1.5"], "out of range"),
        (["--targets", "0.5,,0.7"], "comma-separated"),
        (["--targets", "0.5", "--artifact", "somewhere"], "exclusive"),
        (["--steps", "-1"], "--steps"),
    ],
)
def test_bad_options_are_one_line_errors(repo, tmp_path, extra, message):
    result = CliRunner().invoke(main, ["bench", str(repo / "examples/tiny_wan/model.py"), "--json",
                                       str(tmp_path / "b.json"), *extra])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "b.json").exists()


def test_parse_targets():
    assert bm.parse_targets("1, 0.5,0.7,0.5") == [0.5, 0.7, 1.0]
    for bad in ("", "nan", "-0.1", "x"):
        with pytest.raises(LinCompressError):
            bm.parse_targets(bad)


def test_fixed_in_place_restores_the_original(repo):
    from lincompress import load_target
    from lincompress.passes import FindAttention
    from lincompress.pipeline import State
    from lincompress.selection import heuristic_selection

    target = load_target(repo / "examples/tiny_wan/model.py")
    model = target.model
    state = FindAttention().run(State(target=target, model=model))
    keys, classes = list(model.state_dict()), [type(m) for m in model.modules()]
    kwargs = target.inputs(1)
    with torch.no_grad():
        before = model(**kwargs)[0]
        chosen = heuristic_selection(state.candidates, 0.5, "uniform")
        with bm.fixed_in_place(model, state.sites, chosen, "relu"):
            assert sorted(n for n, _ in iter_sites(model)) == sorted(chosen)
            assert all(s.mode == "linear" for _, s in iter_sites(model))
            changed = model(**kwargs)[0]
        with pytest.raises(RuntimeError), bm.fixed_in_place(model, state.sites, chosen, "relu"):
            raise RuntimeError("interrupted")
        after = model(**kwargs)[0]
    assert not iter_sites(model)
    assert list(model.state_dict()) == keys and [type(m) for m in model.modules()] == classes
    assert torch.equal(before, after) and not torch.allclose(before, changed)


class _Velocity(nn.Module):
    """v(x, t) = x: a stand-in denoiser that records its timesteps."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, hidden_states, timestep):
        self.seen.append(timestep)
        return (hidden_states,)


def test_plain_euler_sampler_without_a_scheduler():
    model = _Velocity()
    x0 = torch.ones(2, 3)
    sample, description = bm.make_sampler(model, {"hidden_states": x0, "timestep": torch.zeros(2)}, "hidden_states",
                                          "timestep", None, 4)
    out = sample()
    assert "Euler" in description and len(model.seen) == 4
    assert [float(t[0]) for t in model.seen] == pytest.approx([1000.0, 750.0, 500.0, 250.0])
    assert all(t.shape == (2,) and t.is_contiguous() for t in model.seen)
    assert torch.allclose(out, x0 * 0.75**4)  # x <- x - 0.25 x, four times
    with pytest.raises(LinCompressError):
        bm.make_sampler(model, {"x": x0}, "hidden_states", "timestep", None, 1)


def test_time_call_and_memory_on_cpu():
    calls = []
    timing = bm.time_call(lambda: calls.append(1), torch.device("cpu"), warmup=2, reps=3)
    assert len(calls) == 5 and timing.reps == 3 and timing.min_ms <= timing.median_ms <= timing.max_ms
    assert timing.peak_memory_bytes is None and bm.peak_memory(lambda: None, torch.device("cpu")) is None
    assert bm.format_memory(None) == "n/a" and bm.format_memory(3 * 2**30) == "3.00 GiB"


def test_cast_model_keeps_float32_modules():
    class Net(nn.Module):
        _keep_in_fp32_modules = ["norm"]

        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)
            self.register_buffer("steps", torch.arange(3))

    net = bm.cast_model(Net(), torch.device("cpu"), torch.bfloat16)
    assert net.proj.weight.dtype == torch.bfloat16 and net.norm.weight.dtype == torch.float32
    assert net.steps.dtype == torch.int64
    assert bm.cast_model(Net(), torch.device("cpu"), torch.float16).norm.weight.dtype == torch.float32
    assert bm.cast_model(Net(), torch.device("cpu"), torch.float32).proj.weight.dtype == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_cuda_device_without_a_gpu_is_a_one_line_error(repo, tmp_path):
    result = CliRunner().invoke(main, ["bench", str(repo / "examples/tiny_wan/model.py"), "--device", "cuda",
                                       "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 2 and "no CUDA GPU" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_e2e_script_runs_at_toy_sizes(repo, tmp_path):
    """benchmarks/e2e.py (a GPU benchmark) end to end on CPU with --tiny, so it cannot rot unnoticed."""
    import runpy

    e2e = runpy.run_path(str(repo / "benchmarks/e2e.py"), run_name="e2e_under_test")
    out = tmp_path / "e2e.json"
    results = e2e["main"](["--tiny", "--configs", "tiny:eager", "--targets", "0.5,1.0", "--time-per-variant-s", "0.01",
                           "--min-reps", "1", "--max-reps", "1", "--json", str(out), "--device", "cpu"])
    saved = json.loads(out.read_text())
    rows = saved["configs"][0]["rows"]
    assert [(r["variant"], r["num_linear"]) for r in rows] == [("softmax", 0), ("linear 0.5 (relu)", 2),
                                                                ("linear 1 (relu)", 4)]
    assert all(_positive(r["forward_ms"]) and r["output_finite"] for r in rows)
    assert "| tiny (48) | eager |" in results["table_md"] and saved["environment"]["device_type"] == "cpu"


def test_exception_line_keeps_type_and_first_line_only():
    assert bm.exception_line(ValueError("first\nsecond")) == "ValueError: first"
    assert bm.exception_line(RuntimeError()) == "RuntimeError: "
    assert bm.exception_line(OSError("x" * 50), limit=10) == "OSError: " + "x" * 10


def test_timings_report_their_spread(monkeypatch):
    durations = iter([0.0, 0.0,  # the warm-up call: start and end
                      0.0, 0.010, 1.0, 1.012, 2.0, 2.011, 3.0, 3.040, 4.0, 4.010])  # 10, 12, 11, 40, 10 ms
    monkeypatch.setattr(bm.time, "perf_counter", lambda: next(durations))
    timing = bm.time_call(lambda: None, torch.device("cpu"), warmup=1, reps=5)
    assert timing.median_ms == pytest.approx(11.0) and timing.min_ms == pytest.approx(10.0)
    assert timing.max_ms == pytest.approx(40.0)
    assert (timing.q1_ms, timing.q3_ms) == (pytest.approx(10.0), pytest.approx(12.0))  # the outlier is in max, not the IQR
    assert timing.spread == pytest.approx(2 / 11) and timing.wide and timing.to_dict()["spread"] == pytest.approx(0.1818)
    tight = bm.Timing.of([10.0, 10.1, 10.3, 10.4], warmup=1, first_call_s=0.0)  # median 10.2, quartiles 10.075 / 10.325
    assert not tight.wide and bm.format_timing(tight.to_dict()) == "10.2 ±1%"
    assert bm.format_timing(timing.to_dict()) == "11.0 ±9%!"
    assert bm.Timing.of([5.0], 0, 0.0).spread == 0.0
    lo, hi = bm.speedup_range(tight, timing)  # quartiles of both: the speed-up is somewhere in here
    assert lo == pytest.approx(10.075 / 12.0) and hi == pytest.approx(10.325 / 10.0)


def test_bench_warns_once_when_timings_spread_wide_and_records_the_spread(repo, tmp_path, monkeypatch):
    noisy = iter(range(1000))

    def fake_time_call(fn, device, warmup=2, reps=10):
        fn()
        wide = next(noisy) == 0  # only the original's forward is noisy
        return bm.Timing.of([1.0, 1.0, 5.0, 5.0] if wide else [2.0, 2.0, 2.0, 2.1], warmup, 0.0)

    monkeypatch.setattr(bm, "time_call", fake_time_call)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", str(repo / "tests/commands/tiny_model.py"), "--targets", "1",
                                       "--steps", "1", "--json", str(out), *FAST], terminal_width=200)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "timings spread wide" in lines[0] and "original forward (133%)" in lines[0]
    report = json.loads(out.read_text())
    assert report["format"] == "lincompress-bench" and report["warnings"] == [lines[0].removeprefix("warning: ")]
    original, linear = report["rows"]
    assert original["forward"]["spread"] == pytest.approx(4 / 3, rel=1e-3) and original["forward"]["q3_ms"] == 5.0
    assert linear["speedup_forward_range"] == [pytest.approx(1.0 / 2.025, rel=1e-3), pytest.approx(5.0 / 2.0)]
    noisy = iter(range(1000))
    with pytest.warns(LinCompressWarning, match="timings spread wide"):
        bm.bench(str(repo / "tests/commands/tiny_model.py"), targets=[1.0], steps=0, reps=2, warmup=0)
