"""Launch configs of the fused linear-attention kernels, tuned on a GPU; generated, do not edit by hand.

Written by ``benchmarks/tune_linear_attention.py`` (it writes this whole file as
``benchmarks/results/tuned_configs.py``; copy it here to commit a tuning run). Keys are
``"<feature_map>:<D>x<Dv>:<layout>"``; values map kernel name (state, output,
bwd_query, bwd_key) to ``KernelConfig`` fields. Shapes without an entry use
``linear_attention_triton.DEFAULT_CONFIGS``; one-part maps without their own entry use
relu's.
"""

SOURCE = 'NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0, 2026-12-01T12:24:38 (state, output); 24 kernel entries kept from: NVIDIA H200, torch 2.11.0+cu130, triton 3.6.0, 2026-12-01T10:33:09'

TUNED_CONFIGS: dict[str, dict[str, dict[str, int]]] = {
    'hedgehog:128x128:bhnd': {
        'state': {'block_n': 64, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 1, 'block_dv': 128, 'split': 0, 'maxnreg': 0, 'tc_norm': 0},
        'output': {'block_n': 64, 'num_warps': 4, 'num_stages': 1, 'programs_per_sm': 2, 'block_dv': 0, 'split': 0, 'maxnreg': 0, 'tc_norm': 1},
        'bwd_query': {'block_n': 16, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 1, 'block_dv': 128, 'split': 0},
        'bwd_key': {'block_n': 32, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 1, 'block_dv': 0, 'split': 0},
    },
    'hedgehog:128x128:bnhd': {
        'state': {'block_n': 64, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 1, 'block_dv': 128, 'split': 0, 'maxnreg': 0, 'tc_norm': 0},
        'output': {'block_n': 64, 'num_warps': 4, 'num_stages': 1, 'programs_per_sm': 2, 'block_dv': 0, 'split': 0, 'maxnreg': 0, 'tc_norm': 1},
        'bwd_query': {'block_n': 16, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 1, 'block_dv': 128, 'split': 0},
        'bwd_key': {'block_n': 32, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 1, 'block_dv': 0, 'split': 0},
    },
    'hedgehog:64x64:bhnd': {
        'state': {'block_n': 32, 'num_warps': 4, 'num_stages': 3, 'programs_per_sm': 3, 'block_dv': 64, 'split': 0, 'maxnreg': 0, 'tc_norm': 0},
        'output': {'block_n': 64, 'num_warps': 4, 'num_stages': 3, 'programs_per_sm': 3, 'block_dv': 0, 'split': 0, 'maxnreg': 0, 'tc_norm': 1},
        'bwd_query': {'block_n': 32, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 1, 'block_dv': 64, 'split': 0},
        'bwd_key': {'block_n': 32, 'num_warps': 4, 'num_stages': 3, 'programs_per_sm': 3, 'block_dv': 0, 'split': 0},
    },
    'hedgehog:64x64:bnhd': {
        'state': {'block_n': 32, 'num_warps': 4, 'num_stages': 3, 'programs_per_sm': 3, 'block_dv': 64, 'split': 0, 'maxnreg': 0, 'tc_norm': 0},
        'output': {'block_n': 64, 'num_warps': 4, 'num_stages': 3, 'programs_per_sm': 3, 'block_dv': 0, 'split': 0, 'maxnreg': 0, 'tc_norm': 1},
        'bwd_query': {'block_n': 32, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 4, 'block_dv': 64, 'split': 0},
        'bwd_key': {'block_n': 32, 'num_warps': 4, 'num_stages': 3, 'programs_per_sm': 3, 'block_dv': 0, 'split': 0},
    },
    'relu:128x128:bhnd': {
        'state': {'block_n': 64, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 1, 'block_dv': 128, 'split': 0},
        'output': {'block_n': 64, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 2, 'block_dv': 0, 'split': 0},
        'bwd_query': {'block_n': 32, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 1, 'block_dv': 128, 'split': 0},
        'bwd_key': {'block_n': 64, 'num_warps': 16, 'num_stages': 3, 'programs_per_sm': 1, 'block_dv': 0, 'split': 0},
    },
    'relu:128x128:bnhd': {
        'state': {'block_n': 64, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 1, 'block_dv': 128, 'split': 0},
        'output': {'block_n': 64, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 2, 'block_dv': 0, 'split': 0},
        'bwd_query': {'block_n': 32, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 1, 'block_dv': 128, 'split': 0},
        'bwd_key': {'block_n': 64, 'num_warps': 16, 'num_stages': 3, 'programs_per_sm': 1, 'block_dv': 0, 'split': 0},
    },
    'relu:64x64:bhnd': {
        'state': {'block_n': 64, 'num_warps': 4, 'num_stages': 3, 'programs_per_sm': 3, 'block_dv': 64, 'split': 0},
        'output': {'block_n': 64, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 3, 'block_dv': 0, 'split': 0},
        'bwd_query': {'block_n': 64, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 2, 'block_dv': 64, 'split': 0},
        'bwd_key': {'block_n': 64, 'num_warps': 4, 'num_stages': 3, 'programs_per_sm': 2, 'block_dv': 0, 'split': 0},
    },
    'relu:64x64:bnhd': {
        'state': {'block_n': 128, 'num_warps': 4, 'num_stages': 3, 'programs_per_sm': 2, 'block_dv': 64, 'split': 0},
        'output': {'block_n': 64, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 3, 'block_dv': 0, 'split': 0},
        'bwd_query': {'block_n': 64, 'num_warps': 8, 'num_stages': 3, 'programs_per_sm': 1, 'block_dv': 64, 'split': 0},
        'bwd_key': {'block_n': 64, 'num_warps': 4, 'num_stages': 3, 'programs_per_sm': 1, 'block_dv': 0, 'split': 0},
    },
}
