"""A tiny random-weight Wan2.1-architecture DiT: the quick-start example (runs on CPU in seconds).

Same code path as the real Wan2.1 (diffusers ``WanTransformer3DModel``): self-attention
with 3-D RoPE, cross-attention to text, adaLN modulation; only the sizes are small.
"""

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

from lincompress import Target

TEXT_LEN, TEXT_DIM = 16, 32
LATENT_SHAPE = (4, 3, 8, 8)  # (C, F, H, W): 3 * 4 * 4 = 48 video tokens after 1x2x2 patches


def build() -> Target:
    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=TEXT_DIM, freq_dim=32, ffn_dim=64, num_layers=6, cross_attn_norm=True, rope_max_seq_len=64,
    ).eval()

    def conditions(batch_size: int, generator: torch.Generator) -> dict:
        return {"encoder_hidden_states": torch.randn(batch_size, TEXT_LEN, TEXT_DIM, generator=generator)}

    def example_inputs(batch_size: int) -> dict:
        g = torch.Generator().manual_seed(1)
        return {
            "hidden_states": torch.randn(batch_size, *LATENT_SHAPE, generator=g),
            "timestep": torch.full((batch_size,), 500.0),
            **conditions(batch_size, g),
            "return_dict": False,
        }

    return Target(
        model=model,
        example_inputs=example_inputs,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        conditions=conditions,
        latent_shape=LATENT_SHAPE,
        name="tiny-wan",
    )
