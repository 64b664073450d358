"""Stage-1 and stage-2 training throughput on the demo data: feature caches vs online computation.

For each preset and modality, samples of that modality from the demo shards (already decoded, as a
DataLoader would hand them over) go through the real training path: ``Collator`` (template,
tokenisation, media preprocessing *or* cache reads) -> ``StageModule`` forward -> backward ->
optimiser step. Stage 1 compares online encoding (preprocessing + frozen ImageBind inside the step)
with the encoder cache; stage 2 compares online caption targets (the decoders' frozen text encoders)
with the caption cache. Reported: samples/s and the cached/online ratio, measured in one run.

    python -m bench.stage_throughput --presets tiny small --steps 6
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch


def _samples(data: Path, stage: int, modality: str, n: int):
    from nextgpt.stages.data import ShardDataset
    from nextgpt.stages.datamodule import stage_shards

    urls = stage_shards(data, stage, ["conversations"] if stage == 3 else ["pairs"])  # the demo's folders
    out = [
        s
        for s in ShardDataset(urls, stage, decode_output_media=False)
        if s.turns and _modality(s) == modality
    ]
    if not out:
        raise SystemExit(f"no {modality} pairs in {data}")
    return (out * (n // len(out) + 1))[:n]


def _modality(sample) -> str:
    for turn in sample.turns:
        for part in turn.parts:
            if not isinstance(part, str):
                return part.modality.value
    return "text"


def _run(module, collator, samples, batch_size: int, steps: int) -> float:
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    module.train()

    def step(i: int) -> None:
        batch = collator(samples[i * batch_size : (i + 1) * batch_size])
        loss = module(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # warm-up (lazy decoder loads, allocator)
    t = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    return steps * batch_size / (time.perf_counter() - t)


def measure(preset: str, data: Path, cache_root: Path, steps: int, batch_size: int) -> list[dict]:
    from nextgpt import NextGPT
    from nextgpt.stages.batch import Collator
    from nextgpt.stages.cache import FeatureCache, build_cache, captions_fingerprint, encoder_fingerprint
    from nextgpt.stages.modules import StageModule

    model = NextGPT.from_preset(preset)
    cache = cache_root / preset
    build_cache("encoder", data, cache, model=model, stage=1, progress=False)
    build_cache("captions", data, cache, model=model, stage=2, progress=False)
    enc_cache = FeatureCache(cache / "encoder", encoder_fingerprint(model))
    cap_cache = FeatureCache(cache / "captions", captions_fingerprint(model))
    tok = model.llm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    rows = []
    for stage in (1, 2):
        module = StageModule(model.config, stage, model)
        max_len = model.config.training.stage_config(stage).max_length
        for modality in ("image", "audio", "video"):
            samples = _samples(data, stage, modality, (steps + 1) * batch_size)
            online = Collator(model.processor, max_len, pad)
            if stage == 1:
                cached = Collator(model.processor, max_len, pad, feature_cache=enc_cache)
            else:
                cached = Collator(model.processor, max_len, pad, caption_cache=cap_cache)
            on = _run(module, online, samples, batch_size, steps)
            ca = _run(module, cached, samples, batch_size, steps)
            rows.append(
                {
                    "preset": preset,
                    "stage": stage,
                    "modality": modality,
                    "online_sps": round(on, 2),
                    "cached_sps": round(ca, 2),
                    "ratio": round(ca / on, 2),
                }
            )
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--data", default=None, help="demo data folder (default: built in a temp dir)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not args.data:
            from nextgpt.stages.data import build_demo_dataset

            build_demo_dataset(data)
        rows = [
            r
            for p in args.presets
            for r in measure(p, data, Path(tmp) / "cache", args.steps, args.batch_size)
        ]
    print(f"\n# {platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| preset | stage | modality | online samples/s | cached samples/s | cached/online |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['stage']} | {r['modality']} | {r['online_sps']} | {r['cached_sps']} | {r['ratio']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
