"""LLMBind demo conversations built from the demo media, so that its three output modes train on tiny.

:func:`llmbind_records` makes, from the items of :mod:`.demo`:

* **segmentation** (``<seg>``): a demo image with one or two coloured shapes drawn onto it (a square,
  a circle or a triangle, in red, green, blue or yellow, at a random place and size); the user asks for
  the shapes by colour and kind, the assistant answers with one ``<seg>`` per shape, and the exact
  pixels of each shape are its target mask (a synthetic, perfectly known ground truth);
* **prompt mode**: a request for an image, a sound or a clip answered with the item's caption between
  its task tags (``<gen>``, ``<aud_cap>``, ``<vid_cap>``);
* **editing**: an input image and an instruction answered with the instruction between ``<edit>``
  tags.

They are written to ``out_dir/llmbind/llmbind-*.tar`` by
:func:`~nextgpt.stages.data.build_demo_dataset`; a stage-3 run trains on them with
``training.stages.3.datasets=[llmbind]`` (docs/LLMBIND.md).
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageDraw

from nextgpt.mediaio.image import encode_image, encode_mask
from nextgpt.modality import Modality
from nextgpt.task_prompts import TASK_TAGS
from nextgpt.tokens import SEG_TOKEN

from .schema import ConversationRecord, MediaBlob, RecordTurn

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (240, 220, 40)}
SHAPES = ("square", "circle", "triangle")

_SEG_ASK = (
    "Please segment the {a} in this image.",
    "Where is the {a}? Give me its mask.",
    "Can you find the {a} and mark it?",
)
_SEG_ASK_TWO = ("Segment the {a} and the {b}.", "Mark the {a} and then the {b} in the picture.")
_SEG_ANSWER = ("It is {s}.", "Sure, here it is: {s}.", "The {a} is {s}.")
_SEG_ANSWER_TWO = ("The {a} is {s} and the {b} is {s}.",)
_GEN_ASK = {
    Modality.IMAGE: ("Draw {c}.", "Could you make a picture of {c}?"),
    Modality.AUDIO: ("Make the sound of {c}.", "I would like to hear {c}."),
    Modality.VIDEO: ("Make a short clip of {c}.", "Show me a video of {c}."),
}
_GEN_ANSWER = ("Sure: {o} {c} {e}", "Here you go. {o} {c} {e}")
_EDITS = (
    "make it look like a snowy winter day",
    "turn it into a pencil sketch",
    "give it a warm sunset light",
    "make the colours look faded and old",
)
_EDIT_ANSWER = ("Done: {o} {c} {e}", "Here is the edit. {o} {c} {e}")


def draw_shape(image: Image.Image, shape: str, colour: str, rng: random.Random) -> np.ndarray:
    """Draw ``shape`` in ``colour`` onto ``image`` (in place) at a random place and size (a sixth to
    a third of the shorter side); return its mask, bool ``[H, W]``."""
    w, h = image.size
    side = rng.randint(max(4, min(w, h) // 6), max(5, min(w, h) // 3))
    x0, y0 = rng.randint(0, w - side), rng.randint(0, h - side)
    box = (x0, y0, x0 + side - 1, y0 + side - 1)
    layer = Image.new("L", image.size, 0)
    pen = ImageDraw.Draw(layer)
    if shape == "square":
        pen.rectangle(box, fill=255)
    elif shape == "circle":
        pen.ellipse(box, fill=255)
    else:
        pen.polygon([(x0 + side // 2, y0), (x0, y0 + side - 1), (x0 + side - 1, y0 + side - 1)], fill=255)
    mask = np.asarray(layer) > 0
    image.paste(Image.new("RGB", image.size, COLOURS[colour]), mask=layer)
    return mask


def _seg_record(n: int, item, rng: random.Random) -> ConversationRecord:
    image = Image.open(io.BytesIO(item.data)).convert("RGB")
    count = 1 if rng.random() < 0.6 else 2
    kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], count)
    masks = []
    for colour, shape in kinds:
        mask = draw_shape(image, shape, colour, rng)
        for earlier in masks:  # a later shape covers the earlier ones where they overlap
            earlier &= ~mask
        masks.append(mask)
    if any(not m.any() for m in masks):  # a shape covered whole: keep the last one only
        kinds, masks = kinds[-1:], masks[-1:]
    names = [f"{c} {s}" for c, s in kinds]
    if len(names) == 1:
        ask = rng.choice(_SEG_ASK).format(a=names[0])
        answer = rng.choice(_SEG_ANSWER).format(a=names[0], s=SEG_TOKEN)
    else:
        ask = rng.choice(_SEG_ASK_TWO).format(a=names[0], b=names[1])
        answer = rng.choice(_SEG_ANSWER_TWO).format(a=names[0], b=names[1], s=SEG_TOKEN)
    blob = MediaBlob(Modality.IMAGE, encode_image(image, "png"), "png", name=f"{item.id}_shapes.png")
    return ConversationRecord(
        f"demo_llmbind_seg_{n:03d}",
        [RecordTurn("user", [blob, ask]), RecordTurn("assistant", [answer])],
        source="demo-llmbind",
        masks=[encode_mask(m) for m in masks],
    )


def _prompt_record(n: int, item, rng: random.Random) -> ConversationRecord:
    open_tag, close_tag = TASK_TAGS[item.modality.value]
    ask = rng.choice(_GEN_ASK[item.modality]).format(c=item.caption)
    answer = rng.choice(_GEN_ANSWER).format(o=open_tag, c=item.caption, e=close_tag)
    return ConversationRecord(
        f"demo_llmbind_prompt_{n:03d}",
        [RecordTurn("user", [ask]), RecordTurn("assistant", [answer])],
        source="demo-llmbind",
    )


def _edit_record(n: int, item, rng: random.Random) -> ConversationRecord:
    open_tag, close_tag = TASK_TAGS["edit"]
    instruction = rng.choice(_EDITS)
    blob = MediaBlob(Modality.IMAGE, item.data, item.ext, name=f"{item.id}.{item.ext}")
    answer = rng.choice(_EDIT_ANSWER).format(o=open_tag, c=instruction, e=close_tag)
    return ConversationRecord(
        f"demo_llmbind_edit_{n:03d}",
        [RecordTurn("user", [blob, f"Please {instruction}."]), RecordTurn("assistant", [answer])],
        source="demo-llmbind",
    )


def llmbind_records(items: list, rng: random.Random, count: int) -> list[ConversationRecord]:
    """``count`` LLMBind demo conversations from the demo ``items``, in turn segmentation, prompt mode
    and editing (segmentation and editing need an image item; without one only prompt mode). The
    prompt-mode ones go through the modalities in turn (image, audio, video)."""
    images = [it for it in items if it.modality is Modality.IMAGE]
    by_modality = [
        [it for it in items if it.modality is m] for m in (Modality.IMAGE, Modality.AUDIO, Modality.VIDEO)
    ]
    by_modality = [group for group in by_modality if group]
    records, prompts = [], 0
    for n in range(count):
        kind = ("seg", "prompt", "edit")[n % 3] if images else "prompt"
        if kind == "seg":
            records.append(_seg_record(n, rng.choice(images), rng))
        elif kind == "edit":
            records.append(_edit_record(n, rng.choice(images), rng))
        else:
            records.append(_prompt_record(n, rng.choice(by_modality[prompts % len(by_modality)]), rng))
            prompts += 1
    return records
