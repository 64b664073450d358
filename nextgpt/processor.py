r"""Turn user inputs into token ids with media placeholders, and back.

Inputs (:func:`parse_inputs`): a string, a media item (``PIL.Image.Image``, ``pathlib.Path`` to a
media file, :class:`~nextgpt.media.Audio`, :class:`~nextgpt.media.Video`), a list of such parts (one
user turn), or chat messages ``[{"role": "user" | "assistant", "content": part | [parts]}]``. A plain
``str`` is always text: file paths typed into a prompt are never opened (pass ``Path`` objects or
media wrappers instead).

Templates (:class:`Processor`), chosen by ``model.llm.template``:

* ``vicuna_v0`` — the legacy NExT-GPT format (REFERENCE.md 1.2): ``### Human: <Img>[media]</Img>
  text\n### Assistant:``; assistant turns end with ``\n###``; at inference every text segment gets
  its own BOS, as the released model saw it.
* ``vicuna_v1`` — FastChat's v1 format: system line, ``USER: ... ASSISTANT: ...</s>``.
* ``chat_template`` — the tokenizer's own chat template (SmolLM2).

Each media slot becomes ``tokens_per_item`` placeholder tokens (one per projected token); media in
assistant turns (training targets) become that modality's signal-token run. The rendered string is
tokenised once; labels mark assistant spans via the tokenizer's offsets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nextgpt.errors import InputError
from nextgpt.media import Audio, Video
from nextgpt.modality import Modality
from nextgpt.tokens import PLACEHOLDER, WRAPPERS, TokenLayout, signal_token_strings
from nextgpt.validate import check_text

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
AUDIO_EXTS = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".opus"}
VIDEO_EXTS = {".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v"}

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
IGNORE_INDEX = -100


@dataclass(frozen=True, eq=False)
class MediaItem:
    """One media part of a message. ``value`` is what the preprocessing reads."""

    modality: Modality
    value: object


@dataclass
class Turn:
    """One message of a conversation: its role and its parts (text strings and media items), in order."""

    role: str  # "user" | "assistant"
    parts: list[str | MediaItem] = field(default_factory=list)

    def media(self) -> list[MediaItem]:
        """The media parts, in order."""
        return [p for p in self.parts if isinstance(p, MediaItem)]

    def text(self) -> str:
        """The text parts joined without separators."""
        return "".join(p for p in self.parts if isinstance(p, str))


def to_media_item(part: object) -> MediaItem:
    """Classify one non-text part; raise ``InputError`` for anything unusable."""
    from PIL import Image

    if isinstance(part, MediaItem):
        return part
    if isinstance(part, Image.Image):
        return MediaItem(Modality.IMAGE, part)
    if isinstance(part, Audio):
        return MediaItem(Modality.AUDIO, part)
    if isinstance(part, Video):
        return MediaItem(Modality.VIDEO, part)
    if isinstance(part, Path):
        ext = part.suffix.lower()
        if ext in IMAGE_EXTS:
            return MediaItem(Modality.IMAGE, part)
        if ext in AUDIO_EXTS:
            return MediaItem(Modality.AUDIO, Audio(part))
        if ext in VIDEO_EXTS:
            return MediaItem(Modality.VIDEO, Video(part))
        known = ", ".join(sorted(IMAGE_EXTS | AUDIO_EXTS | VIDEO_EXTS))
        raise InputError(f"cannot tell the modality of '{part}' from its extension; known: {known}")
    raise InputError(
        f"unsupported input part of type {type(part).__name__}; use str (text), PIL.Image.Image, "
        "pathlib.Path, nextgpt.Audio or nextgpt.Video"
    )


def _parts(content: object) -> list[str | MediaItem]:
    items = content if isinstance(content, (list, tuple)) else [content]
    return [p if isinstance(p, str) else to_media_item(p) for p in items]


def parse_inputs(inputs: object) -> list[Turn]:
    """Normalise any accepted input form into a list of turns (the last one is the user's)."""
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(m, dict) for m in inputs):
        turns = []
        for i, msg in enumerate(inputs):
            role = msg.get("role")
            if role not in ("user", "assistant"):
                raise InputError(f"message {i}: role must be 'user' or 'assistant', got {role!r}")
            if "content" not in msg:
                raise InputError(f"message {i}: missing 'content'")
            turns.append(Turn(role, _parts(msg["content"])))
        return turns
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise InputError("empty input")
        return [Turn("user", _parts(list(inputs)))]
    return [Turn("user", _parts(inputs))]


@dataclass
class Encoded:
    """Token ids of one conversation. ``slots`` lists the input media slots in placeholder order; a
    slot holds one item, or several of one modality that the legacy projector sums into one token."""

    input_ids: torch.Tensor  # (L,)
    labels: torch.Tensor  # (L,) IGNORE_INDEX outside assistant spans
    slots: list[list[MediaItem]]
    outputs: list[list[MediaItem]] = field(default_factory=list)  # media in assistant turns (targets)


@dataclass
class Segment:
    """A piece of a rendered prompt: ``text`` (may hold nextgpt's added-token strings, which the
    renderer itself inserted), whether it is a training ``target``, and whether an own BOS id
    precedes it (``vicuna_v0``)."""

    text: str
    target: bool = False
    bos: bool = False


#: Stop strings each template ends an answer with (besides the tokenizer's EOS): the legacy code
#: stops on ``###`` (ids 835 ``▁###`` and 2277 29937 ``##`` ``#``); FastChat's ``vicuna_v1.1`` on
#: ``</s>`` (EOS); a chat template on its end-of-turn tokens (the generation config's EOS ids).
TEMPLATE_STOPS: dict[str, tuple[str, ...]] = {"vicuna_v0": ("###",), "vicuna_v1": (), "chat_template": ()}


class Processor:
    r"""Render conversations with the configured template and tokenise them exactly as the weights
    were trained.

    * ``vicuna_v1`` (FastChat ``vicuna_v1.1``, ``SeparatorStyle.ADD_COLON_TWO``): ``<s>SYSTEM USER: q
      ASSISTANT: a</s>USER: q2 ASSISTANT:``. Tokenised as one string (FastChat's training does);
      every token that overlaps an assistant reply (``a</s>``) is labelled, so the first reply token
      (``▁a``, which also covers the separator space) is trained.
    * ``vicuna_v0`` (the legacy NExT-GPT code): training pieces ``[BOS] "### Human: <Img>" media
      "</Img> " text "\n### Assistant: "`` (or ``"### Human: "`` then ``text + "\n### Assistant: "``
      without media), the target ``reply + signal run + "\n###"``, later turns ``"Human: " text
      "\n### Assistant: "``; each piece is tokenised by its own call, as transformers 4.29's slow
      LlamaTokenizer did for the released weights: text on either side of an added token is
      stripped of whitespace and every text chunk gets SentencePiece's dummy prefix. At inference,
      the released demo's prompt: ``"### Human: " media " " text`` (history turns ``"### Human: q\n###
      Assistant: a\n###"`` then ``" Human: ..."``) + ``"\n### Assistant:"``, split at the media,
      every text segment with its own BOS.
    * ``chat_template``: the tokenizer's own template, tokenised as one string.

    Signal runs follow the reply text directly (no separator token before them). Text may not hold
    any added or special token string (``[IMG0]``, ``<Img>``, ``<image>``, ``</s>``, ...): it would
    become the real token; :class:`~nextgpt.errors.InputError` names it.

    Args:
        tokenizer: the LLM tokenizer with nextgpt's tokens added.
        layout: ids of the added tokens.
        template: ``vicuna_v0`` | ``vicuna_v1`` | ``chat_template``.
        tokens_per_item: placeholder tokens per media item (the input projector's output length).
        media_wrappers: wrap media in ``<Img>..</Img>`` (legacy).
        sum_items: consecutive items of one modality in a turn share one slot (legacy linear projector).
    """

    def __init__(
        self,
        tokenizer,
        layout: TokenLayout,
        template: str,
        tokens_per_item: int,
        *,
        media_wrappers: bool = False,
        sum_items: bool = False,
    ) -> None:
        if template not in TEMPLATE_STOPS:
            raise InputError(f"unknown template {template!r}; valid: {', '.join(TEMPLATE_STOPS)}")
        if template == "chat_template" and not getattr(tokenizer, "chat_template", None):
            raise InputError("template 'chat_template' needs a tokenizer with a chat template")
        self.tokenizer = tokenizer
        self.layout = layout
        self.template = template
        self.tokens_per_item = tokens_per_item
        self.media_wrappers = media_wrappers
        self.sum_items = sum_items
        added = {str(t) for t in tokenizer.get_added_vocab()} | {str(t) for t in tokenizer.all_special_tokens}
        added |= {PLACEHOLDER[m] for m in PLACEHOLDER} | set(WRAPPERS)
        self._reserved = sorted((t for t in added if t), key=len, reverse=True)
        self._reserved_re = re.compile("|".join(re.escape(t) for t in self._reserved))
        # LLMBind task tags and <seg> are outputs: an assistant turn (training targets) may hold them
        tags = {t for pair in layout.tag_ids.values() for t in tokenizer.convert_ids_to_tokens(list(pair))}
        if layout.seg_id is not None:
            tags.add(tokenizer.convert_ids_to_tokens(layout.seg_id))
        reply_reserved = [t for t in self._reserved if t not in tags]
        self._reply_reserved_re = (
            re.compile("|".join(re.escape(t) for t in reply_reserved)) if reply_reserved else None
        )
        # nextgpt's own tokens, which the renderer inserts: split out before tokenising a v0 piece
        ours = [t for t in tokenizer.convert_ids_to_tokens(list(range(layout.base_vocab, layout.vocab_size)))]
        self._ours = {t: layout.base_vocab + i for i, t in enumerate(ours)}
        self._ours_re = re.compile(
            "(" + "|".join(re.escape(t) for t in sorted(ours, key=len, reverse=True)) + ")"
        )

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Strings that end an answer under this template (see :data:`TEMPLATE_STOPS`)."""
        return TEMPLATE_STOPS[self.template]

    # ---------------------------------------------------------------- pieces

    def slots(self, turn: Turn) -> list[str | list[MediaItem]]:
        """Text parts and media slots (a slot holds one item, or several summed ones)."""
        out: list[str | list[MediaItem]] = []
        for part in turn.parts:
            if isinstance(part, str):
                out.append(part)
            elif (
                self.sum_items and out and isinstance(out[-1], list) and out[-1][0].modality == part.modality
            ):
                out[-1].append(part)
            else:
                out.append([part])
        return out

    def _slot_text(self, slot: list[MediaItem], role: str) -> str:
        m = slot[0].modality
        if role == "assistant":  # an output: the modality's signal run
            counts = {k: len(v) for k, v in self.layout.signal_ids.items()}
            if m not in counts:
                raise InputError(f"this model cannot produce {m.value} (no signal tokens configured)")
            return "".join(signal_token_strings(m, counts[m]))
        if self.tokens_per_item == 0:  # ImageBind-LLM: the media are injected, not prompt tokens
            return ""
        ph = PLACEHOLDER[m] * self.tokens_per_item
        return f"{WRAPPERS[0]}{ph}{WRAPPERS[1]}" if self.media_wrappers else ph

    def _checked(self, text: str, role: str = "user") -> str:
        check_text(text)  # a lone surrogate ("\ud800") cannot reach the tokenizer: InputError
        pattern = (
            self._reply_reserved_re
            if role == "assistant"
            else (self._reserved_re if self._reserved else None)
        )
        found = pattern.search(text) if pattern is not None else None
        if found:
            raise InputError(
                f"text contains the reserved token {found.group(0)!r} (the string would become the real "
                "token); pass media as parts, and remove or alter the string in the text"
            )
        return text

    def _content(self, turn: Turn, sep: str) -> str:
        """The turn's text and media joined by ``sep``; an output's signal run follows the preceding
        text directly (no separator token before it)."""
        out = ""
        for slot in self.slots(turn):
            if isinstance(slot, str):
                piece, glue = self._checked(slot, turn.role), sep
            else:
                piece = self._slot_text(slot, turn.role)
                glue = "" if turn.role == "assistant" else sep
            if not piece:
                continue
            out = out + glue + piece if out else piece
        return out

    def _text_and_media(self, turn: Turn) -> tuple[str, list[str]]:
        """(the turn's text parts joined by spaces, the media slots' strings): the legacy layout puts
        a user turn's media first."""
        text = " ".join(
            self._checked(p, turn.role).strip() for p in self.slots(turn) if isinstance(p, str) and p.strip()
        )
        media = [self._slot_text(s, turn.role) for s in self.slots(turn) if isinstance(s, list)]
        return text, media

    # ---------------------------------------------------------------- templates

    def segments(self, turns: list[Turn], *, add_generation_prompt: bool) -> list[Segment]:
        """The rendered prompt as :class:`Segment` pieces (training targets marked)."""
        if not turns:
            raise InputError("empty conversation")
        if self.template == "chat_template":
            return self._chat_template(turns, add_generation_prompt)
        if self.template == "vicuna_v0":
            if add_generation_prompt and turns[-1].role == "user":
                return self._v0_inference(turns)
            return self._v0_training(turns)
        return self._v1(turns, add_generation_prompt)

    def render(self, turns: list[Turn], *, add_generation_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
        """The prompt as one string and the character spans of its training targets."""
        text, spans = "", []
        for seg in self.segments(turns, add_generation_prompt=add_generation_prompt):
            if seg.bos:
                text += self.tokenizer.bos_token or ""
            if seg.target:
                spans.append((len(text), len(text) + len(seg.text)))
            text += seg.text
        return text, spans

    def _v1(self, turns: list[Turn], add_generation_prompt: bool) -> list[Segment]:
        eos = self.tokenizer.eos_token or ""
        # BOS as an id before the text (FastChat tokenises with add_special_tokens): the system
        # line's first word then gets SentencePiece's dummy prefix (``▁A``), as in training.
        segs = [Segment(VICUNA_V1_SYSTEM + " ", bos=True)]
        for turn in turns:
            if turn.role == "user":
                segs.append(Segment("USER: " + self._content(turn, "\n") + " "))
            else:
                segs.append(Segment("ASSISTANT: "))
                segs.append(Segment(self._content(turn, "\n") + eos, target=True))
        if add_generation_prompt and turns[-1].role == "user":
            segs.append(Segment("ASSISTANT:"))
        return segs

    def _v0_training(self, turns: list[Turn]) -> list[Segment]:
        segs: list[Segment] = []
        for i, turn in enumerate(turns):
            if turn.role == "assistant":
                segs.append(Segment(self._content(turn, " ") + "\n###", target=True))
                continue
            text, media = self._text_and_media(turn)
            head = "### Human: " if i == 0 else "Human: "
            tail = text + "\n### Assistant: "
            if media:
                segs.append(Segment(head + " ".join(media) + " " + tail))
            elif i == 0:  # the legacy code tokenises its "### Human: " prefix by a call of its own
                segs += [Segment(head), Segment(tail)]
            else:
                segs.append(Segment(head + tail))
        segs[0].bos = True
        return segs

    def _v0_inference(self, turns: list[Turn]) -> list[Segment]:
        # The released demo's prompt string (history, then the new turn) with a marker per media tag,
        # split at the markers: the split takes one space on each side of a tag, and every text
        # segment starts with its own BOS (the demo's prepare_generation_embedding).
        media: list[str] = []

        def tags_and_text(turn: Turn) -> tuple[str, str]:
            text, slots = self._text_and_media(turn)
            tags = ""
            for slot in slots:
                tags += f"\x00{len(media)}\x00 "
                media.append(slot)
            return tags, text

        history, prompt = turns[:-1], ""
        for idx in range(0, len(history), 2):
            user, reply = history[idx], history[idx + 1] if idx + 1 < len(history) else None
            if user.role != "user" or reply is None or reply.role != "assistant":
                raise InputError("vicuna_v0 needs alternating user/assistant turns ending with a user turn")
            tags, text = tags_and_text(user)
            prompt += ("### Human: " if idx == 0 else " Human: ") + tags + text
            prompt += "\n### Assistant: " + self._text_and_media(reply)[0] + "\n###"
        tags, text = tags_and_text(turns[-1])
        prompt += ("### Human: " if not history else " Human: ") + tags + " " + text + "\n### Assistant:"
        pieces = re.split(r"\x00(\d+)\x00", prompt)  # text, index, text, index, ..., text
        segs: list[Segment] = []
        for k, piece in enumerate(pieces):
            if k % 2:
                segs.append(Segment(media[int(piece)]))
                continue
            if k > 0 and piece.startswith(" "):
                piece = piece[1:]
            if k + 1 < len(pieces) and piece.endswith(" "):
                piece = piece[:-1]
            if piece:
                segs.append(Segment(piece, bos=True))
        return segs

    def _chat_template(self, turns: list[Turn], add_generation_prompt: bool) -> list[Segment]:
        msgs = [{"role": t.role, "content": self._content(t, "\n")} for t in turns]
        apply = self.tokenizer.apply_chat_template
        segs, done = [], 0
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            start = len(apply(msgs[:i], tokenize=False, add_generation_prompt=True)) if i else 0
            end = len(apply(msgs[: i + 1], tokenize=False))
            whole = apply(msgs[: i + 1], tokenize=False)
            segs += [Segment(whole[done:start]), Segment(whole[start:end], target=True)]
            done = end
        text = apply(
            msgs, tokenize=False, add_generation_prompt=add_generation_prompt and msgs[-1]["role"] == "user"
        )
        if text[done:]:
            segs.append(Segment(text[done:]))
        return segs

    # ---------------------------------------------------------------- tokenise

    def _encode_piece(self, text: str) -> list[int]:
        """One legacy tokenizer call on ``text`` (transformers 4.29 slow LlamaTokenizer semantics):
        nextgpt's added tokens split out, the text beside them stripped of whitespace, every text
        chunk tokenised with the dummy prefix."""
        ids: list[int] = []
        parts = self._ours_re.split(text)
        for k, part in enumerate(parts):
            if k % 2:
                ids.append(self._ours[part])
                continue
            if k > 0:
                part = part.lstrip()
            if k + 1 < len(parts):
                part = part.rstrip()
            if part:
                ids += self.tokenizer(part, add_special_tokens=False)["input_ids"]
        return ids

    def encode(self, inputs: object, *, add_generation_prompt: bool = True) -> Encoded:
        """Token ids (+ labels) of a conversation, and its input media in placeholder order."""
        turns = (
            inputs
            if isinstance(inputs, list) and inputs and isinstance(inputs[0], Turn)
            else parse_inputs(inputs)
        )
        segs = self.segments(turns, add_generation_prompt=add_generation_prompt)
        if self.template == "vicuna_v0":  # one tokenizer call per piece, as the legacy code
            ids_list, lab_list = [], []
            for seg in segs:
                piece = ([self.tokenizer.bos_token_id] if seg.bos else []) + self._encode_piece(seg.text)
                ids_list += piece
                lab_list += piece if seg.target else [IGNORE_INDEX] * len(piece)
            ids = torch.tensor(ids_list, dtype=torch.long)
            labels = torch.tensor(lab_list, dtype=torch.long)
        else:  # one call on the whole string; a token is a target if it overlaps a target span
            if any(seg.bos for seg in segs[1:]):
                raise InputError(
                    f"template {self.template}: a BOS inside the prompt needs piecewise tokenisation"
                )
            text, spans = "", []
            for seg in segs:
                if seg.target:
                    spans.append((len(text), len(text) + len(seg.text)))
                text += seg.text
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            bos = (
                [self.tokenizer.bos_token_id]
                if segs[0].bos and self.tokenizer.bos_token_id is not None
                else []
            )
            ids = torch.tensor(bos + list(enc["input_ids"]), dtype=torch.long)
            labels = torch.full_like(ids, IGNORE_INDEX)
            for k, (a, b) in enumerate(enc["offset_mapping"]):
                if any(a < e and s < b for s, e in spans):
                    labels[len(bos) + k] = ids[len(bos) + k]
        slots, outputs = [], []
        for turn in turns:
            media_slots = [slot for slot in self.slots(turn) if isinstance(slot, list)]
            (slots if turn.role == "user" else outputs).extend(media_slots)
        self._check_placeholders(ids, slots)
        return Encoded(ids, labels, slots, outputs)

    def _check_placeholders(self, ids: torch.Tensor, slots: list[list[MediaItem]]) -> None:
        for m, pid in self.layout.placeholder_ids.items():
            found = int((ids == pid).sum())
            want = sum(1 for s in slots if s[0].modality == m) * self.tokens_per_item
            if found != want:
                raise InputError(
                    f"tokenised prompt has {found} {PLACEHOLDER[m]} placeholder tokens but {want} are needed "
                    f"for the {m.value} inputs (the tokenizer split or merged a placeholder)"
                )

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of generated ids, without signal, placeholder, wrapper or special tokens."""
        drop = self.layout.special_ids() | set(self.layout.eos_ids)
        keep = [int(i) for i in ids if int(i) not in drop]
        return self.tokenizer.decode(keep, skip_special_tokens=True).strip()
