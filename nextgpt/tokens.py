"""The tokens nextgpt adds to an LLM's vocabulary, and where they land.

Added, in this order, after the base vocabulary (the order of the released NExT-GPT weights,
REFERENCE.md 1.2, so legacy ids 32000-32037 line up):

1. media wrappers ``<Img>`` ``</Img>`` (legacy template only),
2. signal tokens ``[IMG0..]``, ``[VID0..]``, ``[AUD0..]`` (counts from the config),
3. one input placeholder per media modality, ``<image>`` ``<audio>`` ``<video>``: each media slot in
   a prompt is one or more placeholder tokens whose embeddings are replaced by projected features.

The placeholders come last so a legacy checkpoint's ``[32038, H]`` rows map onto the first rows; the
placeholder rows themselves are never read (their positions are overwritten before the LLM runs) and
their logits are always suppressed when decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nextgpt.modality import Modality

#: Prefix of each modality's signal tokens: [IMG0], [AUD0], [VID0].
SIGNAL_PREFIX = {Modality.IMAGE: "IMG", Modality.AUDIO: "AUD", Modality.VIDEO: "VID"}
#: Order in which signal runs are added (legacy: image, video, audio).
SIGNAL_ORDER = (Modality.IMAGE, Modality.VIDEO, Modality.AUDIO)
PLACEHOLDER = {Modality.IMAGE: "<image>", Modality.AUDIO: "<audio>", Modality.VIDEO: "<video>"}
WRAPPERS = ("<Img>", "</Img>")


def signal_token_strings(modality: Modality, count: int) -> list[str]:
    """The ``count`` signal token strings of ``modality``: ``[IMG0]``, ``[IMG1]``, ..."""
    return [f"[{SIGNAL_PREFIX[modality]}{i}]" for i in range(count)]


SEG_TOKEN = "<seg>"


def added_token_strings(
    signal_counts: dict[Modality, int],
    media_wrappers: bool,
    task_tags: tuple[str, ...] = (),
    seg: bool = False,
) -> list[str]:
    """Every token string nextgpt adds, in id order (LLMBind task tags and ``<seg>``, when used, last)."""
    from nextgpt.task_prompts import TASK_TAGS

    tokens = list(WRAPPERS) if media_wrappers else []
    for m in SIGNAL_ORDER:
        if signal_counts.get(m):
            tokens += signal_token_strings(m, signal_counts[m])
    tokens += [PLACEHOLDER[m] for m in (Modality.IMAGE, Modality.AUDIO, Modality.VIDEO)]
    for task in task_tags:
        tokens += list(TASK_TAGS[task])
    return tokens + ([SEG_TOKEN] if seg else [])


@dataclass(frozen=True)
class TokenLayout:
    """Ids of the added tokens. ``base_vocab`` rows precede them (ids ``>= base_vocab`` are new)."""

    base_vocab: int
    signal_ids: dict[Modality, tuple[int, ...]]
    placeholder_ids: dict[Modality, int]
    wrapper_ids: tuple[int, int] | None = None
    eos_ids: tuple[int, ...] = field(default=())
    #: LLMBind task -> (opening tag id, closing tag id)
    tag_ids: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: LLMBind's ``<seg>`` (its hidden state prompts the mask decoder), when segmentation is on
    seg_id: int | None = None

    @property
    def num_new(self) -> int:
        """Number of added tokens: signal tokens, placeholders and (when used) the two wrappers."""
        return (
            sum(len(v) for v in self.signal_ids.values())
            + len(self.placeholder_ids)
            + (2 if self.wrapper_ids else 0)
            + 2 * len(self.tag_ids)
            + (self.seg_id is not None)
        )

    @property
    def vocab_size(self) -> int:
        """Base vocabulary plus the added tokens."""
        return self.base_vocab + self.num_new

    def all_signal_ids(self) -> set[int]:
        """The signal token ids of every modality."""
        return {i for ids in self.signal_ids.values() for i in ids}

    def never_generated(self) -> set[int]:
        """Ids the LLM must never emit as text: placeholders and wrappers."""
        ids = set(self.placeholder_ids.values())
        if self.wrapper_ids:
            ids |= set(self.wrapper_ids)
        return ids

    def special_ids(self) -> set[int]:
        """Every added id: stripped from returned text."""
        return (
            self.all_signal_ids()
            | self.never_generated()
            | {i for pair in self.tag_ids.values() for i in pair}
        )

    @classmethod
    def build(
        cls,
        base_vocab: int,
        signal_counts: dict[Modality, int],
        media_wrappers: bool,
        eos_ids=(),
        task_tags: tuple[str, ...] = (),
        seg: bool = False,
    ) -> TokenLayout:
        """Assign ids from ``base_vocab`` on in the order :func:`added_token_strings` adds the tokens:
        wrappers (if any), signal runs in :data:`SIGNAL_ORDER`, then the placeholders."""
        next_id = base_vocab
        wrapper_ids = None
        if media_wrappers:
            wrapper_ids = (next_id, next_id + 1)
            next_id += 2
        signal_ids: dict[Modality, tuple[int, ...]] = {}
        for m in SIGNAL_ORDER:
            n = signal_counts.get(m, 0)
            if n:
                signal_ids[m] = tuple(range(next_id, next_id + n))
                next_id += n
        placeholder_ids = {}
        for m in (Modality.IMAGE, Modality.AUDIO, Modality.VIDEO):
            placeholder_ids[m] = next_id
            next_id += 1
        tag_ids = {}
        for task in task_tags:
            tag_ids[task] = (next_id, next_id + 1)
            next_id += 2
        seg_id = next_id if seg else None
        return cls(base_vocab, signal_ids, placeholder_ids, wrapper_ids, tuple(eos_ids), tag_ids, seg_id)
