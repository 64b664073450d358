"""Media I/O: one module per modality, used by every part of the library that reads or writes media.

- :mod:`nextgpt.mediaio.image`: :func:`~.image.load_image` (path, bytes or PIL image -> RGB),
  :func:`~.image.decode_image`, :func:`~.image.encode_image`, :func:`~.image.write_image`, binary
  masks (:func:`~.image.decode_mask`, :func:`~.image.encode_mask`) and the one pixel limit, :data:`~.image.DEFAULT_MAX_IMAGE_PIXELS`.
- :mod:`nextgpt.mediaio.audio`: :func:`~.audio.read_audio` (path, bytes or :class:`~nextgpt.Audio`
  -> float32 ``[C, N]``, rate), :func:`~.audio.decode_audio`, :func:`~.audio.decode_audio_av`,
  :func:`~.audio.encode_audio`, :func:`~.audio.write_wav` and the duration / sample limits.
- :mod:`nextgpt.mediaio.video`: :func:`~.video.open_frames` (random access, decord / PyAV),
  :func:`~.video.decode_video` (a whole clip with PyAV), the one H.264 writer
  :func:`~.video.encode_video` / :func:`~.video.write_mp4` (odd sizes are padded with edge pixels) and
  the frame-size / duration limits.
- :mod:`nextgpt.mediaio.sniff`: :func:`~.sniff.sniff_media` (type from the first bytes) and
  :func:`~.sniff.probe_container` (streams, frame size and duration from a container header).

Users: the ImageBind preprocessing (``nextgpt.encoders.image/audio/video``), the training shards and
the demo dataset (``nextgpt.stages.data``), the web demo's upload check (``nextgpt.web.uploads``).
No module imports torch; PyAV, decord and soundfile are imported when first needed. Failures are
:class:`~nextgpt.errors.InputError` (a ``ValueError``) naming the file and what is wrong with it.

``import nextgpt.mediaio`` loads nothing else; the names below are loaded from their module on first
access.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "DEFAULT_MAX_IMAGE_PIXELS": "image",
    "load_image": "image",
    "decode_image": "image",
    "encode_image": "image",
    "write_image": "image",
    "decode_mask": "image",
    "encode_mask": "image",
    "DEFAULT_MAX_AUDIO_SECONDS": "audio",
    "DEFAULT_MAX_AUDIO_SAMPLES": "audio",
    "read_audio": "audio",
    "decode_audio": "audio",
    "decode_audio_av": "audio",
    "encode_audio": "audio",
    "write_wav": "audio",
    "DEFAULT_MAX_VIDEO_PIXELS": "video",
    "DEFAULT_MAX_VIDEO_SECONDS": "video",
    "open_frames": "video",
    "decode_video": "video",
    "encode_video": "video",
    "write_mp4": "video",
    "pad_to_even": "video",
    "ContainerInfo": "sniff",
    "sniff_media": "sniff",
    "sniff_file": "sniff",
    "probe_container": "sniff",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
