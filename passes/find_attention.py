"""FindAttention: trace the model, record and classify every attention site."""

from __future__ import annotations

from dataclasses import dataclass

from lincompress.discovery import find_attention_sites
from lincompress.fingerprint import model_fingerprint
from lincompress.graph import trace_model
from lincompress.pipeline import State


@dataclass
class FindAttention:
    name: str = "find-attention"

    def run(self, state: State) -> State:
        traced = trace_model(state.model, state.target.inputs(1))
        state.trace_method = traced.method
        state.sites = find_attention_sites(state.target, traced)
        state.base_hash = model_fingerprint(state.model)
        return state
