"""Building a cache: :func:`build_cache_report` checks the request, lists the stage's shards, runs
this process's share (here or in spawned workers) and, on rank 0, writes the index once every shard
is done (see :mod:`nextgpt.stages.cache`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from nextgpt.errors import CheckpointError, ConfigError

from .compute import BuildReport, _build_part, _prepare_model, resolve_device
from .distributed import (
    INDEX_WAIT_S,
    _child_device,
    _dist_group,
    _rank_world,
    _run_spawned,
    _wait_for_entries,
)
from .keys import KINDS, STAGES_OF, _kind_of, _listing, shard_id
from .store import write_index

logger = logging.getLogger(__package__)  # records keep the name nextgpt.stages.cache


def _shards_of(data, stage: int, cfg) -> tuple[list[str], list[str]]:
    """The stage's shards, sorted by shard id: ``(urls, ids)``."""
    from nextgpt.stages.datamodule import stage_shards

    urls = list(dict.fromkeys(stage_shards(data, stage, list(cfg.training.stage_config(stage).datasets))))
    pairs = sorted((shard_id(u, data), u) for u in urls)
    return [u for _, u in pairs], [s for s, _ in pairs]


def build_cache_report(
    what: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    preset: str = "tiny",
    overrides: Sequence[str] = (),
    stage: int = 1,
    model=None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    num_processes: int = 1,
    progress: bool = True,
    wait_timeout_s: float = INDEX_WAIT_S,
) -> BuildReport:
    """Precompute ``what`` (``"encoder"`` or ``"captions"``) for ``stage``'s shards under ``data`` into
    ``<out>/<what>/``; returns a :class:`BuildReport` (its ``path``, counts written / up to date).

    Args:
        what: the cache to build, ``"encoder"`` or ``"captions"``.
        data: the data folder holding the stage's shards.
        out: the cache root; the cache goes to ``<out>/<what>/``.
        preset: the preset whose frozen models run (ignored when ``model`` is given).
        overrides: dotted config overrides for ``preset``.
        stage: the stage whose rendering of the samples is cached (encoder: 1 or 3; captions: 2 or 3).
        model: a built :class:`~nextgpt.NextGPT` to use instead (moved to ``device`` when given).
        batch_size: items per frozen-model call.
        device: where the frozen models run (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; ``"cuda"`` means
            ``cuda:$LOCAL_RANK`` under a launcher that sets it). ``None``: where ``model`` is (a model
            built here: the CPU).
        rank: this process's share: shards ``rank, rank + world_size, ...`` of the sorted shard list
            (pass it with ``world_size``; default: the ``RANK``/``WORLD_SIZE`` environment variables,
            else 0 and 1). Rank 0 writes the index when every shard is done (it waits for the others'
            entries, or meets them at a barrier when a torch.distributed group is initialised).
        world_size: the number of processes sharing the build (pass it with ``rank``).
        num_processes: start this many local worker processes (spawned) that split this process's
            share; with ``device="cuda"`` and several GPUs, worker ``r`` runs on ``cuda:r``.
        progress: show a progress bar.
        wait_timeout_s: how long rank 0 waits for the other ranks' entries before it gives up.

    Entries already up to date (same source size, stage, feature kind and fingerprint) are kept, so
    running the same command again resumes an interrupted build; builds for other stages or
    datasets add their entries to the same folder.

    Raises:
        ConfigError: an unknown cache, a stage that does not read it, an invalid or absent device.
        CheckpointError: duplicate sample keys in a shard; other ranks' shards not done in time.
    """
    from nextgpt.config import NextGPTConfig

    if what not in KINDS:
        raise ConfigError(f"unknown cache {what!r}; valid: {', '.join(KINDS)}")
    if stage not in (1, 2, 3):
        raise ConfigError(f"stage must be 1, 2 or 3, got {stage!r}")
    if stage not in STAGES_OF[what]:
        users = " and ".join(map(str, STAGES_OF[what]))
        raise ConfigError(f"stage {stage} does not read the {what} cache (stages {users} do)")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if num_processes < 1:
        raise ConfigError(f"num_processes must be >= 1, got {num_processes}")
    rank, world_size = _rank_world(rank, world_size)
    dev = resolve_device(device)  # validated here, before any worker starts
    cfg = (
        model.config
        if model is not None
        else NextGPTConfig.from_preset(preset).with_overrides(list(overrides))
    )
    urls, ids = _shards_of(data, stage, cfg)
    target = Path(out) / what
    target.mkdir(parents=True, exist_ok=True)

    if num_processes > 1:
        # Global ranks: this launcher rank's workers are rank * N .. rank * N + N - 1 of world * N.
        job = {
            "what": what,
            "stage": stage,
            "urls": urls,
            "ids": ids,
            "target": target,
            "model": model,
            "cfg": cfg,
            "batch_size": batch_size,
            "progress": progress,
            "num_processes": num_processes,
            "rank0": rank * num_processes,
            "world_size": world_size * num_processes,
        }
        job["devices"] = [_child_device(dev, device, i) for i in range(num_processes)]
        report = BuildReport(target, what, stage, len(urls), rank=rank, world_size=world_size)
        for part in _run_spawned(job, num_processes):
            report.add(part)
            report.fingerprint = report.fingerprint or part.fingerprint
    else:
        if model is None:
            from nextgpt.model import NextGPT

            model = NextGPT(cfg)
        _prepare_model(model, what, dev)
        report = _build_part(
            what,
            stage,
            urls,
            ids,
            target,
            model,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            progress=progress,
        )

    kind = _kind_of(what, cfg)
    use_barrier = _dist_group(rank, world_size)
    if use_barrier:
        torch.distributed.barrier()
    if rank == 0:
        missing = []
        if not use_barrier:
            missing = _wait_for_entries(
                target,
                what,
                stage,
                urls,
                ids,
                fingerprint=report.fingerprint,
                kind=kind,
                timeout_s=wait_timeout_s,
            )
        index = write_index(target, what)
        report.index_written = True
        report.entries, report.samples = len(index["entries"]), int(index["samples"])
        if missing:
            raise CheckpointError(
                f"{what} cache {target}: {len(missing)} shard(s) of the build were not done after "
                f"{wait_timeout_s:.0f} s: {_listing(missing)}; the index lists the finished ones. Run the "
                "build again (finished shards are kept)"
            )
    if use_barrier:
        torch.distributed.barrier()
    logger.info(
        "%s cache (stage %d) -> %s: %d shard(s) written (%d samples), %d up to date (%d samples)",
        what,
        stage,
        target,
        report.written_shards,
        report.written_samples,
        report.skipped_shards,
        report.skipped_samples,
    )
    return report


def build_cache(what: str, data: str | os.PathLike, out: str | os.PathLike, **kwargs) -> Path:
    """:func:`build_cache_report` (same arguments), returning the cache folder."""
    return build_cache_report(what, data, out, **kwargs).path
