"""Video: read frames (from a path, encoded bytes or an in-memory :class:`~nextgpt.media.Video`) and
encode / write H.264 mp4.

Readers:

- :func:`open_frames` gives random access to the frames of a :class:`~nextgpt.media.Video` or a file,
  decoding only the frames asked for: decord (the decoder upstream ImageBind uses) for video files,
  PyAV for animated GIFs (decord cannot count GIF frames), the array itself for in-memory frames. The
  frame size (default :data:`DEFAULT_MAX_VIDEO_PIXELS`) and the duration
  (:data:`DEFAULT_MAX_VIDEO_SECONDS`) are checked from the container header
  (:func:`nextgpt.mediaio.sniff.probe_container`) before decord opens the file, and the duration again
  from the frame count and rate. The ImageBind preprocessing (:func:`nextgpt.encoders.preprocess_video`)
  reads through it.
- :func:`decode_video` decodes a whole clip (every frame, or every k-th) with PyAV to a
  :class:`~nextgpt.media.Video`: what the training shards hold (:func:`nextgpt.stages.data.decode_video`).
- :func:`read_segments` decodes time segments of a file scaled to a width (the demo dataset's clips).

Writer: :func:`encode_video` (bytes) and :func:`write_mp4` (a file) are the one H.264 writer of the
library (training shards, the demo dataset, saved generation outputs). Odd-size policy: yuv420p needs
even frame sizes, so a frame with an odd width or height is **padded** by one column on the right and/or
one row at the bottom that repeat the edge pixels (``numpy.pad(mode="edge")``); no pixel of the input
is lost, and the decoded video is one pixel wider/taller than the frames given.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from nextgpt.errors import InputError
from nextgpt.media import MAX_FPS, Video, check_fps
from nextgpt.modality import Modality

from ._files import BYTES_TYPES, existing_file, memory_file, reason
from .sniff import probe_container

#: File extensions :func:`open_frames` reads (decord; ``.gif`` through PyAV).
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

#: Largest frame (width x height pixels) :func:`open_frames` accepts by default: 36 MP holds 8K UHD
#: (7680 x 4320 = 33.2 MP) and 8K DCI (8192 x 4320 = 35.4 MP). Read from the container header (PyAV)
#: before decord opens the file.
DEFAULT_MAX_VIDEO_PIXELS = 36_000_000
#: Longest video (seconds) accepted by default, from the header and again from decord's frame count.
DEFAULT_MAX_VIDEO_SECONDS = 600.0

#: x264 settings of :func:`encode_video`: one thread and no macroblock-tree rate control (it gave
#: run-to-run differences), so the same frames give the same bytes.
H264_OPTIONS = {"preset": "medium", "threads": "1", "x264-params": "mbtree=0"}


# --------------------------------------------------------------------------------------------------
# limits


def check_frame_size(name: str, width: int, height: int, max_pixels: int | None) -> None:
    """Refuse empty frames and frames above ``max_pixels`` (width x height)."""
    if width <= 0 or height <= 0:
        raise InputError(f"cannot decode video {name}: its frames are empty ({width}x{height} pixels)")
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(
            f"video {name} has frames of {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels} per frame (pass a larger max_pixels to accept it)"
        )


def check_rate_and_length(name: str, num_frames: int, fps: float, max_seconds: float | None) -> None:
    """Refuse no frames, a frame rate outside (0, :data:`~nextgpt.media.MAX_FPS`] and videos longer than
    ``max_seconds`` (``num_frames / fps``)."""
    if num_frames <= 0:
        raise InputError(f"cannot decode video {name}: it has no video frames")
    try:
        fps = check_fps(fps)  # the one statement of the valid range (nextgpt.media)
    except InputError:
        raise InputError(
            f"cannot decode video {name}: invalid frame rate {fps} (valid: finite, in (0, {MAX_FPS:g}] fps)"
        ) from None
    seconds = num_frames / fps
    if max_seconds is not None and seconds > max_seconds:
        raise InputError(
            f"video {name} is too long: {num_frames} frames at {fps:.3f} fps = {seconds:.1f} s, above the "
            f"limit of {max_seconds:g} s (pass a larger max_seconds to accept it)"
        )


def probe_header(
    path: os.PathLike, name: str, max_pixels: int | None, max_seconds: float | None
) -> tuple[int, int]:
    """Check the frame size and the duration a video file's header gives, before any frame is decoded;
    returns ``(width, height)``.

    PyAV reads the container header (:func:`~nextgpt.mediaio.sniff.probe_container`); a file whose
    header gives no frame size is refused, since nothing could then bound the decoding.
    """
    try:
        info = probe_container(path)
        if info.modality is not Modality.VIDEO:
            raise ValueError("the file has no video stream")
    except Exception as exc:
        raise InputError(f"cannot decode video {name}: {reason(exc)}") from exc
    check_frame_size(name, info.width, info.height, max_pixels)
    seconds = info.video_duration
    if max_seconds is not None and seconds is not None and seconds > max_seconds:
        raise InputError(
            f"video {name} is too long: its header says {seconds:.1f} s, above the limit of {max_seconds:g} s "
            "(pass a larger max_seconds to accept it)"
        )
    return info.width, info.height


# --------------------------------------------------------------------------------------------------
# random access to frames


class ArrayFrames:
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
        self.fps = check_fps(video.fps)  # already validated by Video: the same value, as a float
        self.height, self.width = int(frames.shape[1]), int(frames.shape[2])

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """The frames at ``indices``, in that order: uint8 ``[k, H, W, 3]``."""
        return self.frames[list(indices)]  # [k, H, W, 3]


class DecordFrames:
    """Frames of a video file, decoded by decord (the decoder upstream ImageBind uses)."""

    def __init__(self, path: os.PathLike, max_pixels: int | None, max_seconds: float | None) -> None:
        self.name = f"'{path}'"
        try:
            import decord
        except ImportError as exc:  # pragma: no cover - decord is a dependency
            raise InputError(f"cannot decode video {self.name}: decord is not installed") from exc
        # Frame size and duration from the header, before decord allocates anything.
        self.width, self.height = probe_header(path, self.name, max_pixels, max_seconds)
        try:
            self._reader = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0))
            self.num_frames = len(self._reader)
            self.fps = float(self._reader.get_avg_fps())
        except Exception as exc:
            raise InputError(f"cannot decode video {self.name}: {reason(exc)}") from exc
        check_rate_and_length(self.name, self.num_frames, self.fps, max_seconds)

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Decode the frames at ``indices``, in that order: uint8 ``[k, H, W, 3]``."""
        try:
            batch = self._reader.get_batch(list(indices))
            # decord returns its own NDArray, or a torch tensor if some other code set its bridge.
            arr = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
        except Exception as exc:
            raise InputError(f"cannot decode video {self.name}: {reason(exc)}") from exc
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[1] == 0 or arr.shape[2] == 0:
            raise InputError(f"cannot decode video {self.name}: unexpected frame batch {arr.shape}")
        return arr.astype(np.uint8, copy=False)  # [k, H, W, 3]


class GifFrames:
    """Frames of an animated GIF, decoded by PyAV (decord cannot count GIF frames).

    The first pass only counts packets (one per GIF frame); the second decodes up to the last frame
    needed and keeps only the requested ones. Alpha is dropped, as in a conversion to RGB.
    """

    def __init__(self, path: os.PathLike, max_pixels: int | None, max_seconds: float | None) -> None:
        self.name = f"'{path}'"
        self._path = os.fspath(path)
        try:
            import av

            with av.open(self._path, mode="r") as container:
                if not container.streams.video:
                    raise ValueError("the file has no video stream")
                stream = container.streams.video[0]
                self.width = int(stream.codec_context.width or 0)
                self.height = int(stream.codec_context.height or 0)
                check_frame_size(self.name, self.width, self.height, max_pixels)  # before decoding
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
        check_rate_and_length(self.name, self.num_frames, self.fps, max_seconds)

    def get(self, indices: Sequence[int]) -> np.ndarray:
        """Decode up to the last of ``indices`` and return those frames, in that order: uint8
        ``[k, H, W, 3]``."""
        wanted = set(indices)
        last = max(wanted)
        kept: dict[int, np.ndarray] = {}
        try:
            import av

            with av.open(self._path, mode="r") as container:
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


def open_frames(
    src: Video | str | os.PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_VIDEO_PIXELS,
    max_seconds: float | None = DEFAULT_MAX_VIDEO_SECONDS,
) -> ArrayFrames | DecordFrames | GifFrames:
    """Random access to the frames of a video: an object with ``name``, ``num_frames``, ``fps``,
    ``width``, ``height`` and ``get(indices) -> uint8 [k, H, W, 3]`` (only those frames are decoded).

    Args:
        src: a :class:`~nextgpt.media.Video` (file or in-memory uint8 frames) or a path.
        max_pixels: refuse frames larger than this (width x height); for files read from the container
            header before decord opens the file. ``None``: no limit.
        max_seconds: refuse videos longer than this: the header's duration first, then the frame count
            over the average frame rate. ``None``: no limit.

    Raises:
        InputError: missing file, unknown extension, corrupt or truncated file, no frames, a header
            without a frame size, an invalid frame rate, or a limit exceeded.
    """
    if isinstance(src, (str, os.PathLike)):
        src = Video(src)
    if not isinstance(src, Video):
        raise InputError(f"video must be a nextgpt.Video or a path, got {type(src).__name__}")
    if src.path is None:
        frames = ArrayFrames(src)
        check_frame_size(frames.name, frames.width, frames.height, max_pixels)
        check_rate_and_length(frames.name, frames.num_frames, frames.fps, max_seconds)
        return frames
    path = existing_file(src.path, "video")
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise InputError(
            f"cannot decode video '{path}': unknown extension '{path.suffix}' "
            f"(supported: {', '.join(sorted(VIDEO_EXTENSIONS))})"
        )
    if path.suffix.lower() == ".gif":
        return GifFrames(path, max_pixels, max_seconds)
    return DecordFrames(path, max_pixels, max_seconds)


# --------------------------------------------------------------------------------------------------
# whole-clip decoding (PyAV)


def decode_video(
    data: bytes | str | os.PathLike, *, max_frames: int | None = None, first_frame_only: bool = False
) -> Video:
    """Decode a video (encoded bytes or a path) with PyAV to :class:`nextgpt.Video` (uint8
    ``[T, H, W, 3]`` RGB, fps).

    Args:
        data: the encoded video (bytes) or its path.
        max_frames: keep at most this many frames by taking every k-th frame (the frame rate is divided
            by k, so times stay right); ``None`` keeps every frame.
        first_frame_only: decode one frame (a cheap validity check).

    Raises:
        InputError: (a ``ValueError``) no video stream, no decodable frame, no frame rate, or data
            PyAV cannot read.
    """
    if isinstance(data, BYTES_TYPES):
        name = "(video data)"
        source: io.BytesIO | str = memory_file(data, "video", name)
    else:
        path = existing_file(data, "video")
        name, source = f"'{path}'", os.fspath(path)
    try:
        return _decode_all(source, max_frames, first_frame_only)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot decode video {name}: {reason(exc)}") from exc


def _decode_all(source: io.BytesIO | str, max_frames: int | None, first_frame_only: bool) -> Video:
    import av

    frames: list[np.ndarray] = []
    with av.open(source, mode="r") as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        stride = 1
        if max_frames is not None and max_frames > 0:
            total = stream.frames or 0
            if not total and container.duration and fps:
                total = int(round(container.duration / 1e6 * fps))
            stride = max(1, -(-total // max_frames)) if total else 1
        pts: list[float] = []
        for i, frame in enumerate(container.decode(stream)):
            if i % stride:
                continue
            frames.append(frame.to_ndarray(format="rgb24"))
            if frame.pts is not None and frame.time_base is not None:
                pts.append(float(frame.pts * frame.time_base))
            if first_frame_only or (max_frames and len(frames) >= max_frames):
                break
    if not frames:
        raise ValueError("video has no decodable frames")
    if fps <= 0 and len(pts) >= 2 and pts[-1] > pts[0]:
        fps = (len(pts) - 1) / (pts[-1] - pts[0]) * stride
    if fps <= 0:
        raise ValueError("video has no frame rate")
    return Video(np.stack(frames), fps=fps / stride)


def read_segments(
    path: str | os.PathLike, segments: Sequence[tuple[float, float]], *, width: int
) -> tuple[list[list[np.ndarray]], float]:
    """Frames of each ``[start, end)`` segment of a video file (seconds from its first frame), scaled
    by FFmpeg (area filter) to ``width`` and the even height nearest the aspect ratio, as uint8 RGB
    ``[H, W, 3]`` arrays; and the frame rate. Decoding stops after the last segment; frames outside
    every segment are decoded but not converted. Reads trusted files: no size or duration limits."""
    import av

    out: list[list[np.ndarray]] = [[] for _ in segments]
    last = max(end for _, end in segments)
    with av.open(os.fspath(path), mode="r") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ValueError(f"'{path}' has no frame rate")
        fps = float(rate)
        w, h = stream.codec_context.width, stream.codec_context.height
        height = max(2, int(round(h * width / w / 2)) * 2)
        t_first = None
        for n, frame in enumerate(container.decode(stream)):
            t = float(frame.pts * frame.time_base) if frame.pts is not None else n / fps
            t_first = t if t_first is None else t_first
            t -= t_first
            if t >= last:
                break
            hits = [k for k, (a, b) in enumerate(segments) if a <= t < b]
            if hits:
                arr = frame.reformat(
                    width=width, height=height, format="rgb24", interpolation="AREA"
                ).to_ndarray()
                for k in hits:
                    out[k].append(arr)
    return out, fps


# --------------------------------------------------------------------------------------------------
# the H.264 writer


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """``frames [T, H, W, C]`` with an odd ``H`` / ``W`` padded to even by repeating the last row /
    column (the odd-size policy of :func:`encode_video`); returned unchanged when both are even."""
    h, w = frames.shape[1], frames.shape[2]
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _as_frames(frames: np.ndarray) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {arr.dtype} {arr.shape}")
    if arr.dtype != np.uint8:
        # Integers already in 0..255 are taken as they are; anything else would be guessed at.
        if arr.dtype.kind not in "biu" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
            raise ValueError(f"frames must be uint8 [T, H, W, 3] (0..255), got {arr.dtype} {arr.shape}")
        arr = arr.astype(np.uint8)
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"frames must be uint8 [T, H, W, 3] with T, H, W > 0, got shape {arr.shape}")
    return arr


def _frame_rate(fps: float) -> Fraction:
    number = float(fps)
    rate = Fraction(number).limit_denominator(1001) if math.isfinite(number) else Fraction(0)
    if rate <= 0:
        raise ValueError(f"fps must be a finite positive number of frames per second, got {fps!r}")
    return rate


def encode_video(frames: np.ndarray, fps: float, *, crf: int = 23) -> bytes:
    """Encode RGB frames ``[T, H, W, 3]`` (uint8; other integer arrays in 0..255 are accepted) as
    H.264 mp4, yuv420p (MPEG-4 part 2 if this FFmpeg build has no libx264).

    Odd widths/heights are padded by one pixel that repeats the edge (see the module docstring).
    ``fps`` is kept as a fraction (denominator up to 1001: 30000/1001 NTSC rates stay exact).
    Single-threaded without macroblock-tree rate control (:data:`H264_OPTIONS`), so the same frames
    give the same bytes.

    Raises:
        ValueError: frames that are not ``[T, H, W, 3]`` 0..255 integers with ``T, H, W > 0``, or an
            fps that is not finite and positive.
    """
    import av

    arr = pad_to_even(_as_frames(frames))
    rate = _frame_rate(fps)
    h, w = int(arr.shape[1]), int(arr.shape[2])
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        try:
            stream = out.add_stream("libx264", rate=rate)
            stream.options = {"crf": str(crf), **H264_OPTIONS}
        except Exception:  # an FFmpeg build without libx264
            stream = out.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.thread_count = 1
        for frame in arr:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        out.mux(stream.encode(None))
    return buf.getvalue()


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float, *, crf: int = 23) -> Path:
    """Write RGB frames ``[T, H, W, 3]`` to ``path`` as H.264 mp4: the bytes of :func:`encode_video`
    (same odd-size policy: padded with edge pixels to even sizes). Returns the path."""
    p = Path(os.fspath(path))
    p.write_bytes(encode_video(frames, fps, crf=crf))
    return p
