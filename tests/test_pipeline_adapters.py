"""Pipeline targets: transformer kwargs captured at a given resolution without a forward, prompts, defaults."""

from __future__ import annotations

import pytest
import torch

from pipelines import PIPELINES, ForwardCounter
from lincompress.errors import TargetError
from lincompress.pipeline_adapters import adapter_for
from lincompress.prompts import default_prompts
from lincompress.target import resolution_warning, target_from_pipeline

PROMPTS = ["a red fox running through fresh snow", "a sailboat gliding across a calm bay at sunset",
           "an old man feeding pigeons in a city square"]
# (family default CFG scale, its CFG argument): Wan 5, CogVideoX 6, HunyuanVideo true_cfg_scale 1, LTX 3
DEFAULT_CFG = {"wan": 5.0, "cogvideox": 6.0, "hunyuan_video": 1.0, "ltx_video": 3.0}


@pytest.mark.parametrize("family", sorted(PIPELINES))
def test_pipeline_target_at_a_small_resolution_runs_the_transformer(family):
    case = PIPELINES[family]()
    counter = ForwardCounter(case.pipe.transformer)
    timesteps = case.pipe.scheduler.timesteps.clone() if case.pipe.scheduler.timesteps is not None else None
    target = target_from_pipeline(case.pipe, family, prompts=PROMPTS, prompt_options=case.prompt_options,
                                  **case.resolution)
    assert counter.calls == 0  # captured before the first forward
    after = case.pipe.scheduler.timesteps
    assert (after is None and timesteps is None) or torch.equal(after, timesteps)  # the user's scheduler is untouched
    assert target.resolution.defaulted == () and target.resolution.height == case.height
    assert target.resolution.tokens and target.resolution.tokens < 100
    assert target.guidance_scale == DEFAULT_CFG[family] and target.negative_prompt == ""
    assert target.prompt_info()["size"] == 3
    kwargs = target.inputs(2)
    assert tuple(kwargs["hidden_states"].shape[1:]) == target.latent_shape
    with torch.no_grad():
        out = target.model(**kwargs)[0]
    assert out.shape == kwargs["hidden_states"].shape and torch.isfinite(out).all()
    counter.remove()


@pytest.mark.parametrize("family", sorted(PIPELINES))
def test_embeddings_come_from_the_pipelines_encoder_and_differ_across_prompts(family):
    case = PIPELINES[family]()
    adapter = adapter_for(case.pipe, case.prompt_options)
    encoded = adapter.encode(PROMPTS)
    assert set(encoded) == set(adapter.condition_keys)
    embeds = encoded["encoder_hidden_states"]
    assert embeds.shape[0] == 3
    assert not torch.allclose(embeds[0], embeds[1]) and not torch.allclose(embeds[1], embeds[2])
    again = adapter.encode(PROMPTS[:1])
    torch.testing.assert_close(again["encoder_hidden_states"][0], embeds[0])  # per prompt, not per batch


def test_default_resolution_is_the_pipelines_with_a_token_count_warning_and_no_forward():
    case = PIPELINES["wan"]()
    counter = ForwardCounter(case.pipe.transformer)
    target = target_from_pipeline(case.pipe, "wan", prompts=PROMPTS[:1], prompt_options=case.prompt_options)
    assert counter.calls == 0
    assert (target.resolution.height, target.resolution.width, target.resolution.frames) == (480, 832, 81)
    assert target.latent_shape == (4, 21, 60, 104) and target.resolution.tokens == 32_760
    message = resolution_warning(target, flags=True)
    assert "480x832, 81 frames = 32,760 video tokens" in message and "--height" in message and "\n" not in message
    assert "height=" in resolution_warning(target)
    partial = target_from_pipeline(case.pipe, "wan", prompts=PROMPTS[:1], height=32, width=32,
                                   prompt_options=case.prompt_options)
    assert partial.resolution.defaulted == ("frames",) and partial.latent_shape == (4, 21, 4, 4)
    given = target_from_pipeline(case.pipe, "wan", prompts=PROMPTS[:1], prompt_options=case.prompt_options, **case.resolution)
    assert resolution_warning(given) is None


def test_default_prompt_set_is_used_without_prompts_and_encoded_lazily():
    case = PIPELINES["cogvideox"]()
    calls = []
    original = case.pipe.encode_prompt
    def counting(*args, **kwargs):
        prompt = kwargs.get("prompt", args[0] if args else None)
        if prompt is not None:  # the pipeline's own calls with precomputed embeddings pass None
            calls.append(len(prompt))
        return original(*args, **kwargs)

    case.pipe.encode_prompt = counting
    target = target_from_pipeline(case.pipe, "cog", prompt_options=case.prompt_options, **case.resolution)
    assert target.prompt_info()["size"] == len(default_prompts())
    assert calls == [1]  # only the first prompt, for the example inputs
    target.conditions(4, torch.Generator().manual_seed(0))
    assert sum(calls) == 1 + len(default_prompts())


def test_bad_resolution_and_unknown_families_are_one_line_errors():
    case = PIPELINES["ltx_video"]()
    with pytest.raises(TargetError, match="divisible by 32") as exc:
        target_from_pipeline(case.pipe, "ltx", prompts=PROMPTS, height=40, width=32, frames=9,
                             prompt_options=case.prompt_options)
    assert "\n" not in str(exc.value)
    with pytest.raises(TargetError, match="frames must be a positive integer"):
        target_from_pipeline(case.pipe, "ltx", prompts=PROMPTS, height=32, width=32, frames=0)

    class OtherPipeline:  # a pipeline family lincompress does not know
        def __init__(self, pipe):
            self.transformer, self.scheduler, self._pipe = pipe.transformer, pipe.scheduler, pipe

        def __call__(self, prompt=None, height=None, width=None, num_frames=None, num_inference_steps=1,
                     output_type="latent", **kwargs):
            return self._pipe(prompt=prompt, height=height, width=width, num_frames=num_frames, guidance_scale=1.0,
                              num_inference_steps=num_inference_steps, output_type=output_type, max_sequence_length=8)

    other = OtherPipeline(PIPELINES["wan"]().pipe)
    with pytest.raises(TargetError, match="not a pipeline family lincompress can encode prompts for"):
        target_from_pipeline(other, "other", prompts=PROMPTS)
    plain = target_from_pipeline(other, "other", height=32, width=32, frames=5)  # no prompts: fixed captured inputs
    assert plain.latent_shape == (4, 2, 4, 4) and plain.prompts is None and plain.guidance_scale is None
