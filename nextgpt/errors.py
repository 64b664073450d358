"""Typed errors raised by nextgpt.

Every error a user can trigger with bad input, a bad config or a bad checkpoint derives from
:class:`NextGPTError`, so applications can catch the library's errors in one place and the command
line can print one clear line instead of a traceback.
"""

from __future__ import annotations


class NextGPTError(Exception):
    """Base class of every error nextgpt raises on purpose."""


class ConfigError(NextGPTError, ValueError):
    """A config key, value or preset name is unknown or invalid; the message lists valid choices."""


class InputError(NextGPTError, ValueError):
    """A media item or input is missing, unreadable or malformed; the message names the file."""


class CheckpointError(NextGPTError):
    """A checkpoint has missing/unexpected/mis-shaped keys or cannot be read safely."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds objects other than tensors and plain containers: loading it would need
    unpickling arbitrary code, so it is refused (a file nextgpt wrote never does; it may have been
    replaced)."""


class ExtractorWeightsError(NextGPTError, FileNotFoundError):
    """An evaluation feature extractor (Inception, CLIP, PANNs, VGGish) has no readable local
    weights: the message names the file and the option or environment variable that sets it.
    Evaluation never downloads weights."""
