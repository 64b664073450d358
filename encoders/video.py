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
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from nextgpt.errors import InputError
from nextgpt.media import Video

from ._io import existing_file, reason
from .clips import clip_timepoints
from .image import CLIP_MEAN, CLIP_STD, normalize

logger = logging.getLogger(__name__)

#: File extensions :func:`preprocess_video` hands to decord.
VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".m4v",
        ".webm",
        ".avi",
        ".mov",
        ".mkv",
        ".gif",
        ".mpg",
        ".mpeg",
        ".flv",
        ".wmv",
        ".ogv",
        ".3gp",
        ".ts",
    }
)


class _ArrayFrames:
    """Frames held in memory (a :class:`~nextgpt.media.Video` built from an array)."""

    def __init__(self, video: Video) -> None:
        frames = np.asarray(video.source)
        if frames.dtype != np.uint8:
            raise InputError(f"{video!r}: video arrays must be uint8 RGB [T, H, W, 3], got {frames.dtype}")
        if frames.shape[1] == 0 or frames.shape[2] == 0:
            raise InputError(f"{video!r}: frames are empty ({frames.shape[1]}x{frames.shape[2]})")
        self.name = repr(video)
        self.frames = frames
        self.num_frames = int(frames.shape[0])
        self.fps = float(video.fps)

    def get(self, indices: Sequence[int]) -> np.ndarray:
        return self.frames[list(indices)]  # [k, H, W, 3]


class _DecordFrames:
    """Frames of a video file, decoded by decord (the decoder upstream ImageBind uses)."""

    def __init__(self, path: os.PathLike) -> None:
        self.name = f"'{path}'"
        try:
            import decord
        except ImportError as exc:  # pragma: no cover - decord is a dependency
            raise InputError(f"cannot decode video {self.name}: decord is not installed") from exc
        try:
            self._reader = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0))
            self.num_frames = len(self._reader)
            self.fps = float(self._reader.get_avg_fps())
        except Exception as exc:
            raise InputError(f"cannot decode video {self.name}: {reason(exc)}") from exc
        if self.num_frames <= 0:
            raise InputError(f"cannot decode video {self.name}: it has no video frames")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise InputError(f"cannot decode video {self.name}: invalid frame rate {self.fps}")

    def get(self, indices: Sequence[int]) -> np.ndarray:
        try:
            batch = self._reader.get_batch(list(indices))
            # decord returns its own NDArray, or a torch tensor if some other code set its bridge.
            arr = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
        except Exception as exc:
            raise InputError(f"cannot decode video {self.name}: {reason(exc)}") from exc
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[1] == 0 or arr.shape[2] == 0:
            raise InputError(f"cannot decode video {self.name}: unexpected frame batch {arr.shape}")
        return arr.astype(np.uint8, copy=False)  # [k, H, W, 3]


class _AVFrames:
    """Frames of an animated GIF, decoded by PyAV (decord cannot count GIF frames).

    The first pass only counts packets (one per GIF frame); the second decodes up to the last frame
    needed and keeps only the requested ones. Alpha is dropped, as in a conversion to RGB.
    """

    def __init__(self, path: os.PathLike) -> None:
        self.name = f"'{path}'"
        self._path = os.fspath(path)
        try:
            import av

            with av.open(self._path) as container:
                if not container.streams.video:
                    raise ValueError("the file has no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                self.num_frames = sum(1 for packet in container.demux(stream) if packet.size)
                seconds = (container.duration or 0) / 1e6
        except Exception as exc:
            raise InputError(f"cannot decode video {self.name}: {reason(exc)}") from exc
        if self.num_frames <= 0:
            raise InputError(f"cannot decode video {self.name}: it has no video frames")
        self.fps = float(rate) if rate else (self.num_frames / seconds if seconds > 0 else 0.0)
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise InputError(f"cannot decode video {self.name}: invalid frame rate {self.fps}")

    def get(self, indices: Sequence[int]) -> np.ndarray:
        wanted = set(indices)
        last = max(wanted)
        kept: dict[int, np.ndarray] = {}
        try:
            import av

            with av.open(self._path) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i in wanted:
                        kept[i] = frame.to_ndarray(format="rgb24")  # [H, W, 3]
                    if i >= last:
                        break
        except Exception as exc:
            raise InputError(f"cannot decode video {self.name}: {reason(exc)}") from exc
        missing = sorted(wanted - kept.keys())
        if missing:
            raise InputError(f"cannot decode video {self.name}: frames {missing[:5]} could not be decoded")
        return np.stack([kept[i] for i in indices])  # [k, H, W, 3]


def _open(src: Video | str | os.PathLike) -> _ArrayFrames | _DecordFrames | _AVFrames:
    if isinstance(src, (str, os.PathLike)):
        src = Video(src)
    if not isinstance(src, Video):
        raise InputError(f"video must be a nextgpt.Video or a path, got {type(src).__name__}")
    if src.path is None:
        return _ArrayFrames(src)
    path = existing_file(src.path, "video")
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise InputError(
            f"cannot decode video '{path}': unknown extension '{path.suffix}' "
            f"(supported: {', '.join(sorted(VIDEO_EXTENSIONS))})"
        )
    if path.suffix.lower() == ".gif":
        return _AVFrames(path)
    return _DecordFrames(path)


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
) -> torch.Tensor:
    """ImageBind vision input for one video: float32 ``[clips * 3, 3, frames_per_clip, size, size]``.

    Args:
        src: a :class:`~nextgpt.media.Video` (file or in-memory uint8 frames) or a path.
        clip_duration: seconds per clip.
        clips_per_video: clips placed over the video.
        frames_per_clip: frames kept per clip (ImageBind's temporal patch covers 2).
        size: output side; frames are short-side scaled to it, then cropped 3 times.

    Raises:
        InputError: missing file, unknown extension, corrupt or truncated file, no decodable frame.
    """
    if frames_per_clip < 1:
        raise ValueError(f"frames_per_clip must be >= 1, got {frames_per_clip}")
    frames = _open(src)
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
    decoded = frames.get(wanted)  # [k, H, W, 3] uint8
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
