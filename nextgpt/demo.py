"""``make demo``: the main job on a preset (default ``small``), end to end on CPU, saying what ran.

The ``small`` preset runs the real SmolLM2-135M-Instruct LLM with a RANDOM-weight encoder, untrained
projectors and RANDOM tiny diffusion decoders: the text answers are real, the media are noise that
proves the whole path runs (encode -> project -> LLM -> signal tokens -> output projectors ->
decoders -> files). Point the 7B presets at real weights for meaningful media.
"""

from __future__ import annotations

import argparse
import logging
import time

from nextgpt import Audio, NextGPT
from nextgpt.resources import package_path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--out", default="outputs/demo")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    t0 = time.perf_counter()
    model = NextGPT.from_preset(args.preset)
    print(f"preset {model.config.name} built in {time.perf_counter() - t0:.1f} s")
    print(f"  LLM:      {model.llm.describe()}")
    enc = "checkpoint" if model.config.model.encoder.checkpoint else "RANDOM weights"
    print(f"  encoder:  ImageBind-compatible, {enc}")
    for m, decoder in model.decoders.items():
        print(f"  {m.value:8s}  {decoder.describe()}")

    def ask(label, inputs, **kw):
        t = time.perf_counter()
        out = model.generate(inputs, seed=args.seed, **kw)
        print(f"\n[{label}] ({time.perf_counter() - t:.1f} s)\n  text: {out.text!r}")
        return out

    ask("text -> text", "What is the capital of France?", modalities=["text"], max_new_tokens=24)
    image = package_path("skimage", "data", "astronaut.png")
    if image is not None:
        ask(
            "image + text -> text (random encoder: the LLM sees noise tokens)",
            [image, "Describe this picture."],
            modalities=["text"],
            max_new_tokens=24,
        )
    sound = package_path("pygame", "examples", "data", "boom.wav")
    if sound is not None:
        ask(
            "audio + text -> text",
            [Audio(sound), "What do you hear?"],
            modalities=["text"],
            max_new_tokens=16,
        )
    out = ask(
        "text -> text + image + audio + video (RANDOM decoders: noise by design)",
        "Show me a cat sitting on a mat, and let me hear it purr.",
        modalities=["text", "image", "audio", "video"],
        max_new_tokens=32,
    )
    for path in out.save(args.out, prefix="cat"):
        print(f"  saved {path}")


if __name__ == "__main__":
    main()
