"""ImageBind-compatible multimodal encoder and the media preprocessing that feeds it.

Installed as ``nextgpt.encoders``.
"""

from nextgpt.encoders.audio import load_audio, preprocess_audio
from nextgpt.encoders.encoder import ImageBindEncoder
from nextgpt.encoders.image import load_image, preprocess_image
from nextgpt.encoders.imagebind import TRUNKS, EncoderOutput, ImageBind, ImageBindDims, TrunkDims
from nextgpt.encoders.loading import build_imagebind, load_imagebind
from nextgpt.encoders.tokenizer import ClipTokenizer
from nextgpt.encoders.video import preprocess_video

__all__ = [
    "TRUNKS",
    "ClipTokenizer",
    "EncoderOutput",
    "ImageBind",
    "ImageBindDims",
    "ImageBindEncoder",
    "TrunkDims",
    "build_imagebind",
    "load_audio",
    "load_image",
    "load_imagebind",
    "preprocess_audio",
    "preprocess_image",
    "preprocess_video",
]
