"""Records that pass between the model's parts: one per signal run.

:class:`SignalRun` is what decoding produces for one output (the states that condition a decoder);
:class:`SignalTarget` is what training asks of one run (its caption, conditioning and media targets).
Both are importable from :mod:`nextgpt.model` too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from nextgpt.errors import InputError
from nextgpt.modality import Modality


@dataclass
class SignalRun:
    """The states that condition one output: ``states`` = hidden + input embeddings, ``[n, H]``."""

    modality: Modality
    states: torch.Tensor


@dataclass(frozen=True)
class SignalTarget:
    """What one signal run of a training row must produce: one record per run, in run order.

    The collator (:class:`~nextgpt.stages.batch.Collator`) builds one per output media of a sample;
    the stage module resolves ``cond`` and ``media`` (:meth:`StageModule.signal_targets
    <nextgpt.stages.modules.StageModule.signal_targets>`) and :meth:`NextGPT.compute_losses` takes
    them.

    Attributes:
        modality: the output modality; it must be the modality of the run's signal tokens.
        caption: the caption whose decoder conditioning is the alignment target, or ``None``.
        cond: that conditioning, ``[Q, C]`` (``[C]`` for a one-token decoder such as AudioLDM): from
            the caption cache, or computed online from ``caption``; ``None``: no alignment loss on
            this run.
        media: the target media of the denoising loss. In a batch: the sample's decoded media
            object (``None`` when output media are not decoded); for :meth:`NextGPT.compute_losses`:
            that media prepared by the decoder (``Decoder.prepare_target``, a tensor), or ``None``
            for no denoising loss on this run.

    Raises:
        InputError: a modality that is not a media :class:`~nextgpt.modality.Modality`, a caption
            that is not a str, or a ``cond`` that is not a floating ``[Q, C]`` / ``[C]`` tensor.
    """

    modality: Modality
    caption: str | None = None
    cond: torch.Tensor | None = None
    media: object | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.modality, Modality) or self.modality is Modality.TEXT:
            raise InputError(
                f"a signal target's modality must be image, audio or video, got {self.modality!r}"
            )
        if self.caption is not None and not isinstance(self.caption, str):
            raise InputError(
                f"the {self.modality.value} signal target's caption must be a str or None, "
                f"got {type(self.caption).__name__}"
            )
        cond = self.cond
        if cond is not None and (
            not isinstance(cond, torch.Tensor) or not cond.is_floating_point() or cond.ndim not in (1, 2)
        ):
            what = (
                f"{cond.dtype} {list(cond.shape)}" if isinstance(cond, torch.Tensor) else type(cond).__name__
            )
            raise InputError(
                f"the {self.modality.value} signal target's cond must be a floating [Q, C] or [C] tensor, "
                f"got {what}"
            )

    def __repr__(self) -> str:  # shapes and types, not tensor values
        cond = None if self.cond is None else list(self.cond.shape)
        media = None if self.media is None else type(self.media).__name__
        return f"SignalTarget({self.modality.value}, caption={self.caption!r}, cond={cond}, media={media})"

    def to(self, device: torch.device | str) -> SignalTarget:
        """A copy with ``cond`` on ``device`` (``media`` is shared)."""
        if self.cond is None:
            return self
        return dataclasses.replace(self, cond=self.cond.to(device, non_blocking=True))


__all__ = ["SignalRun", "SignalTarget"]
