"""Regional ``torch.compile``: each transformer block compiled instead of the whole model, and undone after.

Why regional: a DiT is N copies of one block class, so compiling the block compiles one graph
that every block reuses (seconds instead of minutes), keeps the Python between blocks (samplers,
pipelines, gradient checkpointing's wrapper, FSDP2's hooks) out of the graph, and lets each
attention-site mode a block can be in (hybrid / linear / softmax, with and without grad) be its
own cached graph. It is the recipe diffusers documents for its transformers
(``pipe.transformer.compile_repeated_blocks()``), done on the blocks ``transformer_blocks``
finds so it works on any model: a model without repeated blocks is compiled whole.

``nn.Module.compile()`` changes the module it is called on (its ``_compiled_call_impl``), and a
teacher is often the user's own model, so compilation lives in a context manager that puts
every module back as it was; blocks the user had compiled already are left as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from lincompress.distributed.sharding import transformer_blocks

# Graphs one block may need: site modes (hybrid, linear, softmax) x grad / no-grad x the
# teacher's plain blocks, with room for the shapes a run meets. Dynamo's default (8) would
# silently send a block back to eager once a run had frozen a few sites.
RECOMPILE_LIMIT = 64


def compile_regions(model: nn.Module) -> list[nn.Module]:
    """The modules regional compilation compiles: the model's transformer blocks, else the model itself."""
    blocks = [block for _, block in transformer_blocks(model)]
    return blocks or [model]


@contextmanager
def compiled_blocks(models: Iterable[nn.Module], backend: str = "inductor", **options: Any) -> Iterator[int]:
    """Compile every model's blocks (``torch.compile(backend=..., **options)``) inside the ``with``.

    Yields how many modules it compiled. On exit every module it compiled is eager again, and
    dynamo's recompile limit is back to what it was.
    """
    compiled: list[nn.Module] = []
    seen: set[int] = set()
    for model in models:
        for region in compile_regions(model):
            if id(region) in seen or getattr(region, "_compiled_call_impl", None) is not None:
                continue  # shared between models, or compiled by the user: theirs stays
            seen.add(id(region))
            compiled.append(region)
    config = torch._dynamo.config
    limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    try:
        with config.patch(recompile_limit=limit,
                          accumulated_recompile_limit=max(config.accumulated_recompile_limit, limit * 4)):
            for region in compiled:
                region.compile(backend=backend, **options)
            yield len(compiled)
    finally:
        for region in compiled:
            region._compiled_call_impl = None
