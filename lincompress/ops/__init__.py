"""Custom operators owned by lincompress (registered with ``torch.library``)."""

from lincompress.ops.linear_attention import (
    linear_attention_backward_reference,
    ELEMENTWISE_FEATURE_MAPS,
    LAYOUTS,
    linear_attention,
    linear_attention_reference,
)

__all__ = ["ELEMENTWISE_FEATURE_MAPS", "LAYOUTS", "linear_attention", "linear_attention_reference"]
