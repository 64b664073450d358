"""The ``mosit`` format (NExT-GPT's MosIT data; field names as in the upstream repository):
``{image_list|video_list|audio_list: [{<mod>_name, data_source, caption}], conversation: [{from,
value}]}`` with media inline as ``<Image>name</Image>``, ``<Video>..``, ``<Audio>..``; media of human
turns are inputs, media of gpt turns outputs captioned from the lists.
See :mod:`nextgpt.stages.data.convert`."""

from __future__ import annotations

import re

from nextgpt.modality import MEDIA_MODALITIES, Modality

from ..schema import ConversationRecord, RecordTurn
from .common import MALFORMED, _caption_only, _Ctx, _dict, _Problem, _role, _split_at, _text, _turn_list

_MOSIT_TAG = re.compile(r"<(image|video|audio)>\s*(.*?)\s*</\1>", re.I | re.S)


def _mosit(item: object, index: int, ctx: _Ctx) -> ConversationRecord:
    item = _dict(item)
    listed: dict[tuple[Modality, str], dict] = {}
    for m in MEDIA_MODALITIES:
        entries = item.get(f"{m.value}_list") or []
        if not isinstance(entries, list):
            raise _Problem(MALFORMED, f"'{m.value}_list' must be a list")
        for e in entries:
            if isinstance(e, dict):
                name = e.get(f"{m.value}_name") or e.get("name")
                if isinstance(name, str):
                    listed[(m, name.strip())] = e
    out: list[RecordTurn] = []
    for i, turn in enumerate(_turn_list(item, "conversation", "conversations")):
        role = _role(turn, i)
        value = _text(turn.get("value", ""), f"turn {i} 'value'")
        blobs = []
        for match in _MOSIT_TAG.finditer(value):
            modality, name = Modality(match.group(1).lower()), match.group(2)
            entry = listed.get((modality, name), {})
            caption = entry.get("caption") if isinstance(entry.get("caption"), str) else None
            extra = (entry.get("data_source") if isinstance(entry.get("data_source"), str) else None,)
            if role == "user":
                blobs.append(ctx.media.load(name, modality, caption=caption, extra_dirs=extra))
                continue
            if not caption or not caption.strip():
                raise _Problem(
                    MALFORMED, f"turn {i}: output {modality.value} {name!r} has no caption in the lists"
                )
            blob = ctx.media.load(
                name, modality, caption=caption, required=ctx.require_output_media, extra_dirs=extra
            )
            blobs.append(blob or _caption_only(modality, name, caption))
        parts = _split_at(value, _MOSIT_TAG, blobs)
        if not parts:
            raise _Problem(MALFORMED, f"turn {i} is empty")
        out.append(RecordTurn(role, parts))
    return ConversationRecord(str(item.get("id") or f"mosit_{index}"), out, source="mosit")
