"""Complete tiny diffusers text-to-video pipelines, built in memory (no hub): for tests that need a real pipeline.

Each builder returns a ``PipelineCase``: the pipeline (random-weight transformer, VAE
and text encoder(s) of the family's real classes, a word-level ``tokenizers`` tokenizer
over the words of lincompress's default prompt set) and a small resolution it runs at
in milliseconds, with the prompt options (text length, template) that keep it small.
The schedulers are flow-matching ones (CogVideoX's own is v-prediction DDIM, which
recovery does not train against; the tiny CogVideoX uses flow-matching UniPC instead).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from lincompress.prompts import default_prompts

TEXT_LEN = 8  # text tokens per prompt (max_sequence_length)
SPECIALS = ("<pad>", "</s>", "<unk>", "<s>")


@dataclass
class PipelineCase:
    name: str
    pipe: Any
    height: int
    width: int
    frames: int
    prompt_options: dict[str, Any] = field(default_factory=dict)

    @property
    def resolution(self) -> dict[str, int]:
        return {"height": self.height, "width": self.width, "frames": self.frames}

    def call_kwargs(self) -> dict[str, Any]:
        """Pipeline ``__call__`` kwargs for this case's size and prompt options."""
        return {"height": self.height, "width": self.width, "num_frames": self.frames, **self.prompt_options}


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    words = sorted({w for p in default_prompts() for w in re.findall(r"\w+|[^\w\s]", p.lower())})
    return (*SPECIALS, *words, "dance", "monkey", "video")


def word_tokenizer(template: str = "$A </s>"):
    """A ``PreTrainedTokenizerFast`` over a fixed word vocabulary: lower-cased, whitespace + punctuation split.

    ``template`` adds the special tokens the family's real tokenizer adds (T5: ``$A </s>``,
    Llama: ``<s> $A``, CLIP: ``<s> $A </s>``), so an empty prompt still has a token.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in ("<s>", "</s>") if t in template])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                                   bos_token="<s>")


def _t5_encoder(umt5: bool = False, d_model: int = 16):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    kwargs = dict(vocab_size=len(vocabulary()), d_model=d_model, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                  relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kwargs)).eval()
    return T5EncoderModel(T5Config(**kwargs)).eval()


def wan() -> PipelineCase:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True, rope_max_seq_len=32,
    ).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    pipe = WanPipeline(tokenizer=word_tokenizer(), text_encoder=_t5_encoder(umt5=True), vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    return PipelineCase("wan", pipe, 32, 32, 5, {"max_sequence_length": TEXT_LEN})


def cogvideox() -> PipelineCase:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel, UniPCMultistepScheduler

    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8, text_embed_dim=16,
        num_layers=2, sample_width=4, sample_height=4, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
        max_text_seq_length=TEXT_LEN, use_rotary_positional_embeddings=True,
    ).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4, up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = CogVideoXPipeline(tokenizer=word_tokenizer(), text_encoder=_t5_encoder(), vae=vae, transformer=transformer,
                             scheduler=scheduler)
    return PipelineCase("cogvideox", pipe, 32, 32, 9, {"max_sequence_length": TEXT_LEN})


def hunyuan_video() -> PipelineCase:
    from diffusers import (AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
                           HunyuanVideoTransformer3DModel)
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True, text_embed_dim=16,
        pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    ).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
        temporal_compression_ratio=4, mid_block_add_attention=True,
    )
    vocab = len(vocabulary())
    torch.manual_seed(0)
    llama = LlamaModel(LlamaConfig(bos_token_id=3, eos_token_id=1, pad_token_id=0, hidden_size=16, intermediate_size=37,
                                   num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, vocab_size=vocab,
                                   hidden_act="gelu")).eval()
    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(bos_token_id=3, eos_token_id=1, pad_token_id=0, hidden_size=8, intermediate_size=37,
                                        num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab, projection_dim=8,
                                        hidden_act="gelu")).eval()
    pipe = HunyuanVideoPipeline(text_encoder=llama, tokenizer=word_tokenizer("<s> $A"), transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=clip,
                                tokenizer_2=word_tokenizer("<s> $A </s>"))
    options = {"max_sequence_length": TEXT_LEN, "prompt_template": {"template": "{}", "crop_start": 0}}
    return PipelineCase("hunyuan_video", pipe, 16, 16, 9, options)


def ltx_video() -> PipelineCase:
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, num_layers=2, caption_channels=16,
    ).eval()
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(latent_channels=4, block_out_channels=(8, 8, 8, 8),
                                spatio_temporal_scaling=(True, True, True, False), layers_per_block=(1, 1, 1, 1, 1),
                                patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False)
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                                base_image_seq_len=1024, max_image_seq_len=4096)
    pipe = LTXPipeline(tokenizer=word_tokenizer(), text_encoder=_t5_encoder(), vae=vae, transformer=transformer,
                       scheduler=scheduler)
    return PipelineCase("ltx_video", pipe, 32, 32, 9, {"max_sequence_length": TEXT_LEN})


PIPELINES: dict[str, Callable[[], PipelineCase]] = {
    "wan": wan, "cogvideox": cogvideox, "hunyuan_video": hunyuan_video, "ltx_video": ltx_video,
}


class ForwardCounter:
    """Counts a module's completed forwards and the samples they carried (a batched 2B CFG forward: 1 call, 2B samples)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.samples = 0
        self._handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output) -> None:
        self.calls += 1
        x = kwargs.get("hidden_states", args[0] if args else None)
        self.samples += int(x.shape[0]) if isinstance(x, torch.Tensor) else 0

    def reset(self) -> None:
        self.calls = self.samples = 0

    def remove(self) -> None:
        self._handle.remove()
