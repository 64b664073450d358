"""The interface every frozen diffusion decoder implements.

A :class:`Decoder` wraps one diffusers pipeline (Stable Diffusion, AudioLDM, Zeroscope, ...) and
answers the four questions the rest of nextgpt asks of it (DESIGN 5):

* what conditioning it takes: :attr:`Decoder.cond_shape` ``(tokens, dim)``, the shape the output
  projector must produce per item;
* how captions become that conditioning: :meth:`Decoder.encode_captions` (the stage-2 targets,
  computed exactly as the pipeline computes ``prompt_embeds`` from a prompt);
* how conditioning becomes media: :meth:`Decoder.generate` drives the pipeline with
  ``prompt_embeds=cond`` and ``negative_prompt_embeds`` (default: the empty prompt's embedding);
* optionally, the conditional latent denoising loss through the frozen UNet
  (:meth:`Decoder.denoising_loss`, NExT-GPT paper section 4.2).

A decoder is a plain object, not a trained ``nn.Module``: every pipeline weight is frozen
(``requires_grad=False``, eval mode). The pipeline is built lazily the first time it is needed
(:meth:`Decoder.load`) and kept on the instance; a model holds one decoder per output modality and
reuses it for every call, which is how each pipeline is loaded once per process without a
module-level cache. :meth:`Decoder.unload` frees it.

With ``path=None`` the pipeline is built from deterministic random tiny components
(:mod:`nextgpt.decoders.tiny`) for tests and CPU demos; :meth:`Decoder.describe` says so.

One file, over the library's ~600-line guide, because it is one abstract class: the lazy pipeline,
the conditioning checks, generation and the denoising loss share the instance's pipeline, device and
dtype state, and the two caption helpers and :class:`ClipTextDecoder` are what every subclass imports
with it.

References: NExT-GPT (Wu et al., ICML 2024); diffusers ``StableDiffusionPipeline.encode_prompt``,
``AudioLDMPipeline._encode_prompt`` and ``TextToVideoSDPipeline.encode_prompt`` (diffusers 0.42)
for the caption -> conditioning computations matched here.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from nextgpt.config import DecoderConfig
from nextgpt.dtypes import no_autocast, torch_dtype
from nextgpt.errors import CheckpointError, ConfigError, InputError
from nextgpt.modality import Modality

__all__ = [
    "ClipTextDecoder",
    "Decoder",
    "ProgressCallback",
    "check_captions",
    "default_device",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

#: ``callback(steps_done, num_steps)``, called after each denoising step of :meth:`Decoder.generate`.
ProgressCallback = Callable[[int, int], None]


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"`` / ``"float16"`` / ``"bfloat16"`` (or a ``torch.dtype``) -> ``torch.dtype``."""
    return torch_dtype(dtype, "decoder dtype")


def default_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _config_value(name: str) -> property:
    """A read-only attribute: the decoder config's field ``name``."""
    return property(lambda self: getattr(self.config, name), doc=f"``config.{name}`` (read-only).")


class Decoder(abc.ABC):
    """A frozen diffusion pipeline behind nextgpt's decoder interface (see the module docstring).

    Every setting is read from the decoder's config node (``config``, its kind's
    :class:`~nextgpt.config.DecoderConfig`, where the defaults and rules live): the common ones
    (:attr:`cond_tokens`, :attr:`cond_dim`, :attr:`path`, ...) and the kind's media-shape fields
    (``height``, ``sample_rate``, ...), which every subclass exposes as read-only attributes of the
    same names. What is not configuration is given here.

    Args:
        config: the decoder's config; of this class's :attr:`config_class`.
        device: where the pipeline runs; default: CUDA when available, else CPU.
        seed: seed of the random tiny components (only with ``config.path=None``).
        progress_bar: show diffusers' tqdm progress bar while generating.
        load_kwargs: extra keyword arguments for the pipeline's ``from_pretrained`` (e.g.
            ``{"safety_checker": None}``).
        config_key: the config key of ``path``, used in error messages.

    Raises:
        ConfigError: ``config`` is not of this class's kind.
    """

    #: The config class of the kind this decoder implements; :attr:`kind`, :attr:`modality` and the
    #: media-shape attributes come from it.
    config_class: ClassVar[type[DecoderConfig]]
    #: The decoder kind (registry key and ``config.kind``).
    kind: ClassVar[str]
    #: The media modality the decoder produces.
    modality: ClassVar[Modality]
    #: What a real ``path`` directory holds, for error messages.
    expected_weights: ClassVar[str]
    #: The media options :meth:`generate` takes by name, besides ``cond``, ``negative``, ``seed`` and
    #: ``callback`` (each one a key of :data:`nextgpt.validate.DECODER_OPTIONS`). ``NextGPT.generate``
    #: routes its decoder options by this table (:meth:`take_options`); a subclass that adds an
    #: option to ``generate`` adds it here.
    OPTIONS: ClassVar[tuple[str, ...]] = ("num_inference_steps", "guidance_scale")

    cond_tokens = _config_value("cond_tokens")
    cond_dim = _config_value("cond_dim")
    path = _config_value("path")
    cpu_offload = _config_value("cpu_offload")
    num_inference_steps = _config_value("num_inference_steps")
    guidance_scale = _config_value("guidance_scale")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        config_class = cls.__dict__.get("config_class")
        if config_class is None:  # an intermediate base (ClipTextDecoder)
            return
        cls.kind = config_class.kind
        cls.modality = config_class.modality
        for name in config_class.media_fields():  # height, sample_rate, ...: read from the config
            if name not in cls.__dict__:
                setattr(cls, name, _config_value(name))

    def __init__(
        self,
        config: DecoderConfig,
        *,
        device: str | torch.device | None = None,
        seed: int = 0,
        progress_bar: bool = False,
        load_kwargs: dict[str, Any] | None = None,
        config_key: str | None = None,
    ) -> None:
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} builds {self.kind!r} decoders, got a config of kind "
                f"{getattr(config, 'kind', None)!r}"
            )
        self.config = config
        # Runtime state: the dtype starts as the config's; both change with to().
        self.dtype = resolve_dtype(config.dtype)
        self.device = torch.device(device) if device is not None else default_device()
        self.seed = int(seed)
        self.progress_bar = bool(progress_bar)
        self.load_kwargs = dict(load_kwargs or {})
        self.config_key = config_key or f"model.outputs.{self.modality.value}.decoder.path"
        self._pipeline: Any = None
        self._negative: torch.Tensor | None = None
        self._train_scheduler: Any = None

    # ------------------------------------------------------------------------------------------
    # Construction from config
    # ------------------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, cfg: DecoderConfig, *, device: str | torch.device | None = None, seed: int = 0
    ) -> Decoder:
        """The decoder ``cfg`` describes (nothing is loaded yet): ``cls(cfg, device=device, seed=seed)``.

        Args:
            cfg: the decoder config; of this class's :attr:`config_class`.
            device: where to run; default CUDA when available, else CPU.
            seed: seed of the random tiny components when ``cfg.path`` is None.
        """
        return cls(cfg, device=device, seed=seed)

    # ------------------------------------------------------------------------------------------
    # Shape and description
    # ------------------------------------------------------------------------------------------

    @property
    def cond_shape(self) -> tuple[int, int]:
        """``(tokens, dim)`` of the conditioning per item, as the output projector must produce it."""
        return (self.cond_tokens, self.cond_dim)

    @property
    def media_rate(self) -> float | None:
        """Samples per second of the media this decoder makes (an audio sample rate, a video frame
        rate), or ``None`` when the media have no time axis (images)."""
        return None

    @classmethod
    def take_options(cls, options: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """``(taken, ignored)``: the options given (not ``None``) that this decoder takes
        (:attr:`OPTIONS`), and the names of the given ones it does not take, in ``options`` order."""
        given = {k: v for k, v in options.items() if v is not None}
        taken = {k: v for k, v in given.items() if k in cls.OPTIONS}
        return taken, [k for k in given if k not in taken]

    @property
    def is_tiny(self) -> bool:
        """Whether the decoder runs random tiny components (``path=None``) instead of weights."""
        return self.path is None

    def describe(self) -> str:
        """One line saying which weights this decoder runs (random tiny components are labelled)."""
        if self.is_tiny:
            label = getattr(self, "_random_label", None) or "tiny"
            source = f"RANDOM {label} components (no weights, seed {self.seed})"
        else:
            try:
                resolved = self.resolved_path()
            except ConfigError:
                resolved = None
            source = f"weights from {resolved if resolved is not None else self.path}"
            if resolved is not None and os.fspath(resolved) != self.path:
                source += f" (config: {self.path})"
        place = f"{str(self.dtype).removeprefix('torch.')} on {self.device}"
        if self.cpu_offload:
            place += " with CPU offload"
        tokens, dim = self.cond_shape
        return f"{self.kind} ({self.modality.value}): {source}; conditioning [{tokens}, {dim}]; {place}"

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        return f"{type(self).__name__}({self.describe()}; {state})"

    def resolved_path(self) -> Path | None:
        """``path`` with ``${env:..}``, ``${pkg:..}`` and ``~`` expanded (``None`` for tiny components).

        Raises:
            ConfigError: an environment variable or package the path names is missing.
        """
        from nextgpt.config import resolve_path

        return resolve_path(self.path, self.config_key)

    # ------------------------------------------------------------------------------------------
    # Lazy pipeline
    # ------------------------------------------------------------------------------------------

    #: Whether the built pipeline was moved to CPU memory by :meth:`offload_to_cpu` (its next use
    #: moves it back); a class default so that the state lives with the lazy pipeline code.
    _offloaded: bool = False

    @property
    def is_loaded(self) -> bool:
        """Whether the pipeline has been built (by :meth:`load` or a first use)."""
        return self._pipeline is not None

    @property
    def is_offloaded(self) -> bool:
        """Whether the built pipeline is parked in CPU memory (:meth:`offload_to_cpu`)."""
        return self._pipeline is not None and self._offloaded

    def pipeline_bytes(self) -> int:
        """Bytes of the built pipeline's weights: parameters and buffers of every ``torch.nn.Module``
        in its ``components`` (each tensor counted once), wherever they are now; ``0`` when it is not
        built (its size cannot be known before it is loaded)."""
        pipe = self._pipeline
        if pipe is None:
            return 0
        seen: set[int] = set()
        total = 0
        for component in pipe.components.values():
            if not isinstance(component, torch.nn.Module):
                continue
            for tensor in (*component.parameters(), *component.buffers()):
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    total += tensor.numel() * tensor.element_size()
        return total

    def offload_to_cpu(self) -> None:
        """Park the built pipeline in CPU memory, keeping it built (:meth:`unload` drops it instead);
        its next use (:meth:`load`, :meth:`restore`) moves it back to :attr:`device`. A pipeline
        under ``cpu_offload`` already keeps its weights in CPU memory between calls and is only
        marked. Nothing happens when it is not built."""
        pipe = self._pipeline
        if pipe is None or self._offloaded:
            return
        if not self._model_offload:
            pipe.to("cpu")
        self._offloaded = True
        self._negative = None  # cached on the device
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def restore(self) -> Any:
        """Move a pipeline parked by :meth:`offload_to_cpu` back to :attr:`device`; build it if it is
        not built yet (:meth:`load`). Returns the pipeline."""
        return self.load()

    @property
    def pipeline(self) -> Any:
        """The diffusers pipeline, built on first access (see :meth:`load`)."""
        return self.load()

    def load(self) -> Any:
        """Build the pipeline if it is not built yet, and return it. Idempotent.

        From ``path``: the pipeline class's ``from_pretrained(dir, torch_dtype=..., local_files_only=True)``.
        Without a path: deterministic random tiny components. All weights are frozen and the
        pipeline is moved to ``device`` (or CPU-offloaded onto it). A built pipeline parked by
        :meth:`offload_to_cpu` moves back to ``device``.

        Raises:
            CheckpointError: ``path`` is missing, not a diffusers pipeline directory, or unreadable.
            ConfigError: the pipeline's conditioning shape differs from ``cond_shape``, or an
                environment variable in ``path`` is unset.
        """
        if self._pipeline is not None:
            if self._offloaded:  # parked in CPU memory by offload_to_cpu: back to the device
                self._place(self._pipeline)
                self._offloaded = False
            return self._pipeline
        pipe = self._build_tiny() if self.is_tiny else self._load_pretrained()
        pipe.set_progress_bar_config(disable=not self.progress_bar)
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.requires_grad_(False)
                component.eval()
        self._check_pipeline(pipe)
        self._place(pipe)
        self._pipeline = pipe
        logger.info("loaded decoder: %s", self.describe())
        return pipe

    def unload(self) -> None:
        """Drop the pipeline and cached embeddings (the next use loads it again)."""
        if self._pipeline is not None:
            if self.cpu_offload and hasattr(self._pipeline, "remove_all_hooks"):
                self._pipeline.remove_all_hooks()
            self._pipeline = None
            self._offloaded = False
            self._negative = None
            self._train_scheduler = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> Decoder:
        """Run on ``device`` and/or in ``dtype`` from now on: a loaded pipeline (every component, the
        text encoder and UNet the training losses use included) moves now; an unloaded one loads there.
        :class:`~nextgpt.NextGPT` calls this whenever the model is moved or cast. Returns ``self``."""
        new_device = self.device if device is None else torch.device(device)
        new_dtype = self.dtype if dtype is None else resolve_dtype(dtype)
        if (new_device, new_dtype) == (self.device, self.dtype):
            return self
        self.device, self.dtype = new_device, new_dtype
        pipe = self._pipeline
        if pipe is not None:
            if self.cpu_offload and hasattr(pipe, "remove_all_hooks"):
                pipe.remove_all_hooks()
            pipe.to(dtype=self.dtype)
            if not self._offloaded:  # a parked pipeline stays in CPU memory until its next use
                self._place(pipe)
            self._negative = None  # cached on the old device / in the old dtype
        return self

    @classmethod
    @abc.abstractmethod
    def pipeline_class(cls) -> type:
        """The diffusers pipeline class this decoder drives (imported lazily)."""

    @abc.abstractmethod
    def tiny_components(self) -> dict[str, Any]:
        """Random tiny components (``path=None``), deterministic in ``seed`` and the conditioning shape."""

    def use_random_components(self, factory: Callable[[], dict[str, Any]], label: str) -> None:
        """Build the pipeline from ``factory()`` instead of the tiny components (``path=None`` only):
        random weights of other shapes, e.g. the real model's for speed and memory benchmarks.
        ``label`` replaces "tiny" in :meth:`describe`."""
        if not self.is_tiny:
            raise ConfigError(f"{self.kind} decoder: random components replace only path=None decoders")
        self.unload()
        self._random_factory, self._random_label = factory, label

    def _build_tiny(self) -> Any:
        factory = getattr(self, "_random_factory", None) or self.tiny_components
        pipe = self.pipeline_class()(**factory())
        if self.dtype != torch.float32:
            pipe.to(dtype=self.dtype)
        return pipe

    def _load_pretrained(self) -> Any:
        path = self.resolved_path()
        assert path is not None
        expected = (
            f"a diffusers-format {self.pipeline_class().__name__} directory with model_index.json and "
            f"one sub-folder per component ({self.expected_weights}), e.g. written by "
            "pipeline.save_pretrained(dir) or a local snapshot of the hub repository"
        )
        if not path.is_dir():
            raise CheckpointError(
                f"{self.kind} decoder: {self.config_key}={path} does not exist or is not a directory; expected {expected}"
            )
        if not (path / "model_index.json").is_file():
            raise CheckpointError(f"{self.kind} decoder: {path} has no model_index.json; expected {expected}")
        try:
            with warnings.catch_warnings():
                # diffusers 0.42 renames torch_dtype to dtype; older releases know only torch_dtype.
                warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
                pipe = self.pipeline_class().from_pretrained(
                    os.fspath(path), torch_dtype=self.dtype, local_files_only=True, **self.load_kwargs
                )
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{self.kind} decoder: cannot load {path} ({expected}): {err}") from err
        return pipe

    @property
    def _model_offload(self) -> bool:
        """Whether :meth:`_place` puts the pipeline under ``enable_model_cpu_offload``."""
        return bool(self.cpu_offload) and self.device.type == "cuda" and torch.cuda.is_available()

    def _place(self, pipe: Any) -> None:
        if self.cpu_offload:
            if self.device.type == "cuda" and torch.cuda.is_available():
                pipe.enable_model_cpu_offload(device=self.device)
                return
            logger.warning(
                "%s decoder: cpu_offload needs a CUDA device (device is %s); the whole pipeline stays on %s",
                self.kind,
                self.device,
                self.device,
            )
        pipe.to(self.device)

    @abc.abstractmethod
    def _check_pipeline(self, pipe: Any) -> None:
        """Raise ConfigError when ``pipe``'s conditioning does not have ``cond_shape``."""

    @property
    def _exec_device(self) -> torch.device:
        """Where inputs of the pipeline's models must live (the GPU under CPU offload)."""
        return torch.device(self.load()._execution_device)

    def _shape_error(self, what: str, got: Any) -> ConfigError:
        tokens, dim = self.cond_shape
        source = "the random tiny components" if self.is_tiny else str(self.path)
        return ConfigError(
            f"{self.kind} decoder at {source}: {what} is {got}, but the config declares conditioning "
            f"[cond_tokens={tokens}, cond_dim={dim}]; fix the decoder's cond_tokens/cond_dim"
        )

    # ------------------------------------------------------------------------------------------
    # Captions -> conditioning
    # ------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def encode_captions(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> the conditioning the pipeline would build from them as prompts.

        Returns:
            ``[B, tokens, dim]`` (``cond_shape`` per caption) on the pipeline's execution device, in
            the text encoder's dtype, without gradient.
        """

    @abc.abstractmethod
    def _encode_negative(self) -> torch.Tensor:
        """The empty prompt's conditioning ``[1, tokens, dim]``, as the pipeline computes it."""

    def negative_conditioning(self, batch: int = 1) -> torch.Tensor:
        """The empty prompt's conditioning repeated ``batch`` times: ``[batch, tokens, dim]``.

        Computed once (as the pipeline does for ``negative_prompt=None``) and cached on the instance.
        """
        if self._negative is None:
            self._negative = self._encode_negative().detach()
        return self._negative.expand(batch, -1, -1)

    def caption_fingerprint(self) -> str:
        """A short hash of what :meth:`encode_captions` depends on (kind, shape, tokenizer, text encoder).

        Caches of caption embeddings (stage-2 targets) store it to detect a changed decoder.
        """
        pipe = self.load()
        digest = hashlib.sha256()
        tokenizer = pipe.tokenizer
        header = [self.kind, list(self.cond_shape), type(tokenizer).__name__, tokenizer.model_max_length]
        digest.update(json.dumps(header).encode())
        digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
        for name, tensor in sorted(pipe.text_encoder.state_dict().items()):
            digest.update(name.encode())
            data = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(str(data.dtype).encode())
            digest.update(data.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    # ------------------------------------------------------------------------------------------
    # Conditioning -> media
    # ------------------------------------------------------------------------------------------

    def prepare_conditioning(self, cond: torch.Tensor, *, name: str = "cond") -> torch.Tensor:
        """Check ``cond`` against ``cond_shape``, zero-pad missing tokens, move it to the pipeline.

        Args:
            cond: ``[B, T, dim]`` with ``1 <= T <= tokens`` (fewer tokens are zero-padded at the end,
                as the legacy NExT-GPT pads image conditioning to 77); ``[B, dim]`` is accepted when
                ``tokens == 1``. Gradients flow through (nothing is detached).
            name: the argument's name for error messages.

        Returns:
            ``[B, tokens, dim]`` on the execution device, in the decoder dtype.

        Raises:
            InputError: (a ``ValueError``) naming the expected and the given shape or type.
        """
        tokens, dim = self.cond_shape
        if not isinstance(cond, torch.Tensor):
            raise InputError(f"{self.kind} decoder: {name} must be a torch.Tensor, got {type(cond).__name__}")
        if cond.ndim == 2 and tokens == 1:
            cond = cond[:, None, :]  # (B, 1, dim)
        if cond.ndim != 3 or cond.shape[0] == 0 or cond.shape[-1] != dim or not 1 <= cond.shape[1] <= tokens:
            raise InputError(
                f"{self.kind} decoder: {name} must be [B, {tokens}, {dim}] (fewer than {tokens} tokens are "
                f"zero-padded), got {list(cond.shape)}"
            )
        if not torch.is_floating_point(cond):
            raise InputError(f"{self.kind} decoder: {name} must be a floating-point tensor, got {cond.dtype}")
        if cond.shape[1] < tokens:
            cond = F.pad(cond, (0, 0, 0, tokens - cond.shape[1]))  # (B, tokens, dim)
        return cond.to(device=self._exec_device, dtype=self.dtype)

    def _pipeline_embeds(self, cond: torch.Tensor) -> torch.Tensor:
        """Our ``[B, tokens, dim]`` convention -> the pipeline's ``prompt_embeds`` layout."""
        return cond

    def _progress_kwargs(self, callback: ProgressCallback | None, num_steps: int) -> dict[str, Any]:
        """Pipeline keyword arguments that report progress (legacy ``callback(step, t, latents)``)."""
        if callback is None:
            return {}

        def on_step(step: int, timestep: Any, latents: torch.Tensor) -> None:
            callback(step + 1, num_steps)

        return {"callback": on_step, "callback_steps": 1}

    def _checked_options(self, *, callback: Any = None, **options: Any) -> dict[str, Any]:
        """The public :meth:`generate` options checked once, before the pipeline runs: ``None``
        (the decoder's default) or a value in the range :mod:`nextgpt.validate` documents
        (``num_inference_steps`` in [1, 500], ``guidance_scale`` in [0, 100], ``seed`` in
        [0, 2**64 - 1], ``height``/``width`` multiples of 8 in [8, 2048], ``num_frames`` in
        [1, 256], ``audio_length_in_s`` in [0.05, 60]); ``callback`` None or callable.

        Raises:
            InputError: naming the argument and its valid range.
        """
        from nextgpt.validate import check_callback, check_decoder_options

        prefix = f"{self.kind} decoder: "
        try:
            check_callback(callback)
        except InputError as err:
            raise InputError(f"{prefix}{err}") from None
        return check_decoder_options(options, prefix=prefix)

    def _run(
        self,
        cond: torch.Tensor,
        *,
        negative: torch.Tensor | None,
        num_inference_steps: int | None,
        guidance_scale: float | None,
        seed: int | Sequence[int] | None,
        callback: ProgressCallback | None,
        output_type: str,
        media_kwargs: dict[str, Any],
    ) -> Any:
        """Drive the pipeline with our conditioning; returns the pipeline's output object."""
        pipe = self.load()
        cond = self.prepare_conditioning(cond).detach()
        batch = cond.shape[0]
        if negative is None:
            negative = self.negative_conditioning(batch)
        else:
            negative = self.prepare_conditioning(negative, name="negative").detach()
            if negative.shape[0] == 1 and batch > 1:
                negative = negative.expand(batch, -1, -1)
            elif negative.shape[0] != batch:
                raise InputError(
                    f"{self.kind} decoder: negative has batch {negative.shape[0]} but cond has batch {batch} "
                    "(pass one negative per item, or one for all)"
                )
        steps = self.num_inference_steps if num_inference_steps is None else int(num_inference_steps)
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        generator = self._generators(seed, batch)
        return pipe(
            prompt_embeds=self._pipeline_embeds(cond),
            negative_prompt_embeds=self._pipeline_embeds(negative.to(cond.dtype)),
            num_inference_steps=steps,
            guidance_scale=scale,
            generator=generator,
            output_type=output_type,
            **media_kwargs,
            **self._progress_kwargs(callback, steps),
        )

    def _generators(
        self, seed: int | Sequence[int] | None, batch: int
    ) -> torch.Generator | list[torch.Generator] | None:
        """The pipeline's ``generator``: one for the batch from an int seed, or one per item from a
        list of seeds (item ``i`` then gets the noise it would get alone with ``seed[i]``: diffusers
        draws each item's latents from its own generator)."""
        if seed is None:
            return None
        if isinstance(seed, (list, tuple)):
            if len(seed) != batch:
                raise InputError(
                    f"{self.kind} decoder: {len(seed)} seeds for a batch of {batch} (pass one per item, or one int)"
                )
            return [torch.Generator(device=self._exec_device).manual_seed(int(s)) for s in seed]
        return torch.Generator(device=self._exec_device).manual_seed(int(seed))

    @abc.abstractmethod
    def generate(self, cond: torch.Tensor, **kwargs: Any) -> list[Any]:
        """Media from conditioning ``[B, tokens, dim]``: one output per item (see subclasses)."""

    def generate_from_prompts(self, prompts: Sequence[str], **kwargs: Any) -> list[Any]:
        """Media from text prompts: :meth:`generate` on :meth:`encode_captions` (text-prompt decoding)."""
        return self.generate(self.encode_captions(prompts), **kwargs)

    # ------------------------------------------------------------------------------------------
    # Conditional latent denoising loss through the frozen UNet
    # ------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def encode_media_to_latents(
        self, media: torch.Tensor, *, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """Target media -> VAE latents scaled by the VAE's ``scaling_factor`` (no gradient).

        Args:
            media: the modality's tensor layout (see subclasses), values in ``[-1, 1]`` for pixels.
            generator: draws the posterior sample (``sample=True``).
            sample: sample the VAE posterior (as diffusers' training scripts) or take its mode.
        """

    @abc.abstractmethod
    def _predict(
        self, pipe: Any, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        """The UNet's prediction for ``noisy`` latents at ``timesteps`` conditioned on ``cond``."""

    def training_scheduler(self) -> Any:
        """A ``DDPMScheduler`` with the pipeline scheduler's noise schedule, for the denoising loss."""
        if self._train_scheduler is None:
            from diffusers import DDPMScheduler

            # Keys DDPM does not know (e.g. PNDM's skip_prk_steps) are ignored by from_config.
            self._train_scheduler = DDPMScheduler.from_config(self.load().scheduler.config)
        return self._train_scheduler

    def denoising_loss(
        self,
        cond: torch.Tensor,
        *,
        latents: torch.Tensor | None = None,
        media: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Conditional latent denoising loss (paper section 4.2) through the frozen UNet.

        Target media are VAE-encoded to scaled latents, a timestep and Gaussian noise are drawn per
        item, the scheduler noises the latents, and the frozen UNet predicts the noise conditioned
        on ``cond``; the loss is the MSE to the noise (to the velocity for ``v_prediction``
        schedulers, to the clean latents for ``sample``). Gradients reach ``cond``, never the UNet.

        Args:
            cond: ``[B, T<=tokens, dim]`` conditioning (e.g. projected signal-token states).
            latents: precomputed scaled latents (:meth:`encode_media_to_latents`); or
            media: target media, encoded here (exactly one of ``latents`` / ``media``).
            generator: draws timesteps, noise (and the VAE posterior sample): same seed, same loss.
            timesteps: ``[B]`` integer timesteps to use instead of random ones.

        Returns:
            A scalar float32 loss.
        """
        if (latents is None) == (media is None):
            raise ValueError(f"{self.kind} decoder: pass exactly one of latents= or media= to denoising_loss")
        from diffusers.utils.torch_utils import randn_tensor

        pipe = self.load()
        if latents is None:
            latents = self.encode_media_to_latents(media, generator=generator)
        latents = latents.to(device=self._exec_device, dtype=self.dtype)
        cond = self.prepare_conditioning(cond)
        batch = latents.shape[0]
        if cond.shape[0] == 1 and batch > 1:
            cond = cond.expand(batch, -1, -1)
        if cond.shape[0] != batch:
            raise ValueError(
                f"{self.kind} decoder: cond has batch {cond.shape[0]} but the latents have batch {batch}"
            )
        scheduler = self.training_scheduler()
        if timesteps is None:
            rng_device = generator.device if generator is not None else latents.device
            timesteps = torch.randint(
                0, scheduler.config.num_train_timesteps, (batch,), generator=generator, device=rng_device
            )
        timesteps = timesteps.to(device=latents.device, dtype=torch.long)
        if timesteps.shape != (batch,):
            raise ValueError(f"{self.kind} decoder: timesteps must be [{batch}], got {list(timesteps.shape)}")
        noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction_type = scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        elif prediction_type == "sample":
            target = latents
        else:
            raise ConfigError(
                f"{self.kind} decoder: unsupported scheduler prediction_type {prediction_type!r}"
            )
        prediction = self._predict(pipe, noisy, timesteps, cond)
        return F.mse_loss(prediction.float(), target.float())

    def _vae_encode(
        self, pixels: torch.Tensor, generator: torch.Generator | None, sample: bool
    ) -> torch.Tensor:
        """``[N, C, H, W]`` -> scaled latents ``[N, c, h, w]`` through the frozen VAE."""
        pipe = self.load()
        with torch.no_grad(), no_autocast(self._exec_device):
            dist = pipe.vae.encode(pixels.to(device=self._exec_device, dtype=self.dtype)).latent_dist
            latents = dist.sample(generator=generator) if sample else dist.mode()
        return latents * pipe.vae.config.scaling_factor


def check_captions(captions: Sequence[str] | str) -> list[str]:
    """A non-empty list of strings (a single string is one caption)."""
    if isinstance(captions, str):
        captions = [captions]
    captions = list(captions)
    if not captions:
        raise ValueError("encode_captions needs at least one caption")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"caption {i} must be a str, got {type(caption).__name__}")
    return captions


def warn_truncated(kind: str, tokenizer: Any, captions: list[str], max_length: int) -> None:
    """Log (as the pipelines do) when captions are cut to the text encoder's context."""
    lengths = [len(ids) for ids in tokenizer(captions, truncation=False).input_ids]
    cut = sum(n > max_length for n in lengths)
    if cut:
        logger.warning(
            "%s decoder: %d of %d captions are longer than %d tokens and were truncated (longest: %d)",
            kind,
            cut,
            len(captions),
            max_length,
            max(lengths),
        )


class ClipTextDecoder(Decoder):
    """A decoder conditioned on a CLIP text encoder's ``last_hidden_state`` (SD, Zeroscope).

    ``prompt_embeds`` are the text encoder's final hidden states on the tokenizer's input padded to
    ``model_max_length`` (77), without ``clip_skip``; the attention mask is passed only when the
    text encoder's config asks for it (``use_attention_mask``), as in ``encode_prompt``.
    """

    def _clip_encode(self, texts: list[str], max_length: int) -> torch.Tensor:
        pipe = self.load()
        device = self._exec_device
        inputs = pipe.tokenizer(
            texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        use_mask = bool(getattr(pipe.text_encoder.config, "use_attention_mask", False))
        mask = inputs.attention_mask.to(device) if use_mask else None
        with torch.no_grad(), no_autocast(device):  # as when the targets are cached
            hidden = pipe.text_encoder(inputs.input_ids.to(device), attention_mask=mask)[0]  # (B, T, D)
        return hidden.to(device=device, dtype=pipe.text_encoder.dtype)

    def encode_captions(self, captions: Sequence[str]) -> torch.Tensor:
        """Captions -> CLIP ``last_hidden_state`` ``[B, tokens, dim]`` (``encode_prompt``'s ``prompt_embeds``)."""
        captions = check_captions(captions)
        tokenizer = self.load().tokenizer
        warn_truncated(self.kind, tokenizer, captions, tokenizer.model_max_length)
        return self._clip_encode(captions, tokenizer.model_max_length)

    def _encode_negative(self) -> torch.Tensor:
        # encode_prompt pads the negative prompt to the positive embeddings' length (cond_tokens).
        return self._clip_encode([""], self.cond_tokens)

    def _check_pipeline(self, pipe: Any) -> None:
        max_length = pipe.tokenizer.model_max_length
        if max_length != self.cond_tokens:
            raise self._shape_error("the tokenizer's model_max_length (conditioning tokens)", max_length)
        hidden = pipe.text_encoder.config.hidden_size
        if hidden != self.cond_dim:
            raise self._shape_error("the text encoder's hidden_size (conditioning width)", hidden)
        cross = pipe.unet.config.cross_attention_dim
        if cross != self.cond_dim:
            raise self._shape_error("the UNet's cross_attention_dim", cross)

    def _predict(
        self, pipe: Any, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        return pipe.unet(noisy, timesteps, encoder_hidden_states=cond).sample
