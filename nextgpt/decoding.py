"""The batched text loop behind ``generate``, ``generate_batch``, ``stream`` and ``run_requests``.

Several conversations decode together: their prompts are left-padded into one batch (a per-row
attention mask and per-row positions, so each row computes what it would alone), then one token per
row is fed per step with the KV cache. Each row keeps its own state (:class:`Row`): its tokens, the
signal run it is in, the runs it completed, its sampling generator and the text it has streamed. A
row that ends (EOS, its token budget, a stop string, a cancel) leaves the batch: its rows of the KV
cache, mask and positions are dropped, so the remaining rows run as a smaller batch until every row
has ended.

Per-row rules are those :meth:`nextgpt.NextGPT.generate` documents: signal runs are completed once
their first token is chosen, runs of unrequested modalities are suppressed, requested ones the LLM
did not emit are appended after its text, and the states of every run (final hidden state + input
embedding, REFERENCE.md 1.2) are collected for the output projectors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from nextgpt.modality import Modality
from nextgpt.outputs import StreamEvent
from nextgpt.records import SignalRun

if TYPE_CHECKING:
    from nextgpt.generation import GenerationRequest

logger = logging.getLogger("nextgpt.model")

#: A function of one event (a request's stream sink).
Sink = Callable[[StreamEvent], object]


def stop_index(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest of ``stops`` begins in ``text`` (``None``: none occurs)."""
    hits = [i for i in (text.find(stop) for stop in stops if stop) if i >= 0]
    return min(hits) if hits else None


def streamable(text: str, stops: Sequence[str]) -> str:
    """The part of ``text`` that can be streamed now: without a trailing incomplete character (the
    tokenizer's replacement character for a partial UTF-8 sequence) and without a trailing piece that
    could still grow into a stop string (it would be cut from the answer, with the spaces before
    it)."""
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:n]):
                hold = n
                break
    # what is left may end in spaces the final answer strips if it ended there
    return text[: len(text) - hold].rstrip() if hold else text


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Repetition penalty (CTRL, Keskar et al. 2019, as transformers and vLLM apply it): the logit of
    every token in ``seen`` is divided by ``penalty`` when positive and multiplied by it when not."""
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


class Row:
    """One conversation's decoding state."""

    def __init__(self, model: Any, req: GenerationRequest, sink: Sink | None, row: int) -> None:
        layout = model.llm.layout
        self.model, self.req, self.sink, self.row = model, req, sink, row
        self.layout = layout
        self.first_of = {ids[0]: m for m, ids in layout.signal_ids.items()}
        banned = set(layout.never_generated())
        for m, ids in layout.signal_ids.items():
            banned |= set(ids[1:])  # only the first token of a run may be chosen freely
            if m not in req.allowed:
                banned.add(ids[0])
        # LLMBind task tags: a prompt modality not allowed never opens its tag
        self.tag_of = {pair[0]: task for task, pair in layout.tag_ids.items()}
        for task, (open_id, _) in layout.tag_ids.items():
            if task != "edit" and Modality(task) not in req.allowed:
                banned.add(open_id)
        if layout.seg_id is not None and not any(
            getattr(item, "modality", None) is Modality.IMAGE for slot in req.slots for item in slot
        ):
            banned.add(layout.seg_id)  # <seg> segments an input image: none, no <seg>
        self.seg_states: list[torch.Tensor] = []  # hidden states at the <seg> tokens
        self.prompt_task: str | None = None  # a forced task prompt being written
        self.prompt_left = 0
        self.prompt_body: list[int] = []
        device = model.device
        self.banned = torch.tensor(sorted(banned), device=device, dtype=torch.long)
        self.banned_eos = torch.tensor(sorted(banned | set(layout.eos_ids)), device=device, dtype=torch.long)
        self.eos = set(layout.eos_ids)
        self.generator = torch.Generator(device=device)
        if req.seed is not None:
            self.generator.manual_seed(req.seed)
        self.budget = req.max_new_tokens if req.want_text else 0
        self.tokens: list[int] = []
        self.queue: list[int] = []  # forced tokens (the rest of a run)
        self.run_mod: Modality | None = None
        self.run_states: list[torch.Tensor] = []
        self.runs: list[SignalRun] = []
        self.produced: set[Modality] = set()
        self.pending: list[Modality] | None = None  # forced runs left once the text has ended
        self.done = False
        self.finish_reason = "length"
        self.emitted = ""  # text streamed so far
        self._text: str | None = None  # processor.decode(tokens), until tokens change
        self.seen: torch.Tensor | None = None
        if req.repetition_penalty != 1.0:
            self.seen = torch.zeros(layout.vocab_size, dtype=torch.bool, device=device)
            prompt = req.input_ids[req.input_ids < layout.base_vocab]
            self.seen[prompt.to(device)] = True

    # ---------------------------------------------------------------- events

    def text(self) -> str:
        """The answer's text so far (decoded once per change of the tokens: the stop check and the
        stream both read it)."""
        if self._text is None:
            self._text = self.model.processor.decode(self.tokens)
        return self._text

    def emit(self, event: StreamEvent) -> None:
        """Pass ``event`` to the row's sink (if any)."""
        if self.sink is not None:
            self.sink(event)

    def stream_text(self, final: bool = False) -> None:
        """Send the text that became safe to show since the last call (all of it when ``final``)."""
        if self.sink is None or not self.req.want_text:
            return
        text = self.text()
        if not final:
            text = streamable(text, self.req.stops)
        if len(text) > len(self.emitted) and text.startswith(self.emitted):
            self.emit(StreamEvent("text", self.row, text=text[len(self.emitted) :]))
            self.emitted = text
        elif final and not text.startswith(self.emitted):  # the tokenizer re-spaced earlier text
            logger.debug(
                "row %d: streamed text %r is not a prefix of the answer %r", self.row, self.emitted, text
            )

    # ---------------------------------------------------------------- choosing

    def _end_text(self, reason: str) -> None:
        if self.pending is None:
            self.finish_reason = reason
            self.pending = [m for m in self.req.forced if m not in self.produced]

    def _pick(self, logits: torch.Tensor, banned: torch.Tensor | None = None) -> int:
        req = self.req
        if self.seen is not None:
            logits = penalize(logits.float(), self.seen, req.repetition_penalty)
        if banned is None:
            banned = self.banned_eos if len(self.tokens) < req.min_new_tokens else self.banned
        sampling = (req.do_sample, req.temperature, req.top_p, self.generator, req.top_k)
        return int(self.model._pick(logits, banned, sampling))

    def _pick_in_prompt(self, logits: torch.Tensor) -> int:
        """A token of a forced task prompt: no EOS and no other tag opens inside it, and it does not
        close before it holds some text."""
        extra = set(self.layout.eos_ids) | set(self.tag_of)
        if self.prompt_task is not None and not self.model.processor.decode(self.prompt_body).strip():
            extra.add(self.layout.tag_ids[self.prompt_task][1])
        more = torch.tensor(sorted(extra), device=self.banned.device, dtype=torch.long)
        return self._pick(logits, torch.cat([self.banned, more]))

    def _next(self, logits: torch.Tensor) -> int | None:
        if self.queue:
            return self.queue.pop(0)
        if self.prompt_task is not None:  # a forced task prompt: free text until its closing tag
            close = self.layout.tag_ids[self.prompt_task][1]
            token = close if self.prompt_left <= 0 or self.req.cancelled else self._pick_in_prompt(logits)
            self.prompt_left -= 1
            if token == close:
                self.prompt_task = None
            else:
                self.prompt_body.append(token)
            return token
        if self.pending is None:  # the text phase
            if self.req.cancelled:
                self._end_text("cancelled")
                self.pending = []
            elif len(self.tokens) >= self.budget:
                self._end_text("length")
            else:
                token = self._pick(logits)
                if token not in self.eos:
                    return token
                self._end_text("stop")
        if self.pending and not self.req.cancelled:  # requested media the LLM did not emit
            m = self.pending.pop(0)
            if m.value in self.layout.tag_ids:  # a prompt modality: its tag, then the LLM's prompt
                self.prompt_task = m.value
                self.prompt_left = self.model.config.model.task_prompts.max_prompt_tokens
                self.prompt_body = []
                self.produced.add(m)
                return self.layout.tag_ids[m.value][0]
            ids = list(self.layout.signal_ids[m])
            self.queue = ids[1:]
            return ids[0]
        self.done = True
        return None

    def choose(self, logits: torch.Tensor) -> int | None:
        """The token to feed next (``None``: the row has ended). ``logits``: this row's last logits."""
        while True:
            token = self._next(logits)
            if token is None:
                return None
            self.tokens.append(token)
            self._text = None
            if self.seen is not None:
                self.seen[token] = True
            if token in self.tag_of and self.tag_of[token] != "edit":
                self.produced.add(Modality(self.tag_of[token]))  # a task prompt the LLM opened itself
            if self.run_mod is None and token in self.first_of:
                self.run_mod = self.first_of[token]
                if not self.queue:
                    self.queue = list(self.layout.signal_ids[self.run_mod][1:])
            elif (
                self.run_mod is None
                and self.pending is None
                and self.req.stops
                and (at := stop_index(self.text(), self.req.stops)) is not None
            ):
                while self.tokens and len(self.text()) > at:
                    self.tokens.pop()  # the stop string (and any token reaching into it) is not returned
                    self._text = None
                self._end_text("stop")
                continue  # forced runs, if any, follow
            return token

    def needs_feed(self) -> bool:
        """Whether the token just chosen must be fed (the row may go on after it)."""
        if self.queue or self.run_mod is not None or self.prompt_task is not None:
            return True
        if self.tokens and self.tokens[-1] == self.layout.seg_id:
            return True  # its hidden state comes from feeding it
        if self.pending is None:
            return len(self.tokens) < self.budget or any(m not in self.produced for m in self.req.forced)
        return bool(self.pending)

    def fed(self, state: torch.Tensor) -> SignalRun | None:
        """Record the state of the token just fed; returns the run it completed, if any."""
        if self.run_mod is None:
            return None
        self.run_states.append(state)
        if self.queue:
            return None
        run = SignalRun(self.run_mod, torch.stack(self.run_states))
        self.runs.append(run)
        self.produced.add(self.run_mod)
        self.run_mod, self.run_states = None, []
        self.emit(StreamEvent("signal", self.row, modality=run.modality, index=len(self.runs) - 1))
        return run


def decode_rows(
    model: Any,
    prompts: Sequence[torch.Tensor],
    rows: Sequence[Row],
    on_run: Callable[[Row, int, SignalRun], None] | None = None,
    on_end: Callable[[Row], None] | None = None,
    *,
    injection: torch.Tensor | None = None,
) -> None:
    """Decode every row to its end. ``prompts[b]``: row ``b``'s prompt embeddings ``[L_b, H]``;
    ``injection [B, 1, H]``: row ``b``'s ImageBind-LLM feature, added to every layer's input at each
    of its tokens (it follows the row as ended rows leave the batch).

    ``on_run(row, index, run)`` is called as soon as a row completes a signal run (media can start
    decoding while the text goes on); ``on_end(row)`` as soon as a row has ended (its answer can be
    sent while the other rows go on)."""
    device = model.device
    lengths = [int(p.shape[0]) for p in prompts]
    width = max(lengths)
    padded = len(set(lengths)) > 1
    embeds = prompts[0].new_zeros(len(rows), width, prompts[0].shape[-1])
    for b, p in enumerate(prompts):
        embeds[b, width - lengths[b] :] = p
    mask = positions = next_pos = None
    if padded:  # left padding: each row's positions start at 0 where its prompt starts
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        for b, n in enumerate(lengths):
            mask[b, width - n :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        next_pos = torch.tensor(lengths, device=device).unsqueeze(1)
    out = model.llm(embeds, attention_mask=mask, position_ids=positions, use_cache=True, injection=injection)
    past, logits = out.past_key_values, out.logits[:, -1]
    live = list(range(len(rows)))  # batch position -> row
    while True:
        feed: list[int | None] = []
        for pos, b in enumerate(live):
            row = rows[b]
            before = len(row.tokens)
            token = row.choose(logits[pos])
            if token is not None and not row.needs_feed():
                row.done, token = True, None  # its last token: nothing follows it
            feed.append(token)
            if len(row.tokens) != before:
                row.stream_text()
            if token is None and on_end is not None:
                on_end(row)
        keep = [pos for pos, token in enumerate(feed) if token is not None]
        if not keep:  # every row has ended
            break
        if len(keep) < len(live):  # rows that ended leave the batch (and the KV cache)
            index = torch.tensor(keep, device=device)
            past.batch_select_indices(index)
            if padded:
                assert mask is not None and next_pos is not None
                mask, next_pos = mask[index], next_pos[index]
            if injection is not None:
                injection = injection[index]
            live = [live[pos] for pos in keep]
        ids = torch.tensor([[feed[pos]] for pos in keep], device=device)
        emb = model.llm.embed(ids)  # (B', 1, H)
        if padded:
            assert mask is not None and next_pos is not None
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            positions, next_pos = next_pos, next_pos + 1
        o = model.llm(
            emb,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=past,
            use_cache=True,
            injection=injection,
        )
        past, logits = o.past_key_values, o.logits[:, -1]
        states = o.hidden[:, -1] + emb[:, -1]  # (B', H)
        seg_id = model.llm.layout.seg_id
        for pos, b in enumerate(live):
            if seg_id is not None and feed[keep[pos]] == seg_id:
                rows[b].seg_states.append(o.hidden[pos, -1])  # LLMBind: the <seg> output hidden state
            run = rows[b].fed(states[pos])
            if run is not None and on_run is not None:
                on_run(rows[b], len(rows[b].runs) - 1, run)


__all__ = ["Row", "Sink", "decode_rows", "penalize", "stop_index", "streamable"]
