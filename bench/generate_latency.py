"""End-to-end ``NextGPT.generate`` latency, text -> text + {image, audio, video}, with a breakdown.

For each output modality one call ``model.generate(prompt, modalities=["text", m],
max_new_tokens=K, seed=0)``: the LLM writes ``K`` text tokens (EOS disabled: random weights), the
signal run of ``m`` is appended (the random LLM never emits it by itself), its states go through the
output projector and the decoder draws the media. At ``--size full``: SD 1.5 at 512x512, AudioLDM
l-full for 9 s of audio (the preset's default; ``--audio-seconds`` changes it), Zeroscope v2 576w for 24 frames of 320x576, 50 denoising steps each with
classifier-free guidance 7.5.

Breakdown by timing wrappers around the model's methods (device-synchronised; the library is not
changed): ``llm`` = ``nextgpt.decoding.decode_rows`` (prefill, decoding loop, signal run), ``projector`` =
``NextGPT.project_outputs``, ``diffusion`` = the decoder's ``generate`` (negative embedding, every
UNet step, VAE decode, vocoder, conversion to PIL / numpy), ``other`` = the rest (prompt encoding,
embedding, output assembly). A warm-up call per modality loads the decoder first (load time is not
in the latency).

    python -m bench.generate_latency --size full --device cuda --json generate_latency.json
    python -m bench.generate_latency --size small --device cpu
"""

from __future__ import annotations

import time

from bench.cli import base_parser, cli_main, setup
from bench.components import pipeline_parameters
from bench.hardware import env_info, sync
from bench.report import Report
from bench.sizes import MEDIA, SIZE_SPECS, build_model, suppress_eos
from bench.timing import PhaseTimer

PROMPT = "Show me a red apple on a wooden table, and describe it."


def parse_args(argv):
    ap = base_parser(__doc__)
    ap.add_argument("--modalities", nargs="+", choices=MEDIA, default=list(MEDIA))
    ap.add_argument("--max-new-tokens", type=int, default=None, help="text tokens before the signal run")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the size's; full 50)")
    ap.add_argument(
        "--audio-seconds",
        type=float,
        default=None,
        help="AudioLDM clip length in seconds (default: the preset's, 9 s at full size)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per modality (median)")
    ap.add_argument("--prompt", default=PROMPT)
    return ap.parse_args(argv)


def describe_media(modality: str, out) -> str:
    """What the call produced: image ``WxH``, audio seconds, video ``frames x H x W``."""
    if modality == "image":
        return f"{out.images[0].size[0]}x{out.images[0].size[1]}"
    if modality == "audio":
        return f"{len(out.audios[0]) / out.audio_sample_rate:.2f} s"
    return "x".join(str(s) for s in out.videos[0].shape[:3])


def run(args) -> Report:
    import statistics

    import torch

    from nextgpt.modality import Modality

    device, dtypes = setup(args)
    spec = SIZE_SPECS[args.size]
    K = args.max_new_tokens or spec.text_tokens

    t0 = time.perf_counter()
    model = build_model(args.size, device, dtypes, audio_seconds=args.audio_seconds)
    build_s = time.perf_counter() - t0
    model.eval()
    suppress_eos(model)

    timer = PhaseTimer(device)
    import nextgpt.decoding

    timer.wrap(nextgpt.decoding, "decode_rows", "llm")  # run_requests looks it up at each call
    timer.wrap(model, "project_outputs", "projector")
    for m in args.modalities:
        timer.wrap(model.decoders[Modality(m)], "generate", "diffusion")

    rows = []
    components = {}
    try:
        for m in args.modalities:
            decoder = model.decoders[Modality(m)]
            kw = {"modalities": ["text", m], "max_new_tokens": K, "seed": 0}
            if args.steps:
                kw["num_inference_steps"] = args.steps
            t = time.perf_counter()
            model.generate(args.prompt, **kw)  # warm-up: loads the decoder, caches the negative embedding
            sync(device)
            first_s = time.perf_counter() - t
            components[m] = pipeline_parameters(decoder)
            samples = []
            for _ in range(max(1, args.repeats)):
                timer.reset()
                sync(device)
                t = time.perf_counter()
                out = model.generate(args.prompt, **kw)
                sync(device)
                total = time.perf_counter() - t
                phases = dict(timer.totals)
                samples.append((total, phases, out))
            samples.sort(key=lambda s: s[0])
            total, phases, out = samples[len(samples) // 2]
            media_desc = describe_media(m, out)
            llm, proj, diff = (
                phases.get("llm", 0.0),
                phases.get("projector", 0.0),
                phases.get("diffusion", 0.0),
            )
            rows.append(
                {
                    "output": f"text+{m}",
                    "media": media_desc,
                    "steps": args.steps or decoder.num_inference_steps,
                    "llm_tokens": len(out.token_ids),
                    "total_s": total,
                    "llm_s": llm,
                    "projector_s": proj,
                    "diffusion_s": diff,
                    "other_s": max(total - llm - proj - diff, 0.0),
                    "diffusion_share": diff / total,
                    "first_call_s": first_s,
                    "median_of": len(samples),
                    "spread_s": statistics.pstdev([s[0] for s in samples]) if len(samples) > 1 else 0.0,
                }
            )
            if device.type == "cuda":
                rows[-1]["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    finally:
        timer.restore()

    report = Report(
        benchmark="generate_latency",
        size=args.size,
        env=env_info(device, dtypes),
        columns=[
            ("output", "output"),
            ("media", "media"),
            ("steps", "steps"),
            ("llm_tokens", "LLM tokens"),
            ("total_s", "total (s)"),
            ("llm_s", "LLM (s)"),
            ("projector_s", "projector (s)"),
            ("diffusion_s", "diffusion (s)"),
            ("other_s", "other (s)"),
            ("first_call_s", "first call incl. load (s)"),
        ],
        rows=rows,
        summary={f"total_s_{r['output'].split('+')[1]}": r["total_s"] for r in rows} | {"build_s": build_s},
        config={"prompt": args.prompt, "max_new_tokens": K, "decoder_parameters": components},
        notes=[
            "llm = nextgpt.decoding.decode_rows; projector = NextGPT.project_outputs; diffusion = decoder.generate"
        ],
    )
    return report


def main(argv: list[str] | None = None) -> dict:
    return cli_main(parse_args, run, argv)


if __name__ == "__main__":
    main()
