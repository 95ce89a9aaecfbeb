"""The checkpoint format: named states on torch.distributed.checkpoint, verified on load, written atomically."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from lincompress import atomic
from lincompress.recovery.checkpoint import (
    LATEST, CheckpointError, OptimizerState, ParameterState, RNGState, TensorDict, latest_step, load_checkpoint,
    read_checkpoint_info, save_checkpoint,
)


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Linear(6, 3))
    model[1].bias.requires_grad_(False)  # frozen: not in the checkpoint
    optimizer = torch.optim.AdamW([{"params": [model[0].weight], "lr": 1e-2, "name": "a"},
                                   {"params": [model[0].bias, model[1].weight], "lr": 1e-3, "name": "b"}])
    return model, optimizer


def _train(model, optimizer, generator, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(4, 6, generator=generator)).pow(2).sum().backward()
        optimizer.step()


def _states(model, optimizer, generator, **more):
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    return {"model": ParameterState(params), "optimizer": OptimizerState(model, optimizer), "rng": RNGState(generator),
            **more}


def _save(directory, step=3, extra=None):
    model, optimizer = _model_and_optimizer()
    generator = torch.Generator().manual_seed(1)
    _train(model, optimizer, generator, step)
    return save_checkpoint(directory, step, _states(model, optimizer, generator), extra or {"elapsed": 1.5})


def test_resume_from_a_checkpoint_is_bit_exact_with_every_rng_stream(tmp_path):
    model, optimizer = _model_and_optimizer()
    generator = torch.Generator().manual_seed(1)
    _train(model, optimizer, generator, 3)
    random.seed(7)
    np.random.seed(7)
    save_checkpoint(tmp_path, 3, _states(model, optimizer, generator, aux=TensorDict({"x": torch.arange(3.0)})),
                    {"elapsed": 1.5, "velocity_error_before": 0.25})
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    _train(model, optimizer, generator, 3)
    want = {k: v.clone() for k, v in model.state_dict().items()}

    model2, optimizer2 = _model_and_optimizer()
    generator2 = torch.Generator().manual_seed(99)
    aux = TensorDict()
    random.seed(0)
    info = load_checkpoint(tmp_path, _states(model2, optimizer2, generator2, aux=aux))
    assert info.step == 3 and info.extra == {"elapsed": 1.5, "velocity_error_before": 0.25}
    assert torch.equal(aux.tensors["x"], torch.arange(3.0))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == draws
    assert [g["name"] for g in optimizer2.param_groups] == ["a", "b"]
    _train(model2, optimizer2, generator2, 3)
    for name, value in want.items():
        assert torch.equal(model2.state_dict()[name], value), name


def test_no_checkpoint_is_none_and_the_layout_is_a_verified_pointer(tmp_path):
    assert load_checkpoint(tmp_path / "none", {}) is None and latest_step(tmp_path / "none") is None
    path = _save(tmp_path)
    assert path == tmp_path / "step-0000003"
    pointer = json.loads((tmp_path / LATEST).read_text())
    assert pointer["dir"] == "step-0000003" and pointer["step"] == 3 and len(pointer["sha256"]) == 64
    info = json.loads((path / "checkpoint.json").read_text())
    assert set(info["files"]) == {p.name for p in path.iterdir()} - {"checkpoint.json"}  # DCP's .metadata + data


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_a_corrupt_tensor_file_is_refused_naming_the_file(tmp_path):
    path = _save(tmp_path)
    data = next(p for p in path.iterdir() if p.suffix == ".distcp")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside the tensor data
    data.write_bytes(bytes(raw))
    model, optimizer = _model_and_optimizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path, _states(model, optimizer, torch.Generator()))
    assert str(data) in _one_line(err.value) and "does not match its checksum" in str(err.value)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # nothing was loaded


@pytest.mark.parametrize("victim", ["checkpoint.json", ".metadata", "pointer"])
def test_every_file_of_the_chain_is_verified(tmp_path, victim):
    path = _save(tmp_path)
    if victim == "pointer":
        (tmp_path / LATEST).write_text('{"step": 3, "stem": "ckpt-0000003"}')  # the previous format
        match = "not a checkpoint pointer this lincompress writes"
    else:
        with open(path / victim, "ab") as fh:
            fh.write(b"x")
        match = f"{path / victim} does not match its checksum"
    with pytest.raises(CheckpointError, match=match) as err:
        read_checkpoint_info(tmp_path)
    _one_line(err.value)


def test_a_missing_file_and_a_missing_state_are_one_line_errors(tmp_path):
    path = _save(tmp_path)
    model, optimizer = _model_and_optimizer()
    with pytest.raises(CheckpointError, match="holds no 'objective' state"):
        load_checkpoint(tmp_path, _states(model, optimizer, torch.Generator(), objective=TensorDict()))
    (path / ".metadata").unlink()
    with pytest.raises(CheckpointError, match=r"\.metadata is missing") as err:
        load_checkpoint(tmp_path, _states(model, optimizer, torch.Generator()))
    _one_line(err.value)


def test_a_crash_mid_save_leaves_the_previous_checkpoint_in_force(tmp_path, monkeypatch):
    _save(tmp_path, step=2)

    write_json = atomic.write_json

    def crash(path, data):  # dies writing the new checkpoint.json: its DCP files are on disk, nothing points there
        if path.name == "checkpoint.json":
            raise OSError("disk full")
        return write_json(path, data)

    monkeypatch.setattr(atomic, "write_json", crash)
    with pytest.raises(OSError):
        _save(tmp_path, step=4)
    assert (tmp_path / ".partial-step-0000004").is_dir()  # what a kill -9 mid-save leaves
    assert read_checkpoint_info(tmp_path).step == 2
    monkeypatch.undo()
    _save(tmp_path, step=6)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, "step-0000006"]  # older and partial ones removed


def test_saving_the_same_step_again_replaces_it(tmp_path):
    _save(tmp_path, step=3, extra={"n": 1})
    again = _save(tmp_path, step=3, extra={"n": 2})
    assert read_checkpoint_info(tmp_path).extra == {"n": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST, again.name]


def test_states_must_be_string_keyed_trees_of_tensors_and_json(tmp_path):
    with pytest.raises(TypeError, match="keys must be strings"):
        save_checkpoint(tmp_path, 1, {"bad": TensorDict({0: torch.zeros(1)})})
    with pytest.raises(TypeError, match="tensors must sit in dicts"):
        save_checkpoint(tmp_path, 1, {"bad": TensorDict({"x": [torch.zeros(1)]})})
    assert not (tmp_path / LATEST).exists()
