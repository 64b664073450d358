"""Turn user inputs into token ids with media placeholders, and back.

Inputs (:func:`parse_inputs`): a string, a media item (``PIL.Image.Image``, ``pathlib.Path`` to a
media file, :class:`~nextgpt.media.Audio`, :class:`~nextgpt.media.Video`), a list of such parts (one
user turn), or chat messages ``[{"role": "user" | "assistant", "content": part | [parts]}]``. A plain
``str`` is always text: file paths typed into a prompt are never opened (pass ``Path`` objects or
media wrappers instead).

Templates (:class:`Processor`), chosen by ``model.llm.template``:

* ``vicuna_v0`` — the legacy NExT-GPT format (REFERENCE.md 1.2): ``### Human: <Img>[media]</Img>
  text\\n### Assistant:``; assistant turns end with ``\\n###``; at inference every text segment gets
  its own BOS, as the released model saw it.
* ``vicuna_v1`` — FastChat's v1 format: system line, ``USER: ... ASSISTANT: ...</s>``.
* ``chat_template`` — the tokenizer's own chat template (SmolLM2).

Each media slot becomes ``tokens_per_item`` placeholder tokens (one per projected token); media in
assistant turns (training targets) become that modality's signal-token run. The rendered string is
tokenised once; labels mark assistant spans via the tokenizer's offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from nextgpt.errors import InputError
from nextgpt.media import Audio, Video
from nextgpt.modality import Modality
from nextgpt.tokens import PLACEHOLDER, WRAPPERS, TokenLayout, signal_token_strings

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
    role: str  # "user" | "assistant"
    parts: list[str | MediaItem] = field(default_factory=list)

    def media(self) -> list[MediaItem]:
        return [p for p in self.parts if isinstance(p, MediaItem)]

    def text(self) -> str:
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


class Processor:
    """Render conversations with the configured template and tokenise them.

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
        if template not in ("vicuna_v0", "vicuna_v1", "chat_template"):
            raise InputError(f"unknown template {template!r}")
        if template == "chat_template" and not getattr(tokenizer, "chat_template", None):
            raise InputError("template 'chat_template' needs a tokenizer with a chat template")
        self.tokenizer = tokenizer
        self.layout = layout
        self.template = template
        self.tokens_per_item = tokens_per_item
        self.media_wrappers = media_wrappers
        self.sum_items = sum_items
        self._reserved = [PLACEHOLDER[m] for m in PLACEHOLDER] + list(WRAPPERS)

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
        ph = PLACEHOLDER[m] * self.tokens_per_item
        return f"{WRAPPERS[0]}{ph}{WRAPPERS[1]}" if self.media_wrappers else ph

    def _checked(self, text: str) -> str:
        for tok in self._reserved:
            if tok in text:
                raise InputError(f"text contains the reserved token {tok!r}; pass media as parts instead")
        return text

    def _content(self, turn: Turn, sep: str) -> str:
        pieces = []
        for slot in self.slots(turn):
            if isinstance(slot, str):
                pieces.append(self._checked(slot))
            else:
                pieces.append(self._slot_text(slot, turn.role))
        return sep.join(p for p in pieces if p)

    # ---------------------------------------------------------------- templates

    def render(self, turns: list[Turn], *, add_generation_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
        """The prompt string and the character spans that are training targets (assistant turns)."""
        if not turns:
            raise InputError("empty conversation")
        if self.template == "chat_template":
            return self._render_chat_template(turns, add_generation_prompt)
        bos = self.tokenizer.bos_token or ""
        if self.template == "vicuna_v0":
            return self._render_v0(turns, bos, add_generation_prompt)
        text, spans = "", []
        for i, turn in enumerate(turns):  # vicuna_v1
            if i == 0:
                text += bos + VICUNA_V1_SYSTEM
            if turn.role == "user":
                text += " USER: " + self._content(turn, "\n") + " ASSISTANT:"
            else:
                start = len(text) + 1
                text += " " + self._content(turn, "\n") + (self.tokenizer.eos_token or "")
                spans.append((start, len(text)))
        return text, spans

    def _render_v0(self, turns: list[Turn], bos: str, inference: bool) -> tuple[str, list[tuple[int, int]]]:
        """Legacy format. Training: one BOS, ``### Human: <Img>..</Img> text\n### Assistant: `` then the
        target and ``\n###``. Inference (the released demo): every text segment starts with its own
        BOS and media slots sit between segments without spaces."""
        text, spans = bos, []
        for i, turn in enumerate(turns):
            if turn.role == "assistant":
                start = len(text)
                text += self._content(turn, " ") + "\n###"
                spans.append((start, len(text)))
                continue
            head = "### Human: " if i == 0 else "Human: "
            if inference:
                pieces, prefix = [], head.rstrip()
                for slot in self.slots(turn):
                    if isinstance(slot, str):
                        sep = " " if prefix and prefix != bos else ""
                        prefix += sep + self._checked(slot).strip()
                    else:
                        if prefix:
                            pieces.append(prefix)
                        pieces.append(self._slot_text(slot, "user"))
                        prefix = bos
                body = "".join(pieces) + prefix
                text += body[len(bos) :] if (i == 0 and body.startswith(bos)) else body
                text += "\n### Assistant:"
                if i < len(turns) - 1:
                    text += " "
            else:
                text += head + self._content(turn, " ") + "\n### Assistant: "
        return text, spans

    def _render_chat_template(self, turns: list[Turn], add_generation_prompt: bool):
        msgs = [{"role": t.role, "content": self._content(t, "\n")} for t in turns]
        apply = self.tokenizer.apply_chat_template
        spans = []
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                start = len(apply(msgs[:i], tokenize=False, add_generation_prompt=True)) if i else 0
                spans.append((start, len(apply(msgs[: i + 1], tokenize=False))))
        text = apply(
            msgs, tokenize=False, add_generation_prompt=add_generation_prompt and msgs[-1]["role"] == "user"
        )
        return text, spans

    # ---------------------------------------------------------------- tokenise

    def encode(self, inputs: object, *, add_generation_prompt: bool = True) -> Encoded:
        """Token ids (+ labels) of a conversation, and its input media in placeholder order."""
        turns = (
            inputs
            if isinstance(inputs, list) and inputs and isinstance(inputs[0], Turn)
            else parse_inputs(inputs)
        )
        text, spans = self.render(turns, add_generation_prompt=add_generation_prompt)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor(enc["input_ids"], dtype=torch.long)
        labels = torch.full_like(ids, IGNORE_INDEX)
        for k, (a, b) in enumerate(enc["offset_mapping"]):
            if any(s <= a and b <= e and b > a for s, e in spans):
                labels[k] = ids[k]
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
