"""Spectral clustering of an affinity matrix with the number of clusters read off its spectrum.

The eigengap heuristic (von Luxburg 2007, "A tutorial on spectral clustering", §8.1): with
λ₁ ≤ λ₂ ≤ … the eigenvalues of the symmetric normalised Laplacian
L = I − D^{-1/2} S D^{-1/2}, choose k maximising λ_{k+1} − λ_k over k_min ≤ k ≤ k_max.
The partition itself is scikit-learn's ``SpectralClustering`` on the precomputed affinity.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import SpectralClustering
from torch import Tensor


def _check_affinity(S: Tensor) -> np.ndarray:
    A = torch.as_tensor(S, dtype=torch.float64).cpu().numpy()
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"affinity must be a square matrix, got shape {tuple(A.shape)}")
    if not np.isfinite(A).all():
        raise ValueError("affinity must be finite")
    if (A < -1e-12).any():
        raise ValueError(f"affinity must be non-negative, got min {A.min():.3g}")
    return np.clip((A + A.T) / 2, 0.0, None)


def laplacian_spectrum(S: Tensor) -> Tensor:
    """Ascending eigenvalues of the normalised Laplacian of affinity S (U, U), float64."""
    A = _check_affinity(S)
    degree = A.sum(1)
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)), 0.0)
    L = np.eye(len(A)) - inv_sqrt[:, None] * A * inv_sqrt[None, :]
    return torch.from_numpy(np.linalg.eigvalsh((L + L.T) / 2))


def eigengap_k(S: Tensor, k_min: int = 2, k_max: int | None = None) -> int:
    """Number of clusters k ∈ [k_min, k_max] with the largest Laplacian eigengap λ_{k+1} − λ_k.

    ``k_max`` defaults to U // 2.
    """
    U = len(S)
    k_max = U // 2 if k_max is None else k_max
    if not 1 <= k_min <= k_max <= U - 1:
        raise ValueError(f"need 1 ≤ k_min ≤ k_max ≤ U-1={U - 1}, got k_min={k_min}, k_max={k_max}")
    lam = laplacian_spectrum(S)
    gaps = lam[k_min : k_max + 1] - lam[k_min - 1 : k_max]  # gaps[i] = λ_{k+1} − λ_k, k = k_min+i
    return k_min + int(torch.argmax(gaps))


def spectral_partition(
    S: Tensor, k: int | None = None, *, seed: int = 0, k_min: int = 2, k_max: int | None = None
) -> tuple[np.ndarray, int]:
    """Labels (U,) from spectral clustering of affinity S, and the k used (eigengap if None)."""
    A = _check_affinity(S)
    k = eigengap_k(S, k_min, k_max) if k is None else k
    model = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed)
    return model.fit_predict(A), k
