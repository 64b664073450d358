"""ImageBind -> image without training: Stable Diffusion 2.1 unCLIP conditioned on ImageBind embeddings.

ImageBind's vision embedding is OpenCLIP ViT-H/14's image embedding (ImageBind keeps that encoder
frozen), which is what SD 2.1 unCLIP (``stabilityai/stable-diffusion-2-1-unclip``, the ``-h`` variant)
takes as its image condition. Every other ImageBind modality lives in the same space, so an audio,
text or video embedding conditions it as well: any -> image with no training (ImageBind-LLM section
3.3; the same decoder AnyGPT and MIO use).

:class:`UnCLIPDecoder` loads diffusers' ``StableUnCLIPImg2ImgPipeline`` from a local folder, once, and
passes embeddings as its ``image_embeds`` ``[N, D]`` (``D`` 1024 for the ``-h`` weights), so the
pipeline's own CLIP image encoder is never run. The pipeline noises the
embedding by ``noise_level`` (0 .. its noising scheduler's steps; 0 = none) and feeds it, with the
noise level's embedding, to the UNet's class embedding; ``guidance_scale`` guides against a zero
embedding (diffusers' default 10). The text prompt is empty unless given.

:func:`save_tiny_unclip` writes random tiny components of the same layout (for tests and smoke runs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from nextgpt.errors import ConfigError, InputError

__all__ = ["UnCLIPDecoder", "save_tiny_unclip"]


class UnCLIPDecoder:
    """SD unCLIP from a local diffusers folder; renders images from embeddings ``[N, D]``.

    Args:
        path: a ``StableUnCLIPImg2ImgPipeline`` folder (its CLIP image encoder is loaded, as diffusers
            reads its dtype, but never run: embeddings are always given).
        device: where it runs.
        dtype: its weights' dtype (default float32; float16 on a GPU halves its memory).
    """

    def __init__(
        self, path: str | os.PathLike, *, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> None:
        self.path = Path(path)
        if not (self.path / "model_index.json").is_file():
            raise ConfigError(
                f"unCLIP folder not found: '{self.path}' (a diffusers StableUnCLIPImg2ImgPipeline folder)"
            )
        self.device, self.dtype = device, dtype or torch.float32
        self._pipe = None
        self.loads = 0

    @property
    def pipeline(self) -> Any:
        """The pipeline, loaded on first use and kept."""
        if self._pipe is None:
            from diffusers import StableUnCLIPImg2ImgPipeline

            try:
                pipe = StableUnCLIPImg2ImgPipeline.from_pretrained(
                    str(self.path),
                    local_files_only=True,
                    torch_dtype=self.dtype,
                )
            except (OSError, ValueError) as exc:
                raise ConfigError(f"unCLIP folder '{self.path}' does not load: {exc}") from None
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe.to(self.device)
            self.loads += 1
        return self._pipe

    @property
    def embed_dim(self) -> int:
        """The embedding width the pipeline takes (its image normaliser's)."""
        return int(self.pipeline.image_normalizer.mean.shape[-1])

    @property
    def max_noise_level(self) -> int:
        """The largest ``noise_level`` (its noising scheduler's steps - 1)."""
        return int(self.pipeline.image_noising_scheduler.config.num_train_timesteps) - 1

    def render(
        self,
        embeds: torch.Tensor,
        *,
        prompt: str = "",
        noise_level: int = 0,
        guidance_scale: float = 10.0,
        num_inference_steps: int = 20,
        height: int | None = None,
        width: int | None = None,
        seed: int | None = None,
    ) -> list:
        """One PIL image per embedding ``[N, D]`` (embedding ``i`` seeded ``seed + i``)."""
        if embeds.ndim != 2 or embeds.shape[0] == 0 or embeds.shape[1] != self.embed_dim:
            raise InputError(f"unCLIP takes embeddings [N, {self.embed_dim}], got {tuple(embeds.shape)}")
        if not 0 <= int(noise_level) <= self.max_noise_level:
            raise InputError(f"noise_level must be in [0, {self.max_noise_level}], got {noise_level}")
        pipe = self.pipeline
        images = []
        for i, embed in enumerate(embeds):
            generator = None if seed is None else torch.Generator("cpu").manual_seed(int(seed) + i)
            out = pipe(
                prompt=prompt,
                image_embeds=embed[None].to(self.device, self.dtype),
                noise_level=int(noise_level),
                guidance_scale=float(guidance_scale),
                num_inference_steps=int(num_inference_steps),
                height=height,
                width=width,
                generator=generator,
            )
            images.append(out.images[0])
        return images


def save_tiny_unclip(folder: str | os.PathLike, embed_dim: int, *, seed: int = 0) -> Path:
    """Random tiny unCLIP components taking ``embed_dim`` embeddings, saved as a pipeline folder."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from .tiny import ARCHITECTURES, build_components

    parts = build_components("stable_diffusion", "tiny", 16, 32, seed=seed)
    spec = ARCHITECTURES["stable_diffusion"]["tiny"]["unet"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            **spec,
            cross_attention_dim=32,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=2 * embed_dim,  # the embedding and its noise level's
        )
        vision = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
                projection_dim=embed_dim,
            )
        )
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32}),
        image_encoder=vision,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=embed_dim),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=parts["tokenizer"],
        text_encoder=parts["text_encoder"],
        unet=unet,
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"
        ),
        vae=parts["vae"],
    )
    out = Path(folder)
    pipe.save_pretrained(out)
    return out
