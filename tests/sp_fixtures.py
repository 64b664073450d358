"""A real SentencePiece LLaMA tokenizer on a tiny random LLaMA, laid out as Vicuna folders ship.

The tokenizer is ``mistral_common/data/tokenizer.model.v1`` from the ``mistral-common`` package
(32000 tokens, byte fallback, unk/bos/eos 0/1/2 like LLaMA's; installed by ``make install``). Two
folder layouts: ``vicuna-v1.5`` with a ``tokenizer_config.json`` (``LlamaTokenizer``, ``legacy:
false``, as Vicuna v1.5 ships), and ``vicuna-v0`` with only ``tokenizer.model`` (older releases).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from media_fixtures import package_file

TINY_DIMS = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


def sentencepiece_model() -> Path:
    path = package_file("mistral_common", "data", "tokenizer.model.v1")
    if path is None:
        pytest.skip(
            "mistral-common (shipping a SentencePiece LLaMA tokenizer) is not installed: run make install"
        )
    return path


def make_llama_folder(root: Path, *, tokenizer_config: dict | None, seed: int = 0) -> Path:
    """A random tiny LlamaForCausalLM (vocab 32000) saved with the SentencePiece tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(
        vocab_size=32000, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, **TINY_DIMS
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        LlamaForCausalLM(cfg).save_pretrained(root)
    shutil.copy(sentencepiece_model(), root / "tokenizer.model")
    if tokenizer_config is not None:
        (root / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return root


V15_TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "legacy": False,
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
}


def overrides(folder: Path, template: str, **extra: str) -> list[str]:
    """Overrides of the tiny preset that load ``folder`` as its LLM (with the template's settings)."""
    legacy = template == "vicuna_v0"
    out = [
        f"model.llm.path={folder}",
        "model.llm.vocab_size=32000",
        "model.llm.num_kv_heads=2",
        f"model.llm.template={template}",
        f"model.llm.media_wrappers={str(legacy).lower()}",
    ]
    return out + [f"{k}={v}" for k, v in extra.items()]
