"""The Frechet distance between two feature sets, each summarised as a Gaussian.

``d^2 = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``: FID on Inception pool features,
FD on PANNs embeddings and FAD on VGGish embeddings are all this distance. The matrix square root
is scipy's ``sqrtm`` in float64, as pytorch-fid and the AudioLDM evaluation compute it (with the same
small diagonal offset when the product is singular).

:func:`frechet_distance` (features in) does not take that square root. With ``A``, ``B`` the
centred features over ``sqrt(N - 1)`` (so ``S_a = A^T A``, ``S_b = B^T B``), the nonzero eigenvalues
of ``S_a S_b`` are the squared singular values of ``A B^T``, hence ``Tr (S_a S_b)^(1/2) = sum of the
singular values of A B^T`` exactly; when a set has more samples than dimensions, ``A`` is first
replaced by the ``D x D`` factor ``R`` of its QR decomposition (same singular values). This is
exact where ``sqrtm`` is not: with fewer samples than dimensions (a small evaluation set of 2048-d
features) both covariances are singular, and ``sqrtm`` reported 2.6 for 4 clips against themselves;
it is also faster (3,000 x 2048 features per set: 3.0 s against 13.6 s for the covariances and `sqrtm` here). The two forms agree at full
rank (a test checks it); :func:`frechet_distance_from_stats` keeps the ``sqrtm`` form for
precomputed statistics.
"""

from __future__ import annotations

import numpy as np

from nextgpt.errors import InputError


def _checked(features: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InputError(f"{what}: need an [N, D] array with N >= 2 samples, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError(f"{what}: features hold NaN or inf")
    return x


def gaussian_stats(features: np.ndarray, what: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """The mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of ``features [N, D]``, N >= 2."""
    x = _checked(features, what)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance_from_stats(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray, eps: float = 1e-6
) -> float:
    """The squared Frechet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b)."""
    from scipy import linalg

    mu_a, mu_b = np.atleast_1d(mu_a).astype(np.float64), np.atleast_1d(mu_b).astype(np.float64)
    sigma_a, sigma_b = np.atleast_2d(sigma_a).astype(np.float64), np.atleast_2d(sigma_b).astype(np.float64)
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape:
        raise InputError(f"feature sizes differ: {mu_a.shape} vs {mu_b.shape}")
    diff = mu_a - mu_b
    covmean = linalg.sqrtm(sigma_a.dot(sigma_b))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma_a.shape[0]) * eps
        covmean = linalg.sqrtm((sigma_a + offset).dot(sigma_b + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real  # numerical noise of sqrtm; the true root of a PSD product is real
    return float(diff.dot(diff) + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))


def _factor(x: np.ndarray) -> np.ndarray:
    """``x`` [N, D], or the [D, D] ``R`` of its QR decomposition when N > D (``x^T x = R^T R``)."""
    return np.linalg.qr(x, mode="r") if x.shape[0] > x.shape[1] else x


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The squared Frechet distance between the Gaussians fitted to two ``[N, D]`` feature sets
    (through the singular values of ``A B^T``; see the module docstring)."""
    a = _checked(features_a, "first feature set")
    b = _checked(features_b, "second feature set")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    if a.shape[1] != b.shape[1]:
        raise InputError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    a = _factor((a - mu_a) / np.sqrt(a.shape[0] - 1))
    b = _factor((b - mu_b) / np.sqrt(b.shape[0] - 1))
    trace_sqrt = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    diff = mu_a - mu_b
    return float(diff.dot(diff) + (a * a).sum() + (b * b).sum() - 2.0 * trace_sqrt)
