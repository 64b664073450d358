"""LLMBind's semantic-embedding output: the ``<seg>`` token's hidden state -> masks through SAM.

As LLMBind (after LISA) describes it: the hidden state of each ``<seg>`` token goes through an MLP
(``H -> H -> D``, ``D`` the SAM prompt width, 256 for the released SAMs) and is used as one sparse
prompt embedding of SAM's mask decoder. The dense prompt is SAM's "no mask" embedding; the image
embedding comes from SAM's vision encoder. The vision and prompt encoders stay frozen; the MLP and
the mask decoder train. SAM is transformers' ``SamModel`` loaded from a local folder (e.g.
``facebook/sam-vit-huge`` downloaded by you); images are prepared by transformers'
``SamImageProcessor`` (longest side to the encoder size, padded), and low-resolution mask logits are
brought back to the original image size by its ``post_process_masks`` (differentiable, so the mask
loss is taken at full resolution).

The mask loss (LLMBind eq. 9): ``bce_weight * BCE + dice_weight * DICE`` (paper: 2.0 and 0.5), each
averaged over masks: the per-pixel binary cross-entropy of the logits, and
``1 - (2 sum p t + s) / (sum p + sum t + s)`` with ``p = sigmoid(logits)``, ``s = 1e-3`` (LISA's
``1e-6`` on sums scaled by 1/1000).

With ``model.segmentation.sam`` set, the model owns a head (``model.segmentation``), ``generate``
returns ``out.masks``, and ``compute_losses(seg_targets=...)`` trains it (docs/LLMBIND.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nextgpt.errors import ConfigError, InputError

DICE_SMOOTH = 1e-3

#: Parameters of the head that train (names relative to the head): the MLP and SAM's mask decoder,
#: less the parts no loss reaches with one mask per prompt (``multimask_output=False``): the IoU head
#: and the hypernetwork MLPs of the three multimask tokens. Training them would only decay them, and
#: DDP without ``find_unused_parameters`` needs every trainable tensor in the graph.
_TRAINED = ("projection.", "sam.mask_decoder.")
_UNREACHED = ("sam.mask_decoder.iou_prediction_head.", "sam.mask_decoder.output_hypernetworks_mlps.")


def trains(name: str) -> bool:
    """Whether the head's parameter ``name`` (relative to the head) is trained in stage 3."""
    if not name.startswith(_TRAINED):
        return False
    if name.startswith(_UNREACHED[0]):
        return False
    if name.startswith(_UNREACHED[1]):
        return name.startswith(_UNREACHED[1] + "0.")  # the single-mask token's MLP
    return True


def mask_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over masks of the per-pixel binary cross-entropy of mask ``logits [N, H, W]``."""
    _check_masks(logits, targets)
    per_pixel = nn.functional.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), reduction="none"
    )
    return per_pixel.flatten(1).mean(dim=1).mean()


def mask_dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Mean over masks of ``1 - (2 sum p t + s) / (sum p + sum t + s)``, ``p = sigmoid(logits)``."""
    _check_masks(logits, targets)
    p = logits.float().sigmoid().flatten(1)
    t = targets.float().flatten(1)
    dice = (2 * (p * t).sum(dim=1) + smooth) / (p.sum(dim=1) + t.sum(dim=1) + smooth)
    return (1 - dice).mean()


def mask_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, bce_weight: float = 2.0, dice_weight: float = 0.5
) -> dict[str, torch.Tensor]:
    """LLMBind's mask loss: ``{"mask_loss", "mask_bce", "mask_dice"}`` (weights: the paper's)."""
    bce, dice = mask_bce_loss(logits, targets), mask_dice_loss(logits, targets)
    return {"mask_loss": bce_weight * bce + dice_weight * dice, "mask_bce": bce, "mask_dice": dice}


def _check_masks(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.shape != targets.shape or logits.ndim != 3 or logits.shape[0] == 0:
        raise InputError(
            f"masks must be [N, H, W] with N >= 1, logits and targets alike; got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )


def prepare_image(processor: Any, image: Any) -> dict[str, torch.Tensor]:
    """SAM's inputs for one PIL / uint8 image through its ``SamImageProcessor``.

    ``pixel_values [1, 3, S, S]`` and the ``original_sizes`` / ``reshaped_input_sizes`` that
    post-processing needs. The training collator calls this in its workers with the processor alone.
    """
    return dict(processor(images=image, return_tensors="pt"))


class SegmentationHead(nn.Module):
    """``<seg>`` hidden states of one image -> one mask each, through a frozen-encoder SAM.

    Args:
        sam: a transformers ``SamModel``; its vision and prompt encoders are frozen here.
        processor: its ``SamImageProcessor``.
        hidden_size: the LLM's hidden size ``H``.
    """

    def __init__(self, sam: Any, processor: Any, hidden_size: int) -> None:
        super().__init__()
        self.sam = sam
        self.processor = processor
        dim = sam.config.prompt_encoder_config.hidden_size
        self.projection = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, dim)
        )
        for name, param in self.named_parameters():
            param.requires_grad_(trains(name))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, hidden_size: int) -> SegmentationHead:
        """A head on the SAM folder at ``path`` (weights and ``preprocessor_config.json``), offline."""
        from transformers import SamImageProcessor, SamModel

        p = Path(path)
        if not p.is_dir():
            raise ConfigError(
                f"SAM folder not found: '{p}' (a transformers SamModel folder, e.g. facebook/sam-vit-huge)"
            )
        try:
            sam = SamModel.from_pretrained(str(p), local_files_only=True)
            processor = SamImageProcessor.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"SAM folder '{p}' does not load: {exc}") from None
        return cls(sam, processor, hidden_size)

    def prepare(self, image: Any) -> dict[str, torch.Tensor]:
        """SAM's inputs for one PIL / uint8 image (:func:`prepare_image`)."""
        return prepare_image(self.processor, image)

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen vision encoder's embedding ``[1, D, h, w]`` of one prepared image."""
        with torch.no_grad():
            return self.sam.get_image_embeddings(pixel_values.to(self.projection[0].weight.device))

    def forward(
        self, seg_states: torch.Tensor, inputs: dict[str, torch.Tensor], embedding: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mask logits ``[N, H_img, W_img]`` at the original image size for ``seg_states [N, H]``.

        Args:
            seg_states: the hidden states of the image's ``N`` ``<seg>`` tokens.
            inputs: :meth:`prepare` of the image.
            embedding: the image embedding when already computed (else computed here).
        """
        if seg_states.ndim != 2 or seg_states.shape[0] == 0:
            raise InputError(f"seg_states must be [N, H] with N >= 1, got {tuple(seg_states.shape)}")
        if embedding is None:
            embedding = self.image_embeddings(inputs["pixel_values"])
        sparse = self.projection(seg_states.to(self.projection[0].weight.dtype))  # [N, D]
        low_res = self._decode(embedding, sparse[None, :, None, :])  # one image, N one-token prompts
        masks = self.processor.post_process_masks(
            low_res, inputs["original_sizes"], inputs["reshaped_input_sizes"], binarize=False
        )[0]  # [N, 1, H_img, W_img]
        return masks[:, 0]

    def idle(self) -> torch.Tensor:
        """Zero, from one pass of the trained parts on a zero prompt and image embedding: added to a
        loss without masks so that every trained tensor is in the graph (DDP, as the model's idle
        projector calls)."""
        weight = self.projection[0].weight
        sparse = self.projection(weight.new_zeros(1, weight.shape[1]))[None, :, None, :]
        size = self.sam.prompt_encoder.image_embedding_size
        width = self.sam.config.mask_decoder_config.hidden_size
        low_res = self._decode(weight.new_zeros(1, width, size[0], size[1]), sparse)
        return 0.0 * low_res.float().sum()

    def _decode(self, embedding: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """SAM's mask decoder on an image embedding ``[1, D, h, w]`` and sparse prompts ``[1, N, 1, D]``
        with no dense prompt: single-mask logits ``[1, N, 1, h', w']``."""
        size = self.sam.prompt_encoder.image_embedding_size
        dense = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *size)
        low_res, _ = self.sam.mask_decoder(
            image_embeddings=embedding,
            image_positional_embeddings=self.sam.get_image_wide_positional_embeddings(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return low_res

    def trainable_parameters(self) -> Sequence[nn.Parameter]:
        """The MLP and the mask decoder (what trains)."""
        return [p for p in self.parameters() if p.requires_grad]
