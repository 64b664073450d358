"""The pair formats: ``cc3m`` ``[{caption, id, image_name}]``, ``webvid`` ``[{caption, id,
video_name}]`` and ``audiocap`` ``[{audio_id, audio_name, caption}]`` (field names as in the upstream
repository) -> pairs. See :mod:`nextgpt.stages.data.convert`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from nextgpt.modality import Modality

from ..schema import PairRecord
from .common import MALFORMED, _Ctx, _dict, _nonempty, _Problem


def _pair_builder(name_key: str, id_key: str, modality: Modality) -> Callable:
    def build(item: object, index: int, ctx: _Ctx) -> PairRecord:
        item = _dict(item)
        caption = _nonempty(item.get("caption"), "'caption'")
        name = item.get(name_key)
        if not isinstance(name, str) or not name.strip():
            raise _Problem(MALFORMED, f"missing '{name_key}'")
        rid = item.get(id_key)
        rid = str(rid) if rid not in (None, "") else PurePosixPath(name).stem
        return PairRecord(rid, caption, ctx.media.load(name, modality), source=ctx.fmt)

    return build
