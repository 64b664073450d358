"""File and message helpers shared by the media readers: every failure becomes an
:class:`~nextgpt.errors.InputError` that names the file (or says the data came from memory) and what
is wrong with it."""

from __future__ import annotations

import io
import os
from pathlib import Path

from nextgpt.errors import InputError

#: What the readers accept as an encoded file held in memory.
BYTES_TYPES = (bytes, bytearray, memoryview)


def existing_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a :class:`Path` after checking that it is a readable regular file.

    Args:
        path: the file the user asked for.
        what: the kind of media, used in the message (``"image"``, ``"audio"``, ``"video"``).

    Raises:
        InputError: the path does not exist, is a directory, cannot be opened for reading or is empty.
    """
    p = Path(os.fspath(path))
    if not p.exists():
        raise InputError(f"{what} file not found: '{p}'")
    if p.is_dir():
        raise InputError(f"{what} path '{p}' is a directory, not a file")
    if not os.access(p, os.R_OK):
        raise InputError(f"cannot read {what} file '{p}': permission denied")
    if p.stat().st_size == 0:
        raise InputError(f"cannot decode {what} '{p}': the file is empty")
    return p


def memory_file(data: bytes | bytearray | memoryview, what: str, name: str) -> io.BytesIO:
    """A fresh binary stream over encoded bytes (``name`` is used in the message).

    Raises:
        InputError: the data is empty.
    """
    if len(data) == 0:
        raise InputError(f"cannot decode {what} {name}: the data is empty")
    return io.BytesIO(bytes(data))


def reason(exc: BaseException) -> str:
    """A one-line description of a decoder exception for an error message."""
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
