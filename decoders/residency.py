"""Which decoder pipelines stay loaded: a memory budget with least-recently-used eviction.

A model holds one frozen diffusion pipeline per output modality (:mod:`nextgpt.decoders.base`); each
loads lazily the first time its modality is decoded. Without a budget they then stay loaded for the
life of the process, which is today's behaviour and what ``model.decoder_memory.budget_mb: null``
keeps. :class:`DecoderResidency` is the policy the generation code asks before and after each decode::

    decoder = residency.acquire(Modality.IMAGE)   # loaded, on its device, most recently used
    try:
        media = decoder.generate(cond)
    finally:
        residency.release(Modality.IMAGE)

With a budget (:class:`~nextgpt.config.DecoderMemoryConfig`), :meth:`DecoderResidency.acquire`
evicts the least recently used *idle* pipelines (acquired by nobody) until the loaded ones fit:
it unloads them (:meth:`Decoder.unload`; the next use loads them again) or, with ``offload_idle``,
parks them in CPU memory (:meth:`Decoder.offload_to_cpu`; the next use moves them back). When the
size of the pipeline being acquired is known, the room is made *before* it loads or moves back, so
the budget also bounds the peak; :meth:`DecoderResidency.release` evicts again, so that at rest the
loaded pipelines fit the budget.

Sizes. The size of a pipeline is the bytes of the parameters and buffers of the ``torch.nn.Module``
objects in its ``components`` (:meth:`Decoder.pipeline_bytes`): its weights, not the activations of a
call. It cannot be known before the pipeline is built, so it is measured after each load; a pipeline
never loaded yet is assumed to be as large as the largest one measured so far (for the first one:
nothing, so the first load of a pipeline larger than every earlier one can briefly exceed the budget
by the difference). A pipeline under ``cpu_offload`` counts at its full size, although its weights
sit in CPU memory between calls.

Rules. A pipeline in use is never evicted: two threads decoding two modalities at once hold both,
over the budget if need be (acquire and release nest; they are counted per modality). A single
pipeline larger than the budget is still loaded (it is needed now), with one warning; it is evicted
when released. Every method takes one lock, so the residency can be shared by the threads of one
model. Offloading to CPU memory frees nothing on a CPU device: ``offload_idle`` is refused there
with a :class:`~nextgpt.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

from nextgpt.config import DecoderMemoryConfig
from nextgpt.config_engine import error
from nextgpt.decoders.base import Decoder
from nextgpt.errors import ConfigError, InputError
from nextgpt.modality import Modality

__all__ = ["DecoderResidency"]

logger = logging.getLogger(__name__)

#: The config key of :attr:`DecoderMemoryConfig.offload_idle`, for error messages.
OFFLOAD_KEY = "model.decoder_memory.offload_idle"


def _mib(n: int | float) -> str:
    return f"{n / 2**20:.2f} MiB"


class DecoderResidency:
    """The decoder memory policy of one model (see the module docstring).

    Args:
        decoders: the model's decoders by modality (``model.decoders``; kept by reference, not
            copied).
        config: the budget; default: no budget (every pipeline stays loaded once used).
    """

    def __init__(
        self, decoders: Mapping[Modality, Decoder], config: DecoderMemoryConfig | None = None
    ) -> None:
        self.decoders = decoders
        self.config = config if config is not None else DecoderMemoryConfig()
        self._lock = threading.RLock()
        self._in_use: Counter[Modality] = Counter()
        self._recency: list[Modality] = []  # least recently used first
        self._sizes: dict[Modality, int] = {}  # measured after each load
        self._warned: set[Modality] = set()
        self._stats: Counter[str] = Counter()

    # ------------------------------------------------------------------------------------------
    # The two calls around a decode
    # ------------------------------------------------------------------------------------------

    def acquire(self, modality: Modality | str) -> Decoder:
        """The decoder of ``modality`` with its pipeline loaded and on its device, marked in use and
        most recently used; idle pipelines are evicted (least recently used first) until the loaded
        ones fit the budget. Pair every call with :meth:`release`.

        Raises:
            InputError: the model has no decoder for ``modality``.
            ConfigError: ``offload_idle`` is set and the decoder runs on the CPU.
            CheckpointError: the pipeline cannot be loaded (see :meth:`Decoder.load`).
        """
        m = self._modality(modality)
        with self._lock:
            decoder = self.decoders[m]
            if self.config.offload_idle:
                self._check_offload_device(m, decoder)
            self._in_use[m] += 1
            try:
                self._touch(m)
                if not self._resident(decoder):
                    # Make room before the pipeline loads or moves back, so that the peak fits too.
                    self._evict_to_fit(extra=self._expected_size(m))
                    if decoder.is_offloaded:
                        self._stats["restores"] += 1
                    else:
                        self._stats["loads"] += 1
                decoder.load()  # builds it, or moves a parked one back; a no-op when resident
                self._sizes[m] = decoder.pipeline_bytes()
                self._warn_if_oversized(m)
                self._evict_to_fit()
            except BaseException:
                self._in_use[m] -= 1
                raise
            return decoder

    def release(self, modality: Modality | str) -> None:
        """End one use of ``modality`` begun by :meth:`acquire`; idle pipelines beyond the budget are
        evicted now (least recently used first).

        Raises:
            RuntimeError: ``modality`` is not in use (a release without its acquire).
        """
        m = self._modality(modality)
        with self._lock:
            if self._in_use[m] <= 0:
                raise RuntimeError(f"decoder residency: release({m.value!r}) without a matching acquire")
            self._in_use[m] -= 1
            self._evict_to_fit()

    # ------------------------------------------------------------------------------------------
    # What is where
    # ------------------------------------------------------------------------------------------

    def resident_bytes(self) -> dict[Modality, int]:
        """Bytes of each pipeline loaded on its decoder's device (parked ones excluded), by modality."""
        with self._lock:
            return {m: d.pipeline_bytes() for m, d in self.decoders.items() if self._resident(d)}

    def offloaded_bytes(self) -> dict[Modality, int]:
        """Bytes of each pipeline parked in CPU memory by ``offload_idle``, by modality."""
        with self._lock:
            return {m: d.pipeline_bytes() for m, d in self.decoders.items() if d.is_offloaded}

    def in_use(self) -> dict[Modality, int]:
        """How many unreleased :meth:`acquire` calls each modality has (modalities in use only)."""
        with self._lock:
            return {m: n for m, n in self._in_use.items() if n > 0}

    @property
    def stats(self) -> dict[str, int]:
        """Counts since construction: ``loads`` and ``restores`` (parked pipelines moved back) by
        :meth:`acquire`, ``unloads`` and ``offloads`` by eviction."""
        with self._lock:
            return {k: self._stats[k] for k in ("loads", "restores", "unloads", "offloads")}

    def state(self) -> dict[str, Any]:
        """A plain summary for logs and tests: the budget in bytes (``None``: no limit), whether idle
        pipelines are parked, and per modality its ``state`` (``"resident"``, ``"offloaded"`` or
        ``"unloaded"``), ``bytes`` (measured; ``None`` before its first load) and ``in_use``, in
        least-recently-used-first order."""
        with self._lock:
            modalities = self._lru_order()
            return {
                "budget_bytes": self.config.budget_bytes,
                "offload_idle": self.config.offload_idle,
                "decoders": {
                    m.value: {
                        "state": self._state_of(self.decoders[m]),
                        "bytes": self._sizes.get(m),
                        "in_use": self._in_use[m],
                    }
                    for m in modalities
                },
                "stats": self.stats,
            }

    def describe(self) -> str:
        """One line: the budget and each pipeline's state and size, least recently used first."""
        state = self.state()
        budget = state["budget_bytes"]
        parts = []
        for name, entry in state["decoders"].items():
            part = f"{name} {entry['state']}"
            if entry["bytes"] is not None:
                part += f" {_mib(entry['bytes'])}"
            if entry["in_use"]:
                part += " (in use)"
            parts.append(part)
        limit = "no budget" if budget is None else f"budget {_mib(budget)}"
        if state["offload_idle"]:
            limit += ", idle pipelines parked in CPU memory"
        return f"decoders ({limit}): " + (", ".join(parts) or "none")

    def __repr__(self) -> str:
        return f"DecoderResidency({self.describe()})"

    # ------------------------------------------------------------------------------------------
    # Internals (called with the lock held)
    # ------------------------------------------------------------------------------------------

    def _modality(self, modality: Modality | str) -> Modality:
        try:
            m = Modality.parse(modality)
        except ConfigError as err:
            raise InputError(str(err)) from None
        if m not in self.decoders:
            have = ", ".join(x.value for x in self.decoders) or "none"
            raise InputError(f"this model has no {m.value} decoder; its decoders: {have}")
        return m

    @staticmethod
    def _resident(decoder: Decoder) -> bool:
        return decoder.is_loaded and not decoder.is_offloaded

    @staticmethod
    def _state_of(decoder: Decoder) -> str:
        if decoder.is_offloaded:
            return "offloaded"
        return "resident" if decoder.is_loaded else "unloaded"

    def _touch(self, m: Modality) -> None:
        if m in self._recency:
            self._recency.remove(m)
        self._recency.append(m)

    def _lru_order(self) -> list[Modality]:
        """Every modality, least recently used first (never acquired ones first, in model order)."""
        return [m for m in self.decoders if m not in self._recency] + [
            m for m in self._recency if m in self.decoders
        ]

    def _expected_size(self, m: Modality) -> int:
        """The size of ``m``'s pipeline: measured, or before its first load the largest measured."""
        if m in self._sizes:
            return self._sizes[m]
        return max(self._sizes.values(), default=0)

    @staticmethod
    def _check_offload_device(m: Modality, decoder: Decoder) -> None:
        """``offload_idle`` parks pipelines in CPU memory: refused for a decoder on the CPU."""
        if decoder.device.type == "cpu":
            raise error(
                OFFLOAD_KEY,
                f"the {m.value} decoder runs on the CPU, where parking idle pipelines in CPU memory frees "
                "nothing; set it to false (idle pipelines are then unloaded) or move the model to a GPU",
            )

    def _warn_if_oversized(self, m: Modality) -> None:
        budget = self.config.budget_bytes
        if not budget or m in self._warned or self._sizes[m] <= budget:
            return  # budget 0 is "keep only what is in use": every pipeline is over it by intent
        self._warned.add(m)
        logger.warning(
            "decoder residency: the %s pipeline (%s) is larger than model.decoder_memory.budget_mb (%s); it is "
            "loaded while in use and evicted after each use; raise budget_mb to keep it loaded",
            m.value,
            _mib(self._sizes[m]),
            _mib(budget),
        )

    def _evict_to_fit(self, extra: int = 0) -> None:
        """Evict idle resident pipelines, least recently used first, until the resident ones plus
        ``extra`` bytes (a pipeline about to load) fit the budget, or none is left to evict."""
        budget = self.config.budget_bytes
        if budget is None:
            return
        resident = {m: d.pipeline_bytes() for m, d in self.decoders.items() if self._resident(d)}
        total = sum(resident.values()) + extra
        for m in self._lru_order():
            if total <= budget:
                return
            if m in resident and self._in_use[m] == 0:
                self._evict(m, resident[m], budget)
                total -= resident[m]
        if total > budget:
            busy = ", ".join(m.value for m in self.in_use()) or "none"
            logger.debug(
                "decoder residency: %s resident (+%s to load) over the %s budget; in use: %s",
                _mib(total - extra),
                _mib(extra),
                _mib(budget),
                busy,
            )

    def _evict(self, m: Modality, size: int, budget: int) -> None:
        decoder = self.decoders[m]
        if self.config.offload_idle:
            decoder.offload_to_cpu()
            self._stats["offloads"] += 1
            how = "parked in CPU memory"
        else:
            decoder.unload()
            self._stats["unloads"] += 1
            how = "unloaded"
        logger.info(
            "decoder residency: %s the idle %s pipeline (%s) to fit the %s budget",
            how,
            m.value,
            _mib(size),
            _mib(budget),
        )
