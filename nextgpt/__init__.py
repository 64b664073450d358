"""nextgpt: end-to-end any-to-any multimodal LLMs in the NExT-GPT style."""

from nextgpt.config import NextGPTConfig
from nextgpt.errors import CheckpointError, ConfigError, InputError, NextGPTError
from nextgpt.media import Audio, Video
from nextgpt.modality import Modality

__version__ = "0.1.0"

__all__ = [
    "Audio",
    "CheckpointError",
    "ConfigError",
    "InputError",
    "Modality",
    "NextGPTConfig",
    "NextGPTError",
    "Video",
    "__version__",
]
