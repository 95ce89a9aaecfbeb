"""Fixed (hybridized + selected + fixed) zoo models shared by the exporter tests."""

from __future__ import annotations

import pytest
from zoo import ZOO

from lincompress import Pipeline, passes


def _fixed_state(name: str, feature_map: str, target_linear: float = 0.5, extra_steps: tuple = ()):
    target = ZOO[name].build()
    steps = [passes.FindAttention(), passes.Hybridize(feature_map=feature_map),
             passes.HeuristicSelect(target_linear=target_linear), passes.Fix(), *extra_steps]
    return Pipeline(steps).run(target)


def _expected_counts(state) -> tuple[int, int]:
    """(linear sites, softmax attention sites) of a fixed model: K, and (L - K) + the cross-attention sites."""
    k = len(state.selection)
    return k, len(state.sites) - k


@pytest.fixture(scope="session")
def fixed_state():
    return _fixed_state


@pytest.fixture(scope="session")
def expected_counts():
    return _expected_counts


@pytest.fixture(scope="session")
def fixed_wan():
    """Tiny Wan, default Hedgehog feature map (one LinearAttention node with feature_map="hedgehog"), K = 1 of 2."""
    return _fixed_state("wan", "hedgehog")
