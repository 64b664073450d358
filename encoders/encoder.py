"""The frozen multimodal encoder as the model uses it: media items in, embeddings out.

:class:`ImageBindEncoder` pairs :class:`~nextgpt.encoders.imagebind.ImageBind` with the preprocessing
that reproduces upstream ImageBind (``image.py``, ``audio.py``, ``video.py``) and maps nextgpt's
modalities onto ImageBind trunks (images and videos share the vision trunk).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from nextgpt.config import EncoderConfig, resolve_path
from nextgpt.dtypes import no_autocast, torch_dtype
from nextgpt.encoders.audio import preprocess_audio
from nextgpt.encoders.image import preprocess_image
from nextgpt.encoders.imagebind import EncoderOutput, ImageBind
from nextgpt.encoders.loading import build_imagebind
from nextgpt.encoders.video import preprocess_video
from nextgpt.errors import InputError
from nextgpt.modality import Modality

logger = logging.getLogger(__name__)

#: ImageBind trunk that encodes each nextgpt modality.
TRUNK_OF = {
    Modality.IMAGE: "vision",
    Modality.VIDEO: "vision",
    Modality.AUDIO: "audio",
    Modality.TEXT: "text",
}
PREPROCESS = {
    Modality.IMAGE: preprocess_image,
    Modality.AUDIO: preprocess_audio,
    Modality.VIDEO: preprocess_video,
}


class ImageBindEncoder(nn.Module):
    """Frozen ImageBind with preprocessing. Always in eval mode; gradients never flow into it."""

    def __init__(self, model: ImageBind) -> None:
        super().__init__()
        self.model = model.requires_grad_(False).eval()
        self._tokenizer = None

    @classmethod
    def from_config(
        cls, cfg: EncoderConfig, *, device: str | torch.device = "cpu", seed: int = 0
    ) -> ImageBindEncoder:
        """Load ``cfg.checkpoint`` strictly, or build random weights (seeded) when it is ``None``."""
        ckpt = resolve_path(cfg.checkpoint, "model.encoder.checkpoint")
        if ckpt is None:
            logger.warning("encoder: RANDOM ImageBind weights (model.encoder.checkpoint is null)")
        model = build_imagebind(
            cfg,
            checkpoint=ckpt,
            dtype=torch_dtype(cfg.dtype, "model.encoder.dtype"),
            device=device,
            seed=seed,
        )
        return cls(model)

    def train(self, mode: bool = True) -> ImageBindEncoder:  # frozen: stays in eval mode
        """Ignore ``mode``: the encoder is frozen and stays in eval mode."""
        return super().train(False)

    @property
    def out_dim(self) -> int:
        """Width of the output embeddings (ImageBind's ``out_embed_dim``)."""
        return self.model.config.out_embed_dim

    @property
    def device(self) -> torch.device:
        """Device the ImageBind weights are on."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the ImageBind weights."""
        return next(self.model.parameters()).dtype

    @staticmethod
    def preprocess_item(modality: Modality | str, item: object) -> torch.Tensor:
        """One media item -> its encoder input (image ``[3, 224, 224]``, audio ``[3, 1, 128, 204]``,
        video ``[15, 3, 2, 224, 224]``), float32 on the CPU."""
        modality = Modality.parse(modality)
        if modality not in PREPROCESS:
            raise InputError(f"cannot preprocess {modality.value} media; valid: image, audio, video")
        return PREPROCESS[modality](item)

    def preprocess(self, modality: Modality | str, items: Sequence[object]) -> torch.Tensor:
        """Batch of model inputs for ``items`` (image ``[B, 3, 224, 224]``, audio ``[B, 3, 1, 128, 204]``,
        video ``[B, 15, 3, 2, 224, 224]``), float32 on the CPU."""
        if not items:
            raise InputError(f"no {Modality.parse(modality).value} items to encode")
        return torch.stack([self.preprocess_item(modality, item) for item in items])

    def forward(
        self, modality: Modality | str, batch: torch.Tensor, *, return_tokens: bool = False
    ) -> EncoderOutput:
        """Encode an already preprocessed batch (see :meth:`preprocess`)."""
        modality = Modality.parse(modality)
        with torch.no_grad(), no_autocast(self.device):  # frozen: its own dtype, also under autocast
            x = batch.to(self.device)
            if x.is_floating_point():
                x = x.to(self.dtype)
            return self.model.encode(TRUNK_OF[modality], x, return_tokens=return_tokens)

    def encode(
        self, modality: Modality | str, items: Sequence[object], *, return_tokens: bool = False
    ) -> EncoderOutput:
        """Preprocess and encode media items (PIL images or paths, :class:`~nextgpt.Audio`,
        :class:`~nextgpt.Video`), or strings for ``"text"``."""
        modality = Modality.parse(modality)
        if modality is Modality.TEXT:
            if self._tokenizer is None:
                from nextgpt.encoders.tokenizer import ClipTokenizer

                self._tokenizer = ClipTokenizer()
            return self.forward(modality, self._tokenizer(list(items)), return_tokens=return_tokens)
        return self.forward(modality, self.preprocess(modality, items), return_tokens=return_tokens)
