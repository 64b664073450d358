"""The ``llmbind`` format (LLMBind's interactive generation and editing dialogues, the
``LanguageBind/LLMBind-GPT-Interactive-Data`` JSON files): ``[{image?, conversations: [{from,
value}]}]`` -> conversations whose assistant text keeps the task tags (``<gen> .. </gen>``,
``<edit> .. </edit>``, ``<vid_cap> .. </vid_cap>``, ``<aud_cap> ..``) as plain text; an optional input
image at the ``<image>`` placeholder (:func:`_llmbind` says where these facts come from).
See :mod:`nextgpt.stages.data.convert`."""

from __future__ import annotations

import re

from nextgpt.modality import Modality
from nextgpt.task_prompts import TASK_TAGS

from ..schema import ConversationRecord, MediaBlob, RecordTurn
from .common import MALFORMED, _Ctx, _dict, _Problem, _role, _text, _turn_list

_IMAGE_TAG = re.compile(r"<image>")
#: The folder LLMBind resolves ``image`` names under (relative to its dataset folder), and the prefix
#: its loader strips from names that already carry it.
_IMAGE_ROOT = "coco/train2017"


#: LLMBind's docs end audio prompts with this tag, its model code with ``</aud_cap>``
_AUDIO_END_UPSTREAM = "</audio_cap>"


def _llmbind(item: object, index: int, ctx: _Ctx) -> ConversationRecord:
    """An LLMBind interactive record -> a conversation; the task tags stay in the text verbatim.

    Format facts (read from public sources, nothing copied):

    * PKU-YuanGroup/LLMBind ``README.md``: the interactive data is published on Hugging Face as
      ``LanguageBind/LLMBind-GPT-Interactive-Data`` and sits in ``llmbind_dataset/interactive_dataset/``
      as ``interactive_generation_and_editing_format.json`` and ``interactive_{image,video,audio}_t2x_format
      .json``; ``TRAIN.md`` and ``docs/TRAIN_EVAL.md`` train on them (older names
      ``gpt_interactive_generation_and_editing_format``, ``{audio,image,video}_t2x_format``) through the
      ``vqa`` dataset, i.e. with the LLaVA-style loader.
    * ``utils/vqa_dataset.py`` (that loader): each file is a JSON list; a record's turns are
      ``conversations``, a list of ``{from, value}`` with ``from`` ``human`` or ``gpt``; a first turn that
      is not from ``human`` is dropped, and the rest must alternate human / gpt. ``image`` is optional
      (records without it get a blank image); when present it is one name joined to
      ``<dataset dir>/coco/train2017`` after removing a leading ``coco/train2017/``. An ``<image>``
      placeholder in a turn is moved to the start of that turn. No record id is read.
    * ``TRAIN.md`` / ``docs/TRAIN_EVAL.md`` list the task tokens the model is taught to emit:
      ``<gen>``/``</gen>`` (image generation), ``<edit>``/``</edit>`` (image editing),
      ``<vid_cap>``/``</vid_cap>`` (video), and ``<aud_cap>`` with the end token spelled
      ``</audio_cap>`` there; the text between them is a prompt for an external generator or editor
      (``chat.py``), not media, so no output media is written.

    Assumptions (the JSON itself is not in the repository): the files follow exactly the layout the
    loader reads; an editing record may have no ``image`` (the edit then refers to an image generated in
    an earlier turn) and is kept as text; the one tag spelling upstream is inconsistent about,
    ``</audio_cap>``, is written as ``</aud_cap>`` (the closing tag :mod:`nextgpt.task_prompts` parses),
    other tags pass through as written; ``id`` is used when a record has one, else
    ``llmbind_<index>``.

    Turns: user and assistant in the upstream order, the text stripped. With an ``image`` the user turn
    holding the single ``<image>`` placeholder becomes ``[image, text without the placeholder]`` (the
    first user turn when there is no placeholder). The image is looked up as ``DIR/<name>``,
    ``DIR/coco/train2017/<name>``, ``DIR/images/<name>`` (``<name>`` without a leading
    ``coco/train2017/``). Malformed (counted, skipped): ``conversations`` not a non-empty list of
    objects, a role other than human/gpt, turns that do not alternate, a ``value`` that is not a string or
    is empty, ``image`` not a non-empty string, ``<image>`` without an ``image``, more than one
    ``<image>``, or one in a gpt turn, no gpt turn.
    """
    item = _dict(item)
    turns = _turn_list(item, "conversations", "conversation")
    roles = [_role(t, i) for i, t in enumerate(turns)]
    values = [_text(t.get("value", ""), f"turn {i} 'value'") for i, t in enumerate(turns)]
    if roles[0] != "user":  # the upstream loader drops a leading gpt turn
        roles, values = roles[1:], values[1:]
    for i, role in enumerate(roles):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise _Problem(MALFORMED, f"turn {i}: turns must alternate human / gpt, got {role} after {role}")
    if "assistant" not in roles:
        raise _Problem(MALFORMED, "no gpt turn")
    tagged = [i for i, v in enumerate(values) for _ in _IMAGE_TAG.finditer(v)]
    for i in tagged:
        if roles[i] == "assistant":
            raise _Problem(MALFORMED, f"turn {i}: <image> in a gpt turn")
    if len(tagged) > 1:
        raise _Problem(MALFORMED, f"{len(tagged)} <image> placeholders; a record has at most one image")
    image = item.get("image")
    blob: MediaBlob | None = None
    if image is not None:
        if not isinstance(image, str) or not image.strip():
            raise _Problem(MALFORMED, f"'image' must be a non-empty string, got {image!r}")
        name = image.strip()
        name = name[len(_IMAGE_ROOT) + 1 :] if name.startswith(_IMAGE_ROOT + "/") else name
        blob = ctx.media.load(name, Modality.IMAGE, extra_dirs=(_IMAGE_ROOT,))
    elif tagged:
        raise _Problem(MALFORMED, f"turn {tagged[0]}: <image> placeholder but no 'image'")
    at = tagged[0] if tagged else 0
    out: list[RecordTurn] = []
    for i, (role, value) in enumerate(zip(roles, values)):
        text = _IMAGE_TAG.sub("", value).strip() if i == at and blob is not None else value.strip()
        if role == "assistant":
            text = text.replace(_AUDIO_END_UPSTREAM, TASK_TAGS["audio"][1])
        parts: list[str | MediaBlob] = [text] if text else []
        if i == at and blob is not None:
            parts.insert(0, blob)
        if not parts:
            raise _Problem(MALFORMED, f"turn {i} is empty")
        out.append(RecordTurn(role, parts))
    rid = item.get("id")
    rid = str(rid) if isinstance(rid, (str, int)) and str(rid) else f"llmbind_{index}"
    return ConversationRecord(rid, out, source="llmbind")
