"""The ``videochat`` format (VideoChat ``videochat_instruct_11k.json``; also VideoChat2-IT video
files): ``[{video, QA: [{i, q, a}]}]`` -> conversations: the video first in the first user turn, then
one user turn (instruction and/or question) and one assistant turn (the answer) per QA item
(:func:`_videochat` says where these facts come from). See :mod:`nextgpt.stages.data.convert`."""

from __future__ import annotations

from pathlib import PurePosixPath

from nextgpt.modality import Modality

from ..schema import ConversationRecord, MediaBlob, RecordTurn
from .common import MALFORMED, _Ctx, _dict, _nonempty, _Problem, _text, _turn_list


def _videochat(item: object, index: int, ctx: _Ctx) -> ConversationRecord:
    """A VideoChat instruction record -> a conversation about its video.

    Format facts (read from public sources, nothing copied):

    * OpenGVLab/Ask-Anything ``video_chat/scripts/config_7b_stage2.py`` trains on
      ``videochat_instruct_11k.json`` with the WebVid-10M folder as media root and media type video;
      ``video_chat/dataset/it_dataset.py`` reads each record's ``video`` (a path relative to that
      root) and its ``QA`` list, and from every QA item the question ``q`` and the answer ``a``; the
      video goes in a human turn before the first question.
    * OpenGVLab/InternVideo issue #63 (maintainer answer) and third-party WebVid download scripts that
      parse this file: ``video`` is ``"<WebVid page dir>/<videoid>.mp4"`` (e.g.
      ``000001_000050/1066682446.mp4``); those scripts also save the videos flat as ``<videoid>.mp4``.
    * OpenGVLab/Ask-Anything ``video_chat2/dataset/it_dataset.py`` (the VideoChat2-IT files, which
      NExT-GPT's ``data/DATA_README.md`` points to for its videochat data) adds an optional
      instruction ``i`` to QA items, used once per record from the first item, and allows an empty
      ``q`` (caption data: the answer follows the video directly).
      ``video_chat2/configs/instruction_data.py`` lists those files with the same ``video`` layout.
    * Neither loader reads a record id: the id here is the video's base name without extension.

    Turns: user ``[video, i, q]`` (empty strings left out), assistant ``[a]``, then per further QA item
    user ``[i, q]`` and assistant ``[a]``. An instruction equal to the last one given is not repeated
    (VideoChat2 gives the record's instruction once). ``a`` must be a non-empty string; ``i`` and ``q``
    are strings when present (``null`` counts as absent); a QA item after the first needs an instruction or a question.
    VideoChat2 clip bounds (``start``/``end``) are not applied: the whole file is stored.
    """
    item = _dict(item)
    video = item.get("video")
    if not isinstance(video, str) or not video.strip():
        raise _Problem(MALFORMED, "missing 'video'")
    name = video.strip()
    base = PurePosixPath(name.replace("\\", "/")).name
    if base != name and ctx.media.find(name, Modality.VIDEO) is None:
        if ctx.media.find(base, Modality.VIDEO) is not None:
            name = base
    qa = _turn_list(item, "QA", "qa")
    turns: list[RecordTurn] = []
    last_instruction = ""
    for k, entry in enumerate(qa):
        instruction, question = (
            _text(entry.get(key) if entry.get(key) is not None else "", f"QA {k} '{key}'").strip()
            for key in ("i", "q")
        )
        answer = _nonempty(entry.get("a"), f"QA {k} 'a'")
        parts: list[str | MediaBlob] = []
        if instruction and instruction != last_instruction:
            parts.append(instruction)
            last_instruction = instruction
        if question:
            parts.append(question)
        if k > 0 and not parts:
            raise _Problem(MALFORMED, f"QA {k} has neither an instruction 'i' nor a question 'q'")
        turns.append(RecordTurn("user", parts))
        turns.append(RecordTurn("assistant", [answer]))
    turns[0].parts.insert(0, ctx.media.load(name, Modality.VIDEO))
    rid = item.get("id")
    rid = str(rid) if rid not in (None, "") else PurePosixPath(base).stem
    return ConversationRecord(rid, turns, source="videochat")
