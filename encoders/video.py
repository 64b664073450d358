"""Video loading and the ImageBind video preprocessing, in torch + numpy (frames decoded by decord;
animated GIFs, which decord cannot read, by PyAV).

Reproduces upstream ImageBind ``load_and_transform_video_data`` (pytorchvideo's decord-backed
``EncodedVideo``, ``UniformTemporalSubsample``, ``ShortSideScale``, torchvision's ``NormalizeVideo`` and
ImageBind's own ``SpatialCrop``) without pytorchvideo or torchvision:

- duration is ``num_frames / avg_fps`` (decord's average frame rate);
- 5 clips of 2 s are placed by :func:`nextgpt.encoders.clips.clip_timepoints`; a clip ``[start, end)``
  holds the frames ``ceil(fps * start) .. min(ceil(fps * end), num_frames) - 1`` (the product is taken
  in floating point, as pytorchvideo does with a float rate and a ``Fraction`` time);
- of those ``T`` frames, ``frames_per_clip`` are kept at ``linspace(0, T - 1, n)`` (float32, clamped,
  truncated to integers): the first and the last for ``n = 2``. Only the kept frames are decoded;
  decord decodes frame-accurately, so they are the frames upstream would keep after decoding all ``T``;
- frames become float32 in [0, 1] (``/ 255``), laid out ``[C, T, H, W]``;
- short side scaled to ``size`` with ``torch.nn.functional.interpolate`` (bilinear,
  ``align_corners=False``, no antialiasing), long side ``floor(long / short * size)``;
- CLIP normalisation ``(x - mean) / std`` per channel;
- three ``size`` x ``size`` crops: offsets ``ceil((H - size) / 2)`` / ``ceil((W - size) / 2)`` for the
  centre; left / centre / right for landscape (or square) frames, top / centre / bottom for portrait.

The result is ``[clips * 3, 3, frames_per_clip, size, size]``, clip-major then crop.

Frames are read through :func:`nextgpt.mediaio.video.open_frames`, the library's one video reader.
Hostile input is bounded before any frame is decoded: the frame size (default
:data:`DEFAULT_MAX_VIDEO_PIXELS`) and duration (:data:`DEFAULT_MAX_VIDEO_SECONDS`) come from the
container header (PyAV, :func:`nextgpt.mediaio.sniff.probe_container`), the duration again from the
frame count and rate, and the pixels one call decodes are limited (:data:`DEFAULT_MAX_DECODED_PIXELS`).
"""

from __future__ import annotations

import logging
import math
import os

import torch
import torch.nn.functional as F

from nextgpt.errors import InputError
from nextgpt.media import Video
from nextgpt.mediaio.video import (
    DEFAULT_MAX_VIDEO_PIXELS,
    DEFAULT_MAX_VIDEO_SECONDS,
    VIDEO_EXTENSIONS,
    check_frame_size,
    open_frames,
)

from .clips import clip_timepoints
from .image import CLIP_MEAN, CLIP_STD, normalize

logger = logging.getLogger(__name__)

#: Most pixels one :func:`preprocess_video` call decodes and holds by default (the kept frames times
#: their size): the default 10 frames (5 clips x 2) at the default frame limit. About 1.1 GB as RGB.
DEFAULT_MAX_DECODED_PIXELS = 10 * DEFAULT_MAX_VIDEO_PIXELS

__all__ = [
    "DEFAULT_MAX_DECODED_PIXELS",
    "DEFAULT_MAX_VIDEO_PIXELS",
    "DEFAULT_MAX_VIDEO_SECONDS",
    "VIDEO_EXTENSIONS",
    "clip_frame_indices",
    "preprocess_video",
    "short_side_scale",
    "uniform_crop",
]


def clip_frame_indices(
    num_frames: int, fps: float, start: float, end: float, frames_per_clip: int
) -> list[int]:
    """Indices of the frames kept for the clip ``[start, end)`` seconds (see the module docstring)."""
    first = math.ceil(fps * float(start))
    stop = min(math.ceil(fps * float(end)), num_frames)
    count = stop - first
    if count <= 0:
        raise ValueError(f"clip [{float(start):.3f}, {float(end):.3f}) s holds no frame")
    picks = torch.linspace(0, count - 1, frames_per_clip)
    picks = torch.clamp(picks, 0, count - 1).long()
    return [first + int(p) for p in picks]


def short_side_scale(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``x [C, T, H, W]`` (float32) so that min(H, W) = ``size``."""
    _, _, h, w = x.shape
    if w < h:
        new_h, new_w = int(math.floor((float(h) / w) * size)), size
    else:
        new_h, new_w = size, int(math.floor((float(w) / h) * size))
    # C acts as the batch and T as the channels of a 2-D interpolation.
    return F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)


def uniform_crop(x: torch.Tensor, size: int, spatial_idx: int) -> torch.Tensor:
    """Crop ``size`` x ``size`` from ``x [C, T, H, W]``: 0/1/2 = left/centre/right (landscape or square)
    or top/centre/bottom (portrait)."""
    if spatial_idx not in (0, 1, 2):
        raise ValueError(f"spatial_idx must be 0, 1 or 2, got {spatial_idx}")
    h, w = x.shape[2], x.shape[3]
    y0 = int(math.ceil((h - size) / 2))
    x0 = int(math.ceil((w - size) / 2))
    if h > w:
        if spatial_idx == 0:
            y0 = 0
        elif spatial_idx == 2:
            y0 = h - size
    else:
        if spatial_idx == 0:
            x0 = 0
        elif spatial_idx == 2:
            x0 = w - size
    return x[:, :, y0 : y0 + size, x0 : x0 + size]


def preprocess_video(
    src: Video | str | os.PathLike,
    *,
    clip_duration: float = 2.0,
    clips_per_video: int = 5,
    frames_per_clip: int = 2,
    size: int = 224,
    max_pixels: int | None = DEFAULT_MAX_VIDEO_PIXELS,
    max_seconds: float | None = DEFAULT_MAX_VIDEO_SECONDS,
    max_decoded_pixels: int | None = DEFAULT_MAX_DECODED_PIXELS,
) -> torch.Tensor:
    """ImageBind vision input for one video: float32 ``[clips * 3, 3, frames_per_clip, size, size]``.

    Args:
        src: a :class:`~nextgpt.media.Video` (file or in-memory uint8 frames) or a path.
        clip_duration: seconds per clip.
        clips_per_video: clips placed over the video.
        frames_per_clip: frames kept per clip (ImageBind's temporal patch covers 2).
        size: output side; frames are short-side scaled to it, then cropped 3 times.
        max_pixels: refuse frames larger than this (width x height). For files it is read from the
            container header (PyAV) before decord opens the file or any frame is decoded.
        max_seconds: refuse videos longer than this: the header's duration first, then the frame
            count over the average frame rate (decord's, or PyAV's for GIFs) before decoding.
        max_decoded_pixels: refuse a call that would decode and hold more pixels than this (the
            distinct frames the clips keep times the frame size), checked before decoding.

        ``None`` lifts a limit. Frame rates must be finite and in (0, :data:`~nextgpt.media.MAX_FPS`].

    Raises:
        InputError: missing file, unknown extension, corrupt or truncated file, no decodable frame, a
            header without a frame size, an invalid frame rate, or a limit exceeded (the message names
            the file, the measured value and the limit).
    """
    if frames_per_clip < 1:
        raise ValueError(f"frames_per_clip must be >= 1, got {frames_per_clip}")
    frames = open_frames(src, max_pixels=max_pixels, max_seconds=max_seconds)
    duration = float(frames.num_frames) / float(frames.fps)
    clips = clip_timepoints(duration, clip_duration, clips_per_video)
    try:
        per_clip = [
            clip_frame_indices(frames.num_frames, frames.fps, start, end, frames_per_clip)
            for start, end in clips
        ]
    except ValueError as exc:
        raise InputError(f"cannot read video {frames.name}: {exc}") from exc

    wanted = sorted({i for idx in per_clip for i in idx})
    pixels = len(wanted) * frames.width * frames.height
    if max_decoded_pixels is not None and pixels > max_decoded_pixels:
        raise InputError(
            f"video {frames.name}: decoding {len(wanted)} frames of {frames.width}x{frames.height} means "
            f"{pixels} pixels, above the limit of {max_decoded_pixels} (pass a larger max_decoded_pixels "
            "to accept it)"
        )
    decoded = frames.get(wanted)  # [k, H, W, 3] uint8
    # The decoder's frames, in case they are larger than the header said.
    check_frame_size(frames.name, int(decoded.shape[2]), int(decoded.shape[1]), max_pixels)
    row = {frame: k for k, frame in enumerate(wanted)}
    logger.debug(
        "video %s: %d frames at %.3f fps, decoded %s", frames.name, frames.num_frames, frames.fps, wanted
    )

    out = []
    for idx in per_clip:
        clip = torch.from_numpy(decoded[[row[i] for i in idx]])  # [T, H, W, 3] uint8
        clip = clip.to(torch.float32).permute(3, 0, 1, 2).contiguous()  # [3, T, H, W]
        clip = clip / 255.0
        clip = normalize(short_side_scale(clip, size), CLIP_MEAN, CLIP_STD)
        out.extend(uniform_crop(clip, size, k) for k in (0, 1, 2))
    return torch.stack(out, dim=0)  # [clips * 3, 3, T, size, size]
