"""Image and video metrics: FID on Inception features, CLIP score and CLIPSIM on CLIP embeddings.

- **FID** (text -> image on COCO, frames of text -> video on MSR-VTT): every image is resized to
  299 x 299 with PIL's bicubic filter (clean-fid's "clean" resizing) and fed as uint8 to the
  TensorFlow FID Inception v3 (``inception-2015-12-05``) in NVIDIA's TorchScript port
  (``inception-2015-12-05.pt``, the file StyleGAN2-ADA, StyleGAN3 and clean-fid load), whose
  ``return_features=True`` output is the 2048-d pool feature; FID is the Frechet distance
  (:mod:`.frechet`) between the generated and the reference sets.
- **CLIP score** (text -> image): torchmetrics' ``CLIPScore``, ``max(100 * mean cos(image, text), 0)``
  over the pairs (torchmetrics clamps the mean, not each pair), on a local CLIP (transformers folder, e.g. ``openai/clip-vit-base-patch32``).
- **CLIPSIM** (text -> video): the mean over videos of the mean over frames of the raw cosine
  between the frame's and the caption's CLIP embeddings (no clamp, no x100; the paper prints
  ``100 * CLIPSIM``).

Extractors load only from local paths (:class:`~nextgpt.errors.ExtractorWeightsError` otherwise).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nextgpt.errors import ExtractorWeightsError, InputError

INCEPTION_ENV = "NEXTGPT_INCEPTION"
CLIP_ENV = "NEXTGPT_CLIP"
INCEPTION_SIZE = 299


def sha256_path(path: str | os.PathLike) -> str:
    """The sha256 of a file, or of a folder (its files' relative names and hashes, sorted)."""
    p = Path(path)
    if p.is_file():
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(f"{f.relative_to(p).as_posix()}\0{sha256_path(f)}\n".encode())
    return h.hexdigest()


def resolve_weights(path: str | os.PathLike | None, env: str, what: str, *, folder: bool = False) -> Path:
    """The extractor path given, else ``$env``; a missing one is an :class:`ExtractorWeightsError`."""
    given = path if path is not None else os.environ.get(env)
    if not given:
        raise ExtractorWeightsError(
            f"{what}: no weights given; pass its path or set {env} (nothing is downloaded)"
        )
    p = Path(given)
    if not (p.is_dir() if folder else p.is_file()):
        kind = "folder" if folder else "file"
        raise ExtractorWeightsError(f"{what}: weights {kind} not found: '{p}' (set by the option or {env})")
    return p


def _as_uint8_rgb(image: Any, what: str) -> np.ndarray:
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise InputError(f"{what}: expected a PIL image or uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
    return arr


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def resize_clean(image: Any, size: int = INCEPTION_SIZE) -> np.ndarray:
    """``image`` as uint8 ``[size, size, 3]``, resized with PIL bicubic (clean-fid's "clean" mode)."""
    from PIL import Image

    arr = _as_uint8_rgb(image, "image")
    if arr.shape[:2] == (size, size):
        return arr
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BICUBIC))


class InceptionFID:
    """The FID Inception feature extractor from a local TorchScript file.

    The module is called as ``module(x, return_features=True)`` with ``x`` uint8 ``[N, 3, 299,
    299]`` and returns ``[N, 2048]`` (NVIDIA's ``inception-2015-12-05.pt`` does).
    """

    def __init__(self, module: Any, path: Path, device: str = "cpu") -> None:
        self.module, self.path, self.device = module, path, device
        self.sha256 = sha256_path(path)

    @classmethod
    def from_path(cls, path: str | os.PathLike | None = None, device: str = "cpu") -> InceptionFID:
        """Load the TorchScript file at ``path`` (else ``$NEXTGPT_INCEPTION``) onto ``device``."""
        import torch

        p = resolve_weights(path, INCEPTION_ENV, "FID Inception (inception-2015-12-05.pt)")
        try:
            module = torch.jit.load(str(p), map_location=device).eval()
        except Exception as exc:  # noqa: BLE001 - a corrupt or non-TorchScript file
            raise ExtractorWeightsError(
                f"FID Inception: '{p}' is not a loadable TorchScript file: {exc}"
            ) from None
        return cls(module, p, device)

    def features(self, images: Iterable[Any], batch_size: int = 32) -> np.ndarray:
        """The ``[N, 2048]`` float64 features of ``images`` (PIL or uint8 ``[H, W, 3]``), read from
        the iterable ``batch_size`` at a time (only one batch of images is held)."""
        import torch

        out = []
        for chunk in _chunks(images, batch_size):
            batch = np.stack([resize_clean(im) for im in chunk])
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(self.device)
            with torch.no_grad():
                f = self.module(x, return_features=True)
            out.append(f.reshape(f.shape[0], -1).double().cpu().numpy())
        if not out:
            raise InputError("no images to extract features from")
        return np.concatenate(out)


def fid(generated: Iterable[Any], reference: Iterable[Any], inception: InceptionFID) -> float:
    """FID between two image sets (each >= 2 images, read lazily) with ``inception``'s features."""
    from nextgpt.eval.metrics.frechet import frechet_distance

    return frechet_distance(inception.features(generated), inception.features(reference))


class ClipProcessor:
    """A CLIP folder's tokenizer and image processor behind ``CLIPProcessor``'s call.

    transformers' own ``CLIPProcessor`` resolves its tokenizer class through every tokenizer backend
    it knows, which fails when one of them is installed without its dependencies; this holds the two
    parts directly.
    """

    def __init__(self, tokenizer: Any, image_processor: Any) -> None:
        self.tokenizer, self.image_processor = tokenizer, image_processor

    def __call__(
        self, text: Any = None, images: Any = None, return_tensors: str = "pt", **kwargs: Any
    ) -> dict:
        """``input_ids`` / ``attention_mask`` of ``text`` and ``pixel_values`` of ``images``."""
        out: dict = {}
        if text is not None:
            kwargs.setdefault("truncation", True)
            kwargs.setdefault("max_length", self.tokenizer.model_max_length)
            out.update(self.tokenizer(text, return_tensors=return_tensors, **kwargs))
        if images is not None:
            out.update(self.image_processor(images=images, return_tensors=return_tensors))
        return out


class CLIPEmbedder:
    """Image and text embeddings of a local transformers CLIP folder (model + processor files)."""

    def __init__(self, model: Any, processor: Any, path: Path, device: str = "cpu") -> None:
        self.model, self.processor, self.path, self.device = model, processor, path, device
        self.sha256 = sha256_path(path)

    @classmethod
    def from_path(cls, path: str | os.PathLike | None = None, device: str = "cpu") -> CLIPEmbedder:
        """Load the CLIP folder at ``path`` (else ``$NEXTGPT_CLIP``) onto ``device``, offline."""
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        p = resolve_weights(path, CLIP_ENV, "CLIP (a transformers CLIP folder)", folder=True)
        try:
            model = CLIPModel.from_pretrained(str(p), local_files_only=True).to(device).eval()
            processor = ClipProcessor(
                AutoTokenizer.from_pretrained(str(p), local_files_only=True),
                CLIPImageProcessor.from_pretrained(str(p), local_files_only=True),
            )
        except (OSError, ValueError) as exc:
            raise ExtractorWeightsError(f"CLIP: '{p}' is not a loadable CLIP folder: {exc}") from None
        return cls(model, processor, p, device)

    def _unit(self, x: Any) -> Any:
        x = _embeds(x)
        return x / x.norm(dim=-1, keepdim=True)

    def image_embeddings(self, images: Sequence[Any], batch_size: int = 32) -> Any:
        """Unit-norm image embeddings ``[N, D]`` (a torch tensor) of PIL / uint8 ``[H, W, 3]`` images."""
        import torch

        out = []
        for i in range(0, len(images), batch_size):
            pix = self.processor(
                images=[_as_uint8_rgb(im, "image") for im in images[i : i + batch_size]], return_tensors="pt"
            )
            with torch.no_grad():
                out.append(
                    self._unit(
                        self.model.get_image_features(pixel_values=pix["pixel_values"].to(self.device))
                    )
                )
        return torch.cat(out)

    def text_embeddings(self, texts: Sequence[str]) -> Any:
        """Unit-norm text embeddings ``[N, D]`` (a torch tensor); texts past CLIP's length are cut."""
        import torch

        tok = self.processor(text=list(texts), return_tensors="pt", padding=True)
        with torch.no_grad():
            feats = self.model.get_text_features(
                input_ids=tok["input_ids"].to(self.device),
                attention_mask=tok["attention_mask"].to(self.device),
            )
        return self._unit(feats)


def _embeds(x: Any) -> Any:
    return x if hasattr(x, "norm") else x.pooler_output


class _TensorFeatures:
    """A CLIPModel whose ``get_*_features`` return the projected embedding tensor.

    torchmetrics 1.9 normalises what they return as a tensor; transformers 5 returns an output object
    holding the projected embedding as ``pooler_output``.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def get_image_features(self, *args: Any, **kwargs: Any) -> Any:
        return _embeds(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> Any:
        return _embeds(self.model.get_text_features(*args, **kwargs))

    def to(self, device: Any) -> _TensorFeatures:
        self.model.to(device)
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def clip_score(images: Iterable[Any], captions: Sequence[str], clip: CLIPEmbedder) -> float:
    """The CLIP score (torchmetrics' ``CLIPScore``) of paired images and captions: ``max(100 * mean cosine, 0)``.

    ``images`` is read lazily, 32 at a time.
    """
    import torch
    from torchmetrics.multimodal.clip_score import CLIPScore

    metric = CLIPScore(model_name_or_path=lambda: (_TensorFeatures(clip.model), clip.processor))
    seen = 0
    for chunk in _chunks(images, 32):
        if seen + len(chunk) > len(captions):
            raise InputError(
                f"clip_score needs as many images as captions, got more than {len(captions)} images"
            )
        batch = [torch.from_numpy(np.array(_as_uint8_rgb(im, "image"))).permute(2, 0, 1) for im in chunk]
        metric.update(batch, list(captions[seen : seen + len(chunk)]))
        seen += len(chunk)
    if seen != len(captions) or seen == 0:
        raise InputError(
            f"clip_score needs as many images as captions (>= 1), got {seen} and {len(captions)}"
        )
    return float(metric.compute())


def clipsim(videos: Iterable[np.ndarray], captions: Sequence[str], clip: CLIPEmbedder) -> float:
    """CLIPSIM: mean over videos of the mean raw cosine of each frame with the video's caption.

    Args:
        videos: uint8 ``[T, H, W, 3]`` frames per video, read one video at a time.
        captions: one caption per video.
        clip: the CLIP model.
    """
    per_video: list[float] = []
    for chunk in _chunks(videos, 64):
        start = len(per_video)
        if start + len(chunk) > len(captions):
            raise InputError(
                f"clipsim needs as many videos as captions, got more than {len(captions)} videos"
            )
        texts = clip.text_embeddings(captions[start : start + len(chunk)])
        for v, t in zip(chunk, texts):
            frames = np.asarray(v)
            if frames.ndim != 4 or frames.shape[0] == 0:
                raise InputError(
                    f"clipsim: a video must be uint8 [T, H, W, 3] with T >= 1, got {frames.shape}"
                )
            emb = clip.image_embeddings(list(frames))
            per_video.append(float((emb @ t).mean()))
    if len(per_video) != len(captions) or not per_video:
        raise InputError(
            f"clipsim needs as many videos as captions (>= 1), got {len(per_video)} and {len(captions)}"
        )
    return float(np.mean(per_video))


def sample_frames(video: np.ndarray, count: int) -> list[np.ndarray]:
    """``count`` frames spread evenly over ``video [T, H, W, 3]`` (all when ``T <= count``)."""
    t = video.shape[0]
    if t <= count:
        return list(video)
    idx = np.linspace(0, t - 1, count).round().astype(int)
    return [video[i] for i in idx]
