"""Image loading and the ImageBind vision preprocessing, in PIL + torch only.

Reproduces the transform chain of upstream ImageBind ``load_and_transform_vision_data`` (torchvision
``Resize(224, BICUBIC)`` -> ``CenterCrop(224)`` -> ``ToTensor`` -> ``Normalize(CLIP mean/std)``) without
torchvision, with the same numerics:

- resize: the short side becomes ``size`` and the long side ``int(size * long / short)`` (torchvision's
  rule for a single-int size); the image is left untouched when it already has that size, otherwise
  PIL's own ``Image.resize`` with BICUBIC (the same call torchvision makes on PIL images, so the pixels
  are identical);
- center crop: offsets ``int(round((H - size) / 2.0))`` and the same for the width (Python's round, so
  halves go to the even neighbour);
- to tensor: uint8 HWC -> float32 CHW divided by 255;
- normalise: ``(x - mean) / std`` per channel in float32 with the CLIP constants below (also used by
  the video preprocessing).

Loading (:func:`load_image`) is :func:`nextgpt.mediaio.image.load_image`, the library's one image
decoder: it converts to RGB exactly like upstream (``Image.convert("RGB")``: alpha is dropped, not
composited) after forcing a full decode, so truncated or corrupt files fail there with an
:class:`InputError` instead of later inside the model. The pixel limit
(:data:`DEFAULT_MAX_IMAGE_PIXELS`) is defined there too.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from PIL import Image

from nextgpt.errors import InputError
from nextgpt.mediaio.image import DEFAULT_MAX_IMAGE_PIXELS, load_image

logger = logging.getLogger(__name__)

#: CLIP / ImageBind RGB normalisation (images and video frames).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: Largest intermediate image :func:`preprocess_image` will produce when scaling the short side up to
#: ``size`` (an extremely thin image, e.g. 1 x 100000, would otherwise need gigabytes).
MAX_RESIZED_PIXELS = 1 << 26

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "MAX_RESIZED_PIXELS",
    "center_crop",
    "load_image",
    "normalize",
    "pil_to_tensor",
    "preprocess_image",
    "resize_short_side",
]


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    """Scale a PIL image so that its short side is ``size`` (PIL bicubic, torchvision's size rule)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    if new_w * new_h > MAX_RESIZED_PIXELS:
        raise InputError(
            f"image of {w}x{h} pixels has too extreme an aspect ratio: scaling its short side to {size} "
            f"would need a {new_w}x{new_h} image"
        )
    return img.resize((new_w, new_h), Image.Resampling.BICUBIC)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Crop the central ``size`` x ``size`` square (torchvision's offset rounding).

    The image must be at least ``size`` on both sides (true after :func:`resize_short_side`).
    """
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"center_crop needs an image of at least {size}x{size}, got {w}x{h}")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(x - mean) / std`` along the first (channel) dimension of ``x``, in ``x``'s dtype (new tensor)."""
    shape = (-1,) + (1,) * (x.dim() - 1)  # broadcast over every dimension after the channels
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor ``[3, H, W]`` in [0, 1]."""
    arr = np.asarray(img, dtype=np.uint8)  # [H, W, 3]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous().to(torch.float32).div(255)


def preprocess_image(
    src: Image.Image | str | os.PathLike | bytes,
    size: int = 224,
    *,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> torch.Tensor:
    """ImageBind vision input for one image: float32 ``[3, size, size]``, CLIP-normalised.

    Args:
        src: a PIL image, a path or the bytes of an image file (see :func:`load_image`).
        size: output side (224 for ImageBind).
        max_pixels: decompression-bomb limit passed to :func:`load_image`.

    Raises:
        InputError: the image cannot be read (see :func:`load_image`).
    """
    img = load_image(src, max_pixels=max_pixels)
    img = center_crop(resize_short_side(img, size), size)
    return normalize(pil_to_tensor(img), CLIP_MEAN, CLIP_STD)
