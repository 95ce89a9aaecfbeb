"""Custom operators owned by lincompress (registered with ``torch.library``); their spec is ``ops.spec``."""

from lincompress.ops import spec
from lincompress.ops.linear_attention import (
    linear_attention,
    linear_attention_backward_reference,
    linear_attention_reference,
)
from lincompress.ops.spec import FEATURE_MAP_NAMES, LAYOUTS, SITE_FEATURE_MAPS

__all__ = [
    "FEATURE_MAP_NAMES",
    "LAYOUTS",
    "SITE_FEATURE_MAPS",
    "linear_attention",
    "linear_attention_backward_reference",
    "linear_attention_reference",
    "spec",
]
