"""`lincompress inspect` on models only the eager path can read, with --include, and on models that do not run."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from lincompress.cli import main

_MODEL_PY = '''
import torch
import torch.nn.functional as F
from torch import nn

from lincompress import Target


class Attention(nn.Module):
    def __init__(self, chained=False):
        super().__init__()
        self.chained = chained
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        heads = lambda t: t.unflatten(-1, (2, 8)).transpose(1, 2)
        q = heads(x) if self.chained else heads(self.q(x))
        if self.chained:  # queries from another attention's raw output: discovery cannot follow them
            q = F.scaled_dot_product_attention(q, q, q)
        return F.scaled_dot_product_attention(q, heads(self.k(x)), heads(self.v(x))).transpose(1, 2).flatten(2)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 16)
        self.blocks = nn.ModuleList([Attention(), Attention(chained=True)])

    def forward(self, hidden_states):
        x = self.proj(hidden_states)
        if x.sum().item() > -1e9:  # Python control flow on a tensor value: no graph can be built
            for block in self.blocks:
                x = x + block(x{broken})
        return x


def build():
    torch.manual_seed(0)
    return Target(model=Model().eval(), example_inputs=lambda b: {{"hidden_states": torch.randn(b, 12, 4)}})
'''


def _write(tmp_path, broken: str = "") -> str:
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(_MODEL_PY.format(broken=broken)))
    return str(path)


def test_inspect_reads_an_untraceable_model_eagerly(tmp_path):
    result = CliRunner().invoke(main, ["inspect", _write(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["trace_method"] == "eager" and set(data["fallback_reasons"]) == {"fx", "export"}
    assert data["tokens"] == {"latent_key": "hidden_states", "latent_shape": [1, 12, 4],
                              "query_tokens": {"self": 12}}
    sites = {s["name"]: s for s in data["sites"]}
    assert sites["blocks.0#0"]["candidate"] and sites["blocks.0#0"]["why_not"] == ""
    assert not sites["blocks.1#1"]["sure"] and sites["blocks.1#1"]["why_not"] == "unsure"
    assert 0 < data["candidate_flops_share"] <= sum(s["flops_share"] for s in data["sites"]) <= 1


def test_inspect_table_says_how_it_read_the_model_and_what_it_is_unsure_of(tmp_path):
    result = CliRunner().invoke(main, ["inspect", _write(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Read with one eager forward (no graph could be built)." in result.output
    assert "Unsure of blocks.1#1: left softmax; name them with --include" in result.output
    assert "Latent hidden_states 1x12x4; attention runs over 12 (self) query tokens." in result.output


def test_inspect_include_makes_an_unsure_site_a_candidate(tmp_path):
    result = CliRunner().invoke(main, ["inspect", _write(tmp_path), "--json", "--include", "blocks.1#1"])
    assert result.exit_code == 0, result.output
    site = next(s for s in json.loads(result.output)["sites"] if s["name"] == "blocks.1#1")
    assert site["candidate"] and site["included"]


@pytest.mark.parametrize(("args", "broken", "message"), [
    (["--include", "blocks.9#0"], "", "error: --include names sites the model does not have: blocks.9#0"),
    ([], ".transpose(1, 2)", "error: could not run Model: its forward failed in blocks.0.q (Linear) at linear"),
])
def test_inspect_errors_are_one_line(tmp_path, args, broken, message):
    result = CliRunner().invoke(main, ["inspect", _write(tmp_path, broken), *args])
    assert result.exit_code == 2
    assert result.output.startswith(message), result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
