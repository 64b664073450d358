"""nextgpt: end-to-end any-to-any multimodal LLMs in the NExT-GPT style.

``import nextgpt`` stays light (no torch): the model classes load on first access.
"""

from nextgpt.config import NextGPTConfig
from nextgpt.errors import CheckpointError, ConfigError, InputError, NextGPTError, UnsafeCheckpointError
from nextgpt.media import Audio, Video
from nextgpt.modality import Modality

__version__ = "0.1.0"

_LAZY = {
    "NextGPT": "nextgpt.model",
    "GenerationOutput": "nextgpt.outputs",
    "StreamEvent": "nextgpt.outputs",
    "GenerationRequest": "nextgpt.generation",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nextgpt' has no attribute {name!r}")


__all__ = [
    "Audio",
    "CheckpointError",
    "ConfigError",
    "GenerationOutput",
    "GenerationRequest",
    "InputError",
    "Modality",
    "NextGPT",
    "NextGPTConfig",
    "NextGPTError",
    "StreamEvent",
    "UnsafeCheckpointError",
    "Video",
    "__version__",
]
