"""The ``alpaca`` format: ``[{instruction, input, output}]`` -> text-only conversations (instruction
and input joined by a blank line; the legacy code glued them without a separator).
See :mod:`nextgpt.stages.data.convert`."""

from __future__ import annotations

from ..schema import ConversationRecord, RecordTurn
from .common import _Ctx, _dict, _nonempty, _text


def _alpaca(item: object, index: int, ctx: _Ctx) -> ConversationRecord:
    item = _dict(item)
    instruction = _nonempty(item.get("instruction"), "'instruction'")
    extra = _text(item.get("input") or "", "'input'").strip()
    output = _nonempty(item.get("output"), "'output'")
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    turns = [RecordTurn("user", [prompt]), RecordTurn("assistant", [output])]
    return ConversationRecord(str(item.get("id") or f"alpaca_{index}"), turns, source="alpaca")
