"""benchmarks/vae_compile.py: the compiled Wan VAE decode reaches steady state, decodes like eager, and undoes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import e2e_generation  # noqa: E402
import vae_compile  # noqa: E402
from vae_compile import DynamoCounts  # noqa: E402


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


def test_compiled_decode_is_one_graph_equal_to_eager_with_no_recompiles_and_undoes():
    vae = e2e_generation.build_vae(e2e_generation.VAE_TINY, torch.device("cpu"), torch.float32)
    latent = torch.randn(1, vae.config.z_dim, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()  # a decoder graph another test left behind would serve this one's guards
    with torch.no_grad():
        eager = vae.decode(latent).sample
        undo = vae_compile.compile_vae_decode(vae, "aot_eager")
        outputs, counts = [], []
        for _ in range(3):
            before = DynamoCounts.now()
            outputs.append(vae.decode(latent).sample)
            counts.append(DynamoCounts.now() - before)
        with pytest.raises(RuntimeError, match="already overridden"):
            vae_compile.compile_vae_decode(vae, "aot_eager")
        undo()
        assert "forward" not in vars(vae.decoder)  # the class's eager forward again
        before = DynamoCounts.now()
        after_undo = vae.decode(latent).sample
        assert DynamoCounts.now() - before == DynamoCounts(0, 0, 0, 0, 0)  # nothing goes through dynamo any more
    warmup, *timed = counts
    assert (warmup.compiles, warmup.graphs, warmup.eager_fallbacks, warmup.graph_breaks) == (1, 1, 0, 0)
    assert all(c == DynamoCounts(0, 0, 0, 0, 0) for c in timed)  # second and third decode: no recompile
    assert vae_compile.steady_state_warnings({"warmup": warmup, "timed": timed[0]}) == []
    for out in (*outputs, after_undo):
        assert out.shape == eager.shape and (out - eager).abs().max().item() < 1e-5


def test_cache_tails_get_contiguous_strides():
    activation = torch.randn(1, 3, 4, 5, 6)
    view = activation[:, :, -2:]  # what inductor hands back for the tail that eager clones
    tail = vae_compile._canonical(view)
    assert tail.stride() == (180, 60, 30, 6, 1) and torch.equal(tail, view)
    plain = torch.randn(1, 3, 2, 5, 6)
    odd = plain.as_strided(plain.shape, (7, 60, 30, 6, 1))  # contiguous, another stride on the size-1 batch dim
    fixed = vae_compile._canonical(odd)
    assert fixed.stride() == (180, 60, 30, 6, 1) and fixed.data_ptr() == plain.data_ptr() and torch.equal(fixed, plain)
    assert vae_compile._canonical(plain) is plain


def test_steady_state_warnings_name_recompiles_after_warmup_and_eager_fallbacks():
    clean = DynamoCounts(0, 0, 0, 0, 0)
    warmup = DynamoCounts(compiles=3, compiled_ok=3, graphs=3, graph_breaks=0, recompile_limit_hits=0)
    assert vae_compile.steady_state_warnings({"warmup": warmup, "timed_decodes": clean}) == []
    recompiled = DynamoCounts(compiles=2, compiled_ok=2, graphs=2, graph_breaks=0, recompile_limit_hits=0)
    limit = DynamoCounts(compiles=1, compiled_ok=0, graphs=0, graph_breaks=0, recompile_limit_hits=1)
    warnings = vae_compile.steady_state_warnings({"warmup": limit, "timed_decodes": recompiled})
    assert warnings == ["warmup: 1 compile(s) fell back to eager (1 at the recompile limit)",
                        "timed_decodes: dynamo compiled 2 more frame(s) after the warm-up"]
