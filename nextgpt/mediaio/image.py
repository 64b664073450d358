"""Images: decode (from a path, encoded bytes or a PIL image) and encode / write.

Every reader of the library decodes images here: the ImageBind preprocessing
(:func:`nextgpt.encoders.load_image`), the training shards (:func:`nextgpt.stages.data.decode_image`)
and the web demo's upload check. Decoding converts to RGB exactly like upstream ImageBind
(``Image.convert("RGB")``: alpha is dropped, not composited) after forcing a full decode, so truncated
or corrupt data fails here with an :class:`~nextgpt.errors.InputError` instead of later inside the
model.

The pixel limit (:data:`DEFAULT_MAX_IMAGE_PIXELS`) is defined here and only here.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from nextgpt.errors import InputError

from ._files import BYTES_TYPES, existing_file, memory_file, reason

#: Largest image (in pixels) decoded by default: PIL's own warning threshold (about 9459 x 9459),
#: above which an image is treated as a possible decompression bomb. The one definition of the limit:
#: ``nextgpt.encoders.image.DEFAULT_MAX_IMAGE_PIXELS`` and ``nextgpt.stages.data.shards.MAX_IMAGE_PIXELS``
#: are this constant.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

#: Formats :func:`encode_image` writes (file extension -> PIL format name).
IMAGE_ENCODINGS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def check_pixels(img: Image.Image, name: str, max_pixels: int | None) -> None:
    """Refuse an image without pixels or with more than ``max_pixels`` (from its header: PIL reads
    the size before any pixel is decoded)."""
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InputError(f"image {name} is empty ({w}x{h} pixels)")
    if max_pixels is not None and w * h > max_pixels:
        raise InputError(
            f"image {name} is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} "
            "(possible decompression bomb; pass a larger max_pixels to accept it)"
        )


def load_image(
    src: Image.Image | str | os.PathLike | bytes,
    *,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Open and fully decode an image, returned in RGB mode.

    Args:
        src: a PIL image (converted to RGB), a path to an image file PIL can read, or the bytes of one.
        max_pixels: refuse images with more pixels than this, checked from the header before any
            pixel is decoded. ``None``: no limit of ours; PIL's own check (``Image.MAX_IMAGE_PIXELS``:
            a warning above it, an error above twice it) still applies and its error becomes an
            :class:`InputError` too.
        name: how messages name the image (default: the quoted path, ``(image data)`` for bytes).

    Raises:
        InputError: missing file, unknown or undecodable format, truncated data, an empty image or one
            above the pixel limit. The message names the file.
    """
    if isinstance(src, Image.Image):
        name = name or "(PIL image)"
        check_pixels(src, name, max_pixels)
        try:
            return src.convert("RGB")
        except (OSError, ValueError, SyntaxError) as exc:  # lazily loaded, broken image
            raise InputError(f"cannot decode image {name}: {reason(exc)}") from exc
    if isinstance(src, BYTES_TYPES):
        name = name or "(image data)"
        return _decode(memory_file(src, "image", name), name, max_pixels)
    if not isinstance(src, (str, os.PathLike)):
        raise InputError(
            f"image must be a PIL image or a path (or the bytes of an image file), got {type(src).__name__}"
        )
    path = existing_file(src, "image")
    return _decode(path, name or f"'{path}'", max_pixels)


def _decode(fp: Path | io.BytesIO, name: str, max_pixels: int | None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # While opening, PIL warns about images above Image.MAX_IMAGE_PIXELS and raises above twice
            # that. With a limit of our own, checked from the header before decoding, its warning is
            # redundant; a warning turned into an error by the caller's filters is still caught below.
            if max_pixels is not None:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                check_pixels(img, name, max_pixels)
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


def decode_image(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Fully decode encoded image bytes to an RGB ``PIL.Image.Image`` (:func:`load_image` on bytes).

    Raises:
        InputError: (a ``ValueError``) undecodable, empty, or above ``max_pixels``.
    """
    return load_image(bytes(data), max_pixels=max_pixels)


def decode_mask(
    data: bytes,
    size: tuple[int, int] | None = None,
    *,
    name: str = "mask",
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
):
    """A binary mask from encoded image bytes: a bool ``[H, W]`` numpy array, true where the pixel is
    non-zero (a palette image: where its index is non-zero; other modes through 8-bit grey).

    Args:
        data: the encoded mask (PNG, any mode).
        size: the ``(width, height)`` the mask must have (its image's), or ``None``.
        name: what to call it in errors.
        max_pixels: refuse masks with more pixels than this (checked from the header).

    Raises:
        InputError: undecodable, above ``max_pixels``, or not ``size``.
    """
    import numpy as np

    try:
        with warnings.catch_warnings():
            if max_pixels is not None:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(data))) as img:
                check_pixels(img, name, max_pixels)
                img.load()
                values = np.asarray(img if img.mode == "P" else img.convert("L"))
    except InputError:
        raise
    except Exception as exc:  # any decoder failure (see _decode)
        raise InputError(f"cannot decode {name}: {reason(exc)}") from exc
    if size is not None and (values.shape[1], values.shape[0]) != tuple(size):
        raise InputError(
            f"{name} is {values.shape[1]}x{values.shape[0]} but its image is {size[0]}x{size[1]}"
        )
    return values > 0


def encode_mask(mask) -> bytes:
    """PNG bytes (1-bit) of a binary ``[H, W]`` mask (bool or 0/1 array), read back by
    :func:`decode_mask`."""
    import numpy as np

    array = np.asarray(mask)
    if array.ndim != 2 or 0 in array.shape:
        raise InputError(f"a mask must be a non-empty [H, W] array, got shape {array.shape}")
    buf = io.BytesIO()
    Image.fromarray(array.astype(bool)).save(buf, format="PNG")
    return buf.getvalue()


def encode_image(image: Image.Image, fmt: str = "jpg", *, quality: int = 90) -> bytes:
    """Encode a PIL image as ``fmt`` (jpg, png or webp); JPEG is written from its RGB conversion."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in IMAGE_ENCODINGS:
        raise ValueError(f"cannot encode images as {fmt!r}; use jpg, png or webp")
    buf = io.BytesIO()
    if IMAGE_ENCODINGS[fmt] == "JPEG":
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    elif fmt == "png":
        image.save(buf, format="PNG")
    else:
        image.save(buf, format="WEBP", quality=quality)
    return buf.getvalue()


def write_image(path: str | os.PathLike, image: Image.Image, *, quality: int = 90) -> Path:
    """Write ``image`` to ``path`` in the format its extension names (see :func:`encode_image`)."""
    p = Path(os.fspath(path))
    p.write_bytes(encode_image(image, p.suffix or "png", quality=quality))
    return p
