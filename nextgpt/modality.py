"""The :class:`Modality` enum that keys every per-modality part of the library."""

from __future__ import annotations

from enum import Enum

from nextgpt.errors import ConfigError


class Modality(str, Enum):
    """Modalities nextgpt understands. The value is the lower-case name used in configs and APIs."""

    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"

    @classmethod
    def parse(cls, value: str | Modality) -> Modality:
        """Return the modality named by ``value`` (case-insensitive); raise ``ConfigError`` if unknown."""
        if isinstance(value, Modality):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ConfigError(f"unknown modality {value!r}; valid: {valid}") from None

    def __str__(self) -> str:
        return self.value


#: Modalities that a diffusion decoder can produce (everything but text).
MEDIA_MODALITIES: tuple[Modality, ...] = (Modality.IMAGE, Modality.AUDIO, Modality.VIDEO)
