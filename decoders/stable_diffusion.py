"""Stable Diffusion (1.5 in NExT-GPT) as the image decoder.

Conditioning is the CLIP ViT-L text encoder's ``last_hidden_state``, ``[77, 768]`` per image;
NExT-GPT's image output projector predicts it from the ``[IMG0..3]`` signal-token states, shorter
predictions are zero-padded to 77 tokens. Generation drives ``StableDiffusionPipeline`` with
``prompt_embeds`` / ``negative_prompt_embeds`` and returns PIL images.

Reference: Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models" (CVPR
2022); diffusers ``pipelines/stable_diffusion/pipeline_stable_diffusion.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from nextgpt.config import StableDiffusionDecoderConfig
from nextgpt.decoders.base import ClipTextDecoder, ProgressCallback
from nextgpt.decoders.tiny import tiny_stable_diffusion_components

if TYPE_CHECKING:
    import PIL.Image

__all__ = ["StableDiffusionDecoder"]

logger = logging.getLogger(__name__)


class StableDiffusionDecoder(ClipTextDecoder):
    """Image decoder over ``StableDiffusionPipeline``, built from a
    :class:`~nextgpt.config.StableDiffusionDecoderConfig` (``height``, ``width``: the default image
    size; the other arguments are :class:`~nextgpt.decoders.base.Decoder`'s)."""

    config_class = StableDiffusionDecoderConfig
    config: StableDiffusionDecoderConfig
    expected_weights = "unet, vae, text_encoder, tokenizer, scheduler; e.g. Stable Diffusion 1.5"
    OPTIONS = ("num_inference_steps", "guidance_scale", "height", "width")

    @classmethod
    def pipeline_class(cls) -> type:
        """``diffusers.StableDiffusionPipeline``."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline

    def tiny_components(self) -> dict[str, Any]:
        """Tiny random Stable Diffusion components conditioned on ``[cond_tokens, cond_dim]``
        (:func:`~nextgpt.decoders.tiny.tiny_stable_diffusion_components`)."""
        return tiny_stable_diffusion_components(self.cond_tokens, self.cond_dim, seed=self.seed)

    def _progress_kwargs(self, callback: ProgressCallback | None, num_steps: int) -> dict[str, Any]:
        if callback is None:
            return {}

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            callback(step + 1, num_steps)
            return tensors

        return {"callback_on_step_end": on_step_end}

    def prepare_target(self, image: Any) -> torch.Tensor:
        """A target image for :meth:`denoising_loss`: ``[3, height, width]`` in ``[-1, 1]``."""
        from nextgpt.decoders.targets import image_target

        return image_target(image, self.height, self.width)

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
        callback: ProgressCallback | None = None,
    ) -> list[PIL.Image.Image]:
        """Images from conditioning.

        Args:
            cond: ``[B, T<=cond_tokens, cond_dim]`` (zero-padded to ``cond_tokens``).
            negative: negative conditioning, ``[B or 1, T, cond_dim]``; default: the empty prompt's.
            num_inference_steps: denoising steps, an int in [1, 500]; default: the decoder's.
            guidance_scale: classifier-free guidance scale in [0, 100] (``<= 1`` disables guidance);
                default: the decoder's.
            seed: seeds a ``torch.Generator`` on the execution device (a list: one seed per item,
                each item then as it would be alone with its seed); ``None``: unseeded.
            height: image height in pixels, a multiple of 8 in [8, 2048]; default: the decoder's.
            width: image width in pixels, a multiple of 8 in [8, 2048]; default: the decoder's.
            callback: ``callback(steps_done, num_steps)`` after each denoising step.

        Returns:
            ``B`` RGB PIL images of ``width x height``.

        Raises:
            InputError: an option outside its range (steps in [1, 500], guidance in [0, 100], seed
                in [0, 2**64 - 1], height/width multiples of 8 in [8, 2048]; see
                :mod:`nextgpt.validate`) or conditioning of the wrong shape.
        """
        opts = self._checked_options(
            callback=callback,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            height=height,
            width=width,
        )
        out = self._run(
            cond,
            negative=negative,
            num_inference_steps=opts["num_inference_steps"],
            guidance_scale=opts["guidance_scale"],
            seed=opts["seed"],
            callback=callback,
            output_type="pil",
            media_kwargs={"height": opts["height"] or self.height, "width": opts["width"] or self.width},
        )
        flagged = getattr(out, "nsfw_content_detected", None)
        if flagged and any(flagged):
            logger.warning(
                "stable_diffusion decoder: the safety checker blanked %d of %d images",
                sum(flagged),
                len(flagged),
            )
        return [image if image.mode == "RGB" else image.convert("RGB") for image in out.images]

    def encode_media_to_latents(
        self, media: torch.Tensor, *, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in ``[-1, 1]`` -> scaled latents ``[B, 4, H/f, W/f]`` (f: VAE scale factor)."""
        if media.ndim != 4 or media.shape[1] != 3:
            raise ValueError(
                f"stable_diffusion decoder: media must be images [B, 3, H, W] in [-1, 1], got {list(media.shape)}"
            )
        return self._vae_encode(media, generator, sample)
