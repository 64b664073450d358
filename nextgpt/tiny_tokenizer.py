"""A self-contained byte-level tokenizer for randomly initialised LLMs (the ``tiny`` preset).

Every string tokenises (256 byte symbols, no merges), so tests exercise the real tokenisation code
paths without a hub download. The vocabulary is padded with reserved tokens up to the LLM's
``vocab_size`` so that ids and embedding rows agree.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")

# A minimal chat template in the shape of Vicuna v1 (our template code does not rely on it; it lets
# `apply_chat_template` work on tiny models too).
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
    "{% else %}ASSISTANT: {{ m['content'] }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _byte_symbols() -> list[str]:
    from nextgpt.encoders.tokenizer import byte_to_unicode  # CLIP/GPT-2 printable byte symbols

    mapping = byte_to_unicode()
    return [mapping[b] for b in range(256)]


def build_tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer with exactly ``vocab_size`` ids (``<unk> <s> </s> <pad>``, bytes, reserved)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    base = [*SPECIALS, *_byte_symbols()]
    if vocab_size < len(base):
        raise ValueError(f"tiny tokenizer needs vocab_size >= {len(base)}, got {vocab_size}")
    vocab = {tok: i for i, tok in enumerate(base)}
    for i in range(len(base), vocab_size):
        vocab[f"<reserved_{i}>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    reserved = [t for t in vocab if t.startswith("<reserved_")]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    if reserved:  # special, so decoding skips them
        fast.add_special_tokens({"additional_special_tokens": reserved})
    fast.add_bos_token = True
    fast.chat_template = CHAT_TEMPLATE
    return fast
