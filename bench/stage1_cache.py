"""Stage-1 step with the encoder feature cache vs online encoding, per input modality.

Stage 1 (encoding-side alignment: media -> caption) trains only the input projector, but its
gradient still flows back through the whole frozen LLM. The samples are the demo dataset's pairs of
the modality (real images, sounds and clips with their captions; ``--data`` for other shards),
repeated to the batch size. Two ways to feed them, each timed as collation plus a full optimiser
step of ``StageModule(cfg, 1, model)`` (forward, backward, gradient clipping, Adam):

* ``online``: the library's ``Collator`` without a cache (template, tokenisation, media decoding and
  preprocessing into encoder inputs), then the frozen ImageBind encoder inside the step;
* ``cached``: the ``Collator`` with the real :class:`~nextgpt.stages.cache.FeatureCache` that
  ``build_cache`` wrote for these shards (``nextgpt cache encoder``): the features are read from its
  safetensors files, so the encoder is skipped.

Both include the host-to-device copy. In a run the collation happens in DataLoader workers, in
parallel with the step; its share is reported (``collate``) so the two can be told apart. Also
reported: the encoder alone on the batch, and its share of the online step. Not included: building
the cache (once per dataset). Batch at ``--size full``: 18 samples (paper Table 7).

    python -m bench.stage1_cache --size full --device cuda --json stage1_cache.json
    python -m bench.stage1_cache --size small --device cpu
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.cli import base_parser, cli_main, setup
from bench.hardware import env_info
from bench.report import Report
from bench.sizes import MEDIA, SIZE_SPECS, build_model
from bench.timing import timeit


def parse_args(argv):
    ap = base_parser(__doc__)
    ap.add_argument("--modalities", nargs="+", choices=MEDIA, default=list(MEDIA))
    ap.add_argument("--batch-size", type=int, default=None, help="samples per step (default: the size's)")
    ap.add_argument("--data", default=None, help="shard folder (default: the demo dataset in a temp folder)")
    ap.add_argument(
        "--steps", type=int, default=None, help="timed steps per variant (default: smoke 1, small 2, full 5)"
    )
    ap.add_argument("--warmup", type=int, default=1)
    return ap.parse_args(argv)


def run(args) -> Report:
    from bench.stage_throughput import _samples
    from nextgpt.modality import Modality
    from nextgpt.stages.batch import Collator
    from nextgpt.stages.cache import FeatureCache, build_cache, encoder_fingerprint
    from nextgpt.stages.data import build_demo_dataset
    from nextgpt.stages.modules import StageModule

    device, dtypes = setup(args)
    spec = SIZE_SPECS[args.size]
    B = args.batch_size or spec.stage1_batch
    steps = args.steps or {"smoke": 1, "small": 2, "full": 5}[args.size]

    t0 = time.perf_counter()
    # the demo dataset's folder of pairs, unless --data names shards the preset's datasets cover
    extra = None if args.data else {"training.stages.1.datasets": ["pairs"]}
    model = build_model(args.size, device, dtypes, extra=extra)
    build_s = time.perf_counter() - t0
    module = StageModule(model.config, 1, model)
    module._total_steps = lambda: 1000  # no Trainer attached
    optimizer = module.configure_optimizers()["optimizer"]
    module.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    clip = model.config.training.gradient_clip_val
    tok = model.llm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    max_len = model.config.training.stage_config(1).max_length

    work = Path(tempfile.mkdtemp(prefix="nextgpt-stage1-cache-"))
    try:
        data = Path(args.data) if args.data else work / "data"
        if not args.data:
            build_demo_dataset(data, seed=0)
        t0 = time.perf_counter()
        build_cache("encoder", data, work / "cache", model=model, stage=1, progress=False)
        cache_build_s = time.perf_counter() - t0
        cache = FeatureCache(work / "cache" / "encoder", encoder_fingerprint(model))
        online = Collator(model.processor, max_len, pad)
        cached = Collator(model.processor, max_len, pad, feature_cache=cache)

        def make_step(collator, samples, collate_times: list[float]):
            def step():
                t = time.perf_counter()
                batch = collator(samples)
                collate_times.append(time.perf_counter() - t)
                batch = batch.to(device)
                with dtypes.autocast_context(device):
                    losses = module(batch)
                losses["loss"].backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(trainable, clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                return losses["loss"].detach()

            return step

        rows = []
        for m in args.modalities:
            mod = Modality(m)
            samples = _samples(data, 1, m, B)
            first = online(samples)
            media = first.media[mod]

            def encode(media=media, mod=mod):
                with torch.no_grad(), dtypes.autocast_context(device):
                    return model.media_features(mod, media.to(device))

            enc_stats, feats = timeit(encode, device=device, repeats=steps, warmup=1)
            on_times: list[float] = []
            ca_times: list[float] = []
            on_stats, _ = timeit(
                make_step(online, samples, on_times), device=device, repeats=steps, warmup=args.warmup
            )
            ca_stats, _ = timeit(
                make_step(cached, samples, ca_times), device=device, repeats=steps, warmup=args.warmup
            )
            on_collate, ca_collate = (
                statistics.median(on_times[-steps:]),
                statistics.median(ca_times[-steps:]),
            )
            on_s, ca_s = on_stats["median_s"], ca_stats["median_s"]
            rows.append(
                {
                    "modality": m,
                    "batch": B,
                    "tokens": first.num_tokens,
                    "media_shape": list(media.shape[1:]),
                    "feature_shape": list(feats.shape[1:]),
                    "online_step_s": on_s,
                    "cached_step_s": ca_s,
                    "online_collate_s": on_collate,
                    "cached_collate_s": ca_collate,
                    "online_samples_per_s": B / on_s,
                    "cached_samples_per_s": B / ca_s,
                    "speedup": on_s / ca_s,
                    "encoder_s": enc_stats["median_s"],
                    "encoder_share": enc_stats["median_s"] / on_s,
                }
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report = Report(
        benchmark="stage1_cache",
        size=args.size,
        env=env_info(device, dtypes),
        columns=[
            ("modality", "input"),
            ("batch", "batch"),
            ("online_step_s", "online step (s)"),
            ("cached_step_s", "cached step (s)"),
            ("online_collate_s", "online collate (s)"),
            ("cached_collate_s", "cached collate (s)"),
            ("online_samples_per_s", "online samples/s"),
            ("cached_samples_per_s", "cached samples/s"),
            ("speedup", "cached speed-up"),
            ("encoder_s", "encoder alone (s)"),
            ("encoder_share", "encoder share of online step"),
        ],
        rows=rows,
        summary={f"speedup_{r['modality']}": r["speedup"] for r in rows} | {"build_s": build_s},
        config={
            "stage": 1,
            "trainable_params": sum(p.numel() for p in trainable),
            "gradient_checkpointing": bool(model.config.model.llm.gradient_checkpointing),
            "steps_timed": steps,
        },
        notes=[
            "online = Collator preprocessing the media + the frozen encoder inside the step; cached = Collator "
            "reading the FeatureCache safetensors files that build_cache wrote",
            f"cache build (not in the steps): {cache_build_s:.1f} s",
        ],
    )
    return report


def main(argv: list[str] | None = None) -> dict:
    return cli_main(parse_args, run, argv)


if __name__ == "__main__":
    main()
