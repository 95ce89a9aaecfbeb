"""Launch configs of the fused linear-attention kernels, tuned on a GPU; generated, do not edit by hand.

Written by ``benchmarks/tune_linear_attention.py`` (it writes this whole file as
``benchmarks/results/tuned_configs.py``; copy it here to commit a tuning run). Keys are
``"<feature_map>:<D>x<Dv>:<layout>"``; values map kernel name (state, output,
bwd_query, bwd_key) to ``KernelConfig`` fields. Shapes without an entry use
``linear_attention_triton.DEFAULT_CONFIGS``; one-part maps without their own entry use
relu's.
"""

SOURCE = "none yet: DEFAULT_CONFIGS apply"

TUNED_CONFIGS: dict[str, dict[str, dict[str, int]]] = {}
