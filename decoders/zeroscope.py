"""Zeroscope (v2 576w in NExT-GPT) as the video decoder.

Zeroscope is a ModelScope text-to-video model: a 3-D UNet over per-frame SD VAE latents, conditioned
on an OpenCLIP-H text encoder's ``last_hidden_state``, ``[77, 1024]`` per video. Generation drives
diffusers' ``TextToVideoSDPipeline`` with ``prompt_embeds`` / ``negative_prompt_embeds`` and
returns uint8 frames ``[T, H, W, 3]``.

Reference: Wang et al., "ModelScope Text-to-Video Technical Report" (2023); diffusers
``pipelines/deprecated/text_to_video_synthesis/pipeline_text_to_video_synth.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from nextgpt.config import ZeroscopeDecoderConfig
from nextgpt.decoders.base import ClipTextDecoder, ProgressCallback
from nextgpt.decoders.tiny import tiny_zeroscope_components

__all__ = ["ZeroscopeDecoder"]


class ZeroscopeDecoder(ClipTextDecoder):
    """Video decoder over ``TextToVideoSDPipeline``, built from a
    :class:`~nextgpt.config.ZeroscopeDecoderConfig` (``height``, ``width``, ``num_frames``: the
    default clip shape; ``fps``: the rate the videos are played and exported at; the other arguments
    are :class:`~nextgpt.decoders.base.Decoder`'s)."""

    config_class = ZeroscopeDecoderConfig
    config: ZeroscopeDecoderConfig
    expected_weights = (
        "unet (UNet3DConditionModel), vae, text_encoder, tokenizer, scheduler; e.g. zeroscope_v2_576w"
    )
    OPTIONS = ("num_inference_steps", "guidance_scale", "height", "width", "num_frames")

    @property
    def media_rate(self) -> float | None:
        """The frame rate of the videos."""
        return self.fps

    @classmethod
    def pipeline_class(cls) -> type:
        """``diffusers.TextToVideoSDPipeline``."""
        from diffusers import TextToVideoSDPipeline

        return TextToVideoSDPipeline

    def tiny_components(self) -> dict[str, Any]:
        """Tiny random Zeroscope components conditioned on ``[cond_tokens, cond_dim]``
        (:func:`~nextgpt.decoders.tiny.tiny_zeroscope_components`)."""
        return tiny_zeroscope_components(self.cond_tokens, self.cond_dim, seed=self.seed)

    def prepare_target(self, video: Any) -> torch.Tensor:
        """A target clip for :meth:`denoising_loss`: ``[3, num_frames, height, width]`` in ``[-1, 1]``."""
        from nextgpt.decoders.targets import video_target

        return video_target(video, self.height, self.width, self.num_frames)

    def generate(
        self,
        cond: torch.Tensor,
        *,
        negative: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | Sequence[int] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        callback: ProgressCallback | None = None,
    ) -> list[np.ndarray]:
        """Videos from conditioning.

        Args:
            cond: ``[B, T<=cond_tokens, cond_dim]`` (zero-padded to ``cond_tokens``).
            negative: negative conditioning, ``[B or 1, T, cond_dim]``; default: the empty prompt's.
            num_inference_steps: denoising steps, an int in [1, 500]; default: the decoder's.
            guidance_scale: classifier-free guidance scale in [0, 100] (``<= 1`` disables guidance);
                default: the decoder's.
            seed: seeds a ``torch.Generator`` on the execution device (a list: one seed per item,
                each item then as it would be alone with its seed); ``None``: unseeded.
            height: frame height in pixels, a multiple of 8 in [8, 2048]; default: the decoder's.
            width: frame width in pixels, a multiple of 8 in [8, 2048]; default: the decoder's.
            num_frames: frames per video, an int in [1, 256]; default: the decoder's.
            callback: ``callback(steps_done, num_steps)`` after each denoising step.

        Returns:
            ``B`` uint8 arrays ``[num_frames, height, width, 3]``, to be played at :attr:`fps`.

        Raises:
            InputError: an option outside its range (steps in [1, 500], guidance in [0, 100], seed
                in [0, 2**64 - 1], height/width multiples of 8 in [8, 2048], frames in [1, 256]; see
                :mod:`nextgpt.validate`) or conditioning of the wrong shape.
        """
        opts = self._checked_options(
            callback=callback,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            height=height,
            width=width,
            num_frames=num_frames,
        )
        out = self._run(
            cond,
            negative=negative,
            num_inference_steps=opts["num_inference_steps"],
            guidance_scale=opts["guidance_scale"],
            seed=opts["seed"],
            callback=callback,
            output_type="np",
            media_kwargs={
                "height": opts["height"] or self.height,
                "width": opts["width"] or self.width,
                "num_frames": opts["num_frames"] or self.num_frames,
            },
        )
        frames = np.asarray(out.frames)  # (B, T, H, W, 3) float in [0, 1]
        # The rounding diffusers' numpy_to_pil uses for 8-bit frames.
        return [np.ascontiguousarray((video * 255).round().astype(np.uint8)) for video in frames]

    def encode_media_to_latents(
        self, media: torch.Tensor, *, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """Videos ``[B, 3, F, H, W]`` in ``[-1, 1]`` -> scaled latents ``[B, 4, F, H/f, W/f]`` (VAE per frame)."""
        if media.ndim != 5 or media.shape[1] != 3:
            raise ValueError(
                f"zeroscope decoder: media must be videos [B, 3, F, H, W] in [-1, 1], got {list(media.shape)}"
            )
        batch, _, frames, height, width = media.shape
        flat = media.permute(0, 2, 1, 3, 4).reshape(batch * frames, 3, height, width)  # (B*F, 3, H, W)
        latents = self._vae_encode(flat, generator, sample)  # (B*F, c, h, w)
        latents = latents.reshape(batch, frames, *latents.shape[1:])  # (B, F, c, h, w)
        return latents.permute(0, 2, 1, 3, 4).contiguous()  # (B, c, F, h, w)
