"""Generation: :meth:`NextGPT.generate` and its decoding loop, as a mixin of :class:`~nextgpt.NextGPT`.

The loop (:meth:`GenerationMixin._decode`) is our own: it feeds one token at a time with the KV
cache, forces and completes signal runs, suppresses unrequested media, stops at EOS and stop strings,
and collects each run's states (final hidden state + input embedding, REFERENCE.md 1.2) for the
output projectors. The mixin uses the model's parts (``llm``, ``processor``, ``decoders``,
``encode_media``, ``embed_inputs``, ``project_outputs``) and nothing else of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from nextgpt.errors import ConfigError, InputError
from nextgpt.modality import Modality
from nextgpt.outputs import GenerationOutput, ProgressEvent
from nextgpt.processor import parse_inputs
from nextgpt.records import SignalRun

if TYPE_CHECKING:
    from nextgpt.config import NextGPTConfig
    from nextgpt.decoders.base import Decoder
    from nextgpt.llm import LanguageModel
    from nextgpt.processor import MediaItem, Processor

#: Progress logging with ``progress=True`` goes to the model's logger, where users filter for it.
logger = logging.getLogger("nextgpt.model")


def _stop_index(text: str, stops) -> int | None:
    """Where the earliest of ``stops`` begins in ``text`` (``None``: none occurs)."""
    hits = [i for i in (text.find(stop) for stop in stops if stop) if i >= 0]
    return min(hits) if hits else None


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


class GenerationMixin:
    """``generate`` and its decoding loop; mixed into :class:`~nextgpt.NextGPT`."""

    if TYPE_CHECKING:  # what the mixin uses of the model (NextGPT sets or defines each)
        config: NextGPTConfig
        llm: LanguageModel
        processor: Processor
        decoders: dict[Modality, Decoder]

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
    def context_length(self) -> int:
        """The LLM's context length in tokens (``max_position_embeddings``): the bound of
        ``max_new_tokens``."""
        hf_config = getattr(getattr(self.llm, "model", None), "config", None)
        context = getattr(hf_config, "max_position_embeddings", None)
        return int(context or self.config.model.llm.max_position_embeddings)

    @torch.no_grad()
    def generate(
        self,
        inputs: object,
        modalities: Sequence[str | Modality] | None = None,
        *,
        max_new_tokens: int = 128,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        audio_length_in_s: float | None = None,
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
            do_sample: sample the text (a bool); greedy when False or when ``temperature`` is 0.
            temperature: 0 or a finite normal float > 0 (negative, NaN, inf and subnormal values
                are refused).
            top_p: nucleus sampling mass, in ``(0, 1]``.
            stop: strings that end the answer (not returned), besides EOS and the template's own
                (``vicuna_v0``: ``###``, as the legacy code stops): a list of non-empty str, or one
                str (a single stop string, not a set of characters).
            seed: makes sampling and diffusion reproducible; an int in ``[0, 2**64 - 1]`` (media
                item ``i`` of the call uses ``seed + i``, wrapping inside that range).
            num_inference_steps: denoising steps of each decoder, in ``[1, 500]``. This and the
                decoder options below default to each decoder's config; a decoder ignores the
                options it does not take (``Decoder.OPTIONS``).
            guidance_scale: classifier-free guidance, in ``[0, 100]``.
            height: image/video height, a multiple of 8 in ``[8, 2048]``.
            width: image/video width, a multiple of 8 in ``[8, 2048]``.
            num_frames: video frames, in ``[1, 256]``.
            audio_length_in_s: audio length in seconds, in ``[0.05, 60]``.
            progress: ``False`` (default): no reports; ``True``: log each diffusion step at INFO on
                the ``nextgpt.model`` logger (``"<modality> diffusion step <k>/<n>"``); a callable:
                ``progress(event)`` with a :class:`~nextgpt.outputs.ProgressEvent` when the LLM
                starts (``"text"``), when each media item starts decoding (``"decode"``) and after
                each of its diffusion steps (``"step"``), as diffusers' ``callback_on_step_end``;
                its return value is ignored and an exception it raises ends the call.

        Every argument is checked before any work starts (see :mod:`nextgpt.validate`): a bad value
        raises :class:`~nextgpt.errors.InputError` naming it and its valid range.
        """
        from nextgpt import validate as check

        max_new_tokens = check.check_int("max_new_tokens", max_new_tokens, low=1, high=self.context_length)
        do_sample = check.check_bool("do_sample", do_sample)
        temperature = check.check_temperature(temperature)
        top_p = check.check_real("top_p", top_p, low=0.0, high=1.0, low_open=True)
        stops = self._stops(stop)
        seed = check.check_seed(seed)
        progress = check.check_progress(progress)
        dec_kwargs = check.check_decoder_options(
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
        report = _progress_reporter(progress)
        self.eval()
        self.llm.set_lora_merged(True)  # inference: one matmul per projection instead of three
        enc = self.processor.encode(parse_inputs(inputs), add_generation_prompt=True)
        ids = enc.input_ids.unsqueeze(0).to(self.device)  # (1, L)
        embeds = self.embed_inputs(ids, self.encode_media(enc.slots))
        gen = torch.Generator(device=self.device)
        if seed is not None:
            gen.manual_seed(seed)
        if report is not None:
            report(ProgressEvent("text"))
        tokens, runs = self._decode(
            embeds,
            allowed=allowed,
            forced=forced,
            want_text=want_text,
            max_new_tokens=max_new_tokens,
            sampling=(do_sample, temperature, top_p, gen),
            stops=stops,
        )
        out = GenerationOutput(text=self.processor.decode(tokens) if want_text else "", token_ids=tokens)
        for i, run in enumerate(runs):
            cond = self.project_outputs(run.modality, run.states.unsqueeze(0))  # (1, Q, C)
            media = self._decode_media(run.modality, cond, check.derived_seed(seed, i), dec_kwargs, report, i)
            out.add(run.modality, media, self.decoders[run.modality].media_rate)
        return out

    def _stops(self, stop: Sequence[str] | str | None) -> tuple[str, ...]:
        from nextgpt.validate import check_stops

        return tuple(dict.fromkeys([*self.processor.stop_strings, *check_stops(stop)]))

    def _parse_modalities(self, modalities):
        from collections.abc import Iterable, Mapping

        available = set(self.output_modalities)
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
                    f"{', '.join(x.value for x in self.output_modalities) or 'nothing'}"
                )
        media = [m for m in parsed if m is not Modality.TEXT]
        return set(media), list(dict.fromkeys(media)), Modality.TEXT in parsed

    def _decode(self, embeds, *, allowed, forced, want_text, max_new_tokens, sampling, stops=()):
        """Greedy/sampled decoding with signal-token control and stop strings. Returns (token ids,
        signal runs); the ids end before the stop string that ended the answer."""
        layout = self.llm.layout
        first_of = {ids[0]: m for m, ids in layout.signal_ids.items()}
        banned = set(layout.never_generated())
        for m, ids in layout.signal_ids.items():
            banned |= set(ids[1:])  # only the first token of a run may be chosen freely
            if m not in allowed:
                banned.add(ids[0])
        banned_t = torch.tensor(sorted(banned), device=self.device, dtype=torch.long)
        eos = set(layout.eos_ids)

        out = self.llm(embeds, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
        tokens: list[int] = []
        runs: list[SignalRun] = []
        produced: set[Modality] = set()
        queue: list[int] = []  # forced tokens (rest of a run)
        run_mod: Modality | None = None
        run_states: list[torch.Tensor] = []

        def feed(token: int) -> torch.Tensor:
            nonlocal past, logits
            emb = self.llm.embed(torch.tensor([[token]], device=self.device))
            o = self.llm(emb, past_key_values=past, use_cache=True)
            past, logits = o.past_key_values, o.logits[:, -1]
            return o.hidden[0, -1] + emb[0, -1]

        budget = max_new_tokens if want_text else 0
        while True:
            if queue:
                token = queue.pop(0)
            elif len(tokens) >= budget:
                break
            else:
                token = self._pick(logits[0], banned_t, sampling)
                if token in eos:
                    break
            tokens.append(token)
            if token in first_of:
                run_mod = first_of[token]
                queue = list(layout.signal_ids[run_mod][1:])
            elif (
                run_mod is None
                and stops
                and (at := _stop_index(self.processor.decode(tokens), stops)) is not None
            ):
                while tokens and len(self.processor.decode(tokens)) > at:
                    tokens.pop()  # the stop string (and any token reaching into it) is not returned
                break
            state = feed(token) if (queue or run_mod is not None or len(tokens) < budget) else None
            if run_mod is not None and state is not None:  # a run in progress is always fed
                run_states.append(state)
                if not queue:
                    runs.append(SignalRun(run_mod, torch.stack(run_states)))
                    produced.add(run_mod)
                    run_mod, run_states = None, []
        for m in forced:  # requested media the LLM did not emit: append its run
            if m in produced:
                continue
            run_ids = list(layout.signal_ids[m])
            emb = self.llm.embed(torch.tensor([run_ids], device=self.device))
            o = self.llm(emb, past_key_values=past, use_cache=True)
            past = o.past_key_values
            tokens += run_ids
            runs.append(SignalRun(m, o.hidden[0] + emb[0]))
        return tokens, runs

    @staticmethod
    def _pick(logits: torch.Tensor, banned: torch.Tensor, sampling) -> int:
        """The next token: greedy, or sampled at ``temperature`` within nucleus ``top_p``.

        ``sampling`` is ``(do_sample, temperature, top_p, generator)`` as checked by :meth:`generate`
        (temperature 0 or a normal positive float, top_p in (0, 1]). Sampling runs in float64 on
        logits shifted so that the best is 0: any such temperature then scales them without
        overflow (the best token keeps probability > 0), so ``multinomial`` always gets a valid
        distribution."""
        do_sample, temperature, top_p, gen = sampling
        logits = logits.float().clone()
        logits[banned] = float("-inf")
        if not do_sample or temperature == 0:
            return int(logits.argmax())
        logits = logits.double()
        probs = torch.softmax((logits - logits.max()) / temperature, dim=-1)
        if top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < top_p  # smallest prefix reaching top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))

    def _decode_media(self, modality, cond, seed, kwargs, report=None, index=0):
        """Media item ``index`` of the call from conditioning ``cond``: the decoder gets the options
        of ``kwargs`` it declares (``Decoder.OPTIONS``); the others are ignored (logged at DEBUG)."""
        decoder = self.decoders[modality]
        opts, dropped = decoder.take_options(kwargs)
        if dropped:
            logger.debug("%s decoder ignores %s", modality.value, dropped)
        if report is None:
            return decoder.generate(cond, seed=seed, **opts)
        total = int(opts.get("num_inference_steps") or decoder.num_inference_steps)
        report(ProgressEvent("decode", modality, index, 0, total))

        def on_step(step: int, num_steps: int) -> None:
            report(ProgressEvent("step", modality, index, step, num_steps))

        return decoder.generate(cond, seed=seed, **opts, callback=on_step)


__all__ = ["GenerationMixin"]
