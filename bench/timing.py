"""Timing with device synchronisation: :func:`timeit` (warm-up, then timed runs) and
:class:`PhaseTimer` (wall time of wrapped methods, by phase)."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.hardware import sync


def timeit(
    fn: Callable[[], Any], *, device: torch.device, repeats: int, warmup: int = 1
) -> tuple[dict[str, float], Any]:
    """Run ``fn`` ``warmup`` times, then time ``repeats`` runs (device-synchronised)."""
    result = None
    for _ in range(warmup):
        result = fn()
    sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return {
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "runs": len(times),
    }, result


class PhaseTimer:
    """Accumulates wall time of wrapped methods by phase (device-synchronised around each call).

    ``wrap(obj, "method", "phase")`` replaces the bound method on the instance by a timing wrapper
    (``functools.wraps`` keeps its signature visible to ``inspect.signature``); :meth:`restore`
    removes the wrappers. Library code is not changed.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._wrapped: list[tuple[object, str, object]] = []

    def wrap(self, obj: object, name: str, phase: str) -> None:
        original = getattr(obj, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            sync(self.device)
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                sync(self.device)
                self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - t
                self.calls[phase] = self.calls.get(phase, 0) + 1

        own = name in vars(obj)  # a module's function or an instance's own attribute: put it back
        setattr(obj, name, timed)
        self._wrapped.append((obj, name, original if own else None))

    def reset(self) -> None:
        self.totals.clear()
        self.calls.clear()

    def restore(self) -> None:
        for obj, name, own in reversed(self._wrapped):
            if own is None:
                delattr(obj, name)  # the class's method shows through again
            else:
                setattr(obj, name, own)
        self._wrapped.clear()
