"""What :meth:`nextgpt.NextGPT.generate` returns, how it is written to disk, and what it reports while
it runs (:class:`ProgressEvent`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nextgpt.modality import MEDIA_MODALITIES, Modality


@dataclass(init=False)
class GenerationOutput:
    """Text and media produced by one ``generate`` call.

    The media are kept per modality (:attr:`media`, :attr:`rates`); ``images``, ``audios``,
    ``videos``, ``audio_sample_rate`` and ``video_fps`` read and write those same entries.

    Attributes:
        text: the answer, without signal, placeholder or wrapper tokens.
        media: per media modality (image, audio, video; always all three) the items produced, in
            order: PIL images; float32 mono waveforms ``[N]``; uint8 frames ``[T, H, W, 3]``.
        rates: per timed modality, samples per second of its media: the audio sample rate (Hz), the
            video frame rate (absent: not produced, or not known).
        token_ids: the generated token ids (signal tokens included), for inspection.
        finish_reason: why the text ended: ``"stop"`` (EOS or a stop string), ``"length"`` (the
            ``max_new_tokens`` budget) or ``"cancelled"`` (the request was cancelled).
        masks: LLMBind ``<seg>`` masks of the input image (bool ``[H, W]``), saved as PNG overlays.
        prompts: the LLMBind task prompts the answer wrote (:class:`nextgpt.task_prompts.TaskSpan`),
            each rendered into the media of its modality (empty without ``model.task_prompts``).
        images, audios, videos: ``media[IMAGE]``, ``media[AUDIO]``, ``media[VIDEO]``.
        audio_sample_rate, video_fps: ``rates[AUDIO]``, ``rates[VIDEO]`` (``None`` when absent).
    """

    text: str
    media: dict[Modality, list]
    rates: dict[Modality, float]
    token_ids: list[int]
    finish_reason: str

    def __init__(
        self,
        text: str = "",
        images: list | None = None,
        audios: list[np.ndarray] | None = None,
        videos: list[np.ndarray] | None = None,
        audio_sample_rate: int | None = None,
        video_fps: float | None = None,
        token_ids: list[int] | None = None,
        *,
        media: dict[Modality, list] | None = None,
        rates: dict[Modality, float] | None = None,
        finish_reason: str = "stop",
    ) -> None:
        self.text = text
        self.finish_reason = finish_reason
        #: LLMBind task prompts of the answer (``TaskSpan``: task, text, closed), in order
        self.prompts: list = []
        #: LLMBind ``<seg>`` masks of the input image (bool ``[H, W]``, one per ``<seg>``) and that image
        self.masks: list[np.ndarray] = []
        self.mask_image = None
        self.token_ids = list(token_ids) if token_ids is not None else []
        self.media: dict[Modality, list] = {m: [] for m in MEDIA_MODALITIES}
        for m, items in (media or {}).items():
            self.media[_media_modality(m)] = list(items)
        self.rates = {_media_modality(m): r for m, r in (rates or {}).items() if r is not None}
        given: dict[Modality, list | None] = {
            Modality.IMAGE: images,
            Modality.AUDIO: audios,
            Modality.VIDEO: videos,
        }
        for m, listed in given.items():
            if listed is not None:
                self.media[m] = listed
        if audio_sample_rate is not None:
            self.rates[Modality.AUDIO] = audio_sample_rate
        if video_fps is not None:
            self.rates[Modality.VIDEO] = video_fps

    def add(self, modality: Modality, items: list, rate: float | None = None) -> None:
        """Append ``items`` of ``modality`` (and record its ``rate`` when it has one)."""
        self.media[modality] += items
        if rate is not None:
            self.rates[modality] = rate

    # The per-modality views kept from the first API (attribute names of the old dataclass fields).

    @property
    def images(self) -> list:
        """The generated images (PIL), in signal-run order."""
        return self.media[Modality.IMAGE]

    @images.setter
    def images(self, value: list) -> None:
        self.media[Modality.IMAGE] = value

    @property
    def audios(self) -> list[np.ndarray]:
        """The generated sounds, float32 mono waveforms at :attr:`audio_sample_rate`."""
        return self.media[Modality.AUDIO]

    @audios.setter
    def audios(self, value: list[np.ndarray]) -> None:
        self.media[Modality.AUDIO] = value

    @property
    def videos(self) -> list[np.ndarray]:
        """The generated videos, uint8 ``[T, H, W, 3]`` frames at :attr:`video_fps`."""
        return self.media[Modality.VIDEO]

    @videos.setter
    def videos(self, value: list[np.ndarray]) -> None:
        self.media[Modality.VIDEO] = value

    @property
    def audio_sample_rate(self) -> int | None:
        """The sample rate of :attr:`audios` in Hz (``None`` without audio)."""
        rate = self.rates.get(Modality.AUDIO)
        return None if rate is None else int(rate)

    @audio_sample_rate.setter
    def audio_sample_rate(self, value: int | None) -> None:
        self._set_rate(Modality.AUDIO, value)

    @property
    def video_fps(self) -> float | None:
        """The frame rate of :attr:`videos` (``None`` without video)."""
        return self.rates.get(Modality.VIDEO)

    @video_fps.setter
    def video_fps(self, value: float | None) -> None:
        self._set_rate(Modality.VIDEO, value)

    def _set_rate(self, modality: Modality, value: float | None) -> None:
        if value is None:
            self.rates.pop(modality, None)
        else:
            self.rates[modality] = value

    def save(self, directory: str | os.PathLike, prefix: str = "output") -> list[Path]:
        """Write the text (``.txt``), images (PNG), audio (16-bit WAV) and videos (H.264 MP4) into
        ``directory`` as ``{prefix}.txt`` and ``{prefix}_{modality}{i}.{ext}``; returns the paths
        written, in that order."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        if self.text:
            p = out / f"{prefix}.txt"
            p.write_text(self.text + "\n", encoding="utf-8")
            paths.append(p)
        for m in MEDIA_MODALITIES:
            ext, write = _WRITERS[m]
            for i, item in enumerate(self.media[m]):
                p = out / f"{prefix}_{m.value}{i}.{ext}"
                write(p, item, self.rates.get(m))
                paths.append(p)
        for i, mask in enumerate(self.masks):  # the input image with the mask in red at half opacity
            p = out / f"{prefix}_mask{i}.png"
            _write_png(p, _overlay(self.mask_image, mask), None)
            paths.append(p)
        return paths


def _overlay(image, mask: np.ndarray):
    from PIL import Image

    base = (
        np.asarray(image.convert("RGB"), dtype=np.float32)
        if image is not None
        else np.zeros((*mask.shape, 3))
    )
    red = np.zeros_like(base)
    red[..., 0] = 255.0
    blended = np.where(mask[..., None], 0.5 * base + 0.5 * red, base)
    return Image.fromarray(blended.round().astype(np.uint8))


def _media_modality(value: str | Modality) -> Modality:
    modality = Modality.parse(value)
    if modality not in MEDIA_MODALITIES:
        raise ValueError(
            f"GenerationOutput holds media of {', '.join(map(str, MEDIA_MODALITIES))}, not {modality}"
        )
    return modality


def _write_png(path: Path, image, rate: float | None) -> None:
    from nextgpt.mediaio.image import write_image

    write_image(path, image)


def _write_wav(path: Path, wave, rate: float | None) -> None:
    from nextgpt.mediaio.audio import write_wav

    write_wav(path, wave, int(rate or 16000))


def _write_video(path: Path, frames, rate: float | None) -> None:
    from nextgpt.mediaio.video import write_mp4

    write_mp4(path, frames, rate or 8)


#: Per media modality: the file extension and the writer ``(path, item, rate)`` of :meth:`save`.
_WRITERS: dict[Modality, tuple[str, Callable[[Path, object, float | None], None]]] = {
    Modality.IMAGE: ("png", _write_png),
    Modality.AUDIO: ("wav", _write_wav),
    Modality.VIDEO: ("mp4", _write_video),
}


#: The stages a :class:`ProgressEvent` reports, in the order one ``generate`` call goes through them.
PROGRESS_STAGES = ("text", "decode", "step")


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report of ``NextGPT.generate(..., progress=callback)``: ``callback(event)`` is
    called with it (its return value is ignored; an exception it raises ends the call).

    ``stage`` is one of :data:`PROGRESS_STAGES`:

    * ``"text"``: the LLM starts decoding (the text and the signal tokens); once per call, first.
    * ``"decode"``: media item ``index`` (0-based over the call's media) of ``modality`` starts
      decoding; ``step`` 0 of ``total`` diffusion steps.
    * ``"step"``: diffusion step ``step`` (1-based) of ``total`` of that item is done, as the
      decoder reports it (diffusers' ``callback_on_step_end``); the last one has ``step == total``.

    Attributes:
        stage: see above.
        modality: the media modality being decoded (``None`` for ``"text"``).
        index: the media item of the call (``None`` for ``"text"``).
        step, total: diffusion steps done and planned for the item (``0, 0`` for ``"text"``).
        row: the conversation's place in a batch (``generate_batch``; 0 otherwise).
    """

    stage: str
    modality: Modality | None = None
    index: int | None = None
    step: int = 0
    total: int = 0
    row: int = 0

    @property
    def fraction(self) -> float | None:
        """``step / total`` of the item being decoded (``None`` for ``"text"``)."""
        return None if self.stage == "text" else self.step / max(self.total, 1)

    def describe(self) -> str:
        """One line for a user: ``generating text...``, ``decoding image: step 3/25``."""
        if self.stage == "text":
            return "generating text..."
        name = self.modality.value if self.modality is not None else "media"
        return f"decoding {name}: step {self.step}/{self.total}"


#: The kinds of :class:`StreamEvent`, in the order a row's events can come.
STREAM_KINDS = ("text", "signal", "progress", "media", "done")


@dataclass(frozen=True)
class StreamEvent:
    """One event of ``NextGPT.stream`` (or of a sink given to ``NextGPT.run_requests``).

    ``kind`` is one of :data:`STREAM_KINDS`:

    * ``"text"``: ``text`` is the answer's next characters (whole characters, without signal or
      other added tokens; a piece that may still become a stop string is held back until it cannot).
      The deltas of a call add up to the final ``output.text``.
    * ``"signal"``: the LLM completed the signal run of media item ``index`` (``modality``); its
      decoder can start.
    * ``"progress"``: ``progress`` is the :class:`ProgressEvent` the call reports (the text starts, a
      media item starts decoding, one of its diffusion steps is done).
    * ``"media"``: media item ``index`` of ``modality`` is ready: ``media`` is a PIL image, a float32
      waveform ``[N]`` or uint8 frames ``[T, H, W, 3]``; ``rate`` its sample rate or frame rate.
    * ``"done"``: ``output`` is the whole :class:`GenerationOutput`; always the last event.

    ``row`` is the conversation's place in a batch (0 for ``stream``).
    """

    kind: str
    row: int = 0
    text: str = ""
    modality: Modality | None = None
    index: int | None = None
    media: object = None
    rate: float | None = None
    progress: ProgressEvent | None = None
    output: GenerationOutput | None = None


__all__ = ["PROGRESS_STAGES", "STREAM_KINDS", "GenerationOutput", "ProgressEvent", "StreamEvent"]
