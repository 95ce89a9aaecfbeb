"""``torch.export`` of a (fixed) model, the one way every exporter and test gets a program.

Dead code is eliminated after tracing: a hand-written ``matmul -> softmax -> matmul``
site that runs linear still computes its (unused) scores in eager mode, and only DCE
makes the exported graph hold exactly the linear-attention op there.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn


def export_model(model: nn.Module, kwargs: dict[str, Any], dynamic_shapes: Any = None) -> torch.export.ExportedProgram:
    program = torch.export.export(model, (), kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    graph = program.graph_module.graph
    graph.eliminate_dead_code()
    _drop_orphan_asserts(graph)
    program.graph_module.recompile()
    return program


def _drop_orphan_asserts(graph: torch.fx.Graph) -> None:
    """Metadata asserts keep otherwise dead values alive (a linear site's unused softmax, cast by ``.type()``):
    drop the asserts whose checked value nothing else uses, then the values they kept."""
    while True:
        orphans = [n for n in graph.nodes if n.op == "call_function" and "_assert_tensor_metadata" in str(n.target)
                   and n.args and isinstance(n.args[0], torch.fx.Node) and len(n.args[0].users) == 1]
        if not orphans:
            return
        for node in orphans:
            graph.erase_node(node)
        graph.eliminate_dead_code()


def attention_op_counts(program: torch.export.ExportedProgram) -> Counter:
    """How many linear-attention, SDPA and softmax nodes a program holds."""
    counts: Counter = Counter()
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        target = str(node.target)
        if "lincompress.linear_attention" in target:
            counts["linear_attention"] += 1
        elif "scaled_dot_product" in target:
            counts["sdpa"] += 1
        elif "softmax" in target:
            counts["softmax"] += 1
    return counts
