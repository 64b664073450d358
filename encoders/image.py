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

Loading converts to RGB exactly like upstream (``Image.convert("RGB")``: alpha is dropped, not
composited) after forcing a full decode, so truncated or corrupt files fail here with an
:class:`InputError` instead of later inside the model.
"""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from nextgpt.errors import InputError

from ._io import existing_file, reason

logger = logging.getLogger(__name__)

#: CLIP / ImageBind RGB normalisation (images and video frames).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: Largest image (in pixels) that :func:`load_image` decodes by default: PIL's own warning threshold
#: (about 9459 x 9459), above which an image is treated as a possible decompression bomb.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

#: Largest intermediate image :func:`preprocess_image` will produce when scaling the short side up to
#: ``size`` (an extremely thin image, e.g. 1 x 100000, would otherwise need gigabytes).
MAX_RESIZED_PIXELS = 1 << 26


def _check_pixels(img: Image.Image, name: str, max_pixels: int | None) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InputError(f"image {name} is empty ({w}x{h} pixels)")
    if max_pixels is not None and w * h > max_pixels:
        raise InputError(
            f"image {name} is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} "
            "(possible decompression bomb; pass a larger max_pixels to accept it)"
        )


def load_image(
    src: Image.Image | str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Open and fully decode an image, returned in RGB mode.

    Args:
        src: a PIL image (converted to RGB) or a path to an image file PIL can read.
        max_pixels: refuse images with more pixels than this, checked from the file header before
            any pixel is decoded. ``None``: no limit of ours; PIL's own check (``Image.MAX_IMAGE_PIXELS``:
            a warning above it, an error above twice it) still applies to files and its error becomes
            an :class:`InputError` too.

    Raises:
        InputError: missing file, unknown or undecodable format, truncated data, an empty image or one
            above the pixel limit. The message names the file.
    """
    if isinstance(src, Image.Image):
        name = "(PIL image)"
        _check_pixels(src, name, max_pixels)
        try:
            return src.convert("RGB")
        except (OSError, ValueError, SyntaxError) as exc:  # lazily loaded, broken image
            raise InputError(f"cannot decode image {name}: {reason(exc)}") from exc
    if not isinstance(src, (str, os.PathLike)):
        raise InputError(f"image must be a PIL image or a path, got {type(src).__name__}")

    path = existing_file(src, "image")
    name = f"'{path}'"
    try:
        with warnings.catch_warnings():
            # While opening, PIL warns about images above Image.MAX_IMAGE_PIXELS and raises above twice
            # that. With a limit of our own, checked from the header before decoding, its warning is
            # redundant; a warning turned into an error by the caller's filters is still caught below.
            if max_pixels is not None:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_pixels(img, name, max_pixels)
                img.load()  # full decode: truncated / corrupt data fails here, not later
                return img.convert("RGB")
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image {name} is too large (possible decompression bomb): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InputError(f"cannot decode image {name}: unknown or unsupported image format") from exc
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise InputError(f"cannot decode image {name}: {reason(exc)}") from exc
    except Exception as exc:  # any other decoder failure inside a PIL plugin
        raise InputError(f"cannot decode image {name}: {reason(exc)}") from exc


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
    src: Image.Image | str | os.PathLike,
    size: int = 224,
    *,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> torch.Tensor:
    """ImageBind vision input for one image: float32 ``[3, size, size]``, CLIP-normalised.

    Args:
        src: a PIL image or a path (see :func:`load_image`).
        size: output side (224 for ImageBind).
        max_pixels: decompression-bomb limit passed to :func:`load_image`.

    Raises:
        InputError: the image cannot be read (see :func:`load_image`).
    """
    img = load_image(src, max_pixels=max_pixels)
    img = center_crop(resize_short_side(img, size), size)
    return normalize(pil_to_tensor(img), CLIP_MEAN, CLIP_STD)
