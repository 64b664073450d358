"""The ``refcoco`` format (referring segmentation: RefCOCO, RefCOCO+, RefCOCOg as the ``refer`` toolkit
ships them) -> conversations that train LLMBind's ``<seg>``: an image, a referring expression asked
for, an answer holding ``<seg>``, and the referred object's mask as the target.

Format facts (read from the public ``lichengunc/refer`` README and the loaders built on it; nothing
copied):

* a dataset folder holds ``refs(<splitBy>).p`` (``unc``, ``google`` or ``umd``) and ``instances.json``;
  the images are COCO train2014 (``COCO_train2014_<12 digits>.jpg``);
* ``refs(...).p`` is a pickled list of refs, each ``{ref_id, ann_id, image_id, category_id, split,
  sent_ids, sentences, file_name}``; ``sentences`` is a list of ``{sent, raw, sent_id, tokens}``;
  ``file_name`` is not the image's name and is ignored (the image's is in ``instances.json``);
* ``instances.json`` is COCO-style: ``images`` (``id, file_name, height, width``), ``annotations``
  (``id, image_id, segmentation, bbox, category_id``) and ``categories``; ``segmentation`` is a list of
  polygons ``[x0, y0, x1, y1, ...]`` or an RLE ``{"size": [h, w], "counts": ...}`` (compressed string
  or uncompressed list), rasterised here with ``pycocotools``;
* ``split`` is ``train``, ``val``, ``test``, ``testA`` or ``testB``.

Reading: ``INPUT`` is the refs file, a pickle (``.p``/``.pkl``, read with an unpickler that builds only
plain lists, dicts, strings and numbers: a pickle naming any class or function is refused) or a JSON
list of the same refs; ``instances.json`` is looked for next to it. Only the ``split`` asked for is
converted (default ``train``, so that evaluation images never reach training; ``all``: every ref).
Media lookup: the image's ``file_name`` under ``media_dir``, ``media_dir/train2014`` or
``media_dir/images/mscoco/images/train2014``.

A record: one conversation per ref, the first ``max_sentences`` (3) expressions in order, each a user
question (the image with the first) and an answer holding one ``<seg>``; the ref's mask is the target
of each. Malformed (counted, skipped): no sentences, an ``image_id`` or ``ann_id`` not in
``instances.json``, a segmentation that is neither polygons nor RLE, a mask of another size than its
image, an empty mask.
"""

from __future__ import annotations

import io
import json
import pickle
import random
from pathlib import Path

from PIL import Image

from nextgpt.errors import ConfigError, InputError
from nextgpt.mediaio.image import encode_mask
from nextgpt.modality import Modality
from nextgpt.tokens import SEG_TOKEN

from ..schema import ConversationRecord, RecordTurn
from .common import MALFORMED, UNREADABLE, _Ctx, _Problem

#: Where the COCO images are looked for under the media folder (besides its top level).
IMAGE_DIRS = ("train2014", "images/mscoco/images/train2014")
SPLITS = ("train", "val", "test", "testA", "testB", "all")
MAX_SENTENCES = 3

_ASK = (
    "Please segment {e} in this image.",
    "Can you segment {e}?",
    "What is {e} in this picture? Please give its mask.",
    "Where is {e}? Mark it with a mask.",
)
_ASK_AGAIN = ("And {e}?", "Now segment {e}.", "Please segment {e} as well.")
_ANSWER = (f"It is {SEG_TOKEN}.", f"Sure, {SEG_TOKEN}.", f"Here it is: {SEG_TOKEN}.")


class _PlainUnpickler(pickle.Unpickler):
    """Builds only the pickle's built-in containers and scalars; any class or function is refused (a
    pickle can otherwise run code while loading)."""

    def find_class(self, module: str, name: str):
        raise InputError(
            f"refs pickle names {module}.{name}: only plain lists, dicts, strings and numbers are read"
        )


def _read_refs(path: Path) -> list:
    if not path.is_file():
        raise InputError(f"refs file not found: '{path}'")
    try:
        if path.suffix.lower() in (".p", ".pkl", ".pickle"):
            with path.open("rb") as f:
                refs = _PlainUnpickler(f, encoding="utf-8").load()
        else:
            refs = json.loads(path.read_text(encoding="utf-8"))
    except InputError:
        raise
    except Exception as exc:  # a truncated or foreign pickle, bad JSON
        raise InputError(f"cannot read the refs file '{path}': {type(exc).__name__}: {exc}") from None
    if not isinstance(refs, list):
        raise InputError(f"'{path}' must hold a list of refs, got {type(refs).__name__}")
    return refs


def load_refcoco(path: Path, split: str | None = None) -> list:
    """The refs of ``split`` (default ``train``; ``all``), each joined with its image and annotation from
    the ``instances.json`` beside ``path``: ``{"ref": ..., "image": ... | None, "annotation": ... | None}``
    (a missing join is reported per record by the builder).

    Raises:
        ConfigError: unknown split. InputError: a file missing or unreadable.
    """
    split = split or "train"
    if split not in SPLITS:
        raise ConfigError(f"unknown refcoco split {split!r}; valid: {', '.join(SPLITS)}")
    refs = _read_refs(path)
    instances = path.parent / "instances.json"
    if not instances.is_file():
        raise InputError(f"instances.json not found next to '{path}' (the refer toolkit's layout)")
    try:
        coco = json.loads(instances.read_text(encoding="utf-8"))
        images = {img["id"]: img for img in coco["images"]}
        annotations = {ann["id"]: ann for ann in coco["annotations"]}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"'{instances}' is not COCO instances json: {type(exc).__name__}: {exc}") from None
    out = []
    for ref in refs:
        if not isinstance(ref, dict):
            out.append({"ref": ref, "image": None, "annotation": None})
            continue
        if split != "all" and ref.get("split") != split:
            continue
        image_id, ann_id = ref.get("image_id"), ref.get("ann_id")
        out.append(
            {
                "ref": ref,
                "image": images.get(image_id) if isinstance(image_id, int) else None,
                "annotation": annotations.get(ann_id) if isinstance(ann_id, int) else None,
            }
        )
    return out


def segmentation_mask(segmentation: object, height: int, width: int):
    """The bool ``[height, width]`` mask of a COCO ``segmentation`` (polygons or RLE), via pycocotools."""
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        raise ConfigError(
            "the refcoco converter needs pycocotools (pip install 'nextgpt[llmbind]' or pycocotools)"
        ) from None
    try:
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
            if not polygons:
                raise ValueError("no polygon with 3 points or more")
            rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
        elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
            rle = dict(segmentation)
            if isinstance(rle["counts"], list):
                rle = coco_mask.frPyObjects(rle, *rle["size"])
            elif isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        else:
            raise ValueError(f"neither polygons nor RLE: {type(segmentation).__name__}")
        mask = coco_mask.decode(rle)
    except (ValueError, TypeError, KeyError, UnicodeEncodeError) as exc:
        raise _Problem(MALFORMED, f"segmentation: {exc}") from None
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    return mask.astype(bool)


def _refcoco(item: object, index: int, ctx: _Ctx) -> ConversationRecord:
    """A joined ref (:func:`load_refcoco`) -> a conversation with one ``<seg>`` and mask per sentence."""
    ref = item.get("ref") if isinstance(item, dict) else None
    if not isinstance(ref, dict):
        raise _Problem(MALFORMED, "a ref must be an object")
    image, ann = item.get("image"), item.get("annotation")
    if image is None:
        raise _Problem(MALFORMED, f"image_id {ref.get('image_id')!r} is not in instances.json")
    if ann is None:
        raise _Problem(MALFORMED, f"ann_id {ref.get('ann_id')!r} is not in instances.json")
    sentences = ref.get("sentences")
    texts = []
    for s in sentences if isinstance(sentences, list) else []:
        text = s.get("sent") or s.get("raw") if isinstance(s, dict) else None
        if isinstance(text, str) and text.strip():
            texts.append(text.strip())
    if not texts:
        raise _Problem(MALFORMED, "no sentence")
    texts = texts[:MAX_SENTENCES]
    blob = ctx.media.load(image.get("file_name"), Modality.IMAGE, extra_dirs=IMAGE_DIRS)
    try:
        with Image.open(io.BytesIO(blob.data)) as img:
            width, height = img.size
    except Exception as exc:
        raise _Problem(UNREADABLE, f"{image.get('file_name')}: {exc}") from None
    if (image.get("width"), image.get("height")) not in ((width, height), (None, None)):
        raise _Problem(
            MALFORMED,
            f"instances.json says {image.get('width')}x{image.get('height')}, the file is {width}x{height}",
        )
    mask = segmentation_mask(ann.get("segmentation"), height, width)
    if not mask.any():
        raise _Problem(MALFORMED, "empty mask")
    rng = random.Random(index)
    turns: list[RecordTurn] = []
    for k, text in enumerate(texts):
        ask = rng.choice(_ASK if k == 0 else _ASK_AGAIN).format(e=text)
        turns.append(RecordTurn("user", [blob, ask] if k == 0 else [ask]))
        turns.append(RecordTurn("assistant", [rng.choice(_ANSWER)]))
    png = encode_mask(mask)
    rid = ref.get("ref_id")
    rid = f"refcoco_{rid}" if isinstance(rid, (int, str)) and str(rid) else f"refcoco_{index}"
    return ConversationRecord(rid, turns, source="refcoco", masks=[png] * len(texts))
