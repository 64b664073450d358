"""What the format converters share: the problem kinds a skipped record is counted under, the media
lookup (:class:`_MediaFinder`: find, check and read a record's media file), caption-only outputs, and
the checks of record fields and turns. See :mod:`nextgpt.stages.data.convert`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nextgpt.modality import Modality

from ..schema import MEDIA_EXTENSIONS, MediaBlob
from ..shards import decode_audio, decode_image, decode_video

MISSING = "missing_media"
UNREADABLE = "unreadable_media"
MALFORMED = "malformed"
PROBLEMS = (MISSING, UNREADABLE, MALFORMED)

_SUBDIRS = {Modality.IMAGE: ("images",), Modality.VIDEO: ("videos",), Modality.AUDIO: ("audios", "audio")}
_HUMAN = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class _Problem(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


# --------------------------------------------------------------------------------------------------
# media lookup


class _MediaFinder:
    def __init__(self, media_dir: Path, verify: bool) -> None:
        self.media_dir = media_dir
        self.verify = verify

    def find(self, name: str, modality: Modality, extra_dirs: tuple[str | None, ...] = ()) -> Path | None:
        rel = PurePosixPath(name.replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise _Problem(MALFORMED, f"unsafe media path {name!r}")
        dirs = [self.media_dir]
        dirs += [self.media_dir / d for d in extra_dirs if d and ".." not in d and not os.path.isabs(d)]
        dirs += [self.media_dir / d for d in _SUBDIRS[modality]]
        for d in dirs:
            p = d.joinpath(*rel.parts)
            if p.is_file():
                return p
        return None

    def load(
        self,
        name: object,
        modality: Modality,
        *,
        caption: str | None = None,
        required: bool = True,
        extra_dirs: tuple[str | None, ...] = (),
    ) -> MediaBlob | None:
        """The media as a blob; ``None`` when absent and not required; else raise :class:`_Problem`."""
        if not isinstance(name, str) or not name.strip():
            raise _Problem(MALFORMED, f"media name must be a non-empty string, got {name!r}")
        name = name.strip()
        path = self.find(name, modality, extra_dirs)
        if path is None:
            if required:
                raise _Problem(MISSING, f"{modality.value} file {name!r} not found under {self.media_dir}")
            return None
        ext = path.suffix.lower().lstrip(".")
        if ext not in MEDIA_EXTENSIONS[modality]:
            raise _Problem(
                UNREADABLE, f"{path.name}: extension {ext!r} is not a known {modality.value} format"
            )
        try:
            data = path.read_bytes()
            if not data:
                raise ValueError("empty file")
            if self.verify:
                if modality is Modality.IMAGE:
                    decode_image(data)
                elif modality is Modality.AUDIO:
                    decode_audio(data, ext)
                else:
                    decode_video(data, first_frame_only=True)
        except Exception as exc:
            raise _Problem(UNREADABLE, f"{path}: {type(exc).__name__}: {exc}") from None
        return MediaBlob(modality, data, ext, caption=caption, name=PurePosixPath(name).name)


def _caption_only(modality: Modality, name: str | None, caption: str) -> MediaBlob:
    return MediaBlob(modality, None, None, caption=caption, name=PurePosixPath(name).name if name else None)


# --------------------------------------------------------------------------------------------------
# the context of a record builder, and checks of its fields and turns


@dataclass
class _Ctx:
    media: _MediaFinder
    require_output_media: bool
    fmt: str


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _Problem(MALFORMED, f"{what} must be a string, got {type(value).__name__}")
    return value


def _nonempty(value: object, what: str) -> str:
    text = _text(value, what).strip()
    if not text:
        raise _Problem(MALFORMED, f"{what} is empty")
    return text


def _dict(item: object) -> dict:
    if not isinstance(item, dict):
        raise _Problem(MALFORMED, f"record must be an object, got {type(item).__name__}")
    return item


def _role(turn: dict, i: int) -> str:
    role = _HUMAN.get(str(turn.get("from", turn.get("role", ""))).lower())
    if role is None:
        raise _Problem(MALFORMED, f"turn {i}: 'from' must be human or gpt, got {turn.get('from')!r}")
    return role


def _turn_list(item: dict, *keys: str) -> list[dict]:
    for key in keys:
        if key in item:
            turns = item[key]
            if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
                raise _Problem(MALFORMED, f"'{key}' must be a non-empty list of turn objects")
            return turns
    raise _Problem(MALFORMED, f"missing '{keys[0]}'")


def _split_at(text: str, pattern: re.Pattern, blobs: list) -> list[str | MediaBlob]:
    """Text pieces and blobs, the i-th blob at the i-th match of ``pattern`` (surplus blobs appended)."""
    parts: list[str | MediaBlob] = []
    pos, k = 0, 0
    for m in pattern.finditer(text):
        if k >= len(blobs):
            break
        piece = text[pos : m.start()].strip()
        if piece:
            parts.append(piece)
        parts.append(blobs[k])
        k += 1
        pos = m.end()
    tail = text[pos:].strip()
    if tail:
        parts.append(tail)
    parts.extend(blobs[k:])
    return parts
