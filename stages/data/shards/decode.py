"""Raw sample -> :class:`~nextgpt.stages.data.schema.Sample`: decode its media members (with
:mod:`nextgpt.mediaio`) and validate it (:func:`decode_sample`); :class:`DataStats` counts the bad
ones. See :mod:`nextgpt.stages.data.shards`."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from nextgpt.errors import InputError
from nextgpt.mediaio.audio import decode_audio
from nextgpt.mediaio.image import DEFAULT_MAX_IMAGE_PIXELS, decode_image, decode_mask
from nextgpt.mediaio.video import decode_video
from nextgpt.modality import Modality
from nextgpt.processor import MediaItem, Turn

from ..schema import (
    CONVERSATION,
    PAIR,
    BadSample,
    Sample,
    clean_caption,
    find_pair_media,
    pair_caption,
    pair_turns,
    parse_conversation,
    parse_json_member,
    parse_masks,
)

#: Images with more pixels than this are refused: the library's one image limit
#: (:data:`nextgpt.mediaio.image.DEFAULT_MAX_IMAGE_PIXELS`, PIL's decompression-bomb warning threshold).
MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
#: How many bad keys :class:`DataStats` remembers.
MAX_BAD_KEYS = 100


# --------------------------------------------------------------------------------------------------
# media codecs (bytes <-> python objects): nextgpt.mediaio, the library's one media I/O.
# decode_image / decode_audio / decode_video / encode_image / encode_audio / encode_video are its
# functions, re-exported from nextgpt.stages.data.shards (and from nextgpt.stages.data).


def _ext(field_name: str) -> str:
    return field_name.rsplit(".", 1)[-1].lower()


def decode_media(field_name: str, data: bytes, modality: Modality, *, max_video_frames: int | None = None):
    """Decode one media member to the value a :class:`~nextgpt.processor.MediaItem` holds: an RGB PIL
    image (at most :data:`MAX_IMAGE_PIXELS`), an :class:`~nextgpt.media.Audio` or a
    :class:`~nextgpt.media.Video` (the limits of :mod:`nextgpt.mediaio`). Raises ``ValueError``
    (:class:`~nextgpt.errors.InputError`) or a decoder error for unusable data."""
    if modality is Modality.IMAGE:
        return decode_image(data, max_pixels=MAX_IMAGE_PIXELS)
    if modality is Modality.AUDIO:
        return decode_audio(data, _ext(field_name))
    if modality is Modality.VIDEO:
        return decode_video(data, max_frames=max_video_frames)
    raise ValueError(f"cannot decode modality {modality}")


# --------------------------------------------------------------------------------------------------
# decoding


@dataclass
class DataStats:
    """Counters of one reader (one per DataLoader worker)."""

    seen: int = 0
    bad: int = 0
    bad_keys: list[str] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)

    @property
    def bad_fraction(self) -> float:
        """Bad samples over samples seen (0.0 before any)."""
        return self.bad / self.seen if self.seen else 0.0

    def record_bad(self, key: str, reason: str) -> None:
        """Count one bad sample: keep its key (the first :data:`MAX_BAD_KEYS`) and tally its reason up
        to the first colon, parenthesis or quote."""
        self.bad += 1
        if len(self.bad_keys) < MAX_BAD_KEYS:
            self.bad_keys.append(key)
        self.reasons[re.split(r"[:(\'\"]", reason, maxsplit=1)[0].strip()] += 1


def decode_sample(
    raw: dict,
    stage: int,
    *,
    decode_output_media: bool = True,
    max_video_frames: int | None = None,
    clean_output_captions: bool = False,
) -> Sample:
    """Validate and decode one raw sample; raise :class:`~.schema.BadSample` with the reason."""
    if "__error__" in raw:
        raise BadSample(raw["__error__"])
    key, url = raw["__key__"], raw.get("__url__", "")
    fields = {k: v for k, v in raw.items() if not k.startswith("__")}
    meta = parse_json_member(fields["json"]) if "json" in fields else {}
    kind = meta.get("kind", PAIR)
    sid = str(meta.get("id") or meta.get("key") or key)
    source = str(meta.get("source") or "")

    def media(fld: str, modality: Modality):
        try:
            return decode_media(fld, fields[fld], modality, max_video_frames=max_video_frames)
        except Exception as exc:
            # The media readers' InputError already says what is wrong; other errors get their type.
            why = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            raise BadSample(f"cannot decode {modality.value} member {fld!r}: {why}") from None

    if kind == PAIR:
        fld, modality = find_pair_media(meta, set(fields))
        caption = pair_caption(meta, fields)
        as_output = stage != 1
        value = media(fld, modality) if (decode_output_media or not as_output) else None
        turns, captions = pair_turns(
            stage, modality, caption, value, clean_output_captions=clean_output_captions
        )
        names = [meta.get("name") if isinstance(meta.get("name"), str) else None] if captions else []
        return Sample(key, PAIR, turns, captions, id=sid, source=source, url=url, output_names=names)
    if kind != CONVERSATION:
        raise BadSample(f"unknown sample kind {kind!r}; valid: pair, conversation")

    specs = parse_conversation(meta, set(fields))
    decoded: dict[str, object] = {}
    turns, captions, names = [], [], []
    for spec in specs:
        parts: list[str | MediaItem] = []
        for p in spec.parts:
            if p.text is not None:
                parts.append(p.text)
                continue
            value = None
            if p.media is not None and (spec.role == "user" or decode_output_media):
                if p.media not in decoded:
                    decoded[p.media] = media(p.media, p.modality)
                value = decoded[p.media]
            parts.append(MediaItem(p.modality, value))
            if spec.role == "assistant":
                cap = p.caption.strip()
                captions.append(clean_caption(cap) if clean_output_captions else cap)
                names.append(p.name)
        turns.append(Turn(spec.role, parts))
    mask_fields, mask_image = parse_masks(meta, specs, set(fields))
    masks, image = [], None
    if mask_fields:
        image = decoded[mask_image]
        for fld in mask_fields:
            try:
                masks.append(decode_mask(fields[fld], image.size, name=f"mask member {fld!r}"))
            except InputError as exc:
                raise BadSample(str(exc)) from None
    return Sample(
        key,
        CONVERSATION,
        turns,
        captions,
        id=sid,
        source=source,
        url=url,
        output_names=names,
        masks=masks,
        mask_image=image,
    )
