"""The ``<seg>`` segmentation head (LLMBind's semantic-embedding output) on a tiny random SAM, and
the mask loss against hand and library values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nextgpt.errors import ConfigError, InputError
from nextgpt.segmentation import SegmentationHead, mask_bce_loss, mask_dice_loss, mask_loss


def _save_tiny_sam(folder):
    from transformers import SamConfig, SamImageProcessor, SamModel
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    torch.manual_seed(0)
    config = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=8,
            output_channels=32,
            global_attn_indexes=[1],
            mlp_dim=64,
            num_pos_feats=16,
        ),
        prompt_encoder_config=SamPromptEncoderConfig(
            hidden_size=32, image_size=64, patch_size=8, mask_input_channels=4
        ),
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, iou_head_hidden_dim=32
        ),
    )
    sam = SamModel(config)
    with torch.no_grad():  # transformers' init leaves this tiny encoder's output ~1e-22: give it weights
        for param in sam.vision_encoder.parameters():
            if param.ndim > 1:
                param.normal_(std=0.2)
    sam.save_pretrained(folder)
    SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    return _save_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny-sam")


def _image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8))


def test_bce_equals_torch_on_probabilities():
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]], [[0.0, 1.0], [-1.0, 4.0]]])
    targets = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    expected = torch.nn.functional.binary_cross_entropy(logits.sigmoid(), targets)  # mean over all pixels
    assert mask_bce_loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_dice_by_hand():
    # one 2x2 mask: p = sigmoid(0) = 0.5 everywhere, target has 2 pixels set:
    # 2 sum p t = 2 * 1.0 = 2; sum p + sum t = 2 + 2 = 4 -> dice (2 + s) / (4 + s), loss 1 - that
    logits = torch.zeros(1, 2, 2)
    targets = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    s = 1e-3
    assert mask_dice_loss(logits, targets).item() == pytest.approx(1 - (2 + s) / (4 + s), rel=1e-6)
    perfect = torch.where(targets > 0, 30.0, -30.0)
    assert mask_dice_loss(perfect, targets).item() == pytest.approx(0.0, abs=1e-6)
    out = mask_loss(logits, targets)
    assert out["mask_loss"].item() == pytest.approx(
        2.0 * out["mask_bce"].item() + 0.5 * out["mask_dice"].item()
    )


def test_mask_shapes_are_checked():
    with pytest.raises(InputError, match="N, H, W"):
        mask_bce_loss(torch.zeros(2, 3), torch.zeros(2, 3))


def test_head_returns_one_full_size_mask_per_seg_token(sam_dir):
    head = SegmentationHead.from_pretrained(sam_dir, hidden_size=16)
    inputs = head.prepare(_image())
    masks = head(torch.randn(3, 16), inputs)
    assert masks.shape == (3, 40, 50)  # the original image size
    assert torch.isfinite(masks).all()
    with pytest.raises(InputError, match="seg_states"):
        head(torch.randn(0, 16), inputs)


def test_only_the_mlp_and_mask_decoder_train(sam_dir):
    head = SegmentationHead.from_pretrained(sam_dir, hidden_size=16)
    inputs = head.prepare(_image())
    target = torch.zeros(1, 40, 50)
    target[:, 10:30, 15:40] = 1.0
    mask_loss(head(torch.randn(1, 16), inputs), target)["mask_loss"].backward()
    grads = {n for n, p in head.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("projection.") for n in grads)
    assert any(n.startswith("sam.mask_decoder.") for n in grads)
    assert not any(n.startswith(("sam.vision_encoder.", "sam.prompt_encoder.")) for n in grads)


def test_the_head_learns_a_mask(sam_dir):
    head = SegmentationHead.from_pretrained(sam_dir, hidden_size=16)
    inputs = head.prepare(_image())
    embedding = head.image_embeddings(inputs["pixel_values"])
    target = torch.zeros(1, 40, 50)
    target[:, 8:32, 10:40] = 1.0
    states = torch.randn(1, 16)
    opt = torch.optim.Adam(head.trainable_parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = mask_loss(head(states, inputs, embedding), target)["mask_loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::8]


def test_missing_sam_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="SAM folder not found"):
        SegmentationHead.from_pretrained(tmp_path / "none", hidden_size=8)


# ------------------------------------------------------------------ <seg> inside the model


def _seg_model(sam_dir):
    from nextgpt import NextGPT

    return NextGPT.from_preset("tiny", [f"model.segmentation.sam={sam_dir}"])


def test_generate_returns_one_mask_per_seg_token_and_saves_overlays(sam_dir, tmp_path):
    model = _seg_model(sam_dir)
    seg = model.llm.layout.seg_id
    assert seg is not None and seg > max(model.llm.layout.placeholder_ids.values())
    image = tmp_path / "in.png"
    _image().save(image)
    real = model.llm.logits
    calls: list[int] = []

    def writes_two_segs(hidden):  # the answer "<seg> <seg>" (a random tiny LLM would not write it)
        logits = real(hidden)
        if len(calls) < 2:
            logits[..., :] = -1e9
            logits[..., seg] = 1e9
        calls.append(1)
        return logits

    model.llm.logits = writes_two_segs
    out = model.generate([image, "segment the fox"], modalities=["text"], max_new_tokens=3)
    assert out.token_ids[:2] == [seg, seg]
    assert len(out.masks) == 2 and out.masks[0].shape == (40, 50) and out.masks[0].dtype == bool
    saved = out.save(tmp_path / "out")
    overlays = [p for p in saved if p.name.startswith("output_mask")]
    assert len(overlays) == 2 and Image.open(overlays[0]).size == (50, 40)
    model.llm.logits = real
    plain = model.generate("no image here", modalities=["text"], max_new_tokens=3)
    assert seg not in plain.token_ids and plain.masks == []  # <seg> is banned without an input image


def test_mask_loss_trains_the_head_through_compute_losses(sam_dir):
    from nextgpt.stages.modules import select_trainable

    model = _seg_model(sam_dir)
    seg = model.llm.layout.seg_id
    assert not any(n.startswith("segmentation.") for n in select_trainable(model, 2))
    chosen = select_trainable(model, 3)  # (last: it sets requires_grad for the step below)
    assert any(n.startswith("segmentation.projection.") for n in chosen)
    assert any(n.startswith("segmentation.sam.mask_decoder.") for n in chosen)
    assert not any(n.startswith("segmentation.sam.vision_encoder.") for n in chosen)
    ids = torch.tensor([[1, 40, 41, seg, 42]])
    target = torch.zeros(1, 40, 50)
    target[:, 10:30, 10:40] = 1.0
    inputs = model.segmentation.prepare(_image())
    model.train()
    losses = model.compute_losses(ids, torch.ones_like(ids), ids.clone(), [], seg_targets=[(inputs, target)])
    assert losses["mask_loss"].item() > 0
    assert losses["loss"].item() == pytest.approx((losses["lm_loss"] + losses["mask_loss"]).item(), rel=1e-5)
    losses["loss"].backward()
    decoder = model.segmentation.sam.mask_decoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())
    assert model.segmentation.projection[0].weight.grad.abs().sum() > 0
    with pytest.raises(InputError, match="1 <seg> tokens for 2 target masks"):
        model.compute_losses(
            ids, torch.ones_like(ids), ids.clone(), [], seg_targets=[(inputs, target.repeat(2, 1, 1))]
        )


def test_the_seg_head_saves_and_loads_with_the_trainable_state(sam_dir, tmp_path):
    from nextgpt import NextGPT

    model = _seg_model(sam_dir)
    with torch.no_grad():
        model.segmentation.projection[0].weight.add_(0.5)
    loaded = NextGPT.from_pretrained(model.save_pretrained(tmp_path / "m"))
    torch.testing.assert_close(
        loaded.segmentation.projection[0].weight, model.segmentation.projection[0].weight
    )
    keys = [k for k in model.trainable_state_dict() if k.startswith("segmentation.")]
    assert keys and not any("vision_encoder" in k for k in keys)
