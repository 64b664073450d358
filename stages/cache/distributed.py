"""Sharing a build between processes: the rank and world size, local worker processes (spawned, each
running :func:`~.compute._build_part` on its share), torch.distributed groups, and rank 0 waiting for
the other ranks' entries before it writes the index (see :mod:`nextgpt.stages.cache`)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

from nextgpt.errors import CheckpointError, ConfigError, NextGPTError

from .compute import BuildReport, _build_part, _prepare_model, resolve_device
from .keys import entry_name
from .store import _fresh, _read_json

#: How long rank 0 waits for the other ranks' entries before writing the index (seconds).
INDEX_WAIT_S = 3600.0
POLL_S = 1.0


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None and world_size is None:
        rank = int(os.environ.get("RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
    elif rank is None or world_size is None:
        raise ConfigError("pass rank and world_size together")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world size {world_size}")
    return int(rank), int(world_size)


def _wait_for_entries(
    target: Path,
    what: str,
    stage: int,
    urls: list[str],
    ids: list[str],
    *,
    fingerprint: str,
    kind: str,
    timeout_s: float,
) -> list[str]:
    """Poll until every shard of the build has an up-to-date sidecar; return those still missing when
    ``timeout_s`` ran out (empty: all done)."""
    pending = {sid: (url, os.path.getsize(url)) for url, sid in zip(urls, ids)}
    seen_mtime: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for sid in list(pending):
            side_path = target / (entry_name(sid, stage) + ".json")
            try:
                mtime = side_path.stat().st_mtime
            except OSError:
                continue
            if seen_mtime.get(sid) == mtime:
                continue
            seen_mtime[sid] = mtime
            side = _read_json(side_path)
            size = pending[sid][1]
            if _fresh(side, what=what, stage=stage, size=size, fingerprint=fingerprint, kind=kind):
                pending.pop(sid)
        if not pending or time.monotonic() >= deadline:
            return sorted(pending)
        time.sleep(POLL_S)


def _dist_group(rank: int, world_size: int) -> bool:
    """Whether a torch.distributed process group matches this build's ranks (then barriers are used)."""
    dist = torch.distributed
    return (
        world_size > 1
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_rank() == rank
        and dist.get_world_size() == world_size
    )


def _child_device(device: torch.device | None, requested, local: int) -> str | None:
    """The device of local worker ``local``: ``cuda`` without an index puts worker ``r`` on
    ``cuda:r`` (modulo the number of GPUs) when there are several."""
    if device is None:
        return None
    if device.type == "cuda" and torch.device(requested).index is None and torch.cuda.device_count() > 1:
        return f"cuda:{local % torch.cuda.device_count()}"
    return str(device)


def _spawned(local: int, job: dict, queue) -> None:
    """Entry point of a local build worker (torch.multiprocessing.spawn)."""
    try:
        device = job["devices"][local]
        if device is None or torch.device(device).type == "cpu":  # share the cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // job["num_processes"]))
        model = job["model"]
        if model is None:
            from nextgpt.model import NextGPT

            model = NextGPT(job["cfg"])
        _prepare_model(model, job["what"], resolve_device(job["devices"][local]))
        report = _build_part(
            job["what"],
            job["stage"],
            job["urls"],
            job["ids"],
            job["target"],
            model,
            batch_size=job["batch_size"],
            rank=job["rank0"] + local,
            world_size=job["world_size"],
            progress=job["progress"],
        )
        queue.put(("ok", local, dataclasses.asdict(report)))
    except NextGPTError as exc:  # re-raised in the parent with its type and message
        queue.put(("error", local, (type(exc).__name__, str(exc))))


def _run_spawned(job: dict, num_processes: int) -> list[BuildReport]:
    import torch.multiprocessing as mp

    from nextgpt import errors

    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_spawned, args=(job, queue), nprocs=num_processes, join=True)
    reports, failures = [], []
    while not queue.empty():
        status, local, payload = queue.get()
        if status == "ok":
            reports.append(BuildReport(**payload))
        else:
            failures.append((local, *payload))
    if failures:
        local, name, message = failures[0]
        error_type = getattr(errors, name, None)
        if not (isinstance(error_type, type) and issubclass(error_type, NextGPTError)):
            error_type = CheckpointError
        raise error_type(f"cache build worker {local}: {message}")
    if len(reports) != num_processes:
        raise CheckpointError(f"only {len(reports)} of {num_processes} cache build workers reported back")
    return reports
