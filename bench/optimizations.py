"""Before/after figures of the inference optimisations, each measured in one run on the same weights.

1. LoRA merged into the base weights while generating vs separate adapters (decoding tokens/s).
2. Our decoding loop (final hidden state only; states kept at signal positions) vs the upstream
   approach: transformers ``generate`` with ``output_hidden_states`` and ``output_attentions`` for
   every step (decoding tokens/s).
3. Decoders loaded once and reused vs a pipeline rebuilt on every call, as upstream did
   (seconds per image).

    python -m bench.optimizations --preset small --tokens 48
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import torch

PROMPT = "Write a short story about a robot who learns to paint."


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def lora_merge(model, tokens: int, repeats: int) -> dict:
    def gen():
        return model.generate(PROMPT, modalities=["text"], max_new_tokens=tokens)

    llm = model.llm
    results = {}
    keep = llm.set_lora_merged
    for merged in (False, True):
        keep(merged)
        llm.set_lora_merged = lambda _m: None  # hold the state during the measurement
        try:
            gen()
            n = len(gen().token_ids)
            results[merged] = n / _median_time(gen, repeats)
        finally:
            del llm.set_lora_merged
    return {
        "name": "LoRA merged for decoding",
        "unit": "tokens/s",
        "before": results[False],
        "after": results[True],
    }


def hidden_collection(model, tokens: int, repeats: int) -> dict:
    from nextgpt.processor import parse_inputs

    enc = model.processor.encode(parse_inputs(PROMPT), add_generation_prompt=True)
    ids = enc.input_ids.unsqueeze(0)
    model.llm.set_lora_merged(True)
    hf = model.llm.model

    def upstream():  # every step returns all layers' hidden states and attention maps
        with torch.no_grad():
            return hf.generate(
                inputs_embeds=model.embed_inputs(ids, []),
                attention_mask=torch.ones_like(ids),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                output_hidden_states=True,
                output_attentions=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )

    def ours():
        return model.generate(PROMPT, modalities=["text"], max_new_tokens=tokens)

    hf.config.output_attentions = False
    try:
        model.llm._causal_lm().set_attn_implementation("eager")  # attentions need the eager kernel
        upstream()
        before = tokens / _median_time(upstream, repeats)
    finally:
        model.llm._causal_lm().set_attn_implementation("sdpa")
    ours()
    n = len(ours().token_ids)
    after = n / _median_time(ours, repeats)
    return {
        "name": "no per-step hidden-state/attention collection",
        "unit": "tokens/s",
        "before": before,
        "after": after,
    }


def decoder_reuse(model, repeats: int) -> dict:
    from nextgpt.modality import Modality

    decoder = model.decoders[Modality.IMAGE]
    cond = torch.zeros(1, *decoder.cond_shape)

    def reloaded():
        decoder.unload()
        decoder.generate(cond, seed=0)

    def reused():
        decoder.generate(cond, seed=0)

    before = _median_time(reloaded, repeats)
    decoder.load()
    reused()
    after = _median_time(reused, repeats)
    return {"name": "image decoder loaded once", "unit": "s per image", "before": before, "after": after}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    from nextgpt import NextGPT

    model = NextGPT.from_preset(args.preset)
    rows = [
        lora_merge(model, args.tokens, args.repeats),
        hidden_collection(model, args.tokens, args.repeats),
        decoder_reuse(model, args.repeats),
    ]
    print(
        f"# {args.preset} preset, {platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print("| optimisation | unit | before | after | after/before |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['unit']} | {r['before']:.3f} | {r['after']:.3f} | {r['after'] / r['before']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
