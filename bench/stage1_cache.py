"""Stage-1 step with cached encoder features vs online encoding, per input modality.

Stage 1 (encoding-side alignment: media -> caption) trains only the input projector, but its
gradient still flows back through the whole frozen LLM. Two ways to feed it, each timed as a full
optimiser step of ``StageModule(cfg, 1, model)`` (forward, backward, gradient clipping, Adam):

* ``online``: the collator's preprocessed media tensors (image ``[B, 3, 224, 224]``, audio
  ``[B, 3, 1, 128, 204]``, video ``[B, 15, 3, 2, 224, 224]``) go through the frozen ImageBind
  encoder inside the step;
* ``cached``: the encoder's features for the same items are read from an in-memory dict keyed like
  ``FeatureCache`` (``"<sample key>/<item index>"``) and stacked, so the encoder is skipped.

Both include the host-to-device copy of the batch. Media decoding and preprocessing (DataLoader
workers) are not in either. Also reported: the encoder alone on the batch, and its share of the
online step. Batches at ``--size full``: 18 samples (paper Table 7) of 64 tokens (8 media tokens +
prompt + caption).

    python -m bench.stage1_cache --size full --device cuda --json stage1_cache.json
    python -m bench.stage1_cache --size small --device cpu
"""

from __future__ import annotations

import dataclasses
import time

import torch

from bench.cli import base_parser, cli_main, setup
from bench.hardware import env_info
from bench.inputs import RowSpec, batch_to, synthetic_batch
from bench.report import Report
from bench.sizes import MEDIA, SIZE_SPECS, build_model
from bench.timing import timeit


def parse_args(argv):
    ap = base_parser(__doc__)
    ap.add_argument("--modalities", nargs="+", choices=MEDIA, default=list(MEDIA))
    ap.add_argument("--batch-size", type=int, default=None, help="samples per step (default: the size's)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per sample (default: the size's)")
    ap.add_argument(
        "--steps", type=int, default=None, help="timed steps per variant (default: smoke 1, small 2, full 5)"
    )
    ap.add_argument("--warmup", type=int, default=1)
    return ap.parse_args(argv)


def run(args) -> Report:
    from nextgpt.modality import Modality
    from nextgpt.stages.modules import StageModule

    device, dtypes = setup(args)
    spec = SIZE_SPECS[args.size]
    B = args.batch_size or spec.stage1_batch
    S = args.seq_len or spec.stage1_len
    steps = args.steps or {"smoke": 1, "small": 2, "full": 5}[args.size]

    t0 = time.perf_counter()
    model = build_model(args.size, device, dtypes)
    build_s = time.perf_counter() - t0
    module = StageModule(model.config, 1, model)
    module._total_steps = lambda: 1000  # no Trainer attached
    optimizer = module.configure_optimizers()["optimizer"]
    module.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    clip = model.config.training.gradient_clip_val

    def make_step(host_batch_fn):
        def step():
            batch = batch_to(host_batch_fn(), device)
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
    for i, m in enumerate(args.modalities):
        mod = Modality(m)
        online = synthetic_batch(model, [RowSpec(m)] * B, S, cached=False, with_targets=False, seed=i)
        media = online.media[mod]

        def encode(media=media, mod=mod):
            with torch.no_grad(), dtypes.autocast_context(device):
                return model.media_features(mod, media.to(device))

        enc_stats, feats = timeit(encode, device=device, repeats=steps, warmup=1)
        # The cache: one float32 CPU tensor per item, as FeatureCache.get returns them.
        cache = {f"{key}/0": feats[j].float().cpu() for j, key in enumerate(online.keys)}

        def cached_batch(online=online, mod=mod, cache=cache):
            features = {mod: torch.stack([cache[f"{key}/0"] for key in online.keys])}
            return dataclasses.replace(online, media=None, features=features)

        on_stats, _ = timeit(
            make_step(lambda online=online: online), device=device, repeats=steps, warmup=args.warmup
        )
        ca_stats, _ = timeit(make_step(cached_batch), device=device, repeats=steps, warmup=args.warmup)
        on_s, ca_s = on_stats["median_s"], ca_stats["median_s"]
        rows.append(
            {
                "modality": m,
                "batch": B,
                "seq_len": S,
                "media_shape": list(media.shape[1:]),
                "feature_shape": list(feats.shape[1:]),
                "online_step_s": on_s,
                "cached_step_s": ca_s,
                "online_samples_per_s": B / on_s,
                "cached_samples_per_s": B / ca_s,
                "speedup": on_s / ca_s,
                "encoder_s": enc_stats["median_s"],
                "encoder_share": enc_stats["median_s"] / on_s,
            }
        )

    report = Report(
        benchmark="stage1_cache",
        size=args.size,
        env=env_info(device, dtypes),
        columns=[
            ("modality", "input"),
            ("batch", "batch"),
            ("online_step_s", "online step (s)"),
            ("cached_step_s", "cached step (s)"),
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
            "online = preprocessed media through the frozen encoder inside the step; cached = features from an in-memory dict"
        ],
    )
    return report


def main(argv: list[str] | None = None) -> dict:
    return cli_main(parse_args, run, argv)


if __name__ == "__main__":
    main()
