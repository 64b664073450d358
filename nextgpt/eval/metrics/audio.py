"""Text -> audio metrics as the AudioLDM evaluation (``audioldm_eval``) defines them: FD, IS, KL and FAD.

NExT-GPT reports AudioCaps FD, IS and FAD (and KL) following AudioLDM. The definitions below were
checked against ``audioldm-eval==0.0.3`` (PyPI) and the ``haoheliu/audioldm_eval`` main branch.

- **Clip preparation** (AudioLDM's ``WaveDataset``, used for PANNs in every version and for VGGish on
  the main branch): a mono clip has its mean subtracted, is resampled to 16 kHz, and, if shorter than
  32000 samples (2 s), is zero-padded at the end to 32000 samples. Nothing is cut. Clips go through the
  network one at a time at their own length (batch size 1); here only clips of equal length share a batch,
  so the result is the same.
- **PANNs Cnn14** (16 kHz checkpoint ``Cnn14_16k_mAP=0.438.pth``): ``sample_rate=16000, window_size=512,
  hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527`` (torchlibrosa front end: Hann window,
  ``center=True``, reflect padding, ``ref=1.0, amin=1e-10, top_db=None``). The ``"embedding"`` is the
  2048-d ``relu(fc1(.))`` output (AudioLDM's ``"2048"``); the ``"logits"`` are ``fc_audioset`` of it
  before the sigmoid (AudioLDM's ``"logits"``).
- **FD**: the Frechet distance (:mod:`.frechet`) between the Gaussians of the generated and the reference
  Cnn14 embeddings (AudioLDM's ``calculate_fid`` on ``"2048"``).
- **IS**: AudioLDM's ``calculate_isc`` on ``"logits"``: the rows are shuffled with
  ``np.random.RandomState(2020).permutation(N)``, ``p = softmax(logits)`` in float64, the rows are cut into
  ``splits=10`` chunks ``[i*N//splits, (i+1)*N//splits)``, each chunk scores
  ``exp(mean_rows(sum_c p (log p - log mean_rows(p))))``, and IS is the mean (std: ``np.std``, ddof 0) of the
  chunk scores.
- **KL**: AudioLDM's ``calculate_kl`` on paired clips (AudioLDM pairs by file name; here by position):
  ``KL = (1/N) sum_i sum_c p_ref,i,c (log p_ref,i,c - log(p_gen,i,c + 1e-6))`` (``torch.nn.functional.kl_div``
  of ``log(p_gen + 1e-6)`` against ``p_ref``, ``reduction="sum"``, divided by N) with ``p = softmax(logits)``.
  This softmax form is what audioldm_eval prints and documents as "KL" (its README: "KL: KL divergence
  (softmax over logits)"); the same sum with ``p = sigmoid(logits)`` (no ``1 - p`` terms) is its
  "KL_Sigmoid", returned here as ``"kl_sigmoid"``.
- **FAD**: the Frechet distance between the Gaussians of all VGGish frame embeddings of the generated clips
  and of the reference clips (each clip's frames pooled into one set), as AudioLDM computes it with
  ``FrechetAudioDistance(use_pca=False, use_activation=False)``: torchvggish's (harritaylor) port of
  VGGish, 16 kHz input, log-mel of 25 ms Hann windows every 10 ms, 64 mel bands 125-7500 Hz,
  ``log(mel + 0.01)``, framed into non-overlapping 0.96 s examples (96 x 64; an incomplete last example
  is dropped); the embedding is the 128-d output of the last linear layer **without** its final ReLU and
  **without** the PCA/whitening/8-bit quantisation postprocessing (so no PCA parameter file is needed).
  gudgud96's ``frechet-audio-distance`` uses the same defaults. audioldm-eval 0.0.3 fed VGGish the file
  read as int16 / 32768 without mean removal or padding; the main branch feeds it the prepared clip
  above, which :func:`text_to_audio_metrics` does (it differs only for clips under 2 s, and by the DC offset).

Known deviation: AudioLDM resamples with ``torchaudio.functional.resample`` (Hann-windowed sinc); torchaudio
is not usable beside this project's torch, so resampling here is ``resampy.resample`` (``kaiser_best``),
the resampler torchvggish and AudioLDM 0.0.3's FAD use. audioldm_eval's README warns that the resampler
can move FD and KL noticeably, so numbers from clips not already at 16 kHz can differ from AudioLDM's.

Extractors load only from local files (:class:`~nextgpt.errors.ExtractorWeightsError` otherwise):
``$NEXTGPT_PANNS_CNN14`` (``Cnn14_16k_mAP=0.438.pth``, a dict with ``"model"`` or a bare state dict) and
``$NEXTGPT_VGGISH`` (harritaylor's ``vggish-10086976.pth`` state dict).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nextgpt.errors import ExtractorWeightsError, InputError
from nextgpt.eval.metrics.visual import resolve_weights, sha256_path

PANNS_ENV = "NEXTGPT_PANNS_CNN14"
VGGISH_ENV = "NEXTGPT_VGGISH"
SAMPLE_RATE = 16000
MIN_SAMPLES = 32000  # AudioLDM pads shorter clips to 2 s at 16 kHz
KL_EPS = 1e-6
IS_SEED = 2020

# Cnn14 constructor arguments of the 16 kHz checkpoint, as audioldm_eval and frechet-audio-distance build it.
CNN14_16K = {
    "sample_rate": 16000,
    "window_size": 512,
    "hop_size": 160,
    "mel_bins": 64,
    "fmin": 50,
    "fmax": 8000,
    "classes_num": 527,
}
# torchvggish framing: a 25 ms window (400 samples) every 10 ms (160), 96 frames an example.
_VGGISH_MIN_SAMPLES = 400 + 95 * 160


def _mono(wave: Any, what: str) -> np.ndarray:
    x = np.asarray(wave)
    if x.ndim != 1:
        raise InputError(f"{what}: expected a mono 1-D waveform, got shape {x.shape}")
    if x.size == 0:
        raise InputError(f"{what}: empty waveform")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"{what}: expected a numeric waveform, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise InputError(f"{what}: waveform holds NaN or inf")
    return x


def _check_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise InputError(f"sample rate must be a positive integer, got {sample_rate!r}")
    return int(sample_rate)


def resample(wave: Any, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A mono waveform resampled to ``target_rate`` with ``resampy`` (``kaiser_best``), as float64."""
    x = _mono(wave, "waveform")
    sample_rate, target_rate = _check_rate(sample_rate), _check_rate(target_rate)
    if sample_rate == target_rate:
        return x
    import resampy

    return np.asarray(resampy.resample(x, sample_rate, target_rate), dtype=np.float64)


def audioldm_prepare(wave: Any, sample_rate: int) -> np.ndarray:
    """AudioLDM's clip preparation: mean removed, resampled to 16 kHz, zero-padded to >= 32000 samples."""
    x = _mono(wave, "waveform")
    x = resample(x - x.mean(), sample_rate, SAMPLE_RATE)
    if x.shape[0] < MIN_SAMPLES:
        x = np.pad(x, (0, MIN_SAMPLES - x.shape[0]))
    return x


def _load_state_dict(path: Path, what: str, env: str) -> dict:
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or not a tensors-only file
        raise ExtractorWeightsError(
            f"{what}: '{path}' (set by the option or {env}) is not loadable: {exc}"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExtractorWeightsError(f"{what}: '{path}' (set by the option or {env}) holds no state dict")
    return obj


def _load_into(module: Any, state: dict, path: Path, what: str, env: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExtractorWeightsError(
            f"{what}: '{path}' (set by the option or {env}) does not fit the architecture: {exc}"
        ) from None


@functools.cache
def _cnn14_class() -> type:
    """PANNs Cnn14 (audioset_tagging_cnn), built on torchlibrosa's front end.

    Written here because neither packaged copy imports cleanly: importing ``panns_inference`` runs its
    ``config.py``, which shells out to ``wget`` for the AudioSet label CSV and fails offline, and
    ``audioldm_eval``/``frechet_audio_distance`` import torchaudio, laion_clap and encodec at package
    import. The module names and parameter names match the official checkpoints (a strict load checks).
    """
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torchlibrosa.stft import LogmelFilterBank, Spectrogram

    class ConvBlock(nn.Module):
        def __init__(self, in_channels: int, out_channels: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
            self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(out_channels)
            self.bn2 = nn.BatchNorm2d(out_channels)
            for conv in (self.conv1, self.conv2):
                nn.init.xavier_uniform_(conv.weight)

        def forward(self, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
            x = F.relu(self.bn1(self.conv1(x)))
            x = F.relu(self.bn2(self.conv2(x)))
            return F.avg_pool2d(x, kernel_size=pool)

    class Cnn14(nn.Module):
        """Cnn14; ``forward(wave [B, T])`` -> ``(embedding [B, 2048], logits [B, classes])`` in eval mode."""

        def __init__(
            self,
            sample_rate: int,
            window_size: int,
            hop_size: int,
            mel_bins: int,
            fmin: float,
            fmax: float,
            classes_num: int,
        ) -> None:
            super().__init__()
            self.spectrogram_extractor = Spectrogram(
                n_fft=window_size,
                hop_length=hop_size,
                win_length=window_size,
                window="hann",
                center=True,
                pad_mode="reflect",
                freeze_parameters=True,
            )
            self.logmel_extractor = LogmelFilterBank(
                sr=sample_rate,
                n_fft=window_size,
                n_mels=mel_bins,
                fmin=fmin,
                fmax=fmax,
                ref=1.0,
                amin=1e-10,
                top_db=None,
                freeze_parameters=True,
            )
            self.bn0 = nn.BatchNorm2d(mel_bins)
            widths = [1, 64, 128, 256, 512, 1024, 2048]
            for i in range(6):
                setattr(self, f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1]))
            self.fc1 = nn.Linear(2048, 2048, bias=True)
            self.fc_audioset = nn.Linear(2048, classes_num, bias=True)
            for fc in (self.fc1, self.fc_audioset):
                nn.init.xavier_uniform_(fc.weight)
                nn.init.zeros_(fc.bias)

        def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.logmel_extractor(self.spectrogram_extractor(wave))  # [B, 1, frames, mels]
            x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
            for i in range(6):
                x = getattr(self, f"conv_block{i + 1}")(x, (2, 2) if i < 5 else (1, 1))
                x = F.dropout(x, p=0.2, training=self.training)
            x = x.mean(dim=3)
            x = x.max(dim=2).values + x.mean(dim=2)
            x = F.dropout(x, p=0.5, training=self.training)
            embedding = F.relu(self.fc1(x))
            return embedding, self.fc_audioset(embedding)

    return Cnn14


def build_cnn14() -> Any:
    """A randomly initialised PANNs Cnn14 with the 16 kHz checkpoint's configuration (:data:`CNN14_16K`)."""
    return _cnn14_class()(**CNN14_16K)


class PannsCnn14:
    """PANNs Cnn14 (16 kHz) embeddings and class logits, loaded from a local checkpoint.

    Attributes:
        model: the torch module (eval mode).
        path: the checkpoint file.
        sha256: hex sha256 of the checkpoint file.
        device: the torch device the module runs on.
    """

    def __init__(self, model: Any, path: Path, device: str = "cpu") -> None:
        self.model, self.path, self.device = model, path, device
        self.sha256 = sha256_path(path)

    @classmethod
    def from_path(cls, path: str | os.PathLike | None = None, device: str = "cpu") -> PannsCnn14:
        """Load ``Cnn14_16k_mAP=0.438.pth`` from ``path`` (else ``$NEXTGPT_PANNS_CNN14``) onto ``device``.

        Args:
            path: the checkpoint: PANNs' official dict with a ``"model"`` state dict, or a bare state dict.
            device: torch device to run on.

        Raises:
            ExtractorWeightsError: no path given, the file is missing, unloadable or does not fit Cnn14.
        """
        what = "PANNs Cnn14 (Cnn14_16k_mAP=0.438.pth)"
        p = resolve_weights(path, PANNS_ENV, what)
        state = _load_state_dict(p, what, PANNS_ENV)
        model = build_cnn14()
        _load_into(model, state, p, what, PANNS_ENV)
        return cls(model.to(device).eval(), p, device)

    def embed(
        self, waves: Sequence[np.ndarray], sample_rate: int, batch_size: int = 8
    ) -> dict[str, np.ndarray]:
        """Cnn14 outputs of mono clips, after AudioLDM's preparation (:func:`audioldm_prepare`).

        Args:
            waves: mono 1-D waveforms (any float or integer dtype, nominally in [-1, 1]).
            sample_rate: their sample rate; they are resampled to 16 kHz.
            batch_size: clips of equal length per forward pass.

        Returns:
            ``{"embedding": [N, 2048] float64, "logits": [N, 527] float64}``: the 2048-d ``relu(fc1)``
            embedding (FD) and the pre-sigmoid ``fc_audioset`` logits (IS and KL take their softmax,
            KL_Sigmoid their sigmoid; PANNs' clip-wise tag probabilities are ``sigmoid(logits)``).

        Raises:
            InputError: no clips, or a clip that is not a finite non-empty mono waveform.
        """
        import torch

        if len(waves) == 0:
            raise InputError("no audio clips to embed")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        clips = [audioldm_prepare(w, sample_rate).astype(np.float32) for w in waves]
        by_length: dict[int, list[int]] = {}
        for i, c in enumerate(clips):
            by_length.setdefault(c.shape[0], []).append(i)
        emb = np.zeros((len(clips), 2048), dtype=np.float64)
        logits: np.ndarray | None = None
        for idx in by_length.values():
            for s in range(0, len(idx), batch_size):
                part = idx[s : s + batch_size]
                x = torch.from_numpy(np.stack([clips[i] for i in part])).to(self.device)
                with torch.no_grad():
                    e, lg = self.model(x)
                if logits is None:
                    logits = np.zeros((len(clips), lg.shape[1]), dtype=np.float64)
                emb[part] = e.double().cpu().numpy()
                logits[part] = lg.double().cpu().numpy()
        return {"embedding": emb, "logits": logits}


def build_vggish() -> Any:
    """The torchvggish VGGish (no postprocessing) with the last ReLU removed, as FAD uses it; random init."""
    from torch import nn
    from torchvggish.torchvggish import VGG, make_layers

    model = VGG(make_layers(), postprocess=False)
    layers = list(model.embeddings.children())
    if not isinstance(layers[-1], nn.ReLU):  # pragma: no cover - a changed torchvggish
        raise RuntimeError("torchvggish's VGG embeddings no longer end in a ReLU")
    model.embeddings = nn.Sequential(*layers[:-1])
    return model


class Vggish:
    """VGGish 128-d frame embeddings for FAD, loaded from a local torchvggish state dict.

    Attributes:
        model: the torch module (eval mode; no final ReLU, no PCA postprocessing).
        path: the state-dict file.
        sha256: hex sha256 of the file.
        device: the torch device the module runs on.
    """

    def __init__(self, model: Any, path: Path, device: str = "cpu") -> None:
        self.model, self.path, self.device = model, path, device
        self.sha256 = sha256_path(path)

    @classmethod
    def from_path(cls, path: str | os.PathLike | None = None, device: str = "cpu") -> Vggish:
        """Load harritaylor's ``vggish-10086976.pth`` from ``path`` (else ``$NEXTGPT_VGGISH``).

        Args:
            path: the VGGish state dict (``features.*`` / ``embeddings.*``), bare or under ``"model"``.
            device: torch device to run on.

        Raises:
            ExtractorWeightsError: no path given, the file is missing, unloadable or does not fit VGGish.
        """
        what = "VGGish (vggish-10086976.pth)"
        p = resolve_weights(path, VGGISH_ENV, what)
        state = _load_state_dict(p, what, VGGISH_ENV)
        model = build_vggish()
        _load_into(model, state, p, what, VGGISH_ENV)
        return cls(model.to(device).eval(), p, device)

    def embed_clips(
        self, waves: Sequence[np.ndarray], sample_rate: int, batch_size: int = 64
    ) -> list[np.ndarray]:
        """Per-clip VGGish frame embeddings.

        Args:
            waves: mono 1-D waveforms; resampled to 16 kHz (no mean removal, no padding here).
            sample_rate: their sample rate.
            batch_size: 0.96 s examples per forward pass.

        Returns:
            One float64 ``[frames_i, 128]`` array per clip, one row per complete 0.96 s example (a clip
            under 0.975 s at 16 kHz has none).

        Raises:
            InputError: no clips, or a clip that is not a finite non-empty mono waveform.
        """
        import torch
        from torchvggish.vggish_input import waveform_to_examples

        if len(waves) == 0:
            raise InputError("no audio clips to embed")
        out = []
        for w in waves:
            x = resample(w, sample_rate, SAMPLE_RATE)
            if x.shape[0] < _VGGISH_MIN_SAMPLES:
                out.append(np.zeros((0, 128), dtype=np.float64))
                continue
            examples = waveform_to_examples(x, SAMPLE_RATE, return_tensor=True).detach()
            parts = []
            with torch.no_grad():
                for s in range(0, examples.shape[0], batch_size):
                    parts.append(
                        self.model(examples[s : s + batch_size].to(self.device)).double().cpu().numpy()
                    )
            out.append(np.concatenate(parts).reshape(-1, 128))
        return out

    def embed(self, waves: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """All clips' VGGish frame embeddings pooled: ``[M, 128]`` float64 (see :meth:`embed_clips`)."""
        return np.concatenate(self.embed_clips(waves, sample_rate))


def _as_2d(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{what}: expected a non-empty [N, C] array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(f"{what}: holds NaN or inf")
    return a


def _log_softmax(x: np.ndarray) -> np.ndarray:
    from scipy.special import log_softmax

    return log_softmax(x, axis=1)


def inception_score(
    scores: Any, splits: int = 10, *, probs: bool = False, shuffle: bool = True, seed: int = IS_SEED
) -> tuple[float, float]:
    """Inception score as audioldm_eval's ``calculate_isc`` computes it.

    Args:
        scores: ``[N, C]`` class logits (softmax is taken; AudioLDM passes PANNs' ``"logits"``), or, with
            ``probs=True``, rows that already are probability distributions.
        splits: number of chunks; chunk i is rows ``[i*N//splits, (i+1)*N//splits)``.
        probs: treat ``scores`` as probabilities (zeros allowed) instead of logits.
        shuffle: permute the rows first with ``np.random.RandomState(seed)`` (AudioLDM: True, seed 2020).
        seed: the permutation seed.

    Returns:
        ``(mean, std)`` over the chunks of ``exp(mean_rows KL(p_row || mean_rows p))``; std has ddof 0.

    Raises:
        InputError: a bad array, ``splits < 1`` or fewer rows than splits (an empty chunk).
    """
    from scipy.special import xlogy

    x = _as_2d(scores, "inception_score input")
    n = x.shape[0]
    if splits < 1 or n < splits:
        raise InputError(f"inception_score: need 1 <= splits <= N rows, got splits={splits}, N={n}")
    if shuffle:
        x = x[np.random.RandomState(seed).permutation(n)]
    if probs:
        if (x < 0).any() or not np.allclose(x.sum(axis=1), 1.0, atol=1e-6):
            raise InputError("inception_score: with probs=True every row must be a probability distribution")
        p = x
        plogp = xlogy(p, p)
    else:
        log_p = _log_softmax(x)
        p = np.exp(log_p)
        plogp = p * log_p
    out = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(axis=0)
        kl = plogp[lo:hi].sum(axis=1) - xlogy(p[lo:hi], q[None, :]).sum(axis=1)
        out.append(float(np.exp(kl.mean())))
    return float(np.mean(out)), float(np.std(out))


def kl_divergence(gen: Any, ref: Any, *, kind: str = "softmax", eps: float = KL_EPS) -> float:
    """Paired KL(ref || gen) of class outputs, mean over clips, as audioldm_eval's ``calculate_kl``.

    ``(1/N) sum_i sum_c r_ic (log r_ic - log(g_ic + eps))`` with ``r = f(ref logits)``, ``g = f(gen logits)``
    and ``f`` softmax over classes (``kind="softmax"``, AudioLDM's "KL") or element-wise sigmoid
    (``kind="sigmoid"``, its "KL_Sigmoid"); terms with ``r_ic = 0`` count 0.

    Args:
        gen: ``[N, C]`` logits of the generated clips.
        ref: ``[N, C]`` logits of the paired reference clips (row i pairs with row i).
        kind: ``"softmax"`` or ``"sigmoid"``.
        eps: added to the generated probabilities inside the log (AudioLDM: 1e-6).

    Raises:
        InputError: bad arrays, different shapes, or an unknown ``kind``.
    """
    from scipy.special import expit, softmax, xlogy

    g, r = _as_2d(gen, "kl_divergence gen"), _as_2d(ref, "kl_divergence ref")
    if g.shape != r.shape:
        raise InputError(f"kl_divergence: gen and ref must be paired, got shapes {g.shape} and {r.shape}")
    if kind == "softmax":
        pg, pr = softmax(g, axis=1), softmax(r, axis=1)
    elif kind == "sigmoid":
        pg, pr = expit(g), expit(r)
    else:
        raise InputError(f"kl_divergence: kind must be 'softmax' or 'sigmoid', got {kind!r}")
    terms = xlogy(pr, pr) - pr * np.log(pg + eps)
    return float(terms.sum() / g.shape[0])


def text_to_audio_metrics(
    generated: Sequence[np.ndarray],
    generated_rate: int,
    reference: Sequence[np.ndarray],
    reference_rate: int,
    *,
    panns: PannsCnn14,
    vggish: Vggish | None,
    is_splits: int = 10,
) -> dict[str, float]:
    """AudioLDM's FD, IS, KL (and FAD) of generated clips against their paired references.

    Both lists get :func:`audioldm_prepare` (mean removed, 16 kHz, padded to 2 s), then PANNs Cnn14 and,
    when given, VGGish see the prepared clips (as audioldm_eval's main branch feeds both).

    Args:
        generated: mono generated waveforms.
        generated_rate: their sample rate.
        reference: mono reference waveforms; ``reference[i]`` is the reference of ``generated[i]``.
        reference_rate: their sample rate.
        panns: the Cnn14 extractor.
        vggish: the VGGish extractor, or None to skip FAD.
        is_splits: IS chunks (AudioLDM: 10; needs at least that many generated clips).

    Returns:
        ``{"fd", "is", "is_std", "kl", "kl_sigmoid"}`` and ``"fad"`` when ``vggish`` is given.

    Raises:
        InputError: unpaired lists, fewer than 2 clips, too few clips for ``is_splits``, or a bad clip.
    """
    from nextgpt.eval.metrics.frechet import frechet_distance

    if len(generated) != len(reference):
        raise InputError(
            f"generated and reference clips must be paired: {len(generated)} generated vs {len(reference)} reference"
        )
    if len(generated) < 2:
        raise InputError(f"need at least 2 paired clips, got {len(generated)}")
    if len(generated) < is_splits:
        raise InputError(f"inception score needs at least is_splits={is_splits} clips, got {len(generated)}")
    gen = [audioldm_prepare(w, generated_rate) for w in generated]
    ref = [audioldm_prepare(w, reference_rate) for w in reference]
    fg, fr = panns.embed(gen, SAMPLE_RATE), panns.embed(ref, SAMPLE_RATE)
    is_mean, is_std = inception_score(fg["logits"], splits=is_splits)
    out = {
        "fd": frechet_distance(fg["embedding"], fr["embedding"]),
        "is": is_mean,
        "is_std": is_std,
        "kl": kl_divergence(fg["logits"], fr["logits"], kind="softmax"),
        "kl_sigmoid": kl_divergence(fg["logits"], fr["logits"], kind="sigmoid"),
    }
    if vggish is not None:
        out["fad"] = frechet_distance(vggish.embed(gen, SAMPLE_RATE), vggish.embed(ref, SAMPLE_RATE))
    return out
