"""Generation: ``generate``, ``generate_batch``, ``stream`` and ``run_requests``, as a mixin of
:class:`~nextgpt.NextGPT`.

Every entry point goes the same way: the arguments of each conversation are checked and tokenized
into a :class:`GenerationRequest` (:meth:`GenerationMixin.prepare_request`); :meth:`run_requests`
then decodes any number of requests as one batch (:mod:`nextgpt.decoding`: left padding, per-row
masks and positions, per-row signal-run control and sampling), and renders their media in batches
per modality and decoder options (one diffusion call for every image of the batch, each with its own
seed). ``generate`` is a batch of one; ``stream`` runs one request in a worker thread and yields its
events as they happen. One lock per model serialises calls: concurrent callers queue, and nothing of
one call is shared with another. The mixin uses the model's parts (``llm``, ``processor``,
``decoders``, ``residency``, ``encode_media``, ``embed_inputs``, ``project_outputs``) and nothing
else of it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nextgpt.errors import ConfigError, InputError
from nextgpt.modality import Modality
from nextgpt.outputs import GenerationOutput, ProgressEvent, StreamEvent
from nextgpt.processor import parse_inputs

if TYPE_CHECKING:
    from nextgpt.config import NextGPTConfig
    from nextgpt.decoders.base import Decoder
    from nextgpt.decoders.residency import DecoderResidency
    from nextgpt.decoding import Row, Sink
    from nextgpt.llm import LanguageModel
    from nextgpt.processor import MediaItem, Processor
    from nextgpt.records import SignalRun

#: Progress logging with ``progress=True`` goes to the model's logger, where users filter for it.
logger = logging.getLogger("nextgpt.model")

#: The bound of ``repetition_penalty`` (1 is off; transformers and vLLM take any positive value,
#: values far above 2 garble the text).
MAX_REPETITION_PENALTY = 10.0

#: One generation lock per model (kept outside the module: locks cannot be copied or pickled).
_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _progress_reporter(progress) -> Callable[[ProgressEvent], object] | None:
    """``generate``'s checked ``progress`` as a function of one :class:`ProgressEvent` (``None``:
    no reports). ``True`` logs each diffusion step as ``"<modality> diffusion step <k>/<n>"`` at
    INFO on this module's logger (the web page passes a callback instead)."""
    if progress is False:
        return None
    if progress is True:

        def log_steps(event: ProgressEvent) -> None:
            if event.stage == "step":
                name = event.modality.value if event.modality is not None else "media"
                logger.info("%s diffusion step %d/%d", name, event.step, event.total)

        return log_steps
    return progress


@dataclass(repr=False, eq=False)
class GenerationRequest:
    """One conversation's checked generation arguments, tokenized (:meth:`GenerationMixin.prepare_request`).

    Attributes mirror ``generate``'s arguments after checking: ``allowed`` (media modalities that may
    be produced), ``forced`` (those that must be), ``want_text``, the sampling controls, ``stops``
    (the template's stop strings and the caller's), ``seed``, ``decoder_options`` (per media
    modality: the options its decoder takes, the call-wide ones overridden by ``decoder_kwargs``)
    and ``negatives`` (per media modality: a negative prompt or negative conditioning).
    The decoding state lives in the call, not here: a request can be run again (a server retries
    the requests of a failed batch one by one). :meth:`cancel` may be called from any thread; it is
    permanent.
    """

    input_ids: torch.Tensor
    slots: list
    allowed: set[Modality]
    forced: list[Modality]
    want_text: bool
    max_new_tokens: int
    min_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    stops: tuple[str, ...]
    seed: int | None
    decoder_options: dict[Modality, dict[str, Any]]
    negatives: dict[Modality, str | torch.Tensor]
    progress: Callable[[ProgressEvent], object] | None
    #: the call's diffusion options (steps, guidance, sizes) for task-prompt pipelines (LLMBind)
    prompt_options: dict[str, Any] = field(default_factory=dict)
    #: ImageBind-LLM embedding arithmetic: one weight per input media item (``None``: the config's rule)
    media_weights: list[float] | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event, init=False)

    def cancel(self) -> None:
        """Stop this request at its next step: its text ends there (``finish_reason="cancelled"``)
        and its media are not rendered. Thread-safe; a finished request ignores it."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled.is_set()

    def __repr__(self) -> str:
        allowed = ",".join(sorted(m.value for m in self.allowed)) or "-"
        return (
            f"GenerationRequest(prompt={int(self.input_ids.numel())} tokens, media={allowed}, "
            f"max_new_tokens={self.max_new_tokens}, seed={self.seed})"
        )


_STREAM_END = object()


class GenerationMixin:
    """``generate``, ``generate_batch``, ``stream`` and their decoding loop; mixed into :class:`~nextgpt.NextGPT`."""

    if TYPE_CHECKING:  # what the mixin uses of the model (NextGPT sets or defines each)
        config: NextGPTConfig
        llm: LanguageModel
        processor: Processor
        decoders: dict[Modality, Decoder]
        residency: DecoderResidency
        segmentation: Any  # nextgpt.segmentation.SegmentationHead | None
        encoder: Any  # nextgpt.encoders.ImageBindEncoder

        # Declarations for the type checker only (documented on NextGPT).
        @property
        def device(self) -> torch.device: ...  # noqa: D102
        @property
        def output_modalities(self) -> tuple[Modality, ...]: ...  # noqa: D102
        def eval(self) -> Any: ...  # noqa: D102
        def encode_media(self, slots: Sequence[Sequence[MediaItem]]) -> list[torch.Tensor]: ...  # noqa: D102
        def embed_inputs(  # noqa: D102
            self, input_ids: torch.Tensor, media_tokens: Sequence[torch.Tensor]
        ) -> torch.Tensor: ...
        def project_outputs(self, modality: Modality, states: torch.Tensor) -> torch.Tensor: ...  # noqa: D102
        @property
        def is_bind(self) -> bool: ...  # noqa: D102
        @property
        def visual_cache(self) -> Any: ...  # noqa: D102
        def bind_row(  # noqa: D102
            self, slots: Sequence[Sequence[MediaItem]], weights: Sequence[float] | None = None
        ) -> torch.Tensor: ...

    @property
    def context_length(self) -> int:
        """The LLM's context length in tokens (``max_position_embeddings``): the bound of
        ``max_new_tokens``."""
        hf_config = getattr(getattr(self.llm, "model", None), "config", None)
        context = getattr(hf_config, "max_position_embeddings", None)
        return int(context or self.config.model.llm.max_position_embeddings)

    @property
    def generation_lock(self) -> threading.RLock:
        """The lock every generation call of this model holds while it runs (concurrent callers
        queue on it; a server may hold it to run several calls back to back)."""
        with _LOCKS_GUARD:
            lock = _LOCKS.get(self)
            if lock is None:
                lock = _LOCKS[self] = threading.RLock()
            return lock

    # ------------------------------------------------------------------ public entry points

    def generate(
        self,
        inputs: object,
        modalities: Sequence[str | Modality] | None = None,
        *,
        max_new_tokens: int = 128,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        negative_prompt: str | Mapping[str, str] | None = None,
        negative_conditioning: Mapping[str, torch.Tensor] | None = None,
        decoder_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        audio_length_in_s: float | None = None,
        modality_weights: Sequence[float] | None = None,
        progress: bool | Callable[[ProgressEvent], object] = False,
    ) -> GenerationOutput:
        """Answer ``inputs`` in text and/or media.

        Args:
            inputs: a string, a media item, a list of parts (one user turn) or chat messages.
            modalities: allowed outputs. ``None``: the LLM decides (text always, media when it emits
                signal tokens). A list: media modalities in it are always produced (their signal run
                is appended if the LLM does not emit it); media modalities not in it are never
                produced (their signal tokens are suppressed); text is returned only if listed.
            max_new_tokens: text budget, an int in ``[1, context length]`` (the LLM's
                ``max_position_embeddings``); a signal run started at the limit is still completed.
            min_new_tokens: EOS cannot end the answer before this many tokens (an int in
                ``[0, max_new_tokens]``; stop strings still can), as transformers' ``min_new_tokens``.
            do_sample: sample the text (a bool); greedy when False or when ``temperature`` is 0.
            temperature: 0 or a finite normal float > 0 (negative, NaN, inf and subnormal values
                are refused).
            top_p: nucleus sampling mass, in ``(0, 1]``.
            top_k: sample among the ``top_k`` most likely tokens only (0: all), an int in
                ``[0, vocabulary size]``; with ``top_p`` both apply (top-k first).
            repetition_penalty: in ``(0, 10]``, 1 is off: the logit of every token already in the
                prompt or the answer is divided by it when positive and multiplied by it otherwise
                (CTRL's penalty, as transformers and vLLM apply it); applies to greedy decoding too.
            stop: strings that end the answer (not returned), besides EOS and the template's own
                (``vicuna_v0``: ``###``, as the legacy code stops): a list of non-empty str, or one
                str (a single stop string, not a set of characters).
            seed: makes sampling and diffusion reproducible; an int in ``[0, 2**64 - 1]`` (media
                item ``i`` of the call uses ``seed + i``, wrapping inside that range).
            negative_prompt: what the decoders steer away from (classifier-free guidance's negative
                branch): one str for every medium, or ``{"image": "blurry", ...}`` per modality.
                Default: the empty prompt, as the pipelines do.
            negative_conditioning: ``{"image": tensor}`` per modality, a decoder-space negative
                ``[1, T <= cond_tokens, cond_dim]`` (e.g. from ``decoder.encode_captions``) instead
                of a prompt; a modality takes one of the two negatives at most.
            decoder_kwargs: per modality, options for that decoder only (``{"image":
                {"num_inference_steps": 20, "height": 256}}``); each must be one its decoder takes
                (``Decoder.OPTIONS``) and they override the call-wide options below.
            num_inference_steps: denoising steps of each decoder, in ``[1, 500]``. This and the
                decoder options below default to each decoder's config; a decoder ignores the
                options it does not take (``Decoder.OPTIONS``).
            guidance_scale: classifier-free guidance, in ``[0, 100]``.
            height: image/video height, a multiple of 8 in ``[8, 2048]``.
            width: image/video width, a multiple of 8 in ``[8, 2048]``.
            num_frames: video frames, in ``[1, 256]``.
            audio_length_in_s: audio length in seconds, in ``[0.05, 60]``.
            modality_weights: ImageBind-LLM embedding arithmetic (``input_projector.kind: bind``): one
                weight per input media item, in order; their ImageBind embeddings are summed with
                these weights before the bind network (e.g. ``[0.5, 0.5]`` for a sound and a picture).
            progress: ``False`` (default): no reports; ``True``: log each diffusion step at INFO on
                the ``nextgpt.model`` logger (``"<modality> diffusion step <k>/<n>"``); a callable:
                ``progress(event)`` with a :class:`~nextgpt.outputs.ProgressEvent` when the LLM
                starts (``"text"``), when each media item starts decoding (``"decode"``) and after
                each of its diffusion steps (``"step"``), as diffusers' ``callback_on_step_end``;
                its return value is ignored and an exception it raises ends the call.

        Every argument is checked before any work starts (see :mod:`nextgpt.validate`): a bad value
        raises :class:`~nextgpt.errors.InputError` naming it and its valid range.
        """
        request = self.prepare_request(
            inputs,
            modalities,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            stop=stop,
            seed=seed,
            negative_prompt=negative_prompt,
            negative_conditioning=negative_conditioning,
            decoder_kwargs=decoder_kwargs,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            num_frames=num_frames,
            audio_length_in_s=audio_length_in_s,
            modality_weights=modality_weights,
            progress=progress,
        )
        return self.run_requests([request])[0]

    def generate_batch(
        self,
        conversations: Sequence[object],
        modalities: Sequence[Any] | None = None,
        *,
        seed: int | Sequence[int | None] | None = None,
        batch_size: int = 8,
        **options: Any,
    ) -> list[GenerationOutput]:
        """Answer several conversations together: one :class:`GenerationOutput` per conversation, in
        order, each equal to what :meth:`generate` returns for it alone (greedy text token for token;
        media within float tolerance, see docs/INFERENCE.md).

        Args:
            conversations: a list of conversations, each anything :meth:`generate` takes as
                ``inputs`` (``["a cat", "a dog"]`` is two conversations here).
            modalities: as :meth:`generate`'s, for every row; or a list with one entry (``None`` or
                a list of modalities) per conversation, e.g. ``[["image"], None, ["text", "audio"]]``.
            seed: one seed for every row (each row then matches ``generate(..., seed=seed)``), or
                one per conversation (``None`` entries unseeded).
            batch_size: rows decoded together, an int in ``[1, 256]``; longer lists run in chunks of
                this size, which bounds memory whatever the list's length.
            **options: any other :meth:`generate` argument, for every row.

        Raises:
            InputError: naming the bad argument (and the row, for a bad conversation).
        """
        from nextgpt import validate as check

        if isinstance(conversations, (str, bytes, Mapping)) or not isinstance(conversations, Sequence):
            raise InputError(
                "conversations must be a list of conversations (each what generate takes as inputs), "
                f"got {type(conversations).__name__}"
            )
        if not conversations:
            raise InputError("conversations must not be empty")
        n = len(conversations)
        batch_size = check.check_int("batch_size", batch_size, low=1, high=256)
        per_row_mods = (
            isinstance(modalities, (list, tuple))
            and len(modalities) == n
            and all(m is None or isinstance(m, (list, tuple)) for m in modalities)
        )
        mods = list(modalities) if per_row_mods else [modalities] * n  # type: ignore[arg-type]
        if isinstance(seed, (list, tuple)):
            if len(seed) != n:
                raise InputError(
                    f"seed has {len(seed)} entries for {n} conversations (pass one per row, or one int)"
                )
            seeds = list(seed)
        else:
            seeds = [seed] * n
        requests = []
        for row, conversation in enumerate(conversations):
            try:
                requests.append(self.prepare_request(conversation, mods[row], seed=seeds[row], **options))
            except InputError as err:
                raise InputError(f"conversation {row}: {err}") from None
        outputs: list[GenerationOutput] = []
        for start in range(0, n, batch_size):
            outputs += self.run_requests(requests[start : start + batch_size])
        return outputs

    def stream(
        self,
        inputs: object,
        modalities: Sequence[str | Modality] | None = None,
        *,
        overlap_media: bool | None = None,
        **options: Any,
    ) -> Iterator[StreamEvent]:
        """Answer ``inputs`` as :meth:`generate` does, yielding :class:`~nextgpt.outputs.StreamEvent`
        objects as they happen: text deltas, each completed signal run, progress, each media item
        when its decoder finishes, and last a ``"done"`` event with the whole output (whose text is
        the deltas joined, and equals ``generate``'s with the same arguments).

        Args:
            inputs: as :meth:`generate`.
            modalities: as :meth:`generate`.
            overlap_media: render each media item in a worker thread as soon as its signal run is
                complete, while the text goes on (default: on a CUDA device, where the two share the
                GPU well; off on a CPU, whose cores the LLM already uses). The results do not depend
                on it.
            **options: any other :meth:`generate` argument.

        The arguments are checked now (a bad one raises here, before iteration). The call runs in a
        worker thread; closing the iterator early (``break``, a client that went away) cancels it at
        its next step.
        """
        from nextgpt.validate import check_bool

        overlap = (
            self.device.type == "cuda"
            if overlap_media is None
            else check_bool("overlap_media", overlap_media)
        )
        request = self.prepare_request(inputs, modalities, **options)
        return self._stream_events(request, overlap)

    def _stream_events(self, request: GenerationRequest, overlap: bool) -> Iterator[StreamEvent]:
        events: queue.SimpleQueue[object] = queue.SimpleQueue()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self.run_requests([request], [events.put], overlap_media=overlap)
            except BaseException as err:  # re-raised in the consumer's thread
                failure.append(err)
            finally:
                events.put(_STREAM_END)

        thread = threading.Thread(target=work, name="nextgpt-stream", daemon=True)
        thread.start()
        try:
            while True:
                event = events.get()
                if event is _STREAM_END:
                    break
                assert isinstance(event, StreamEvent)
                yield event
        finally:
            request.cancel()  # a no-op once the call has finished
            thread.join()
        if failure:
            raise failure[0]

    # ------------------------------------------------------------------ requests

    def prepare_request(
        self,
        inputs: object,
        modalities: Sequence[str | Modality] | None = None,
        *,
        max_new_tokens: int = 128,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
        negative_prompt: str | Mapping[str, str] | None = None,
        negative_conditioning: Mapping[str, torch.Tensor] | None = None,
        decoder_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        audio_length_in_s: float | None = None,
        modality_weights: Sequence[float] | None = None,
        progress: bool | Callable[[ProgressEvent], object] = False,
    ) -> GenerationRequest:
        """Check ``generate``'s arguments and tokenize the conversation: a request that
        :meth:`run_requests` runs, alone or batched with others (what a server does).

        Takes exactly :meth:`generate`'s arguments.

        Raises:
            InputError: a bad argument, named with its valid range.
            ConfigError: a modality this model has no decoder for.
        """
        from nextgpt import validate as check

        max_new_tokens = check.check_int("max_new_tokens", max_new_tokens, low=1, high=self.context_length)
        min_new_tokens = check.check_int("min_new_tokens", min_new_tokens, low=0, high=max_new_tokens)
        repetition_penalty = check.check_real(
            "repetition_penalty", repetition_penalty, low=0.0, high=MAX_REPETITION_PENALTY, low_open=True
        )
        common = check.check_decoder_options(
            {
                "num_inference_steps": num_inference_steps,
                "guidance_scale": guidance_scale,
                "height": height,
                "width": width,
                "num_frames": num_frames,
                "audio_length_in_s": audio_length_in_s,
            }
        )
        allowed, forced, want_text = self._parse_modalities(modalities)
        enc = self.processor.encode(parse_inputs(inputs), add_generation_prompt=True)
        return GenerationRequest(
            input_ids=enc.input_ids,
            slots=enc.slots,
            allowed=allowed,
            forced=forced,
            want_text=want_text,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=check.check_bool("do_sample", do_sample),
            temperature=check.check_temperature(temperature),
            top_p=check.check_real("top_p", top_p, low=0.0, high=1.0, low_open=True),
            top_k=check.check_int("top_k", top_k, low=0, high=self.llm.layout.vocab_size),
            repetition_penalty=repetition_penalty,
            stops=self._stops(stop),
            seed=check.check_seed(seed),
            decoder_options=self._decoder_options(common, decoder_kwargs),
            negatives=self._negatives(negative_prompt, negative_conditioning),
            progress=_progress_reporter(check.check_progress(progress)),
            prompt_options={k: v for k, v in common.items() if v is not None},
            media_weights=self._media_weights(modality_weights, enc.slots),
        )

    def _media_weights(self, weights: Sequence[float] | None, slots: list) -> list[float] | None:
        """``modality_weights`` checked: one finite float per input media item, in order, for a model
        whose input path combines them (``input_projector.kind: bind``)."""
        if weights is None:
            return None
        from nextgpt import validate as check

        if self.config.model.input_projector.kind != "bind":
            raise InputError(
                "modality_weights needs an input path that combines embeddings (input_projector.kind: bind)"
            )
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
            raise InputError(f"modality_weights must be a list of numbers, got {type(weights).__name__}")
        n = sum(len(slot) for slot in slots)
        if len(weights) != n:
            raise InputError(f"modality_weights has {len(weights)} weights for {n} input media items")
        return [
            check.check_real(f"modality_weights[{i}]", w, low=-100.0, high=100.0)
            for i, w in enumerate(weights)
        ]

    def _media_key(self, value: object, what: str) -> Modality:
        """A per-modality mapping's key as a media modality this model produces."""
        try:
            modality = Modality.parse(value)  # type: ignore[arg-type]
        except (InputError, ValueError, TypeError):
            modality = None
        if modality is None or modality not in self.decoders:
            have = ", ".join(m.value for m in self.output_modalities) or "none"
            raise InputError(f"{what} has key {value!r}; this model's media outputs are: {have}")
        return modality

    def _decoder_options(
        self, common: dict[str, Any], decoder_kwargs: Mapping[str, Mapping[str, Any]] | None
    ) -> dict[Modality, dict[str, Any]]:
        from nextgpt.validate import check_decoder_options

        own: dict[Modality, dict[str, Any]] = {}
        if decoder_kwargs is not None:
            if not isinstance(decoder_kwargs, Mapping):
                raise InputError(
                    'decoder_kwargs must be a mapping of modality to options, e.g. {"image": '
                    f'{{"num_inference_steps": 20}}}}, got {type(decoder_kwargs).__name__}'
                )
            for key, opts in decoder_kwargs.items():
                m = self._media_key(key, "decoder_kwargs")
                takes = self.decoders[m].OPTIONS
                if not isinstance(opts, Mapping):
                    raise InputError(
                        f"decoder_kwargs[{m.value!r}] must be a mapping, got {type(opts).__name__}"
                    )
                unknown = [k for k in opts if k not in takes]
                if unknown:
                    raise InputError(
                        f"decoder_kwargs[{m.value!r}]: the {self.decoders[m].kind} decoder takes "
                        f"{', '.join(takes)}; not {', '.join(map(str, unknown))}"
                    )
                own[m] = check_decoder_options(dict(opts), prefix=f"decoder_kwargs[{m.value!r}]: ")
        options: dict[Modality, dict[str, Any]] = {}
        for m, decoder in self.decoders.items():
            taken, dropped = decoder.take_options(common)
            if dropped:
                logger.debug("%s decoder ignores %s", m.value, dropped)
            taken.update({k: v for k, v in own.get(m, {}).items() if v is not None})
            options[m] = taken
        return options

    def _negatives(
        self,
        negative_prompt: str | Mapping[str, str] | None,
        negative_conditioning: Mapping[str, torch.Tensor] | None,
    ) -> dict[Modality, str | torch.Tensor]:
        from nextgpt.validate import check_text

        out: dict[Modality, str | torch.Tensor] = {}
        if isinstance(negative_prompt, str):
            negative_prompt = {m.value: negative_prompt for m in self.decoders}
        if negative_prompt is not None:
            if not isinstance(negative_prompt, Mapping):
                raise InputError(
                    "negative_prompt must be a str or a mapping of modality to str, "
                    f"got {type(negative_prompt).__name__}"
                )
            for key, text in negative_prompt.items():
                m = self._media_key(key, "negative_prompt")
                if not isinstance(text, str):
                    raise InputError(f"negative_prompt[{m.value!r}] must be a str, got {type(text).__name__}")
                out[m] = check_text(text, f"negative_prompt[{m.value!r}]")
        if negative_conditioning is not None:
            if not isinstance(negative_conditioning, Mapping):
                raise InputError(
                    "negative_conditioning must be a mapping of modality to a tensor "
                    f"[1, T, cond_dim], got {type(negative_conditioning).__name__}"
                )
            for key, tensor in negative_conditioning.items():
                m = self._media_key(key, "negative_conditioning")
                if m in out:
                    raise InputError(f"{m.value}: give negative_prompt or negative_conditioning, not both")
                out[m] = self._check_negative(m, tensor)
        return out

    def _check_negative(self, modality: Modality, tensor: object) -> torch.Tensor:
        tokens, dim = self.decoders[modality].cond_shape
        name = f"negative_conditioning[{modality.value!r}]"
        shape = list(tensor.shape) if isinstance(tensor, torch.Tensor) else None
        if (
            not isinstance(tensor, torch.Tensor)
            or not torch.is_floating_point(tensor)
            or tensor.ndim != 3
            or tensor.shape[0] != 1
            or tensor.shape[2] != dim
            or not 1 <= tensor.shape[1] <= tokens
        ):
            got = f"{tensor.dtype} {shape}" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise InputError(f"{name} must be a float tensor [1, T <= {tokens}, {dim}], got {got}")
        if not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{name} holds NaN or infinite values")
        return tensor.detach()

    # ------------------------------------------------------------------ running

    @torch.no_grad()
    def run_requests(
        self,
        requests: Sequence[GenerationRequest],
        sinks: Sequence[Sink | None] | None = None,
        *,
        overlap_media: bool = False,
    ) -> list[GenerationOutput]:
        """Run prepared requests as one batch; one :class:`GenerationOutput` per request, in order.

        The text of every row is decoded together (:func:`nextgpt.decoding.decode_rows`); then each
        modality's media of all rows are rendered in one decoder call per set of decoder options,
        each item with its own seed (or, with ``overlap_media``, each item in a worker thread as
        soon as its signal run completes). A row without media is complete when its text ends: its
        ``"done"`` event comes then, while the other rows go on. ``sinks[b]`` (``None``: none) gets
        row ``b``'s :class:`~nextgpt.outputs.StreamEvent` objects as they happen, from this thread (and, with
        ``overlap_media``, from the media worker: it must be thread-safe); a sink's exception ends
        the call. Holds :attr:`generation_lock` throughout.
        """
        from nextgpt.decoding import Row, decode_rows

        requests = list(requests)
        if not requests or not all(isinstance(r, GenerationRequest) for r in requests):
            raise InputError(
                "run_requests needs a non-empty list of GenerationRequest (from prepare_request)"
            )
        sink_list = list(sinks) if sinks is not None else [None] * len(requests)
        if len(sink_list) != len(requests):
            raise InputError(f"{len(sink_list)} sinks for {len(requests)} requests")
        with self.generation_lock:
            self.eval()
            self.llm.set_lora_merged(True)  # inference: one matmul per projection instead of three
            rows = [
                Row(self, req, sink, b) for b, (req, sink) in enumerate(zip(requests, sink_list, strict=True))
            ]
            prompts, bound = [], []
            for row in rows:
                ids = row.req.input_ids.unsqueeze(0).to(self.device)  # (1, L)
                if self.is_bind:  # ImageBind-LLM: no media tokens, one feature injected per row
                    prompts.append(self.llm.embed(ids)[0])
                    bound.append(self.bind_row(row.req.slots, row.req.media_weights))
                else:
                    prompts.append(self.embed_inputs(ids, self.encode_media(row.req.slots))[0])  # (L, H)
                self._report(row, ProgressEvent("text", row=row.row))
            injection = torch.stack(bound).unsqueeze(1) if bound else None  # (B, 1, H)
            rendered: dict[tuple[int, int], list] = {}
            finished: dict[int, GenerationOutput] = {}

            def on_end(row: Row) -> None:  # an answer without media is complete now
                if not row.runs:
                    finished[row.row] = self._finish(row, rendered)

            worker = ThreadPoolExecutor(1, thread_name_prefix="nextgpt-media") if overlap_media else None
            futures: list[Future] = []
            try:
                on_run = None
                if worker is not None:

                    def on_run(row: Row, index: int, run: SignalRun) -> None:
                        futures.append(worker.submit(self._render_in_worker, [(row, index, run)], rendered))

                decode_rows(self, prompts, rows, on_run, on_end, injection=injection)
                for future in futures:
                    future.result()
            finally:
                if worker is not None:
                    for future in futures:
                        future.cancel()
                    worker.shutdown(wait=True)
            if worker is None:
                items = [(row, i, run) for row in rows for i, run in enumerate(row.runs)]
                groups: dict[tuple, list] = {}
                for item in items:
                    opts = item[0].req.decoder_options[item[2].modality]
                    groups.setdefault((item[2].modality, tuple(sorted(opts.items()))), []).append(item)
                for group in groups.values():
                    self._render(group, rendered)
            return [finished[row.row] if row.row in finished else self._finish(row, rendered) for row in rows]

    def _finish(self, row: Row, rendered: dict[tuple[int, int], list]) -> GenerationOutput:
        row.stream_text(final=True)
        text = row.text() if row.req.want_text else ""
        out = GenerationOutput(text=text, token_ids=row.tokens, finish_reason=row.finish_reason)
        for i, run in enumerate(row.runs):
            if (row.row, i) in rendered:
                out.add(run.modality, rendered[(row.row, i)], self.decoders[run.modality].media_rate)
        if self.llm.layout.tag_ids and not row.req.cancelled:
            self._render_prompts(row, out)
        if row.seg_states and not row.req.cancelled:
            self._segment(row, out)
        row.emit(StreamEvent("done", row.row, output=out))
        return out

    def _render_prompts(self, row: Any, out: GenerationOutput) -> None:
        """LLMBind task prompts: each tagged span of the answer's tokens, rendered by its pipeline."""
        from nextgpt.task_prompts import spans_from_ids

        spans = spans_from_ids(row.tokens, self.llm.layout.tag_ids, self.processor.decode)
        allowed = {m.value for m in row.req.allowed} | {"edit"}
        for k, span in enumerate(s for s in spans if s.task in allowed):
            out.prompts.append(span)  # an empty span renders unconditionally: what the LLM wrote
            seed = None if row.req.seed is None else row.req.seed + k
            if span.task == "edit":
                image = self._first_input_image(row.req)
                if image is None:
                    logger.warning("row %d: <edit> without an input image: nothing to edit", row.row)
                    continue
                edited = self._edit_pipeline().edit(
                    image, span.text, seed=seed, **self._edit_options(row.req)
                )
                out.add(Modality.IMAGE, [edited])
                continue
            pipe = self._prompt_pipeline(span.task)
            opts = {k: v for k, v in row.req.prompt_options.items() if k in pipe.accepted_options()}
            media = pipe.render([span.text], seed=seed, **opts)
            out.add(Modality(span.task), media, pipe.media_rate())

    def _segment(self, row: Any, out: GenerationOutput) -> None:
        """LLMBind ``<seg>``: one mask of the input image per ``<seg>`` the answer wrote."""
        image = self._first_input_image(row.req)
        head = self.segmentation
        if image is None or head is None:
            return
        with torch.no_grad():
            logits = head(torch.stack(row.seg_states).float(), head.prepare(image))
        threshold = self.config.model.segmentation.mask_threshold
        out.masks = [m.cpu().numpy() > threshold for m in logits]
        out.mask_image = image

    def embed_to_image(
        self,
        inputs: object,
        *,
        modality_weights: Sequence[float] | None = None,
        prompt: str = "",
        noise_level: int | None = None,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        height: int | None = None,
        width: int | None = None,
        seed: int | None = None,
    ) -> GenerationOutput:
        """ImageBind -> image without training (ImageBind-LLM section 3.3): one image from the
        ImageBind embedding of ``inputs`` through SD unCLIP (``model.unclip.path``).

        ``inputs``: one item or a list of them, any modality: images, :class:`~nextgpt.Audio`,
        :class:`~nextgpt.Video`, paths, and strings (encoded by ImageBind's text encoder, so
        ``"a dog barking"`` is text -> image). Several items are combined as the bind path combines
        them (each L2-normalised; ``modality_weights`` divided by their sum, else equal weights),
        then cache-enhanced when ``model.visual_cache`` is set and their modalities are listed there,
        and scaled to unit norm. The other arguments default to ``model.unclip``.

        Returns:
            a :class:`GenerationOutput` holding the image (``out.images[0]``; no text).

        Raises:
            ConfigError: no ``model.unclip.path``. InputError: bad inputs or weights.
        """
        from nextgpt import validate as check
        from nextgpt.processor import parse_inputs

        cfg = self.config.model.unclip
        decoder = self._unclip()
        turns = parse_inputs(inputs)
        parts = [p for t in turns if t.role == "user" for p in t.parts]
        if not parts:
            raise InputError("embed_to_image needs at least one input (media or text)")
        if modality_weights is not None and len(modality_weights) != len(parts):
            raise InputError(f"modality_weights has {len(modality_weights)} weights for {len(parts)} inputs")
        weights = (
            [
                check.check_real(f"modality_weights[{i}]", w, low=-100.0, high=100.0)
                for i, w in enumerate(modality_weights)
            ]
            if modality_weights is not None
            else [1.0] * len(parts)
        )
        total = sum(weights)
        if abs(total) < 1e-6:
            raise InputError(f"modality_weights sum to {total:g}: they must not cancel")
        cache = self.visual_cache
        wanted = {Modality.parse(m) for m in self.config.model.visual_cache.modalities}
        combined = None
        with torch.no_grad():
            for part, weight in zip(parts, weights):
                if isinstance(part, str):
                    modality, embed = Modality.TEXT, self.encoder.encode(Modality.TEXT, [part]).embeds
                else:
                    modality = part.modality
                    embed = self.encoder(modality, self.encoder.preprocess(modality, [part.value])).embeds
                embed = embed.float()
                if cache is not None and modality in wanted:
                    embed = cache.enhance(embed)
                embed = embed / embed.norm(dim=-1, keepdim=True).clamp(min=1e-12)
                term = (weight / total) * embed
                combined = term if combined is None else combined + term
            assert combined is not None
            combined = combined / combined.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            image = decoder.render(
                combined,
                prompt=prompt,
                noise_level=cfg.noise_level
                if noise_level is None
                else check.check_int("noise_level", noise_level, low=0, high=decoder.max_noise_level),
                guidance_scale=cfg.guidance_scale
                if guidance_scale is None
                else check.check_real("guidance_scale", guidance_scale, low=0.0),
                num_inference_steps=cfg.num_inference_steps
                if num_inference_steps is None
                else check.check_int("num_inference_steps", num_inference_steps, low=1, high=1000),
                height=height,
                width=width,
                seed=check.check_seed(seed),
            )[0]
        out = GenerationOutput(finish_reason="stop")
        out.add(Modality.IMAGE, [image])
        return out

    def _unclip(self) -> Any:
        from nextgpt.config import resolve_path
        from nextgpt.decoders.unclip import UnCLIPDecoder

        cfg = self.config.model.unclip
        path = resolve_path(cfg.path, "model.unclip.path")
        if path is None:
            raise ConfigError("embed_to_image needs an SD unCLIP folder: set model.unclip.path")
        cached = self.__dict__.get("_unclip_decoder")
        if cached is None or cached.path != Path(path):
            from nextgpt.dtypes import torch_dtype

            cached = UnCLIPDecoder(
                path, device=str(self.device), dtype=torch_dtype(cfg.dtype, "model.unclip.dtype")
            )
            self.__dict__["_unclip_decoder"] = cached
        return cached

    def set_task_pipeline(self, task: str, path: str | os.PathLike) -> None:
        """Render ``task``'s prompts (``image``, ``audio``, ``video`` or ``edit``) with the diffusers
        pipeline folder at ``path`` from now on: the decoder is swapped without retraining (the LLM's
        tags and prompts stay the model's; the config, and so a later ``save_pretrained``, records
        the new folder). The task must be one the model was built with (``model.task_prompts``)."""
        if task not in self.llm.layout.tag_ids:
            have = ", ".join(self.llm.layout.tag_ids) or "none"
            raise ConfigError(f"this model has no task prompt {task!r} (model.task_prompts: {have})")
        with self.generation_lock:
            setattr(self.config.model.task_prompts, task, os.fspath(path))
            self.__dict__.setdefault("_prompt_pipelines", {}).pop(task, None)

    def _prompt_pipeline(self, task: str) -> Any:
        from nextgpt.config import resolve_path
        from nextgpt.task_prompts import PromptPipeline

        cache = self.__dict__.setdefault("_prompt_pipelines", {})
        if task not in cache:
            path = resolve_path(getattr(self.config.model.task_prompts, task), f"model.task_prompts.{task}")
            assert path is not None  # a tag exists only for a configured task
            cache[task] = PromptPipeline(path, task, device=str(self.device))
        return cache[task]

    def _edit_pipeline(self) -> Any:
        from nextgpt.task_prompts import EditPipeline

        cache = self.__dict__.setdefault("_prompt_pipelines", {})
        if "edit" not in cache:
            from nextgpt.config import resolve_path

            path = resolve_path(self.config.model.task_prompts.edit, "model.task_prompts.edit")
            if path is None:  # the <edit> tag exists only with a configured folder
                raise ConfigError("model.task_prompts.edit is not set: no editing pipeline")
            cache["edit"] = EditPipeline(path, device=str(self.device))
        return cache["edit"]

    @staticmethod
    def _edit_options(req: GenerationRequest) -> dict[str, Any]:
        return {k: v for k, v in req.prompt_options.items() if k in ("num_inference_steps", "guidance_scale")}

    @staticmethod
    def _first_input_image(req: GenerationRequest) -> Any:
        from nextgpt.mediaio import load_image

        for slot in req.slots:
            for item in slot if isinstance(slot, list) else [slot]:
                if getattr(item, "modality", None) is Modality.IMAGE:
                    return load_image(item.value)
        return None

    def _report(self, row: Row, event: ProgressEvent) -> None:
        if row.req.progress is not None:
            row.req.progress(event)
        row.emit(StreamEvent("progress", row.row, progress=event))

    def _render_in_worker(self, items: list, rendered: dict[tuple[int, int], list]) -> None:
        with torch.no_grad():  # grad mode is per thread
            self._render(items, rendered)

    def _render(self, items: list[tuple[Row, int, SignalRun]], rendered: dict[tuple[int, int], list]) -> None:
        """Media of ``items`` (one modality, one set of decoder options) in one decoder call: item
        ``(row, i, run)`` is that row's media item ``i``, seeded with ``seed + i``."""
        from nextgpt.validate import derived_seed

        items = [item for item in items if not item[0].req.cancelled]
        if not items:
            return
        modality = items[0][2].modality
        opts = dict(items[0][0].req.decoder_options[modality])
        decoder = self.residency.acquire(modality)
        try:
            cond = self.project_outputs(
                modality, torch.stack([run.states for _, _, run in items])
            )  # (N, Q, C)
            seeds = [derived_seed(row.req.seed, i) for row, i, _ in items]
            seed_arg: int | list[int] | None = None
            if any(s is not None for s in seeds):  # unseeded items of a mixed batch draw a seed
                drawn = [s if s is not None else int(torch.randint(0, 2**62, ())) for s in seeds]
                seed_arg = drawn[0] if len(drawn) == 1 else drawn
            negatives = [row.req.negatives.get(modality) for row, _, _ in items]
            negative = None
            if any(n is not None for n in negatives):
                negative = torch.cat([self._negative_embedding(decoder, n) for n in negatives])
            watched = [
                (row, i) for row, i, _ in items if row.sink is not None or row.req.progress is not None
            ]
            callback = None
            if watched:
                total = int(opts.get("num_inference_steps") or decoder.num_inference_steps)
                for row, i in watched:
                    self._report(row, ProgressEvent("decode", modality, i, 0, total, row=row.row))

                def callback(step: int, num_steps: int) -> None:
                    for row, i in watched:
                        self._report(row, ProgressEvent("step", modality, i, step, num_steps, row=row.row))

            if negative is not None:
                opts["negative"] = negative
            if callback is not None:
                opts["callback"] = callback
            media = decoder.generate(cond, seed=seed_arg, **opts)
        finally:
            self.residency.release(modality)
        for (row, i, _), item in zip(items, media, strict=True):
            rendered[(row.row, i)] = [item]
            row.emit(
                StreamEvent("media", row.row, modality=modality, index=i, media=item, rate=decoder.media_rate)
            )

    @staticmethod
    def _negative_embedding(decoder: Decoder, negative: str | torch.Tensor | None) -> torch.Tensor:
        """One item's negative conditioning ``[1, tokens, dim]`` on the decoder's device."""
        if negative is None:
            return decoder.negative_conditioning(1)
        if isinstance(negative, str):
            return decoder.encode_captions([negative])
        return decoder.prepare_conditioning(negative, name="negative_conditioning")

    def _stops(self, stop: Sequence[str] | str | None) -> tuple[str, ...]:
        from nextgpt.validate import check_stops

        return tuple(dict.fromkeys([*self.processor.stop_strings, *check_stops(stop)]))

    def _parse_modalities(self, modalities):
        from collections.abc import Iterable, Mapping

        available = set(self.output_modalities) | set(self.config.model.prompt_modalities)
        if modalities is None:
            return available, [], True
        if isinstance(modalities, (str, Modality)):
            modalities = [modalities]
        elif not isinstance(modalities, Iterable) or isinstance(modalities, (bytes, bytearray, Mapping)):
            raise InputError(
                "modalities must be None, a modality name or a list of them (text, image, audio, "
                f"video), got {type(modalities).__name__}"
            )
        parsed = [Modality.parse(m) for m in modalities]
        for m in parsed:
            if m is not Modality.TEXT and m not in available:
                raise ConfigError(
                    f"this model cannot produce {m.value}; it has decoders for "
                    f"{', '.join(x.value for x in sorted(available, key=lambda x: x.value)) or 'nothing'}"
                )
        media = [m for m in parsed if m is not Modality.TEXT]
        return set(media), list(dict.fromkeys(media)), Modality.TEXT in parsed

    @staticmethod
    def _pick(logits: torch.Tensor, banned: torch.Tensor, sampling) -> int:
        """The next token: greedy, or sampled at ``temperature`` within nucleus ``top_p``.

        ``sampling`` is ``(do_sample, temperature, top_p, generator[, top_k])`` as checked by
        :meth:`prepare_request` (temperature 0 or a normal positive float, top_p in (0, 1], top_k 0
        for all). Sampling runs in float64 on logits shifted so that the best is 0: any such
        temperature then scales them without overflow (the best token keeps probability > 0), so
        ``multinomial`` always gets a valid distribution."""
        do_sample, temperature, top_p, gen = sampling[:4]
        top_k = sampling[4] if len(sampling) > 4 else 0
        logits = logits.float().clone()
        logits[banned] = float("-inf")
        if not do_sample or temperature == 0:
            return int(logits.argmax())
        if 0 < top_k < logits.numel():
            kth = logits.topk(top_k).values[-1]
            logits[logits < kth] = float("-inf")
        logits = logits.double()
        probs = torch.softmax((logits - logits.max()) / temperature, dim=-1)
        if top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < top_p  # smallest prefix reaching top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


__all__ = ["GenerationMixin", "GenerationRequest"]
