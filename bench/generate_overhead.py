"""Overhead of ``NextGPT.generate`` over its parts run standalone on the same weights.

For each preset and output modality (text + image, text + audio):

* ``generate``: the whole call (prompt encoding, decoding with signal-token control, hidden-state
  collection, output projector, diffusion);
* standalone parts: (1) the plain transformers ``generate`` of the same LLM producing the same number
  of text tokens (greedy) plus one cached forward of the signal run, (2) the output projector on the
  same states, (3) the bare diffusers pipeline called with the same ``prompt_embeds``, negative
  embedding, steps and seed.

Reports medians over ``--repeats`` runs and the ratio ``generate / sum(parts)`` (target <= 1.05).

    python -m bench.generate_overhead --presets tiny small --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def measure(preset: str, modality: str, repeats: int, prompt: str) -> dict:
    from nextgpt import NextGPT
    from nextgpt.modality import Modality
    from nextgpt.processor import parse_inputs

    model = NextGPT.from_preset(preset)
    m = Modality(modality)
    kw = dict(modalities=["text", modality], max_new_tokens=16, seed=0)
    model.generate(prompt, **kw)  # warm-up: loads the decoder, fills caches
    t_gen, out = timed(lambda: model.generate(prompt, **kw), repeats)

    # Standalone parts on the same weights.
    run_ids = list(model.llm.layout.signal_ids[m])
    n_text = len(out.token_ids) - len(run_ids)
    enc = model.processor.encode(parse_inputs(prompt), add_generation_prompt=True)
    ids = enc.input_ids.unsqueeze(0)
    hf = model.llm.model

    def llm_part():
        with torch.no_grad():
            embeds = model.embed_inputs(ids, [])
            res = hf.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max(n_text, 1),
                min_new_tokens=max(n_text, 1),
                do_sample=False,
                return_dict_in_generate=True,
                pad_token_id=model.llm.tokenizer.pad_token_id or 0,
            )
            run = model.llm.embed(torch.tensor([run_ids]))
            o = model.llm(run, past_key_values=res.past_key_values, use_cache=True)
            return o.hidden[0] + run[0]

    t_llm, states = timed(llm_part, repeats)
    projector = model.output_projectors[m.value]
    with torch.no_grad():
        t_proj, cond = timed(lambda: projector(states.unsqueeze(0)), repeats)
    decoder = model.decoders[m]
    pipe = decoder.load()
    cond = decoder.prepare_conditioning(cond)
    neg = decoder.negative_conditioning(1)
    extra = (
        {"audio_length_in_s": decoder.audio_length_in_s}
        if m is Modality.AUDIO
        else {"height": decoder.height, "width": decoder.width}
    )

    def pipe_part():
        return pipe(
            prompt_embeds=decoder._pipeline_embeds(cond),
            negative_prompt_embeds=decoder._pipeline_embeds(neg),
            num_inference_steps=decoder.num_inference_steps,
            guidance_scale=decoder.guidance_scale,
            generator=torch.Generator().manual_seed(0),
            output_type="pil" if m is Modality.IMAGE else "np",  # what the decoder wrapper asks for
            **extra,
        )

    t_pipe, _ = timed(pipe_part, repeats)
    parts = t_llm + t_proj + t_pipe
    return {
        "preset": preset,
        "modality": modality,
        "generated_tokens": len(out.token_ids),
        "generate_s": round(t_gen, 4),
        "llm_s": round(t_llm, 4),
        "projector_s": round(t_proj, 4),
        "pipeline_s": round(t_pipe, 4),
        "ratio": round(t_gen / parts, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--modalities", nargs="+", default=["image", "audio"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt", default="Show me a red apple on a wooden table.")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    rows = [measure(p, m, args.repeats, args.prompt) for p in args.presets for m in args.modalities]
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print("| preset | output | tokens | generate (s) | LLM (s) | projector (s) | pipeline (s) | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | text+{r['modality']} | {r['generated_tokens']} | {r['generate_s']} | {r['llm_s']} | "
            f"{r['projector_s']} | {r['pipeline_s']} | {r['ratio']} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
