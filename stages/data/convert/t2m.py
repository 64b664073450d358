"""The ``t2m`` format (NExT-GPT's ``{image,video,audio}_t2x.json``; field names as in the upstream
repository): ``{conversation: [{from, value, input_modality} | {from: "gpt", value, caption,
output_modality}], mm_name, source_data}`` -> conversations whose gpt turns produce ``mm_name`` with
that caption (the legacy T2M loader keys its caption embedding by ``mm_name``). The upstream
construction script names the field ``image_name``; the 2024 files use ``conversations`` and
``<mod>_caption_embeddings``: both are accepted. The output sits at an ``<image>``/``<video>``/``<audio>``
placeholder in the reply, else at its end. See :mod:`nextgpt.stages.data.convert`."""

from __future__ import annotations

import re

from nextgpt.modality import MEDIA_MODALITIES, Modality

from ..schema import ConversationRecord, RecordTurn
from .common import (
    MALFORMED,
    _caption_only,
    _Ctx,
    _dict,
    _nonempty,
    _Problem,
    _role,
    _split_at,
    _text,
    _turn_list,
)

_T2M_TAG = {m: re.compile(rf"<{m.value}>", re.I) for m in MEDIA_MODALITIES}


def _t2m(item: object, index: int, ctx: _Ctx) -> ConversationRecord:
    item = _dict(item)
    turns = _turn_list(item, "conversation", "conversations")
    mm_name = item.get("mm_name") or item.get("image_name")
    if not mm_name:
        for m in MEDIA_MODALITIES:
            embs = item.get(f"{m.value}_caption_embeddings")
            if isinstance(embs, list) and embs and isinstance(embs[0], str):
                mm_name = embs[0][: -len(".npy")] if embs[0].endswith(".npy") else embs[0]
                break
    out: list[RecordTurn] = []
    for i, turn in enumerate(turns):
        role = _role(turn, i)
        value = _text(turn.get("value", ""), f"turn {i} 'value'")
        if role == "user":
            if str(turn.get("input_modality", "text")).lower() != "text":
                raise _Problem(
                    MALFORMED, f"turn {i}: T2M user turns are text, got {turn.get('input_modality')!r}"
                )
            parts: list = [value.strip()] if value.strip() else []
        else:
            om = str(turn.get("output_modality") or "text").lower()
            if om == "text":
                parts = [value.strip()] if value.strip() else []
            else:
                try:
                    modality = Modality(om)
                except ValueError:
                    modality = None
                if modality not in MEDIA_MODALITIES:
                    raise _Problem(MALFORMED, f"turn {i}: unknown output_modality {om!r}")
                caption = _nonempty(turn.get("caption"), f"turn {i} 'caption'")
                if not isinstance(mm_name, str) or not mm_name.strip():
                    raise _Problem(MALFORMED, "missing 'mm_name' (the output media name)")
                blob = ctx.media.load(mm_name, modality, caption=caption, required=ctx.require_output_media)
                parts = _split_at(
                    value, _T2M_TAG[modality], [blob or _caption_only(modality, mm_name, caption)]
                )
        if not parts:
            raise _Problem(MALFORMED, f"turn {i} is empty")
        out.append(RecordTurn(role, parts))
    rid = str(mm_name) if mm_name else f"t2m_{index}"
    return ConversationRecord(rid, out, source=str(item.get("source_data") or "t2m"))
