"""LLMBind ``<seg>`` training through the data path: target masks in shards, the collator's SAM inputs
and masks (truncated, packed), the mask loss of packed rows, the head's idle pass (every trained tensor
in the graph), the refcoco converter, and the demo data training all three LLMBind modes through
``train(3, ...)`` (one process, and two under DDP)."""

from __future__ import annotations

import csv
import io
import json
import logging
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_segmentation import _save_tiny_sam

from nextgpt import NextGPT
from nextgpt.errors import InputError
from nextgpt.mediaio.image import decode_mask, encode_image, encode_mask
from nextgpt.modality import Modality
from nextgpt.stages.batch import Collator
from nextgpt.stages.data.schema import BadSample, ConversationRecord, MediaBlob, RecordTurn, record_members
from nextgpt.stages.data.shards import DataStats, iter_samples, write_samples
from nextgpt.tokens import SEG_TOKEN


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    return _save_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny-sam")


@pytest.fixture(scope="module")
def seg_model(sam_dir):
    return NextGPT.from_preset("tiny", [f"model.segmentation.sam={sam_dir}"])


def _picture(seed: int, size=(48, 36)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)


def _box(size, x0, y0, x1, y1) -> np.ndarray:
    mask = np.zeros((size[1], size[0]), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _seg_record(i: int, masks: list[np.ndarray], size=(48, 36), extra_text: str = "") -> ConversationRecord:
    image = MediaBlob(Modality.IMAGE, encode_image(Image.fromarray(_picture(i, size)), "png"), "png")
    answer = " and ".join(f"thing {k} is {SEG_TOKEN}" for k in range(len(masks))) + extra_text
    return ConversationRecord(
        f"seg{i}",
        [RecordTurn("user", [image, "segment the things"]), RecordTurn("assistant", [answer])],
        masks=[encode_mask(m) for m in masks],
    )


# ------------------------------------------------------------------ masks in shards


def test_masks_round_trip_through_a_shard(tmp_path):
    size = (48, 36)
    one, two = _box(size, 2, 3, 20, 30), _box(size, 25, 0, 48, 10)
    plain = ConversationRecord("plain", [RecordTurn("user", ["hi"]), RecordTurn("assistant", ["hello"])])
    shards = write_samples(tmp_path, [_seg_record(0, [one]), _seg_record(1, [one, two]), plain], prefix="s")
    stats = DataStats()
    samples = {s.id: s for s in iter_samples(shards, 3, stats=stats)}
    assert stats.bad == 0 and len(samples) == 3
    assert [m.tolist() for m in samples["seg1"].masks] == [one.tolist(), two.tolist()]
    assert samples["seg0"].mask_image.size == size and samples["seg0"].masks[0].dtype == bool
    assert samples["plain"].masks == [] and samples["plain"].mask_image is None
    assert np.array_equal(decode_mask(encode_mask(one), size), one)
    palette = Image.fromarray(two.astype(np.uint8) * 3, mode="P")  # a palette mask: index > 0
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    assert np.array_equal(decode_mask(buf.getvalue()), two)


def test_records_with_wrong_masks_are_refused_by_the_writer():
    size = (48, 36)
    with pytest.raises(BadSample, match="2 masks but 1 <seg>"):
        record_members(
            ConversationRecord(
                "x",
                [
                    RecordTurn(
                        "user", [MediaBlob(Modality.IMAGE, encode_image(Image.new("RGB", size)), "jpg")]
                    ),
                    RecordTurn("assistant", [f"it is {SEG_TOKEN}"]),
                ],
                masks=[encode_mask(_box(size, 0, 0, 4, 4))] * 2,
            )
        )
    with pytest.raises(BadSample, match="need an input image"):
        record_members(
            ConversationRecord(
                "y",
                [RecordTurn("user", ["no image"]), RecordTurn("assistant", [f"it is {SEG_TOKEN}"])],
                masks=[encode_mask(_box(size, 0, 0, 4, 4))],
            )
        )
    with pytest.raises(InputError, match="non-empty"):
        encode_mask(np.zeros((0, 4), dtype=bool))


def _write_members(path: Path, samples: dict[str, dict[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for field, data in members.items():
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_a_mask_of_the_wrong_size_or_unreadable_is_a_counted_bad_sample(tmp_path):
    size = (48, 36)
    good = record_members(_seg_record(0, [_box(size, 1, 1, 9, 9)]))
    small = dict(good, **{"s0.png": encode_mask(np.ones((10, 10), dtype=bool))})
    broken = dict(good, **{"s0.png": b"\x89PNG not really"})
    missing = {k: v for k, v in good.items() if k != "s0.png"}
    shard = _write_members(tmp_path / "bad-000000.tar", {"a": good, "b": small, "c": broken, "d": missing})
    stats = DataStats()
    kept = list(iter_samples([str(shard)], 3, stats=stats, max_bad_fraction=1.0))
    assert [s.key for s in kept] == ["a"] and stats.bad == 3
    assert len(stats.bad_keys) == 3


# ------------------------------------------------------------------ the collator


def _sample(record: ConversationRecord, tmp_path: Path, name: str):
    shards = write_samples(tmp_path / name, [record], prefix=name)
    return next(iter(iter_samples(shards, 3)))


def test_the_collator_carries_sam_inputs_and_masks_and_cuts_them_with_truncation(seg_model, tmp_path, caplog):
    size = (48, 36)
    masks = [_box(size, 2, 3, 20, 30), _box(size, 25, 0, 48, 10)]
    sample = _sample(_seg_record(0, masks, extra_text=" and that is all " * 30), tmp_path, "a")
    processor = seg_model.processor
    collate = Collator(processor, 512, 0, seg_processor=seg_model.segmentation.processor)
    batch = collate([sample])
    ((inputs, target),) = batch.seg_targets[0]
    assert inputs["pixel_values"].shape == (1, 3, 64, 64)  # the tiny SAM's input size
    assert target.shape == (2, 36, 48) and torch.equal(target.bool(), torch.from_numpy(np.stack(masks)))
    seg = processor.layout.seg_id
    ids = batch.input_ids[0]
    first, second = (ids == seg).nonzero().flatten().tolist()
    cut = Collator(processor, second, 0, seg_processor=seg_model.segmentation.processor)([sample])
    ((_, kept),) = cut.seg_targets[0]  # the second <seg> fell past the cut: so did its mask
    assert kept.shape[0] == 1 and int((cut.input_ids == seg).sum()) == 1
    none = Collator(processor, first, 0, seg_processor=seg_model.segmentation.processor)([sample])
    assert none.seg_targets == [[]]
    with caplog.at_level(logging.WARNING):
        plain = Collator(processor, 512, 0)([sample])  # the model has no segmentation: masks unused
    assert plain.seg_targets == [[]] and "masks are not trained" in caplog.text
    moved = batch.to("cpu")
    assert moved.seg_targets[0][0][1].shape == (2, 36, 48)


def test_a_packed_row_gets_the_same_mask_loss_as_its_unpacked_rows(seg_model, tmp_path):
    size = (48, 36)
    samples = [
        _sample(_seg_record(0, [_box(size, 2, 3, 20, 30)]), tmp_path, "a"),
        _sample(_seg_record(1, [_box(size, 5, 5, 30, 20), _box(size, 0, 20, 10, 36)]), tmp_path, "b"),
    ]
    sp = seg_model.segmentation.processor
    unpacked = Collator(seg_model.processor, 512, 0, seg_processor=sp)(samples)
    packed = Collator(seg_model.processor, 512, 0, seg_processor=sp, packing=True)(samples)
    assert unpacked.num_rows == 2 and packed.num_rows == 1 and len(packed.seg_targets[0]) == 2
    seg_model.eval()

    def mask_loss(batch):
        features = {m: seg_model.media_features(m, x) for m, x in batch.media.items()}
        media_tokens, _ = seg_model.project_inputs(batch.slot_modalities, features)
        return seg_model.compute_losses(
            batch.input_ids,
            batch.attention_mask,
            batch.labels,
            media_tokens,
            seg_targets=batch.seg_targets,
            position_ids=batch.position_ids,
        )["mask_loss"]

    with torch.no_grad():
        torch.testing.assert_close(mask_loss(packed), mask_loss(unpacked), rtol=1e-4, atol=1e-5)


def test_a_batch_without_masks_keeps_every_trained_segmentation_tensor_in_the_graph(sam_dir):
    from nextgpt.stages.modules import select_trainable

    model = NextGPT.from_preset("tiny", [f"model.segmentation.sam={sam_dir}"])
    chosen = {n: p for n, p in select_trainable(model, 3).items() if n.startswith("segmentation.")}
    # what no loss reaches with one mask per prompt does not train (DDP needs a gradient for each)
    assert not any("iou_prediction_head" in n or "output_hypernetworks_mlps.1." in n for n in chosen)
    assert any("output_hypernetworks_mlps.0." in n for n in chosen)
    model.train()
    ids = torch.tensor([[1, 40, 41, 42]])
    losses = model.compute_losses(ids, torch.ones_like(ids), ids.clone(), [], seg_targets=[[]])
    assert "mask_loss" not in losses
    losses["loss"].backward()
    assert all(p.grad is not None for p in chosen.values()), [n for n, p in chosen.items() if p.grad is None]
    assert all(float(p.grad.abs().sum()) == 0 for p in chosen.values())  # a zero-weighted pass


# ------------------------------------------------------------------ the refcoco converter


def _refcoco_fixture(root: Path) -> tuple[Path, dict]:
    """A RefCOCO folder in the refer toolkit's layout: refs(unc).p + instances.json + train2014/."""
    ds = root / "refcoco"
    images = root / "coco" / "train2014"
    images.mkdir(parents=True)
    ds.mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i, (w, h) in enumerate([(40, 30), (32, 32)]):
        name = f"COCO_train2014_{i:012d}.jpg"
        Image.fromarray(_picture(i, (w, h))).save(images / name)
        coco["images"].append({"id": 100 + i, "file_name": name, "width": w, "height": h})
    square = [[4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]]  # a polygon: x, y pairs
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(_box((32, 32), 10, 0, 32, 8).astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")  # as instances.json stores it
    coco["annotations"] += [
        {"id": 7, "image_id": 100, "segmentation": square, "bbox": [4, 4, 16, 16], "category_id": 1},
        {"id": 8, "image_id": 101, "segmentation": rle, "bbox": [10, 0, 22, 8], "category_id": 1},
        {"id": 9, "image_id": 100, "segmentation": "nonsense", "bbox": [0, 0, 1, 1], "category_id": 1},
    ]
    sent = lambda text, k: {"sent": text, "raw": text, "sent_id": k, "tokens": text.split()}  # noqa: E731
    refs = [
        {
            "ref_id": 1,
            "ann_id": 7,
            "image_id": 100,
            "category_id": 1,
            "split": "train",
            "sent_ids": [1, 2],
            "sentences": [sent("the square on the left", 1), sent("grey box", 2)],
            "file_name": "ignored_7.jpg",
        },
        {
            "ref_id": 2,
            "ann_id": 8,
            "image_id": 101,
            "category_id": 1,
            "split": "train",
            "sent_ids": [3],
            "sentences": [sent("top right strip", 3)],
            "file_name": "ignored_8.jpg",
        },
        {
            "ref_id": 3,
            "ann_id": 8,
            "image_id": 101,
            "category_id": 1,
            "split": "val",
            "sent_ids": [4],
            "sentences": [sent("a validation ref", 4)],
            "file_name": "x.jpg",
        },
        {
            "ref_id": 4,
            "ann_id": 9,
            "image_id": 100,
            "category_id": 1,
            "split": "train",
            "sent_ids": [5],
            "sentences": [sent("bad segmentation", 5)],
            "file_name": "x.jpg",
        },
        {
            "ref_id": 5,
            "ann_id": 99,
            "image_id": 100,
            "category_id": 1,
            "split": "train",
            "sent_ids": [6],
            "sentences": [sent("unknown annotation", 6)],
            "file_name": "x.jpg",
        },
        {
            "ref_id": 6,
            "ann_id": 7,
            "image_id": 100,
            "category_id": 1,
            "split": "train",
            "sent_ids": [],
            "sentences": [],
            "file_name": "x.jpg",
        },
    ]
    (ds / "instances.json").write_text(json.dumps(coco))
    with open(ds / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return ds / "refs(unc).p", {"square": square}


def test_refcoco_refs_become_seg_conversations_with_their_masks(tmp_path):
    from nextgpt.stages.data.convert import convert

    refs, _ = _refcoco_fixture(tmp_path / "in")
    report = convert("refcoco", refs, tmp_path / "in" / "coco", tmp_path / "out", progress=False)
    assert (report.records, report.written, report.malformed) == (5, 2, 3)  # the val ref is not read
    samples = {s.id: s for s in iter_samples(report.shards, 3)}
    first, second = samples["refcoco_1"], samples["refcoco_2"]
    assert [t.role for t in first.turns] == ["user", "assistant", "user", "assistant"]
    assert "the square on the left" in first.turns[0].parts[1] and "grey box" in first.turns[2].parts[0]
    assert all(SEG_TOKEN in t.parts[0] for t in first.turns if t.role == "assistant")
    assert len(first.masks) == 2 and first.mask_image.size == (40, 30)
    mask = first.masks[0]
    assert mask[10, 10] and not mask[25, 30] and 240 <= mask.sum() <= 300  # the 16 x 16 square, rasterised
    assert np.array_equal(second.masks[0], _box((32, 32), 10, 0, 32, 8))  # the RLE, exactly
    everything = convert(
        "refcoco", refs, tmp_path / "in" / "coco", tmp_path / "all", progress=False, split="all"
    )
    assert everything.written == 3


def test_the_cli_converts_refcoco_with_a_split(tmp_path, capsys):
    from nextgpt.cli import main

    refs, _ = _refcoco_fixture(tmp_path / "in")
    media, out = tmp_path / "in" / "coco", tmp_path / "out"
    args = ["data", "convert", "refcoco", "--input", str(refs), "--media-dir", str(media), "--out", str(out)]
    assert main([*args, "--split", "val"]) == 0
    assert "refcoco: 1 of 1 records written" in capsys.readouterr().out
    assert [s.id for s in iter_samples(sorted(str(p) for p in out.glob("refcoco-*.tar")), 3)] == ["refcoco_3"]


def test_refcoco_refuses_a_pickle_that_names_a_class_and_a_split_elsewhere(tmp_path):
    from nextgpt.errors import ConfigError
    from nextgpt.stages.data.convert import convert

    refs, _ = _refcoco_fixture(tmp_path / "in")
    evil = refs.with_name("refs(evil).p")
    evil.write_bytes(pickle.dumps([{"ref_id": Path("x")}]))  # a pickle that would build an object
    with pytest.raises(InputError, match="only plain lists"):
        convert("refcoco", evil, tmp_path / "in" / "coco", tmp_path / "o", progress=False)
    with pytest.raises(ConfigError, match="unknown refcoco split"):
        convert("refcoco", refs, tmp_path / "in" / "coco", tmp_path / "o", progress=False, split="dev")
    with pytest.raises(ConfigError, match="has no splits"):
        convert("llava", refs, tmp_path / "in" / "coco", tmp_path / "o", progress=False, split="train")


# ------------------------------------------------------------------ the demo data through train(3)


def test_demo_llmbind_data_trains_the_three_modes_and_the_model_then_uses_them(sam_dir, demo_data, tmp_path):
    """Stage 3 on the demo's LLMBind conversations (<seg> with synthetic masks, <gen> prompts, <edit>)
    on tiny with all three modes on: the mask loss is logged and trains the head; the tag rows learn;
    the trained model renders a forced image, edits an input image and returns a mask per <seg>."""
    from test_task_prompts import _save_sd

    from nextgpt.stages.train import train

    sd = _save_sd(tmp_path / "sd")
    ip2p = _save_sd(tmp_path / "ip2p", instruct=True)
    model_overrides = [
        "model.outputs.image=null",
        f"model.task_prompts.image={sd}",
        f"model.task_prompts.edit={ip2p}",
        f"model.segmentation.sam={sam_dir}",
    ]
    overrides = [
        *model_overrides,
        "training.stages.3.datasets=[llmbind]",
        "training.stages.3.lr=1e-2",
        "training.stages.3.batch_size=3",
        "training.shuffle_buffer=0",
        "training.num_workers=0",
        "training.log_every_n_steps=1",
    ]
    before = NextGPT.from_preset("tiny", model_overrides)
    out = train(3, "tiny", demo_data, tmp_path / "run", overrides, max_steps=2)
    metrics = next((tmp_path / "run" / "stage3" / "logs").glob("version_*/metrics.csv"))
    rows = [r for r in csv.DictReader(open(metrics)) if r.get("train/loss")]
    assert len(rows) == 2 and all(r.get("train/mask_loss") for r in rows)  # a <seg> sample in each batch
    trained = NextGPT.from_pretrained(out)
    assert not torch.equal(
        trained.segmentation.projection[0].weight, before.segmentation.projection[0].weight
    )
    layout = trained.llm.layout
    for task in ("image", "edit"):
        row = layout.tag_ids[task][0] - layout.base_vocab
        assert not torch.equal(trained.llm.new_embeddings[row], before.llm.new_embeddings[row]), task
    kw = {"num_inference_steps": 2, "height": 32, "width": 32}
    assert trained.generate("draw a cat", modalities=["image"], seed=0, max_new_tokens=6, **kw).images

    image = tmp_path / "in.png"
    Image.fromarray(_picture(3, (40, 32))).save(image)
    real = trained.llm.logits

    def forcing(tokens):
        calls: list[int] = []

        def logits_fn(hidden):
            logits = real(hidden)
            if len(calls) < len(tokens):
                logits[..., :] = -1e9
                logits[..., tokens[len(calls)]] = 1e9
            calls.append(1)
            return logits

        return logits_fn

    trained.llm.logits = forcing([layout.tag_ids["edit"][0], 80, layout.tag_ids["edit"][1]])
    edited = trained.generate([image, "make it snowy"], seed=0, max_new_tokens=4, **kw)
    assert [p.task for p in edited.prompts] == ["edit"] and len(edited.images) == 1
    trained.llm.logits = forcing([layout.seg_id])
    segmented = trained.generate([image, "segment the red square"], modalities=["text"], max_new_tokens=2)
    assert len(segmented.masks) == 1 and segmented.masks[0].shape == (32, 40)


@pytest.mark.slow
def test_ddp_with_masks_on_one_rank_only_trains_and_keeps_the_ranks_identical(sam_dir, tmp_path):
    """Stage 3 on 2 processes (DDP over gloo, no find_unused_parameters): rank 0 reads conversations
    with target masks, rank 1 text-only ones. Rank 1's batches reach the head only through its idle
    pass; without it DDP's reducer would wait for gradients rank 1 never makes. Both ranks end with the
    same head, which learned."""
    from test_scale import FAST, TWO_CPU_PROCESSES, _spec, final, run

    data = tmp_path / "data"
    size = (48, 36)
    seg = [_seg_record(i, [_box(size, 2 + i, 3, 20, 30)]) for i in range(4)]
    text = [
        ConversationRecord(
            f"t{i}", [RecordTurn("user", [f"say {i}"]), RecordTurn("assistant", [f"number {i}"])]
        )
        for i in range(4)
    ]
    write_samples(data / "a_seg", seg, prefix="a")
    write_samples(data / "b_text", text, prefix="b")
    spec = _spec(
        tmp_path,
        "ddp",
        3,
        data,
        tmp_path / "ddp",
        [
            *FAST,
            *TWO_CPU_PROCESSES,
            "training.strategy=ddp",
            f"model.segmentation.sam={sam_dir}",
            "training.stages.3.datasets=[a_seg,b_text]",
            "training.stages.3.batch_size=2",
            "training.stages.3.lr=1e-2",
            "training.max_steps=2",
        ],
        preset="tiny",
    )
    run(spec, timeout=240)
    (_, w0), (_, w1) = final(spec, 0), final(spec, 1)
    head = [k for k in w0 if k.startswith("segmentation.projection.")]
    assert head and all(torch.equal(w0[k], w1[k]) for k in w0)
    base = NextGPT.from_preset("tiny", [f"model.segmentation.sam={sam_dir}"]).trainable_state_dict()
    assert any(not torch.equal(w0[k], base[k]) for k in head)
