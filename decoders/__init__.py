"""Frozen diffusion decoders behind one interface (``nextgpt.decoders``).

:class:`Decoder` is the interface (conditioning shape, captions -> conditioning, conditioning ->
media, denoising loss); :class:`StableDiffusionDecoder` (image), :class:`AudioLDMDecoder` (audio)
and :class:`ZeroscopeDecoder` (video) wrap the diffusers pipelines NExT-GPT uses. Each implements
one decoder kind and is built from that kind's config node (its ``config_class``, a
:class:`~nextgpt.config.DecoderConfig` subclass holding the kind's defaults and rules), from which
it reads every setting; :func:`build_decoder` picks the class by the node's ``kind``. Importing
this package does not import diffusers: that happens when a pipeline is first built.
"""

from nextgpt.decoders.audioldm import AudioLDMDecoder
from nextgpt.decoders.base import Decoder, ProgressCallback
from nextgpt.decoders.registry import DECODERS, build_decoder, decoder_class
from nextgpt.decoders.stable_diffusion import StableDiffusionDecoder
from nextgpt.decoders.zeroscope import ZeroscopeDecoder

__all__ = [
    "DECODERS",
    "AudioLDMDecoder",
    "Decoder",
    "ProgressCallback",
    "StableDiffusionDecoder",
    "ZeroscopeDecoder",
    "build_decoder",
    "decoder_class",
]
