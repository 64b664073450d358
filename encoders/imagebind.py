"""An ImageBind-compatible multimodal encoder, written for nextgpt.

ImageBind (Girdhar et al., "ImageBind: One Embedding Space To Bind Them All", CVPR 2023) embeds six
modalities into one space with one transformer trunk per modality. This module is an independent
implementation whose parameter names and shapes follow the official ``imagebind_huge.pth`` state dict,
so that file loads with strict key matching (see :func:`nextgpt.encoders.load_imagebind`). The sizes
are read from the config node, an :class:`~nextgpt.config.EncoderConfig` (its defaults are ImageBind
huge; small ones build tiny models for tests); only the input geometry below is fixed here.

Layout of the state dict (``M`` is one of vision, text, audio, depth, thermal, imu)::

    modality_preprocessors.M.*   patch stems, CLS token, position embeddings (text: token embedding
                                 and the causal mask buffer)
    modality_trunks.M.*          pre-norm transformer blocks (attn.in_proj_*, attn.out_proj.*,
                                 [attn.bias_k/bias_v], norm_1, mlp.fc1, mlp.fc2, norm_2)
    modality_heads.M.*           LayerNorm -> CLS (text: EOS) -> Linear(no bias) to out_embed_dim
    modality_postprocessors.M.*  L2 normalisation (+ logit scale, a parameter for text and buffers
                                 for audio/depth/thermal/imu)

Outputs per modality (:class:`EncoderOutput`): the pooled, L2-normalised embedding ``[B, D]`` and the
patch tokens ``[B, N, D]`` (every non-CLS trunk token through the head's LayerNorm and projection, not
normalised), which the grouping input projector consumes. Multi-clip inputs (video ``[B, S, 3, 2, H,
W]``, audio ``[B, S, 1, 128, 204]``) are encoded clip by clip; the embedding is the mean of the per-clip
unit vectors (as upstream, so it is not itself unit norm) and the patch tokens are averaged over clips.
The logit scales are kept for checkpoint compatibility and exposed by :meth:`ImageBind.logit_scale`;
they are not applied to the returned embeddings (NExT-GPT uses the normalised embedding only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nextgpt.config import TRUNK_NAMES, EncoderConfig, TrunkConfig

#: Trunk names, in the order of the official state dict (the config's list).
TRUNKS: tuple[str, ...] = TRUNK_NAMES

#: Fixed input geometry of the official model (the position embeddings are sized for it).
IMAGE_SIZE = 224
VISION_PATCH = (2, 14, 14)  # (frames, height, width) of the vision Conv3d patch
VISION_FRAMES = 2
AUDIO_MEL_BINS = 128
AUDIO_FRAMES = 204
AUDIO_PATCH, AUDIO_STRIDE = 16, 10
DEPTH_PATCH = THERMAL_PATCH = 16
IMU_CHANNELS, IMU_LENGTH, IMU_PATCH = 6, 2000, 8
TEXT_CONTEXT, TEXT_VOCAB = 77, 49408

#: Item dimensions per trunk (without batch). One more leading dimension means "several clips".
_ITEM_NDIM = {"vision": 4, "text": 1, "audio": 3, "depth": 3, "thermal": 3, "imu": 2}

#: Logit scale of each postprocessor: (initial value, learnable). Vision has none.
_LOGIT_SCALES = {
    "text": (1 / 0.07, True),
    "audio": (20.0, False),
    "depth": (5.0, False),
    "thermal": (10.0, False),
    "imu": (5.0, False),
}
_MAX_LOGIT_SCALE = 100.0

# Trunks whose attention appends a learnt key/value token, and which pre-normalise their input.
_BIAS_KV = {"audio", "depth", "thermal", "imu"}
_PRE_LN = {"vision"}


#: Former names of the config nodes an :class:`ImageBind` is built from. Its sizes are those of an
#: :class:`~nextgpt.config.EncoderConfig` (whose defaults are ImageBind huge) and its
#: :class:`~nextgpt.config.TrunkConfig` nodes, checked there; this module holds no sizes of its own.
TrunkDims = TrunkConfig
ImageBindDims = EncoderConfig


@dataclass
class EncoderOutput:
    """What the encoder returns for one modality.

    Attributes:
        embeds: pooled embedding ``[B, D]``; unit norm per clip, averaged over clips.
        tokens: patch tokens ``[B, N, D]`` (CLS dropped; averaged over clips), or ``None`` when not
            requested.
    """

    embeds: torch.Tensor
    tokens: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------------
# Building blocks. Attribute names reproduce the official state-dict keys; see the module docstring.
# --------------------------------------------------------------------------------------------------


class _ToTwoFrames(nn.Module):
    """Turn images ``[B, 3, H, W]`` into 2-frame clips ``[B, 3, 2, H, W]`` by repetition."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2)  # (B, C, 1, H, W)
        if x.shape[2] == 1:
            x = x.expand(-1, -1, self.frames, -1, -1)
        return x


class _PatchStem(nn.Module):
    """Patchify with ``proj`` then flatten to tokens ``[B, N, D]`` and optionally LayerNorm them."""

    def __init__(self, proj: nn.Module, norm_dim: int | None) -> None:
        super().__init__()
        self.proj = proj
        self.norm_layer = nn.LayerNorm(norm_dim) if norm_dim else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # (B, D, *grid) -> (B, N, D)
        return self.norm_layer(x) if self.norm_layer is not None else x


class _PositionEmbedding(nn.Module):
    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, dim) * dim**-0.5)


class _PatchPreprocessor(nn.Module):
    """CLS token + patch tokens + learnt position embedding (vision, audio, depth, thermal)."""

    def __init__(
        self, stem_name: str, stem: _PatchStem, num_patches: int, dim: int, input_shape: tuple
    ) -> None:
        super().__init__()
        self.stem_name = stem_name
        self.add_module(stem_name, stem)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
        self.pos_embedding_helper = _PositionEmbedding(num_patches + 1, dim)
        self.input_shape = input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = getattr(self, self.stem_name)(x)  # (B, N, D)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)  # (B, 1 + N, D)
        pos = self.pos_embedding_helper.pos_embed
        if pos.shape[1] != tokens.shape[1]:
            raise ValueError(
                f"input of shape {tuple(x.shape[1:])} gives {tokens.shape[1] - 1} patches; "
                f"this encoder expects inputs shaped {self.input_shape}"
            )
        return tokens + pos


class _TextPreprocessor(nn.Module):
    def __init__(self, vocab_size: int, context: int, dim: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, context, dim) * 0.01)
        causal = torch.full((context, context), float("-inf")).triu_(1)
        self.register_buffer("mask", causal)  # persistent: it is in the official checkpoint

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.pos_embed


class _IMUPreprocessor(nn.Module):
    """Cut ``[B, 6, 2000]`` into 250 windows of 8 samples x 6 channels, embed, add CLS + positions."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.imu_stem = _PatchStem(nn.Linear(IMU_CHANNELS * IMU_PATCH, dim, bias=False), dim)
        self.pos_embed = nn.Parameter(torch.randn(1, IMU_LENGTH // IMU_PATCH + 1, dim) * 0.01)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (IMU_CHANNELS, IMU_LENGTH):
            raise ValueError(f"IMU input must be [B, {IMU_CHANNELS}, {IMU_LENGTH}], got {tuple(x.shape)}")
        windows = x.unfold(-1, IMU_PATCH, IMU_PATCH).permute(0, 2, 1, 3)  # (B, 250, 6, 8)
        windows = windows.reshape(x.shape[0], windows.shape[1], -1)  # (B, 250, 48)
        tokens = self.imu_stem.norm_layer(self.imu_stem.proj(windows))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed


class _Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter layout, batch first.

    ``bias_kv`` appends one learnt key and value to every sequence (``add_bias_kv=True`` upstream).
    Runs on ``scaled_dot_product_attention`` (fused kernels on GPU).
    """

    def __init__(self, dim: int, num_heads: int, bias_kv: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)
        if bias_kv:
            self.bias_k = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.bias_v = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        else:
            self.bias_k = self.bias_v = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)  # 3 x (B, L, D)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(B, 1, D)], dim=1)  # (B, L + 1, D)
            v = torch.cat([v, self.bias_v.expand(B, 1, D)], dim=1)
            if mask is not None:
                mask = F.pad(mask, (0, 1))
        h = self.num_heads
        q = q.view(B, L, h, D // h).transpose(1, 2)  # (B, h, L, d)
        k = k.view(B, k.shape[1], h, D // h).transpose(1, 2)
        v = v.view(B, v.shape[1], h, D // h).transpose(1, 2)
        if mask is not None:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, L, d)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, D))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm_1(x)); x + mlp(norm_2(x)). LayerNorm eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, bias_kv: bool) -> None:
        super().__init__()
        self.attn = _Attention(dim, num_heads, bias_kv)
        self.norm_1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, 4 * dim)
        self.norm_2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x), mask)
        return x + self.mlp(self.norm_2(x))


class _Trunk(nn.Module):
    def __init__(self, dims: TrunkConfig, pre_ln: bool, bias_kv: bool) -> None:
        super().__init__()
        d = dims.embed_dim
        self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(d, eps=1e-6) if pre_ln else nn.Identity())
        self.blocks = nn.ModuleList(_Block(d, dims.num_heads, bias_kv) for _ in range(dims.num_blocks))
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.pre_transformer_layer(x)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return x


class _TokenHead(nn.Sequential):
    """LayerNorm -> pick token 0 (CLS) -> [Dropout] -> Linear, laid out as the official Sequential.

    ``forward`` returns the pooled vector; :meth:`project_tokens` applies the same norm and projection
    to every token (for the patch tokens).
    """

    def __init__(self, dim: int, out_dim: int, dropout: bool = False) -> None:
        layers: list[nn.Module] = [nn.LayerNorm(dim, eps=1e-6), nn.Identity()]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers.append(nn.Linear(dim, out_dim, bias=False))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, out)
        return self[-1](self[0](x[:, 0]))

    def project_tokens(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, out)
        return self[-1](self[0](x))


class _TextHead(nn.Module):
    """LayerNorm + Linear at the end-of-text position (the largest token id, as in CLIP)."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, out_dim, bias=False))

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        eos = ids.argmax(dim=-1)
        return self.proj(x[torch.arange(x.shape[0], device=x.device), eos])

    def project_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1, p=2)


class _LogitScale(nn.Module):
    def __init__(self, init: float, learnable: bool) -> None:
        super().__init__()
        value = torch.tensor(math.log(init))
        if learnable:
            self.log_logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_logit_scale", value)

    def scale(self) -> torch.Tensor:
        return self.log_logit_scale.exp().clamp(max=_MAX_LOGIT_SCALE)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class ImageBind(nn.Module):
    """ImageBind with all six trunks; keys and shapes match ``imagebind_huge.pth`` for huge dims.

    Args:
        cfg: the encoder config node, read for its sizes (``out_embed_dim`` and the six
            :class:`~nextgpt.config.TrunkConfig` nodes); default ``EncoderConfig()``, ImageBind huge.
            Input geometry is fixed (224 px images, 2-frame clips, 128x204 audio spectrograms,
            77-token text, 6x2000 IMU).
    """

    def __init__(self, cfg: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = cfg if cfg is not None else EncoderConfig()
        t = cfg.trunks
        D = cfg.out_embed_dim
        grid = IMAGE_SIZE // VISION_PATCH[1]
        audio_grid = ((AUDIO_MEL_BINS - AUDIO_PATCH) // AUDIO_STRIDE + 1) * (
            (AUDIO_FRAMES - AUDIO_PATCH) // AUDIO_STRIDE + 1
        )
        still = (IMAGE_SIZE // DEPTH_PATCH) ** 2

        vision_conv = nn.Conv3d(3, t["vision"].embed_dim, VISION_PATCH, stride=VISION_PATCH, bias=False)
        self.modality_preprocessors = nn.ModuleDict(
            {
                "vision": _PatchPreprocessor(
                    "rgbt_stem",
                    _PatchStem(nn.Sequential(_ToTwoFrames(VISION_FRAMES), vision_conv), None),
                    (VISION_FRAMES // VISION_PATCH[0]) * grid * grid,
                    t["vision"].embed_dim,
                    (3, IMAGE_SIZE, IMAGE_SIZE),
                ),
                "text": _TextPreprocessor(TEXT_VOCAB, TEXT_CONTEXT, t["text"].embed_dim),
                "audio": _PatchPreprocessor(
                    "rgbt_stem",
                    _PatchStem(
                        nn.Conv2d(1, t["audio"].embed_dim, AUDIO_PATCH, stride=AUDIO_STRIDE, bias=False),
                        t["audio"].embed_dim,
                    ),
                    audio_grid,
                    t["audio"].embed_dim,
                    (1, AUDIO_MEL_BINS, AUDIO_FRAMES),
                ),
                "depth": _PatchPreprocessor(
                    "depth_stem",
                    _PatchStem(
                        nn.Conv2d(1, t["depth"].embed_dim, DEPTH_PATCH, stride=DEPTH_PATCH, bias=False),
                        t["depth"].embed_dim,
                    ),
                    still,
                    t["depth"].embed_dim,
                    (1, IMAGE_SIZE, IMAGE_SIZE),
                ),
                "thermal": _PatchPreprocessor(
                    "rgbt_stem",
                    _PatchStem(
                        nn.Conv2d(1, t["thermal"].embed_dim, THERMAL_PATCH, stride=THERMAL_PATCH, bias=False),
                        t["thermal"].embed_dim,
                    ),
                    still,
                    t["thermal"].embed_dim,
                    (1, IMAGE_SIZE, IMAGE_SIZE),
                ),
                "imu": _IMUPreprocessor(t["imu"].embed_dim),
            }
        )
        self.modality_trunks = nn.ModuleDict(
            {name: _Trunk(t[name], pre_ln=name in _PRE_LN, bias_kv=name in _BIAS_KV) for name in TRUNKS}
        )
        heads: dict[str, nn.Module] = {
            name: _TokenHead(t[name].embed_dim, D, dropout=name == "imu") for name in TRUNKS if name != "text"
        }
        heads["text"] = _TextHead(t["text"].embed_dim, D)
        self.modality_heads = nn.ModuleDict({name: heads[name] for name in TRUNKS})
        post: dict[str, nn.Module] = {"vision": _Normalize()}
        for name, (init, learnable) in _LOGIT_SCALES.items():
            post[name] = nn.Sequential(_Normalize(), _LogitScale(init, learnable))
        self.modality_postprocessors = nn.ModuleDict({name: post[name] for name in TRUNKS})
        self._init_linear_layers()

    def _init_linear_layers(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute trunk blocks in backward (only matters when the encoder is trained)."""
        for trunk in self.modality_trunks.values():
            trunk.gradient_checkpointing = enabled

    def logit_scale(self, trunk: str) -> float:
        """The (clipped) logit scale the official model multiplies ``trunk``'s embedding by (1 for vision)."""
        post = self.modality_postprocessors[trunk]
        return float(post[1].scale()) if isinstance(post, nn.Sequential) else 1.0

    def encode(self, trunk: str, x: torch.Tensor, *, return_tokens: bool = False) -> EncoderOutput:
        """Encode a batch for one trunk.

        Args:
            trunk: one of :data:`TRUNKS` (images and videos both use ``"vision"``).
            x: ``[B, *item]`` or, for several clips per item, ``[B, S, *item]``. Items: vision
                ``[3, 224, 224]`` (image) or ``[3, 2, 224, 224]`` (clip); audio ``[1, 128, 204]``;
                depth/thermal ``[1, 224, 224]``; imu ``[6, 2000]``; text ``[77]`` token ids.
            return_tokens: also return the patch tokens.
        """
        if trunk not in TRUNKS:
            raise ValueError(f"unknown trunk {trunk!r}; valid: {', '.join(TRUNKS)}")
        item_ndim = _ITEM_NDIM[trunk]
        if trunk == "vision" and x.ndim == 4:
            item_ndim = 3  # a batch of images
        if x.ndim == item_ndim + 2:
            B, S = x.shape[:2]
            x = x.reshape(B * S, *x.shape[2:])  # (B * S, *item)
        elif x.ndim == item_ndim + 1:
            B, S = x.shape[0], 1
        else:
            raise ValueError(f"{trunk} input must be [B, *item] or [B, S, *item]; got shape {tuple(x.shape)}")

        if trunk != "text" and x.is_floating_point():
            x = x.to(self._dtype_of(trunk))
        tokens = self.modality_preprocessors[trunk](x)
        mask = self.modality_preprocessors["text"].mask if trunk == "text" else None
        hidden = self.modality_trunks[trunk](tokens, mask)  # (B * S, L, C)
        head = self.modality_heads[trunk]
        pooled = head(hidden, x) if trunk == "text" else head(hidden)  # (B * S, D)
        embeds = F.normalize(pooled, dim=-1).view(B, S, -1).mean(dim=1)  # (B, D)

        patch = None
        if return_tokens:
            first = 0 if trunk == "text" else 1  # drop CLS
            patch = head.project_tokens(hidden[:, first:])  # (B * S, N, D)
            patch = patch.view(B, S, *patch.shape[1:]).mean(dim=1)  # (B, N, D)
        return EncoderOutput(embeds=embeds, tokens=patch)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], return_tokens: bool = False
    ) -> dict[str, EncoderOutput]:
        """Encode several trunks at once: ``{trunk: tensor}`` in, ``{trunk: EncoderOutput}`` out."""
        return {name: self.encode(name, x, return_tokens=return_tokens) for name, x in inputs.items()}

    def _dtype_of(self, trunk: str) -> torch.dtype:
        return self.modality_trunks[trunk].blocks[0].norm_1.weight.dtype
