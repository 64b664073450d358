"""Random decoder components at the benchmark sizes, from the library's one builder.

``full`` uses the ``real`` entries of :data:`nextgpt.decoders.tiny.ARCHITECTURES` (SD 1.5, AudioLDM
l-full, Zeroscope v2 576w, with their sources there); ``small`` uses :data:`SMALL` below (2-level
UNets of 32/64 channels), in the same form; ``smoke`` keeps the library's tiny components. All are
built by :func:`nextgpt.decoders.tiny.build_components`.
"""

from __future__ import annotations

from typing import Any

import torch

from nextgpt.decoders.tiny import ARCHITECTURES, build_components

_REAL = {kind: archs["real"] for kind, archs in ARCHITECTURES.items()}

_SMALL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}
_SMALL_CLIP_TEXT = {
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "hidden_act": "quick_gelu",
}

#: bench's ``small`` size: the real architectures' structure (block types, schedulers) at CPU size.
SMALL: dict[str, dict[str, Any]] = {
    "stable_diffusion": {
        "unet": {
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": (32, 64),
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "attention_head_dim": 8,
            "norm_num_groups": 8,
        },
        "vae": _SMALL_VAE,
        "text": _SMALL_CLIP_TEXT,
        "scheduler": _REAL["stable_diffusion"]["scheduler"],
    },
    "zeroscope": {
        "unet": {
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": (32, 64),
            "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
            "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"),
            "attention_head_dim": 8,
            "norm_num_groups": 8,
        },
        "vae": _SMALL_VAE,
        "text": _SMALL_CLIP_TEXT,
        "scheduler": _REAL["zeroscope"]["scheduler"],
    },
    "audioldm": {
        "unet": {
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": (32, 64),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": 8,
            "norm_num_groups": 8,
        },
        "vae": {**_SMALL_VAE, "in_channels": 1, "out_channels": 1},
        "text": {
            "vocab_size": 512,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 130,
            "type_vocab_size": 1,
            "projection_hidden_act": "relu",
        },
        "vocoder": {
            "model_in_dim": 16,
            "upsample_initial_channel": 16,
            "upsample_rates": [10, 16],
            "upsample_kernel_sizes": [20, 32],
            "resblock_kernel_sizes": [3, 7],
            "resblock_dilation_sizes": [[1, 3, 5]] * 2,
        },
        "tokenizer_max_length": _REAL["audioldm"]["tokenizer_max_length"],
        "scheduler": _REAL["audioldm"]["scheduler"],
    },
}

#: Architecture per ``Size.components`` name and decoder kind.
ARCHS: dict[str, dict[str, dict[str, Any]]] = {"real": _REAL, "small": SMALL}


def install_decoder_components(model, size: str) -> None:
    """Make every decoder's lazy ``load()`` build random components of the size's architecture.

    Uses ``Decoder.use_random_components`` (``path=None`` decoders build their pipeline from it);
    ``load()`` then freezes, checks and places the pipeline (or enables CPU offload) exactly as for
    weights read from disk. Components are constructed on the decoder's device in its dtype, or on
    the CPU in float32 when the decoder offloads to the CPU (as a ``from_pretrained`` load would),
    so that construction never inflates device memory. At ``smoke`` size nothing is installed: the
    library's tiny components are used.
    """
    from bench.sizes import SIZE_SPECS

    name = SIZE_SPECS[size].components
    if name is None:
        return
    for decoder in model.decoders.values():
        arch = ARCHS[name][decoder.kind]

        def factory(decoder=decoder, arch=arch):
            offload = decoder.cpu_offload and decoder.device.type == "cuda"
            extra = {"sample_rate": decoder.sample_rate} if decoder.kind == "audioldm" else {}
            return build_components(
                decoder.kind,
                arch,
                decoder.cond_tokens,
                decoder.cond_dim,
                seed=decoder.seed,
                device=torch.device("cpu") if offload else decoder.device,
                dtype=torch.float32 if offload else decoder.dtype,
                **extra,
            )

        decoder.use_random_components(factory, f"{size}-size real-shaped")


def pipeline_parameters(decoder) -> dict[str, int]:
    """Parameter counts of a loaded decoder's torch components."""
    from bench.flops import count_parameters

    pipe = decoder.load()
    return {
        name: count_parameters(comp)
        for name, comp in pipe.components.items()
        if isinstance(comp, torch.nn.Module)
    }
