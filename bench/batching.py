"""Batched and streaming generation: throughput of ``generate_batch`` vs one ``generate`` per
conversation, and time to the first streamed text vs the full answer.

1. Text: ``N`` conversations (different prompts, so rows are left-padded), ``K`` new tokens each
   (EOS disabled: random weights), ``modalities=["text"]``: the N calls one after another vs one
   ``generate_batch`` call. Tokens/s counts every generated token; the outputs are checked equal.
2. Images: the same N conversations with ``modalities=["image"]`` (signal run + output projector +
   diffusion): N calls vs one batch (one diffusion call for all N images, one seed per row).
3. Streaming: one ``stream`` call, text + image, sampled with a seed: seconds to the first text
   delta, to the signal run's end, to the image, and to the whole answer. The random-weight sizes
   use the byte-level tokenizer, whose ids past the 256 bytes are reserved and print nothing, so
   for this part the LLM is restricted to the byte ids (:func:`printable_only`).

Everything is measured in one process on the same weights, after one warm-up of each path.

    python -m bench.batching --size small --device cpu
    python -m bench.batching --preset small --device cpu      # the shipped small preset (SmolLM2-135M)
    python -m bench.batching --size full --device cuda --json batching.json
"""

from __future__ import annotations

import time

from bench.cli import base_parser, cli_main, setup
from bench.hardware import env_info, sync
from bench.report import Report
from bench.sizes import build_model, suppress_eos

PROMPTS = [
    "Draw a cat sitting on a red sofa.",
    "What is the capital of France?",
    "Tell me a story about a dragon who lives in the mountains and loves tea.",
    "Hi!",
    "Explain photosynthesis to a ten-year-old in a few sentences.",
    "Write a haiku about the sea.",
    "List three colours.",
    "What does a dog say when it sees the postman in the morning?",
]


def parse_args(argv):
    ap = base_parser(__doc__)
    ap.add_argument("--batch", type=int, default=8, help="conversations (default 8)")
    ap.add_argument("--tokens", type=int, default=32, help="new text tokens per conversation")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the size's)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each path (best kept)")
    ap.add_argument(
        "--preset",
        default=None,
        help="measure this shipped preset (e.g. small: SmolLM2-135M with its weights) instead of --size",
    )
    return ap.parse_args(argv)


def printable_only(model) -> None:
    """Let the LLM choose only byte symbols and the added tokens (the reserved ids of the byte-level
    tokenizer decode to nothing, so a random model's text would stay empty)."""
    from nextgpt.tiny_tokenizer import SPECIALS

    layout = model.llm.layout
    first_reserved = len(SPECIALS) + 256  # the tiny tokenizer: specials, then the 256 bytes
    original = model.llm.logits

    def logits(hidden):
        out = original(hidden)
        out[..., first_reserved : layout.base_vocab] = float("-inf")
        return out

    model.llm.logits = logits


def _timed(device, fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def run(args) -> Report:
    device, dtypes = setup(args)
    if args.preset:
        from nextgpt import NextGPT

        model = NextGPT.from_preset(args.preset, device=device)
    else:
        model = build_model(args.size, device, dtypes)
    model.eval()
    suppress_eos(model)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    steps = {} if args.steps is None else {"num_inference_steps": args.steps}
    text = dict(max_new_tokens=args.tokens)
    rows = []

    def sequential_text():
        return [model.generate(p, ["text"], **text) for p in prompts]

    def batched_text():
        return model.generate_batch(prompts, ["text"], batch_size=len(prompts), **text)

    sequential_text(), batched_text()  # warm-up
    seq_s, seq = _timed(device, sequential_text, args.repeats)
    bat_s, bat = _timed(device, batched_text, args.repeats)
    tokens = sum(len(o.token_ids) for o in bat)
    text_equal = [o.token_ids for o in seq] == [o.token_ids for o in bat]
    rows.append(
        {
            "what": f"text, {args.batch} conversations",
            "mode": "one at a time",
            "seconds": seq_s,
            "rate": tokens / seq_s,
            "unit": "tokens/s",
        }
    )
    rows.append(
        {
            "what": f"text, {args.batch} conversations",
            "mode": "batched",
            "seconds": bat_s,
            "rate": tokens / bat_s,
            "unit": "tokens/s",
        }
    )

    def sequential_images():
        return [model.generate(p, ["image"], seed=i, **steps) for i, p in enumerate(prompts)]

    def batched_images():
        return model.generate_batch(
            prompts, ["image"], seed=list(range(len(prompts))), batch_size=len(prompts), **steps
        )

    sequential_images(), batched_images()
    iseq_s, _ = _timed(device, sequential_images, args.repeats)
    ibat_s, _ = _timed(device, batched_images, args.repeats)
    rows.append(
        {
            "what": f"images, {args.batch} conversations",
            "mode": "one at a time",
            "seconds": iseq_s,
            "rate": args.batch / iseq_s,
            "unit": "images/s",
        }
    )
    rows.append(
        {
            "what": f"images, {args.batch} conversations",
            "mode": "batched",
            "seconds": ibat_s,
            "rate": args.batch / ibat_s,
            "unit": "images/s",
        }
    )

    if not args.preset:  # stream: the text must show characters for its first delta to exist
        printable_only(model)

    def streamed():
        marks: dict[str, float] = {}
        t = time.perf_counter()
        for event in model.stream(prompts[0], ["text", "image"], do_sample=True, seed=0, **text, **steps):
            if event.kind in ("text", "signal", "media", "done") and event.kind not in marks:
                marks[event.kind] = time.perf_counter() - t
        return marks

    streamed()
    marks = min((streamed() for _ in range(args.repeats)), key=lambda m: m["done"])
    for kind, label in (
        ("text", "first text delta"),
        ("signal", "signal run complete"),
        ("media", "image ready"),
        ("done", "whole answer"),
    ):
        rows.append({"what": "stream, text + image", "mode": label, "seconds": marks[kind]})
    return Report(
        benchmark="batching",
        size=f"{args.size} (preset {args.preset})" if args.preset else args.size,
        env=env_info(device, dtypes),
        columns=[
            ("what", "workload"),
            ("mode", "mode"),
            ("seconds", "seconds"),
            ("rate", "rate"),
            ("unit", "unit"),
        ],
        rows=rows,
        summary={
            "text throughput batched / one at a time": seq_s / bat_s,
            "image throughput batched / one at a time": iseq_s / ibat_s,
            "batched text equals one at a time (greedy, token for token)": text_equal,
            "first text delta / whole answer (stream)": marks["text"] / marks["done"],
        },
        config={"batch": args.batch, "tokens": args.tokens, "steps": args.steps, "repeats": args.repeats},
        notes=[
            "random weights at every size (bench.sizes); EOS disabled so every row writes --tokens tokens"
        ],
    )


def main(argv=None):
    return cli_main(parse_args, run, argv)


if __name__ == "__main__":
    main()
