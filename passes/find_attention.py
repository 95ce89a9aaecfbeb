"""FindAttention: trace the model, record and classify every attention site."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from lincompress.config import PassConfig, option
from lincompress.pipeline import BasePass, State


@dataclass
class FindAttentionConfig(PassConfig):
    include: list[str] = option(default_factory=list, metavar="SITE",
                                help="Site name forced to be a candidate (repeatable).")


@contextmanager
def attributes_kept(model: nn.Module) -> Iterator[None]:
    """Discovery only reads the model: put back every module attribute tracing replaced.

    ``torch.export`` (non-strict) swaps a module's list/tuple attributes for equal copies,
    which breaks anything holding a reference to them (ModelOpt keeps its state list on
    the root module).
    """
    snapshot = [(m, dict(m.__dict__)) for m in model.modules()]
    try:
        yield
    finally:
        for module, attrs in snapshot:
            for key, value in attrs.items():
                if key in module.__dict__ and module.__dict__[key] is not value:
                    module.__dict__[key] = value


class FindAttention(BasePass):
    """Discovery only reads the model, so it records nothing: Hybridize's metadata keeps the sites."""

    name = "find-attention"
    config_class = FindAttentionConfig
    produces = ("sites",)

    def run(self, state: State) -> State:
        from lincompress.discovery import find_attention_sites
        from lincompress.fingerprint import model_fingerprint
        from lincompress.graph import trace_model

        extra = {"include": list(self.config.include)} if self.config.include else {}
        with attributes_kept(state.model):
            traced = trace_model(state.model, state.target.inputs(1))
            state.sites = find_attention_sites(state.target, traced, **extra)
        state.trace_method = traced.method
        state.base_hash = model_fingerprint(state.model)
        return state
