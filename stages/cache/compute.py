"""Computing entries: the frozen model over one process's share of a build's shards, each shard read
as training reads it and written as one entry (:func:`_build_part`); :class:`BuildReport` counts what
was written and skipped (see :mod:`nextgpt.stages.cache`)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import torch

from nextgpt.errors import CheckpointError, ConfigError, InputError
from nextgpt.modality import Modality

from .keys import FORMAT, STORED_DTYPE, VIEW, entry_name, expected_feature, fingerprint_of
from .store import _fresh, _read_json, _write_entry

logger = logging.getLogger(__package__)  # records keep the name nextgpt.stages.cache


@dataclasses.dataclass
class BuildReport:
    """What :func:`~nextgpt.stages.cache.build_cache_report` did.

    Attributes:
        path: the cache folder (``<out>/<what>``).
        what, stage: the cache and the stage built.
        shards: shards of the whole build (all ranks).
        written_shards, written_samples: entries (re)built by this process (and its workers).
        skipped_shards, skipped_samples: entries already up to date, left as they were.
        rank, world_size: this process's share of the build.
        index_written: whether this process wrote ``index.json``.
        entries, samples: what the folder's index lists (all stages and builds) when it was written.
    """

    path: Path
    what: str
    stage: int
    shards: int
    written_shards: int = 0
    written_samples: int = 0
    skipped_shards: int = 0
    skipped_samples: int = 0
    rank: int = 0
    world_size: int = 1
    index_written: bool = False
    entries: int = 0
    samples: int = 0
    fingerprint: str = ""

    def add(self, other: BuildReport) -> None:
        """Add ``other``'s written and skipped counts to this report's."""
        for name in ("written_shards", "written_samples", "skipped_shards", "skipped_samples"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """The device a build runs on. ``"cuda"`` without an index means ``cuda:$LOCAL_RANK`` under a
    launcher that sets it (torchrun), else the current CUDA device. ``None``: leave the model where it
    is.

    Raises:
        ConfigError: an invalid device string, or a device this machine does not have.
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"invalid device {device!r} ({exc}); use e.g. cpu, cuda, cuda:1, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r}: no CUDA device is available here (torch.cuda.is_available() is False)"
            )
        count = torch.cuda.device_count()
        if dev.index is None:
            local = os.environ.get("LOCAL_RANK")
            dev = torch.device("cuda", int(local) if local is not None else torch.cuda.current_device())
        if dev.index >= count:
            raise ConfigError(f"device {dev}: this machine has {count} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS is not available here")
    elif dev.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ConfigError(f"device {device!r}: no XPU device is available here")
    return dev


def _compute(
    model,
    what: str,
    m: Modality,
    jobs: list[tuple[str, object]],
    out: dict[str, torch.Tensor],
    shapes: dict[str, list[int]],
) -> None:
    """Features for one modality's pending items, stored fp16 under their tensor names."""
    with torch.no_grad():
        if what == "encoder":
            feats = model.media_features(m, torch.stack([value for _, value in jobs]))
        else:
            feats = model.decoders[m].encode_captions([value for _, value in jobs])
    shape = shapes.setdefault(m.value, list(feats.shape[1:]))
    if shape != list(feats.shape[1:]):
        raise CheckpointError(
            f"{m.value} features of shapes {shape} and {list(feats.shape[1:])} in one cache"
        )
    for (name, _), f in zip(jobs, feats):
        out[name] = f.detach().to(STORED_DTYPE).cpu().contiguous()


def _build_shard(
    model, what: str, stage: int, url: str, batch_size: int, bar
) -> tuple[dict[str, torch.Tensor], dict[str, int], list[str], int, dict[str, list[int]]]:
    """``(tensors, items per sample key, skipped sample keys (the first 100), number skipped, shape per
    modality)`` of one shard.

    The shard is read as training reads it (the same decoding), whole, whatever RANK/WORLD_SIZE say.
    A sample that does not decode or render is skipped and counted (training drops it too); a cache
    build never stops for one."""
    from nextgpt.encoders.encoder import ImageBindEncoder
    from nextgpt.stages.data.schema import BadSample
    from nextgpt.stages.data.shards import decode_sample, iter_raw

    tensors: dict[str, torch.Tensor] = {}
    items: dict[str, int] = {}
    seen: set[str] = set()
    skipped: list[str] = []
    n_skipped = 0
    shapes: dict[str, list[int]] = {}
    pending: dict[Modality, list[tuple[str, object]]] = {}

    def skip(key: str, reason: object) -> None:
        nonlocal n_skipped
        logger.warning("cache: skipping sample %s of %s: %s", key, url, reason)
        n_skipped += 1
        if len(skipped) < 100:
            skipped.append(key)

    for raw in iter_raw(url):
        bar.update(1)
        key = str(raw.get("__key__"))
        if "__error__" not in raw:
            if key in seen:
                raise CheckpointError(
                    f"duplicate sample key {key!r} in {url} (keys must be unique in a shard)"
                )
            seen.add(key)
        try:
            sample = decode_sample(raw, stage, decode_output_media=False)
            enc = model.processor.encode(sample.turns, add_generation_prompt=False)
            if what == "encoder":
                jobs = [
                    (item.modality, ImageBindEncoder.preprocess_item(item.modality, item.value))
                    for slot in enc.slots
                    for item in slot
                ]
            else:
                if len(enc.outputs) != len(sample.output_captions):
                    raise InputError(
                        f"{len(enc.outputs)} output media but {len(sample.output_captions)} captions"
                    )
                jobs = [
                    (slot[0].modality, caption) for slot, caption in zip(enc.outputs, sample.output_captions)
                ]
        except (BadSample, InputError, ValueError) as exc:
            skip(key, exc)
            continue
        items[sample.key] = len(jobs)
        for i, (m, value) in enumerate(jobs):
            pending.setdefault(m, []).append((f"{sample.key}/{i}", value))
        for m in [m for m, q in pending.items() if len(q) >= batch_size]:
            _compute(model, what, m, pending.pop(m), tensors, shapes)
    for m in list(pending):
        _compute(model, what, m, pending.pop(m), tensors, shapes)
    return tensors, items, skipped, n_skipped, shapes


def _prepare_model(model, what: str, device: torch.device | None):
    if device is not None:
        model.to(device)
        if what == "captions":  # decoders follow model.to(); make sure the text encoders moved too
            for decoder in model.decoders.values():
                if torch.device(decoder.device) != device:
                    decoder.to(device=device)
    return model


def _build_part(
    what: str,
    stage: int,
    urls: list[str],
    ids: list[str],
    target: Path,
    model,
    *,
    batch_size: int,
    rank: int,
    world_size: int,
    progress: bool,
) -> BuildReport:
    """Build this rank's shards (``r, r + W, ...``); return what was written and skipped."""
    from tqdm.auto import tqdm

    from nextgpt.stages.data import count_samples

    report = BuildReport(target, what, stage, len(urls), rank=rank, world_size=world_size)
    fingerprint = fingerprint_of(what, model)
    report.fingerprint = fingerprint
    kind = expected_feature(what, model)["kind"]
    mine = list(range(rank, len(urls), world_size))
    todo = []
    for i in mine:
        size = os.path.getsize(urls[i])
        side = _read_json(target / (entry_name(ids[i], stage) + ".json"))
        data = target / (entry_name(ids[i], stage) + ".safetensors")
        if (
            _fresh(side, what=what, stage=stage, size=size, fingerprint=fingerprint, kind=kind)
            and data.is_file()
        ):
            report.skipped_shards += 1
            report.skipped_samples += int(side.get("samples", 0))
        else:
            todo.append((i, size))
    total = count_samples([urls[i] for i, _ in todo]) if todo else 0
    desc = f"{what} cache" + (f" [rank {rank}/{world_size}]" if world_size > 1 else "")
    bar = tqdm(
        total=total, desc=desc, unit="sample", disable=not progress, position=rank if world_size > 1 else None
    )
    try:
        for i, size in todo:
            tensors, items, skipped, n_skipped, shapes = _build_shard(
                model, what, stage, urls[i], batch_size, bar
            )
            meta = {
                "format": FORMAT,
                "what": what,
                "view": VIEW[what],
                "stage": stage,
                "shard": ids[i],
                "source_size": size,
                "file": entry_name(ids[i], stage) + ".safetensors",
                "sidecar": entry_name(ids[i], stage) + ".json",
                "samples": len(items),
                "skipped_samples": n_skipped,
                "tensors": len(tensors),
                "feature": {
                    "kind": kind,
                    "dtype": str(STORED_DTYPE).removeprefix("torch."),
                    "shapes": shapes,
                },
                "fingerprint": fingerprint,
                "preset": model.config.name,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "items": items,
                "skipped": skipped,
            }
            _write_entry(target, ids[i], stage, tensors, meta)
            report.written_shards += 1
            report.written_samples += len(items)
    finally:
        bar.close()
    return report
