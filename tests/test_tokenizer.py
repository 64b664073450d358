"""The CLIP BPE tokenizer against transformers' CLIPTokenizer built from the same vocabulary file."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from nextgpt.encoders.tokenizer import BPE_ENV, ClipTokenizer, clip_bpe_path
from nextgpt.errors import ConfigError

TEXTS = [
    "A dog barking loudly!",
    "a photo of an astronaut riding a horse on the moon",
    "Rain   falling on a tin roof, thunder in the distance...",
    "It's 3:45pm and we're late; don't wait.",
    "café naïve résumé",
    "x" * 400,  # longer than the context: cut, end token kept
]


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return ClipTokenizer()


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    lines = gzip.open(clip_bpe_path(), "rt", encoding="utf-8").read().split("\n")
    ours = ClipTokenizer()
    out = tmp_path_factory.mktemp("clip_tok")
    (out / "vocab.json").write_text(json.dumps(ours.encoder))
    (out / "merges.txt").write_text("\n".join(["#version: 0.2", *lines[1 : 1 + len(ours.ranks)]]) + "\n")
    return transformers.CLIPTokenizer.from_pretrained(str(out))


def test_known_ids(tok: ClipTokenizer) -> None:
    ids = tok("a dog")[0]
    # <|startoftext|> a</w> dog</w> <|endoftext|> then zero padding, as in OpenAI CLIP.
    assert ids[:4].tolist() == [49406, 320, 1929, 49407]
    assert ids.shape == (77,) and int(ids[4:].abs().sum()) == 0
    assert tok.vocab_size == 49408


@pytest.mark.parametrize("text", TEXTS)
def test_matches_transformers_clip_tokenizer(tok: ClipTokenizer, hf_tok, text: str) -> None:
    ours = tok.encode(text)
    theirs = hf_tok(text, add_special_tokens=False)["input_ids"]
    assert ours == theirs


def test_batch_shape_truncation_and_eos_is_argmax(tok: ClipTokenizer) -> None:
    ids = tok(TEXTS)
    assert ids.shape == (len(TEXTS), 77) and ids.dtype == torch.long
    long_row = ids[-1]
    assert long_row[0] == tok.sot and long_row[-1] == tok.eot and (long_row != 0).all()
    # The text head pools at argmax(ids): it must be the end token in every row.
    eos = ids.argmax(dim=-1)
    assert all(ids[i, eos[i]] == tok.eot for i in range(len(TEXTS)))


def test_decode_round_trip(tok: ClipTokenizer) -> None:
    assert tok.decode(tok("The quick brown fox")[0].tolist()) == "the quick brown fox"


def test_missing_vocabulary_is_a_config_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(BPE_ENV, str(tmp_path / "nope.txt.gz"))
    with pytest.raises(ConfigError, match=BPE_ENV):
        clip_bpe_path()
