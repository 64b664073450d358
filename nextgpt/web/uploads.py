"""Upload checks of the web demo (no gradio needed): :func:`check_upload` and its limits.

An upload is checked before the model sees it: its size in bytes, its type by content (magic bytes,
:func:`sniff_media`; PyAV for containers, :func:`~nextgpt.mediaio.sniff.probe_container`) which must
agree with the file name's extension, a real decode with the library's own readers
(:mod:`nextgpt.mediaio`; video through the encoder's preprocessing) and a duration limit for audio and
video (see :func:`check_upload`). A file that passes is a :class:`CheckedUpload`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nextgpt.errors import InputError
from nextgpt.media import Audio, Video
from nextgpt.mediaio.sniff import SNIFF_BYTES, header_duration, probe_container, sniff_media
from nextgpt.modality import Modality

__all__ = [
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_MEDIA_SECONDS",
    "DEFAULT_MAX_UPLOAD_MB",
    "MAX_UPLOAD_IMAGE_PIXELS",
    "CheckedUpload",
    "UploadLimits",
    "check_upload",
    "sniff_media",
]

#: Per-file upload limit (MB), for :class:`UploadLimits`, :func:`~nextgpt.web.build_app`,
#: :func:`~nextgpt.web.serve` and ``nextgpt serve --max-upload-mb``.
DEFAULT_MAX_UPLOAD_MB = 20
#: Audio / video duration limit (seconds), likewise (``--max-media-seconds``).
DEFAULT_MAX_MEDIA_SECONDS = 60.0
#: Files per message.
DEFAULT_MAX_FILES = 4
#: Largest image (pixels) accepted from an upload, checked from the header before decoding.
MAX_UPLOAD_IMAGE_PIXELS = 50_000_000


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may be.

    Attributes:
        max_bytes: file size limit.
        max_media_seconds: duration limit for audio and video.
        max_image_pixels: image size limit (width x height), read from the header before decoding.
        max_files: files per message.
    """

    max_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20)
    max_media_seconds: float = DEFAULT_MAX_MEDIA_SECONDS
    max_image_pixels: int = MAX_UPLOAD_IMAGE_PIXELS
    max_files: int = DEFAULT_MAX_FILES


@dataclass(frozen=True)
class CheckedUpload:
    """An upload that passed :func:`check_upload`.

    Attributes:
        path: the file (its extension agrees with its content).
        name: the name the user gave it (for messages).
        modality: image, audio or video.
        duration: seconds, for audio and video.
    """

    path: Path
    name: str
    modality: Modality
    duration: float | None = None

    def as_part(self) -> Path | Audio | Video:
        """The input part ``generate`` takes for this file."""
        if self.modality is Modality.AUDIO:
            return Audio(self.path)
        if self.modality is Modality.VIDEO:
            return Video(self.path)
        return self.path


def _claimed_modality(path: Path) -> Modality | None:
    from nextgpt.processor import AUDIO_EXTS, IMAGE_EXTS, VIDEO_EXTS  # torch: imported on first use

    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return Modality.IMAGE
    if ext in AUDIO_EXTS:
        return Modality.AUDIO
    if ext in VIDEO_EXTS:
        return Modality.VIDEO
    return None


def _without_path(message: str, path: Path) -> str:
    """A loader's message with the server-side path taken out (the caller prefixes the user's name)."""
    quoted = f"'{path}'"
    for form, by in ((f": {quoted}", ""), (f" {quoted}", ""), (quoted, "the file"), (str(path), "the file")):
        message = message.replace(form, by)
    return message


def check_upload(
    path: str | os.PathLike, limits: UploadLimits = UploadLimits(), *, name: str | None = None
) -> CheckedUpload:
    """Check one uploaded file before the model sees it.

    In order: the file exists and is at most ``limits.max_bytes``; its extension names an image, audio
    or video format; its content (magic bytes; PyAV streams for MP4/WebM/Ogg containers) is of that
    same modality; audio/video are at most ``limits.max_media_seconds`` long (header first, then the
    decoded length); the library's own loader decodes it.

    Args:
        path: the uploaded file on the server.
        limits: size / duration / pixel limits.
        name: the file's name as the user knows it (default: ``path``'s name), used in messages.

    Raises:
        InputError: ``"<name>: <reason>"`` for anything the model should not be given.
    """
    from nextgpt.mediaio.audio import read_audio
    from nextgpt.mediaio.image import load_image

    p = Path(os.fspath(path))
    name = name or p.name

    def reject(reason: str) -> InputError:
        return InputError(f"{name}: {reason}")

    if not p.is_file():
        raise reject("the upload is missing on the server")
    size = p.stat().st_size
    if size == 0:
        raise reject("the file is empty")
    if size > limits.max_bytes:
        raise reject(
            f"the file is {size / 2**20:.1f} MB, above the upload limit of {limits.max_bytes / 2**20:g} MB"
        )
    claimed = _claimed_modality(p)
    if claimed is None:
        from nextgpt.processor import AUDIO_EXTS, IMAGE_EXTS, VIDEO_EXTS

        known = ", ".join(sorted(IMAGE_EXTS | AUDIO_EXTS | VIDEO_EXTS))
        raise reject(f"unsupported file type '{p.suffix or '(none)'}'; accepted: {known}")

    with p.open("rb") as fh:
        head = fh.read(SNIFF_BYTES)
    sniffed, fmt = sniff_media(head)
    duration: float | None = None
    if fmt == "container":
        try:
            info = probe_container(p)
            sniffed, duration = info.modality, info.duration
        except Exception as exc:
            why = _without_path(f"{type(exc).__name__}: {exc}", p)
            raise reject(f"cannot read the {claimed.value} container: {why}") from exc
        if sniffed is None:
            raise reject("the file holds no audio or video stream")
        fmt = f"{sniffed.value} container"
    if sniffed is not None and sniffed is not claimed:
        raise reject(
            f"the name says {claimed.value} ('{p.suffix}') but the content is {sniffed.value} ({fmt}); "
            "rename the file or upload the right one"
        )

    if claimed is Modality.IMAGE:
        try:
            load_image(p, max_pixels=limits.max_image_pixels)
        except InputError as exc:
            raise reject(_without_path(str(exc), p)) from exc
        return CheckedUpload(p, name, claimed)

    # audio / video: duration from the header before any decoding
    if duration is None:
        duration = header_duration(p, claimed)
    if duration is not None and duration > limits.max_media_seconds:
        raise reject(
            f"the {claimed.value} is {duration:.1f} s long, above the limit of {limits.max_media_seconds:g} s"
        )
    try:
        if claimed is Modality.AUDIO:
            wave, rate = read_audio(p)
            duration = wave.shape[1] / rate
        else:
            from nextgpt.encoders.video import preprocess_video  # torch: imported on first use

            preprocess_video(Video(p), size=32)  # decodes the frames the encoder will read
    except InputError as exc:
        raise reject(_without_path(str(exc), p)) from exc
    if duration is None:
        raise reject(f"cannot tell how long the {claimed.value} is")
    if duration > limits.max_media_seconds:
        raise reject(
            f"the {claimed.value} is {duration:.1f} s long, above the limit of {limits.max_media_seconds:g} s"
        )
    return CheckedUpload(p, name, claimed, duration)
