"""What a media file is: its type from its first bytes (:func:`sniff_media`) and the streams of an
audio/video container (:func:`probe_container`), both read without decoding any sample or frame.

Used by the web demo's upload check (:func:`nextgpt.web.check_upload`: the content must agree with
the file name) and by the video reader (:mod:`nextgpt.mediaio.video`: frame size and duration are
checked from the header before a frame is decoded).
"""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass
from pathlib import Path

from nextgpt.modality import Modality

#: Bytes :func:`sniff_file` reads: every signature :func:`sniff_media` knows lies in the first 12.
SNIFF_BYTES = 64


def sniff_media(head: bytes) -> tuple[Modality | None, str]:
    """Classify a file by its first bytes: ``(modality, format)``.

    The modality is ``None`` with format ``"container"`` for formats that hold audio, video or both
    (MP4/MOV, Matroska/WebM, Ogg: the streams decide, see :func:`probe_container`) and ``None`` with
    format ``"unknown"`` when no signature matches.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Modality.IMAGE, "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return Modality.IMAGE, "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return Modality.IMAGE, "GIF"
    if head.startswith(b"BM") and len(head) >= 14:
        return Modality.IMAGE, "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return Modality.IMAGE, "TIFF"
    if head.startswith(b"RIFF") and len(head) >= 12:
        kind = head[8:12]
        if kind == b"WEBP":
            return Modality.IMAGE, "WebP"
        if kind == b"WAVE":
            return Modality.AUDIO, "WAV"
        if kind == b"AVI ":
            return Modality.VIDEO, "AVI"
    if head.startswith(b"fLaC"):
        return Modality.AUDIO, "FLAC"
    if head.startswith(b"ID3"):
        return Modality.AUDIO, "MP3"
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        return Modality.AUDIO, "MPEG audio"  # MP3 frame sync or ADTS AAC
    if head.startswith(b"OggS") or head.startswith(b"\x1a\x45\xdf\xa3") or head[4:8] == b"ftyp":
        return None, "container"
    return None, "unknown"


def sniff_file(path: str | os.PathLike) -> tuple[Modality | None, str]:
    """:func:`sniff_media` of a file's first :data:`SNIFF_BYTES` bytes."""
    with Path(os.fspath(path)).open("rb") as fh:
        return sniff_media(fh.read(SNIFF_BYTES))


@dataclass(frozen=True)
class ContainerInfo:
    """The streams of an audio/video container, from its header (:func:`probe_container`).

    Attributes:
        modality: ``VIDEO`` when it has a picture stream that is not an attached cover image (MP3/M4A
            album art), else ``AUDIO`` when it has a sound stream, else ``None``.
        duration: seconds: the container's duration, else that of the stream ``modality`` names
            (``None``: the header does not say).
        width, height: frame size of the video stream (0 when there is none or the header lacks it).
        video_duration: seconds of the video stream: its own duration, else the container's (``None``:
            no video stream, or the header does not say).
    """

    modality: Modality | None
    duration: float | None
    width: int = 0
    height: int = 0
    video_duration: float | None = None


def is_attached_picture(stream: typing.Any) -> bool:
    """A cover image stored as a video stream (MP3/M4A album art) is not a video."""
    import av

    flag = getattr(getattr(av.stream, "Disposition", None), "attached_pic", None)
    try:
        return bool(flag is not None and stream.disposition & flag)
    except TypeError:
        return False


def _stream_seconds(stream: typing.Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def probe_container(source: str | os.PathLike | typing.BinaryIO) -> ContainerInfo:
    """Open a container (a path or a binary file object) with PyAV and describe its streams.

    The video stream is FFmpeg's best one (``streams.best("video")``) unless that is a cover image,
    then the first that is not. Only the header is read (and what FFmpeg's stream probing needs).

    Raises:
        Any PyAV / FFmpeg error for data that is not a container it can open (callers turn it into
        their own :class:`~nextgpt.errors.InputError`).
    """
    import av

    with av.open(source if hasattr(source, "read") else os.fspath(source), mode="r") as container:
        container_seconds = container.duration / 1e6 if container.duration else None
        videos = [s for s in container.streams.video if not is_attached_picture(s)]
        if videos:
            try:
                best = container.streams.best("video")
            except Exception:
                best = None
            stream = next((s for s in videos if best is not None and s.index == best.index), videos[0])
            own = _stream_seconds(stream)
            return ContainerInfo(
                Modality.VIDEO,
                container_seconds if container_seconds is not None else own,
                width=int(stream.codec_context.width or 0),
                height=int(stream.codec_context.height or 0),
                video_duration=own if own is not None else container_seconds,
            )
        if container.streams.audio:
            own = _stream_seconds(container.streams.audio[0])
            return ContainerInfo(Modality.AUDIO, container_seconds if container_seconds is not None else own)
        return ContainerInfo(None, container_seconds)


def header_duration(path: str | os.PathLike, modality: Modality) -> float | None:
    """Seconds of an audio or video file from its header (no decoding), or ``None`` when the header does
    not say: soundfile's frame count for the formats libsndfile reads, else the container's
    (:func:`probe_container`)."""
    if modality is Modality.AUDIO:
        try:
            import soundfile

            return float(soundfile.info(os.fspath(path)).duration)
        except Exception:  # not a libsndfile format: ask PyAV
            pass
    try:
        return probe_container(path).duration
    except Exception:
        return None
