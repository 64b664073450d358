"""The ``llava`` format (LLaVA instruction data): ``[{id, image, conversations: [{from, value}]}]``,
the image at the ``<image>`` placeholder (at the start of the first human turn when there is none).
See :mod:`nextgpt.stages.data.convert`."""

from __future__ import annotations

import re

from nextgpt.modality import Modality

from ..schema import ConversationRecord, RecordTurn
from .common import MALFORMED, _Ctx, _dict, _Problem, _role, _split_at, _text, _turn_list

_LLAVA_TAG = re.compile(r"<image>")


def _llava(item: object, index: int, ctx: _Ctx) -> ConversationRecord:
    item = _dict(item)
    turns = _turn_list(item, "conversations", "conversation")
    images = item.get("image")
    images = [] if images in (None, "") else images if isinstance(images, list) else [images]
    roles = [_role(t, i) for i, t in enumerate(turns)]
    values = [_text(t.get("value", ""), f"turn {i} 'value'") for i, t in enumerate(turns)]
    n_tags = sum(len(_LLAVA_TAG.findall(v)) for v, r in zip(values, roles) if r == "user")
    if images and n_tags == 0:
        first = roles.index("user") if "user" in roles else None
        if first is None:
            raise _Problem(MALFORMED, "an image but no human turn")
        values[first] = "<image>" * len(images) + "\n" + values[first]
        n_tags = len(images)
    if n_tags != len(images):
        raise _Problem(MALFORMED, f"{n_tags} <image> placeholder(s) for {len(images)} image(s)")
    blobs = [ctx.media.load(name, Modality.IMAGE) for name in images]
    out: list[RecordTurn] = []
    k = 0
    for i, (role, value) in enumerate(zip(roles, values)):
        if role == "user":
            n = len(_LLAVA_TAG.findall(value))
            parts = _split_at(value, _LLAVA_TAG, blobs[k : k + n])
            k += n
        else:
            parts = [value.strip()] if value.strip() else []
        if not parts:
            raise _Problem(MALFORMED, f"turn {i} is empty")
        out.append(RecordTurn(role, parts))
    return ConversationRecord(str(item.get("id") or f"llava_{index}"), out, source="llava")
