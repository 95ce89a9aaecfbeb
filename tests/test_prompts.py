"""Prompt sets and their embedding cache: the shipped default set, files, resumable encoding, per-draw sampling."""

from __future__ import annotations

import json

import pytest
import torch

from lincompress.errors import LinCompressError, TargetError
from lincompress.prompts import (
    PromptConditions, PromptNegative, default_prompts, encode_prompts, encoder_identity, prompt_set_hash, read_prompts,
)


class CountingEncoder:
    """A deterministic toy text encoder: each prompt -> a (3, 4) embedding from its characters; counts prompts seen."""

    def __init__(self, offset: float = 0.0, identity: str | None = "toy-v1") -> None:
        self.offset, self.seen = offset, 0
        if identity is not None:
            self.identity = f"{identity}:{offset}"

    def __call__(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        self.seen += len(prompts)
        rows = []
        for p in prompts:
            codes = torch.tensor([float(ord(c)) for c in (p or " ")[:12]])
            rows.append(torch.stack([codes.mean(), codes.max(), torch.tensor(float(len(p)))]))
        emb = torch.stack(rows)[:, :, None].expand(-1, -1, 4) + self.offset
        return {"encoder_hidden_states": emb.contiguous(), "mask": torch.ones(len(prompts), 3, dtype=torch.long)}


def test_default_prompt_set_is_a_few_hundred_distinct_video_prompts():
    prompts = default_prompts()
    assert 250 <= len(prompts) <= 500
    assert len(set(prompts)) == len(prompts)
    assert all(p and not p.startswith("#") and "\n" not in p for p in prompts)
    assert len({p.split()[0].lower() for p in prompts}) > 20  # varied, not one template


def test_prompt_files_skip_comments_and_blanks_and_refuse_empty_or_missing(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# my prompts\n\na cat\n  a dog running  \n")
    assert read_prompts(path) == ["a cat", "a dog running"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(LinCompressError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(LinCompressError, match="does not exist"):
        read_prompts(tmp_path / "nope.txt")


def test_a_bare_string_is_not_a_prompt_list():
    with pytest.raises(TargetError, match="must be a list of strings"):
        PromptConditions("a cat", CountingEncoder())
    with pytest.raises(TargetError, match="non-empty strings"):
        PromptConditions(["a cat", " "], CountingEncoder())


def test_cache_encodes_once_resumes_after_a_lost_chunk_and_matches_direct_encoding(tmp_path):
    prompts = [f"prompt number {i} about a river" for i in range(10)]
    encoder = CountingEncoder()
    direct = encode_prompts(prompts, CountingEncoder(), chunk_size=4)
    cached = encode_prompts(prompts, encoder, tmp_path, chunk_size=4)
    assert encoder.seen == 10
    for key in direct:
        torch.testing.assert_close(cached[key], direct[key])
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(folders) == 1
    manifest = json.loads((folders[0] / "manifest.json").read_text())
    assert manifest["num_prompts"] == 10 and manifest["prompts_sha256"] == prompt_set_hash(prompts)
    assert [c["count"] for c in manifest["chunks"]] == [4, 4, 2]
    assert (folders[0] / "prompts.txt").read_text().splitlines() == prompts

    encoder.seen = 0
    encode_prompts(prompts, encoder, tmp_path, chunk_size=4)
    assert encoder.seen == 0  # all cached
    (folders[0] / manifest["chunks"][1]["file"]).unlink()  # an interrupted run
    (folders[0] / manifest["chunks"][2]["file"]).write_bytes(b"garbage")  # a corrupt chunk
    again = encode_prompts(prompts, encoder, tmp_path, chunk_size=4)
    assert encoder.seen == 4 + 2  # only the lost and the corrupt chunk were re-encoded
    torch.testing.assert_close(again["encoder_hidden_states"], direct["encoder_hidden_states"])


def test_cache_key_changes_with_the_prompts_and_the_encoder(tmp_path):
    encode_prompts(["a cat", "a dog"], CountingEncoder(), tmp_path)
    encode_prompts(["a cat", "a bird"], CountingEncoder(), tmp_path)
    encode_prompts(["a cat", "a dog"], CountingEncoder(offset=1.0), tmp_path)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 3
    # without an identity attribute the encoder is identified by a probe of its output
    assert encoder_identity(CountingEncoder(identity=None)) != encoder_identity(CountingEncoder(offset=2.0, identity=None))


def test_prompt_conditions_draw_per_batch_and_replay_from_the_generator():
    prompts = ["a red fox", "a blue whale swimming", "an old man walking", "a city at night"]
    source = PromptConditions(prompts, CountingEncoder())
    example = source.example(3)
    assert source.embeddings is None  # example inputs encode only the first prompt
    assert torch.equal(example["encoder_hidden_states"][0], example["encoder_hidden_states"][2])
    a = source(8, torch.Generator().manual_seed(0))["encoder_hidden_states"]
    b = source(8, torch.Generator().manual_seed(0))["encoder_hidden_states"]
    assert torch.equal(a, b) and a.shape == (8, 3, 4)
    assert len({tuple(row.flatten().tolist()) for row in a}) > 1  # different prompts within a batch
    embeddings = source.prepare()["encoder_hidden_states"]
    assert len({tuple(row.flatten().tolist()) for row in embeddings}) == len(prompts)  # they differ across prompts


def test_negative_prompt_encodes_the_empty_prompt_once(tmp_path):
    encoder = CountingEncoder()
    negative = PromptNegative("", encoder)
    a, b = negative(2), negative(5)
    assert encoder.seen == 1
    assert a["encoder_hidden_states"].shape == (2, 3, 4) and b["encoder_hidden_states"].shape == (5, 3, 4)
    cached = PromptNegative("", CountingEncoder()).prepare(tmp_path)
    torch.testing.assert_close(cached["encoder_hidden_states"], a["encoder_hidden_states"][:1])
