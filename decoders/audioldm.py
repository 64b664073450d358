"""AudioLDM (l-full in NExT-GPT) as the audio decoder.

AudioLDM denoises mel-spectrogram latents with a UNet that takes the CLAP text embedding as a class
label (``class_embed_type="simple_projection"``, concatenated to the time embedding) and has no
cross-attention context; a VAE decodes the mel spectrogram and a HiFi-GAN vocoder makes the
waveform. Conditioning is CLAP's L2-normalised ``text_embeds``: ``[512]`` per clip, ``[1, 512]`` in
nextgpt's ``[tokens, dim]`` convention (the wrapper squeezes the token axis for the pipeline).

Reference: Liu et al., "AudioLDM: Text-to-Audio Generation with Latent Diffusion Models" (ICML
2023); diffusers ``pipelines/deprecated/audioldm/pipeline_audioldm.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nextgpt.config import AudioLDMDecoderConfig
from nextgpt.decoders.base import Decoder, ProgressCallback, check_captions, warn_truncated
from nextgpt.decoders.tiny import tiny_audioldm_components
from nextgpt.dtypes import no_autocast
from nextgpt.errors import ConfigError, InputError

__all__ = ["AudioLDMDecoder"]


class AudioLDMDecoder(Decoder):
    """Audio decoder over ``AudioLDMPipeline``, built from a
    :class:`~nextgpt.config.AudioLDMDecoderConfig` (``cond_tokens`` is 1: one CLAP embedding per
    clip; ``audio_length_in_s``: the default clip length; ``sample_rate``: the vocoder's, checked
    against the loaded vocoder; the other arguments are :class:`~nextgpt.decoders.base.Decoder`'s)."""

    config_class = AudioLDMDecoderConfig
    config: AudioLDMDecoderConfig
    expected_weights = "unet, vae, text_encoder (CLAP), tokenizer, vocoder, scheduler; e.g. audioldm-l-full"
    OPTIONS = ("num_inference_steps", "guidance_scale", "audio_length_in_s")

    @property
    def media_rate(self) -> float | None:
        """The vocoder's sampling rate in Hz."""
        return self.sample_rate

    @classmethod
    def pipeline_class(cls) -> type:
        """``diffusers.AudioLDMPipeline``."""
        from diffusers import AudioLDMPipeline

        return AudioLDMPipeline

    def tiny_components(self) -> dict[str, Any]:
        """Tiny random AudioLDM components: CLAP ``text_embeds`` ``cond_dim`` wide, the vocoder at
        :attr:`sample_rate` (:func:`~nextgpt.decoders.tiny.tiny_audioldm_components`)."""
        return tiny_audioldm_components(self.cond_dim, sample_rate=self.sample_rate, seed=self.seed)

    def _check_pipeline(self, pipe: Any) -> None:
        width = pipe.text_encoder.config.projection_dim
        if width != self.cond_dim:
            raise self._shape_error("the CLAP text projection_dim (conditioning width)", width)
        unet = pipe.unet.config
        if (
            unet.class_embed_type != "simple_projection"
            or unet.projection_class_embeddings_input_dim != self.cond_dim
        ):
            raise self._shape_error(
                "the UNet's class embedding (type, input dim)",
                (unet.class_embed_type, unet.projection_class_embeddings_input_dim),
            )
        rate = pipe.vocoder.config.sampling_rate
        if rate != self.sample_rate:
            source = "the random tiny components" if self.is_tiny else str(self.path)
            raise ConfigError(
                f"audioldm decoder at {source}: the vocoder runs at {rate} Hz but the config says "
                f"sample_rate={self.sample_rate}; set sample_rate: {rate}"
            )

    # ------------------------------------------------------------------------------------------
    # Captions -> conditioning
    # ------------------------------------------------------------------------------------------

    def _clap_encode(self, texts: list[str], max_length: int) -> torch.Tensor:
        pipe = self.load()
        device = self._exec_device
        inputs = pipe.tokenizer(
            texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        with torch.no_grad(), no_autocast(device):  # as when the targets are cached
            embeds = pipe.text_encoder(
                inputs.input_ids.to(device), attention_mask=inputs.attention_mask.to(device)
            ).text_embeds  # (B, dim)
        embeds = F.normalize(embeds, dim=-1)  # AudioLDM's extra L2 normalisation
        return embeds.to(device=device, dtype=pipe.text_encoder.dtype)[:, None, :]  # (B, 1, dim)

    def encode_captions(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> L2-normalised CLAP ``text_embeds`` ``[B, 1, dim]`` (``_encode_prompt``'s embeddings)."""
        captions = check_captions(captions)
        tokenizer = self.load().tokenizer
        warn_truncated(self.kind, tokenizer, captions, tokenizer.model_max_length)
        return self._clap_encode(captions, tokenizer.model_max_length)

    def _encode_negative(self) -> torch.Tensor:
        # AudioLDMPipeline pads the empty negative prompt to prompt_embeds.shape[1], which for its
        # [B, dim] embeddings is the width: we do the same so that defaults match the pipeline.
        return self._clap_encode([""], self.cond_dim)

    def _pipeline_embeds(self, cond: torch.Tensor) -> torch.Tensor:
        return cond[:, 0, :]  # (B, dim): AudioLDM's prompt_embeds layout

    # ------------------------------------------------------------------------------------------
    # Conditioning -> audio
    # ------------------------------------------------------------------------------------------

    def prepare_target(self, audio: Any) -> torch.Tensor:
        """A target sound for :meth:`denoising_loss`: AudioLDM's log-mel ``[1, T, mel bins]``."""
        from nextgpt.decoders.targets import audio_target

        pipe = self.load()
        return audio_target(
            audio, pipe.vocoder.config.model_in_dim, self.audio_length_in_s, pipe.vae_scale_factor
        )

    def generate(
        self,
        cond: torch.Tensor,
        *,
        negative: torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | Sequence[int] | None = None,
        audio_length_in_s: float | None = None,
        callback: ProgressCallback | None = None,
    ) -> list[np.ndarray]:
        """Waveforms from conditioning.

        Args:
            cond: ``[B, 1, cond_dim]`` (or ``[B, cond_dim]``).
            negative: negative conditioning, ``[B or 1, 1, cond_dim]``; default: the empty prompt's.
            num_inference_steps: denoising steps, an int in [1, 500]; default: the decoder's.
            guidance_scale: classifier-free guidance scale in [0, 100] (``<= 1`` disables guidance);
                default: the decoder's.
            seed: seeds a ``torch.Generator`` on the execution device (a list: one seed per item,
                each item then as it would be alone with its seed); ``None``: unseeded.
            audio_length_in_s: clip length in seconds, in [0.05, 60]; default: the decoder's.
            callback: ``callback(steps_done, num_steps)`` after each denoising step.

        Returns:
            ``B`` float32 mono waveforms ``[round-down(audio_length_in_s * sample_rate)]`` at :attr:`sample_rate`.

        Raises:
            InputError: an option outside its range (steps in [1, 500], guidance in [0, 100], seed
                in [0, 2**64 - 1], audio length in [0.05, 60] s and at least the pipeline's minimum
                of VAE-scale-factor mel frames; see :mod:`nextgpt.validate`) or conditioning of the
                wrong shape.
        """
        opts = self._checked_options(
            callback=callback,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            audio_length_in_s=audio_length_in_s,
        )
        length = opts["audio_length_in_s"] or self.audio_length_in_s
        pipe = self.load()
        # AudioLDMPipeline.check_inputs: at least vae_scale_factor mel frames of the vocoder's hop.
        hop = float(np.prod(pipe.vocoder.config.upsample_rates)) / pipe.vocoder.config.sampling_rate
        shortest = hop * pipe.vae_scale_factor
        if length < shortest:
            raise InputError(
                f"audioldm decoder: audio_length_in_s must be at least {shortest:g} s for this pipeline "
                f"({pipe.vae_scale_factor} mel frames of {hop:g} s), got {length:g}"
            )
        out = self._run(
            cond,
            negative=negative,
            num_inference_steps=opts["num_inference_steps"],
            guidance_scale=opts["guidance_scale"],
            seed=opts["seed"],
            callback=callback,
            output_type="np",
            media_kwargs={"audio_length_in_s": length},
        )
        audios = np.asarray(out.audios, dtype=np.float32)  # (B, N)
        return [np.ascontiguousarray(audio) for audio in audios]

    # ------------------------------------------------------------------------------------------
    # Denoising loss
    # ------------------------------------------------------------------------------------------

    def encode_media_to_latents(
        self, media: torch.Tensor, *, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """Log-mel spectrograms ``[B, 1, T, M]`` -> scaled latents ``[B, 4, T/f, M/f]``.

        The input is AudioLDM's log-mel spectrogram (``M`` = the vocoder's ``model_in_dim`` mel
        bins, 64 for the real model; ``T`` frames, a multiple of the VAE scale factor ``f``), as
        :meth:`prepare_target` computes it from a waveform.
        """
        pipe = self.load()
        bins = pipe.vocoder.config.model_in_dim
        scale = pipe.vae_scale_factor
        if media.ndim != 4 or media.shape[1] != 1 or media.shape[3] != bins or media.shape[2] % scale:
            raise ValueError(
                f"audioldm decoder: media must be log-mel spectrograms [B, 1, T, {bins}] with T a multiple "
                f"of {scale}, got {list(media.shape)}"
            )
        return self._vae_encode(media, generator, sample)

    def _predict(
        self, pipe: Any, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        # As in the pipeline: no cross-attention context, the CLAP embedding is the class label.
        return pipe.unet(noisy, timesteps, encoder_hidden_states=None, class_labels=cond[:, 0, :]).sample
