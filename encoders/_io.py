"""Small file helpers of the media preprocessors, kept importable here; they live in
:mod:`nextgpt.mediaio._files` with the rest of the media I/O."""

from __future__ import annotations

from nextgpt.mediaio._files import existing_file, reason

__all__ = ["existing_file", "reason"]
