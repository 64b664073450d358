"""``nextgpt demo`` (``make demo``): the main job on a preset (default ``small``), end to end on CPU,
saying what ran.

The ``small`` preset runs the real SmolLM2-135M-Instruct LLM with a RANDOM-weight encoder, untrained
projectors and RANDOM tiny diffusion decoders: the text answers are real, the media are noise that
proves the whole path runs (encode -> project -> LLM -> signal tokens -> output projectors ->
decoders -> files). Point the 7B presets at real weights for meaningful media.

The command line (``--preset``, ``--out``, ``--seed``) is ``nextgpt demo`` in :mod:`nextgpt.cli`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from nextgpt import Audio, NextGPT
from nextgpt.resources import package_path


def run_demo(preset: str = "small", *, out: str | os.PathLike = "outputs/demo", seed: int = 0) -> list[Path]:
    """Build ``preset``, print what it is made of, then answer text, image + text, audio + text and a
    text -> text + image + audio + video request (the sample media come from installed packages and
    are skipped when missing). The last answer's files are saved under ``out``; returns their paths."""
    t0 = time.perf_counter()
    model = NextGPT.from_preset(preset)
    print(f"preset {model.config.name} built in {time.perf_counter() - t0:.1f} s")
    print(f"  LLM:      {model.llm.describe()}")
    enc = "checkpoint" if model.config.model.encoder.checkpoint else "RANDOM weights"
    print(f"  encoder:  ImageBind-compatible, {enc}")
    for m, decoder in model.decoders.items():
        print(f"  {m.value:8s}  {decoder.describe()}")

    def ask(label, inputs, **kw):
        t = time.perf_counter()
        answer = model.generate(inputs, seed=seed, **kw)
        print(f"\n[{label}] ({time.perf_counter() - t:.1f} s)\n  text: {answer.text!r}")
        return answer

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
    last = ask(
        "text -> text + image + audio + video (RANDOM decoders: noise by design)",
        "Show me a cat sitting on a mat, and let me hear it purr.",
        modalities=["text", "image", "audio", "video"],
        max_new_tokens=32,
    )
    saved = last.save(out, prefix="cat")
    for path in saved:
        print(f"  saved {path}")
    return list(saved)
