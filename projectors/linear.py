"""Linear input projector of the legacy NExT-GPT (one LLM token per media item).

The released NExT-GPT weights (``nextgpt_7b_tiva_v0``) map each media item's pooled, L2-normalised
ImageBind embedding (1024-d) to a single LLM input token with one affine map, stored in the checkpoint
as ``llama_proj.{weight,bias}`` ([4096, 1024] and [4096]). :data:`LEGACY_KEYS` renames those keys onto
:class:`LinearInputProjector`.

Several items of one modality in one prompt segment become ONE token in the legacy code: the upstream
``_prepare_image_embed`` / ``_prepare_video_embed`` / ``_prepare_audio_embed`` of
``NExT-GPT-Lagacy/code/model/anyToImageVideoAudio.py`` project each item on its own (``encode_image``
etc. apply ``llama_proj`` per item) and then add the projected tokens. Summing therefore happens
AFTER the projection, so every item contributes its own bias: ``sum_i (W x_i + b) = W sum_i x_i + k b``
for ``k`` items. :func:`sum_items` implements that rule on projector outputs.

References: Wu et al., "NExT-GPT: Any-to-Any Multimodal LLM" (ICML 2024); the legacy code above.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # config types only for annotations (no import cycle at run time)
    from nextgpt.config import InputProjectorConfig

__all__ = ["LEGACY_KEYS", "LinearInputProjector", "sum_items"]

#: Legacy checkpoint key -> key of :class:`LinearInputProjector`'s state dict.
LEGACY_KEYS: dict[str, str] = {
    "llama_proj.weight": "proj.weight",
    "llama_proj.bias": "proj.bias",
}


def _group_index(
    group_ids: torch.Tensor | Sequence[int], n_items: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """Check ``group_ids`` (ints 0..G-1, each used, one per item) and return it as a tensor and G."""
    ids = torch.as_tensor(group_ids, device=device)
    if ids.dim() != 1 or ids.numel() != n_items:
        raise ValueError(
            f"group_ids must hold one group id per item ({n_items}), got shape {tuple(ids.shape)}"
        )
    if n_items == 0:
        return ids.long(), 0
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be integers, got dtype {ids.dtype}")
    ids = ids.long()
    num_groups = int(ids.max().item()) + 1
    if int(ids.min().item()) < 0:
        raise ValueError(f"group_ids must be >= 0, got {ids.tolist()}")
    used = torch.zeros(num_groups, dtype=torch.bool, device=device)
    used[ids] = True
    if not bool(used.all()):
        missing = torch.nonzero(~used).flatten().tolist()
        raise ValueError(
            f"group_ids must use every id 0..{num_groups - 1} (an empty group would be a zero token); "
            f"missing {missing} in {ids.tolist()}"
        )
    return ids, num_groups


def sum_items(tokens: torch.Tensor, group_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Sum the rows of ``tokens`` that share a group id (the legacy several-items-one-token rule).

    Apply it to projector OUTPUTS (the legacy code sums after ``llama_proj``, bias included).

    Args:
        tokens: ``[N_items, ...]``, e.g. projected tokens ``[N_items, T, H]``.
        group_ids: ``N_items`` integers in ``0..G-1``, every id used at least once; row ``g`` of the
            result is the sum of the items with id ``g`` (items keep their order inside a group,
            which does not matter for a sum).

    Returns:
        ``[G, ...]``.
    """
    ids, num_groups = _group_index(group_ids, tokens.shape[0], tokens.device)
    out = tokens.new_zeros((num_groups, *tokens.shape[1:]))  # (G, ...)
    return out.index_add(0, ids, tokens)


class LinearInputProjector(nn.Module):
    """Pooled encoder embedding ``[N_items, in_dim]`` -> one LLM token ``[N_items, 1, out_dim]``.

    Args:
        in_dim: encoder embedding width (ImageBind huge: 1024).
        out_dim: LLM hidden size (Vicuna-7B: 4096).
    """

    def __init__(self, in_dim: int = 1024, out_dim: int = 4096) -> None:
        super().__init__()
        if in_dim <= 0 or out_dim <= 0:
            raise ValueError(f"in_dim and out_dim must be positive, got {in_dim} and {out_dim}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.proj = nn.Linear(in_dim, out_dim)

    @classmethod
    def from_config(
        cls, cfg: InputProjectorConfig, in_dim: int | None = None, out_dim: int | None = None
    ) -> LinearInputProjector:
        """Build from an ``InputProjectorConfig``; dims default to its derived ``in_dim``/``out_dim``."""
        in_dim, out_dim = _dims(cfg, in_dim, out_dim)
        return cls(in_dim=in_dim, out_dim=out_dim)

    @property
    def num_tokens(self) -> int:
        """LLM tokens per media item (always 1)."""
        return 1

    def forward(
        self, features: torch.Tensor, group_ids: torch.Tensor | Sequence[int] | None = None
    ) -> torch.Tensor:
        """Project pooled embeddings; with ``group_ids``, sum the projected tokens per group.

        Args:
            features: ``[N_items, in_dim]`` pooled encoder embeddings (cast to the weight dtype).
            group_ids: optional, see :func:`sum_items`.

        Returns:
            ``[N_items, 1, out_dim]``, or ``[G, 1, out_dim]`` with ``group_ids``.
        """
        if features.dim() != 2 or features.shape[-1] != self.in_dim:
            raise ValueError(
                f"LinearInputProjector expects pooled embeddings of shape [N_items, {self.in_dim}], "
                f"got {tuple(features.shape)}"
            )
        tokens = self.proj(features.to(self.proj.weight.dtype)).unsqueeze(1)  # (N, 1, H)
        if group_ids is not None:
            tokens = sum_items(tokens, group_ids)  # (G, 1, H)
        return tokens


def _dims(cfg: object, in_dim: int | None, out_dim: int | None) -> tuple[int, int]:
    """Explicit dims, else the config's derived ``in_dim``/``out_dim``; ConfigError if neither."""
    from nextgpt.errors import ConfigError

    in_dim = in_dim if in_dim is not None else getattr(cfg, "in_dim", None)
    out_dim = out_dim if out_dim is not None else getattr(cfg, "out_dim", None)
    if in_dim is None or out_dim is None:
        raise ConfigError(
            "input projector: in_dim/out_dim are unknown; pass them explicitly or use a config whose "
            "derived values are set (built inside a ModelConfig)"
        )
    return int(in_dim), int(out_dim)
