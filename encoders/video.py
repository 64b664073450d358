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

Hostile input is bounded before any frame is decoded: the frame size (default
:data:`DEFAULT_MAX_VIDEO_PIXELS`) and duration (:data:`DEFAULT_MAX_VIDEO_SECONDS`) come from the
container header (PyAV), the duration again from the frame count and rate, and the pixels one call
decodes are limited (:data:`DEFAULT_MAX_DECODED_PIXELS`).
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
from nextgpt.media import MAX_FPS, Video

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


#: Largest frame (width x height pixels) :func:`preprocess_video` accepts by default: 36 MP holds 8K UHD
#: (7680 x 4320 = 33.2 MP) and 8K DCI (8192 x 4320 = 35.4 MP). Read from the container header (PyAV)
#: before decord opens the file.
DEFAULT_MAX_VIDEO_PIXELS = 36_000_000
#: Longest video (seconds) accepted by default, from the header and again from decord's frame count.
DEFAULT_MAX_VIDEO_SECONDS = 600.0
#: Most pixels one :func:`preprocess_video` call decodes and holds by default (the kept frames times
#: their size): the default 10 frames (5 clips x 2) at the default frame limit. About 1.1 GB as RGB.
DEFAULT_MAX_DECODED_PIXELS = 10 * DEFAULT_MAX_VIDEO_PIXELS


def _check_frame_size(name: str, width: int, height: int, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"cannot decode video {name}: its frames are empty ({width}x{height} pixels)")
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(
            f"video {name} has frames of {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels} per frame (pass a larger max_pixels to accept it)"
        )


def _check_rate_and_length(name: str, num_frames: int, fps: float, max_seconds: float | None) -> None:
    if num_frames <= 0:
        raise InputError(f"cannot decode video {name}: it has no video frames")
    if not (math.isfinite(fps) and 0.0 < fps <= MAX_FPS):
        raise InputError(
            f"cannot decode video {name}: invalid frame rate {fps} (valid: finite, in (0, {MAX_FPS:g}] fps)"
        )
    seconds = num_frames / fps
    if max_seconds is not None and seconds > max_seconds:
        raise InputError(
            f"video {name} is too long: {num_frames} frames at {fps:.3f} fps = {seconds:.1f} s, above the "
            f"limit of {max_seconds:g} s (pass a larger max_seconds to accept it)"
        )


def _probe_header(
    path: os.PathLike, name: str, max_pixels: int | None, max_seconds: float | None
) -> tuple[int, int]:
    """Check the frame size and the duration a video file's header gives, before any frame is decoded;
    returns ``(width, height)``.

    PyAV reads the container header (and at most what FFmpeg's stream probing needs); a file whose
    header gives no frame size is refused, since nothing could then bound the decoding.
    """
    try:
        import av

        with av.open(os.fspath(path)) as container:
            streams = container.streams.video
            if not streams:
                raise ValueError("the file has no video stream")
            try:
                stream = container.streams.best("video") or streams[0]
            except Exception:
                stream = streams[0]
            width = int(stream.codec_context.width or 0)
            height = int(stream.codec_context.height or 0)
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = container.duration / 1e6 if container.duration else None
    except Exception as exc:
        raise InputError(f"cannot decode video {name}: {reason(exc)}") from exc
    _check_frame_size(name, width, height, max_pixels)
    if max_seconds is not None and seconds is not None and seconds > max_seconds:
        raise InputError(
            f"video {name} is too long: its header says {seconds:.1f} s, above the limit of {max_seconds:g} s "
            "(pass a larger max_seconds to accept it)"
        )
    return width, height


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
        self.height, self.width = int(frames.shape[1]), int(frames.shape[2])

    def get(self, indices: Sequence[int]) -> np.ndarray:
        return self.frames[list(indices)]  # [k, H, W, 3]


class _DecordFrames:
    """Frames of a video file, decoded by decord (the decoder upstream ImageBind uses)."""

    def __init__(self, path: os.PathLike, max_pixels: int | None, max_seconds: float | None) -> None:
        self.name = f"'{path}'"
        try:
            import decord
        except ImportError as exc:  # pragma: no cover - decord is a dependency
            raise InputError(f"cannot decode video {self.name}: decord is not installed") from exc
        # Frame size and duration from the header, before decord allocates anything.
        self.width, self.height = _probe_header(path, self.name, max_pixels, max_seconds)
        try:
            self._reader = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0))
            self.num_frames = len(self._reader)
            self.fps = float(self._reader.get_avg_fps())
        except Exception as exc:
            raise InputError(f"cannot decode video {self.name}: {reason(exc)}") from exc
        _check_rate_and_length(self.name, self.num_frames, self.fps, max_seconds)

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

    def __init__(self, path: os.PathLike, max_pixels: int | None, max_seconds: float | None) -> None:
        self.name = f"'{path}'"
        self._path = os.fspath(path)
        try:
            import av

            with av.open(self._path) as container:
                if not container.streams.video:
                    raise ValueError("the file has no video stream")
                stream = container.streams.video[0]
                self.width = int(stream.codec_context.width or 0)
                self.height = int(stream.codec_context.height or 0)
                _check_frame_size(self.name, self.width, self.height, max_pixels)  # before decoding
                rate = stream.average_rate or stream.guessed_rate
                self.num_frames = sum(1 for packet in container.demux(stream) if packet.size)
                seconds = (container.duration or 0) / 1e6
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"cannot decode video {self.name}: {reason(exc)}") from exc
        if self.num_frames <= 0:
            raise InputError(f"cannot decode video {self.name}: it has no video frames")
        self.fps = float(rate) if rate else (self.num_frames / seconds if seconds > 0 else 0.0)
        _check_rate_and_length(self.name, self.num_frames, self.fps, max_seconds)

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


def _open(
    src: Video | str | os.PathLike, max_pixels: int | None, max_seconds: float | None
) -> _ArrayFrames | _DecordFrames | _AVFrames:
    if isinstance(src, (str, os.PathLike)):
        src = Video(src)
    if not isinstance(src, Video):
        raise InputError(f"video must be a nextgpt.Video or a path, got {type(src).__name__}")
    if src.path is None:
        frames = _ArrayFrames(src)
        _check_frame_size(frames.name, frames.width, frames.height, max_pixels)
        _check_rate_and_length(frames.name, frames.num_frames, frames.fps, max_seconds)
        return frames
    path = existing_file(src.path, "video")
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise InputError(
            f"cannot decode video '{path}': unknown extension '{path.suffix}' "
            f"(supported: {', '.join(sorted(VIDEO_EXTENSIONS))})"
        )
    if path.suffix.lower() == ".gif":
        return _AVFrames(path, max_pixels, max_seconds)
    return _DecordFrames(path, max_pixels, max_seconds)


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
    frames = _open(src, max_pixels, max_seconds)
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
    _check_frame_size(frames.name, int(decoded.shape[2]), int(decoded.shape[1]), max_pixels)
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
