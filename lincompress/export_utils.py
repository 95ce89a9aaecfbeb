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
    program.graph_module.graph.eliminate_dead_code()
    program.graph_module.recompile()
    return program


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
