"""lincompress as a ModelOpt mode: ``import lincompress.modelopt`` registers ``linear_attention``.

    import modelopt.torch.opt as mto
    import lincompress.modelopt  # noqa: F401  (registers the mode)

    model = mto.apply_mode(model, [("linear_attention", {"target_linear": 0.5, "select": "uniform",
                                                         "example_inputs": {"hidden_states": x, "timestep": t}})])

The mode runs lincompress's own passes (find -> hybridize [-> select -> fix]) and stores
their recipe as its metadata, so ``mto.modelopt_state`` / ``mto.restore_from_modelopt_state``,
``mto.save`` / ``mto.restore`` and, after ``mto.enable_huggingface_checkpointing()``,
diffusers' ``save_pretrained`` / ``from_pretrained`` rebuild the same model, and ModelOpt's
own modes (``mtq.quantize``) compose after it. See ``lincompress.modelopt.mode``.
"""

from lincompress.modelopt.mode import (
    LinearAttentionConfig,
    LinearAttentionModeDescriptor,
    LinearAttentionModeRegistry,
    convert_linear_attention,
    linear_sites,
    restore_linear_attention,
)

__all__ = [
    "LinearAttentionConfig", "LinearAttentionModeDescriptor", "LinearAttentionModeRegistry",
    "convert_linear_attention", "linear_sites", "restore_linear_attention",
]
