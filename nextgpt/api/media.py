"""Media in and out of the HTTP API.

In: :func:`decode_data_url` turns a ``data:<mime>;base64,...`` URL into bytes (size checked before
decoding), :func:`save_checked` writes them into the request's own folder and runs the web page's
upload check (:func:`nextgpt.web.uploads.check_upload`: type by content, real decode, duration limit)
on the file, and :class:`FileStore` keeps files uploaded with ``POST /v1/files``.

Out: :func:`encode_media` encodes a generated item (PNG, 16-bit WAV, H.264 MP4) and
:class:`MediaStore` keeps encoded answers for file URLs (``GET /v1/media/<name>``) in a folder bounded
by size and age.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nextgpt.api.errors import ApiError
from nextgpt.errors import InputError
from nextgpt.modality import Modality
from nextgpt.web.uploads import CheckedUpload, UploadLimits, check_upload

#: File extension per accepted MIME type of media sent to the API.
MIME_EXTS: dict[str, str] = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/vnd.wave": ".wav",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/mp4": ".m4a",
    "audio/x-m4a": ".m4a",
    "audio/aac": ".aac",
    "audio/opus": ".opus",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "video/x-msvideo": ".avi",
    "video/x-matroska": ".mkv",
    "video/x-m4v": ".m4v",
}
#: What the API answers media in: (extension, MIME type) per modality.
OUTPUT_FORMATS: dict[Modality, tuple[str, str]] = {
    Modality.IMAGE: (".png", "image/png"),
    Modality.AUDIO: (".wav", "audio/wav"),
    Modality.VIDEO: (".mp4", "video/mp4"),
}
_DATA_URL = re.compile(
    r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I
)


def decode_data_url(url: str, *, max_bytes: int, param: str) -> tuple[str | None, bytes]:
    """``(mime type or None, bytes)`` of a base64 ``data:`` URL.

    Raises:
        ApiError: 400 for a URL that is not a base64 data URL (remote URLs are not fetched) or bad
            base64; 413 when the payload is above ``max_bytes`` (checked before decoding).
    """
    if not isinstance(url, str):
        raise ApiError(400, f"{param}: expected a data URL string", param=param)
    if url[:8].lower().startswith(("http://", "https://")) or url[:5].lower() == "file:":
        raise ApiError(
            400,
            f"{param}: remote and file URLs are not fetched; send the media inline as a base64 data URL "
            "(data:<mime>;base64,...) or upload it with POST /v1/files",
            param=param,
            code="unsupported_url",
        )
    match = _DATA_URL.match(url)
    if match is None or not match.group("b64"):
        raise ApiError(
            400,
            f"{param}: expected a base64 data URL (data:<mime>;base64,...)",
            param=param,
            code="invalid_data_url",
        )
    mime = match.group("mime").lower() if match.group("mime") else None
    return mime, decode_base64(url[match.end() :], max_bytes=max_bytes, param=param)


def decode_base64(payload: str, *, max_bytes: int, param: str) -> bytes:
    """Decode base64 text, refusing a payload above ``max_bytes`` (413) before decoding it."""
    if len(payload) // 4 * 3 > max_bytes + 3:
        raise ApiError(
            413,
            f"{param}: the media is about {len(payload) * 3 / 4 / 2**20:.1f} MB, above the upload limit of "
            f"{max_bytes / 2**20:g} MB",
            param=param,
            code="payload_too_large",
        )
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400, f"{param}: the data is not valid base64", param=param, code="invalid_base64"
        ) from None
    if not data:
        raise ApiError(400, f"{param}: the media is empty", param=param, code="invalid_value")
    if len(data) > max_bytes:
        raise ApiError(
            413,
            f"{param}: the media is {len(data) / 2**20:.1f} MB, above the upload limit of {max_bytes / 2**20:g} MB",
            param=param,
            code="payload_too_large",
        )
    return data


def extension_for(mime: str | None, filename: str | None, *, param: str) -> str:
    """The file extension for media of type ``mime`` (or named ``filename``)."""
    from nextgpt.processor import AUDIO_EXTS, IMAGE_EXTS, VIDEO_EXTS

    if mime and mime in MIME_EXTS:
        return MIME_EXTS[mime]
    if filename:
        ext = Path(filename).suffix.lower()
        if ext in IMAGE_EXTS | AUDIO_EXTS | VIDEO_EXTS:
            return ext
    accepted = ", ".join(sorted(MIME_EXTS))
    raise ApiError(
        415 if mime else 400,
        f"{param}: unsupported media type {mime or filename or '(none)'!r}; accepted: {accepted}",
        param=param,
        code="unsupported_media_type",
    )


def save_checked(
    data: bytes, ext: str, folder: Path, limits: UploadLimits, *, param: str, expect: Modality | None = None
) -> CheckedUpload:
    """Write ``data`` into ``folder`` as a new ``*.ext`` file and check it like a web upload.

    Raises:
        ApiError: 400 with the check's reason (content not of the claimed type, undecodable, over the
            duration or pixel limit) or when the medium is not the ``expect`` ed modality.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"input-{secrets.token_hex(6)}{ext}"
    path.write_bytes(data)
    try:
        checked = check_upload(path, limits, name=param)
    except InputError as exc:
        path.unlink(missing_ok=True)
        raise ApiError(400, str(exc), param=param, code="invalid_media") from None
    if expect is not None and checked.modality is not expect:
        path.unlink(missing_ok=True)
        raise ApiError(
            400,
            f"{param}: a {expect.value} part holds {checked.modality.value}",
            param=param,
            code="invalid_media",
        )
    return checked


# ------------------------------------------------------------------------------------------- output


def encode_media(modality: Modality, item: object, rate: float | None) -> bytes:
    """Encode one generated item: an image as PNG, a waveform as 16-bit WAV, frames as H.264 MP4."""
    if modality is Modality.IMAGE:
        from nextgpt.mediaio.image import encode_image

        return encode_image(item, "png")  # type: ignore[arg-type]
    if modality is Modality.AUDIO:
        from nextgpt.mediaio.audio import encode_audio

        wave = np.clip(np.asarray(item, dtype=np.float32), -1.0, 1.0)
        return encode_audio(wave, int(rate or 16000), "wav", subtype="PCM_16")
    if modality is Modality.VIDEO:
        from nextgpt.mediaio.video import encode_video

        return encode_video(np.asarray(item), float(rate or 8.0))
    raise ValueError(f"no output encoding for {modality}")


def data_url(data: bytes, mime: str) -> str:
    """``data:<mime>;base64,<data>``."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class _Folder:
    """A folder of files bounded by total size and age (oldest removed first); thread-safe."""

    def __init__(self, root: Path, *, max_bytes: int | None, ttl_s: float | None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[Path, int, float]] = {}  # name -> (path, bytes, created)

    def _expire(self, now: float) -> None:
        if self.ttl_s is not None:
            for name, (_, _, created) in list(self._entries.items()):
                if now - created > self.ttl_s:
                    self._remove(name)

    def _remove(self, name: str) -> None:
        path, _, _ = self._entries.pop(name)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()

    def _make_room(self, size: int) -> bool:
        if self.max_bytes is None:
            return True
        if size > self.max_bytes:
            return False
        total = sum(b for _, b, _ in self._entries.values())
        for name in sorted(self._entries, key=lambda n: self._entries[n][2]):
            if total + size <= self.max_bytes:
                break
            total -= self._entries[name][1]
            self._remove(name)
        return total + size <= self.max_bytes

    def total_bytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            return sum(b for _, b, _ in self._entries.values())

    def clear(self) -> None:
        """Remove every file."""
        with self._lock:
            for name in list(self._entries):
                self._remove(name)


class MediaStore(_Folder):
    """Encoded answers kept for file URLs: at most ``max_bytes`` together (oldest removed first) and
    for ``ttl_s`` seconds; names are random (``<32 hex><ext>``), so a URL cannot be guessed."""

    _NAME = re.compile(r"[0-9a-f]{32}\.(png|wav|mp4)")

    def put(self, data: bytes, ext: str) -> str:
        """Store ``data``; return its name (for ``/v1/media/<name>``).

        Raises:
            ApiError: 507-like 503 when ``data`` alone is above the store's size.
        """
        name = f"{secrets.token_hex(16)}{ext}"
        with self._lock:
            self._expire(time.monotonic())
            if not self._make_room(len(data)):
                raise ApiError(
                    503,
                    "the server's storage for media files is full; ask for data URLs",
                    code="storage_full",
                )
            path = self.root / name
            path.write_bytes(data)
            self._entries[name] = (path, len(data), time.monotonic())
        return name

    def path(self, name: str) -> Path | None:
        """The file called ``name``, or ``None`` (unknown, expired or not a store name)."""
        if not self._NAME.fullmatch(name):
            return None
        with self._lock:
            self._expire(time.monotonic())
            entry = self._entries.get(name)
        return entry[0] if entry is not None else None


@dataclass(frozen=True)
class StoredFile:
    """A file uploaded with ``POST /v1/files``: its id, checked upload, name, size and time."""

    id: str
    upload: CheckedUpload
    filename: str
    bytes: int
    created_at: int
    purpose: str

    def as_object(self) -> dict[str, object]:
        """OpenAI's file object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


class FileStore(_Folder):
    """Files uploaded with ``POST /v1/files`` (checked like web uploads), bounded like
    :class:`MediaStore`; a chat message names one with a ``{"type": "file", "file": {"file_id"}}``
    part."""

    def __init__(self, root: Path, *, max_bytes: int | None, ttl_s: float | None) -> None:
        super().__init__(root, max_bytes=max_bytes, ttl_s=ttl_s)
        self._files: dict[str, StoredFile] = {}

    def _remove(self, name: str) -> None:
        super()._remove(name)
        self._files.pop(name, None)

    def add(
        self, data: bytes, filename: str, limits: UploadLimits, *, purpose: str, param: str = "file"
    ) -> StoredFile:
        """Check and keep an upload; return its record.

        Raises:
            ApiError: 400 for a file the check refuses, 415 for an unknown type, 503 when the store is full.
        """
        ext = extension_for(None, filename, param=param)
        file_id = f"file-{secrets.token_hex(12)}"
        folder = self.root / file_id
        checked = save_checked(data, ext, folder, limits, param=filename or param)
        with self._lock:
            self._expire(time.monotonic())
            if not self._make_room(len(data)):
                shutil.rmtree(folder, ignore_errors=True)
                raise ApiError(503, "the server's storage for uploaded files is full", code="storage_full")
            record = StoredFile(
                file_id, checked, os.path.basename(filename) or file_id, len(data), int(time.time()), purpose
            )
            self._entries[file_id] = (folder, len(data), time.monotonic())
            self._files[file_id] = record
        return record

    def get(self, file_id: str) -> StoredFile | None:
        """The upload ``file_id`` (``None``: unknown or expired)."""
        with self._lock:
            self._expire(time.monotonic())
            return self._files.get(file_id)

    def delete(self, file_id: str) -> bool:
        """Remove ``file_id``; whether it was there."""
        with self._lock:
            if file_id not in self._files:
                return False
            self._remove(file_id)
            return True

    def list(self) -> list[StoredFile]:
        """Every upload held now, oldest first."""
        with self._lock:
            self._expire(time.monotonic())
            return sorted(self._files.values(), key=lambda f: f.created_at)


__all__ = [
    "MIME_EXTS",
    "OUTPUT_FORMATS",
    "FileStore",
    "MediaStore",
    "StoredFile",
    "data_url",
    "decode_base64",
    "decode_data_url",
    "encode_media",
    "extension_for",
    "save_checked",
]
