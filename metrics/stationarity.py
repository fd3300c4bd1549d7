r"""Eigenspace stationarity: does a kernel's eigenbasis hold still while its eigenvalues move?

Let :math:`K = U \operatorname{diag}(\lambda) U^\top` and :math:`K' = U' \operatorname{diag}
(\lambda') U'^\top` be a symmetric PSD kernel at two moments (before/after a stretch of
training), eigenvalues decreasing, and :math:`U_k, U'_k` the top-:math:`k` eigenvectors. Two
numbers separate "the basis moved" from "only the eigenvalues moved":

.. math::

    \text{overlap} = \frac{\lVert U_k^\top U'_k \rVert_F^2}{k} \in [0, 1], \qquad
    \rho_i = \log \frac{u_i^\top K' u_i}{\lambda_i}, \quad i = 1, \dots, k.

The overlap is 1 when the top-:math:`k` eigenspace is unchanged (whatever happens inside it) and
:math:`k/N` in expectation for a random :math:`k`-subspace (:func:`metrics.overlap_chance`).
The Rayleigh quotients :math:`u_i^\top K' u_i` are the new "eigenvalues" measured along the old
eigenvectors, so the log ratios :math:`\rho_i` say how far each eigenvalue moved along a frozen
basis; when the eigenbasis is stationary they are exactly :math:`\log(\lambda'_{\pi(i)}/\lambda_i)`.

Two controls come with it. :func:`random_rotation` gives :math:`Q K Q^\top` for a Haar-random
orthogonal :math:`Q`: the same spectrum in a random basis (the negative control, overlap near
:math:`k/N`). :func:`scale_spectrum` keeps :math:`U` and rescales the top-:math:`k`
eigenvalues (the planted positive, overlap 1 and known log ratios). Example::

    >>> import torch
    >>> K = torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64))
    >>> s = eigenspace_stationarity(K, scale_spectrum(K, 2.0, k=2), k=2)
    >>> round(s.overlap, 12), s.log_ratios.exp().round(decimals=12).tolist(), s.chance
    (1.0, [2.0, 2.0], 0.5)

The top-:math:`k` eigenspace is only defined when :math:`\lambda_k > \lambda_{k+1}`; pick
:math:`k` at a gap (e.g. :func:`metrics.largest_cliff`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from metrics.spectra import eigh_sorted, normalized_overlap, overlap_chance

__all__ = ["Stationarity", "eigenspace_stationarity", "random_rotation", "scale_spectrum"]

_SYMMETRY_RTOL = 1e-5  # relative to max |K_ij|; float32 kernels from J Jᵀ meet it


def _check_kernel(K: Tensor, name: str) -> Tensor:
    """Check that ``K`` is a finite, square, symmetric matrix; return its float64 symmetric part."""
    if not isinstance(K, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(K).__name__}")
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square matrix, got shape {tuple(K.shape)}")
    K = K.detach().to(torch.float64)
    if not torch.isfinite(K).all():
        raise ValueError(f"{name} must be finite, got {int((~torch.isfinite(K)).sum())} NaN/inf")
    scale = K.abs().max().item()
    asymmetry = (K - K.T).abs().max().item()
    if asymmetry > _SYMMETRY_RTOL * scale:
        raise ValueError(
            f"{name} must be symmetric, got max |{name} - {name}^T| = {asymmetry:.3e} "
            f"> {_SYMMETRY_RTOL:.0e} * max |{name}| = {_SYMMETRY_RTOL * scale:.3e}"
        )
    return (K + K.T) / 2


def _check_k(k: int, N: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < N:
        raise ValueError(f"k must be an int in 1..N-1={N - 1}, got k={k!r}")


@dataclass(frozen=True)
class Stationarity:
    r"""How much the top-:math:`k` eigenbasis and eigenvalues of a kernel moved.

    Attributes:
        k: Number of leading eigenpairs compared.
        overlap: :math:`\lVert U_k^\top U'_k \rVert_F^2 / k \in [0, 1]`.
        eigenvalues: Top-:math:`k` eigenvalues :math:`\lambda_i` of ``K_before``, decreasing,
            float64 ``Tensor (k,)``.
        rayleigh: :math:`u_i^\top K_\text{after} u_i` along the before-eigenvectors,
            float64 ``Tensor (k,)``.
        log_ratios: :math:`\log(\text{rayleigh}_i / \lambda_i)`, float64 ``Tensor (k,)``.
        median_abs_log_ratio: Median of :math:`|\text{log\_ratios}|` (the mean of the two middle
            values when :math:`k` is even).
        chance: :math:`k/N`, the expected overlap of a random :math:`k`-subspace.
        top_eigenvalue_change: :math:`\lambda'_1 / \lambda_1 - 1`, with :math:`\lambda'_1` the
            largest eigenvalue of ``K_after`` (in its own basis).
    """

    k: int
    overlap: float
    eigenvalues: Tensor
    rayleigh: Tensor
    log_ratios: Tensor
    median_abs_log_ratio: float
    chance: float
    top_eigenvalue_change: float


def eigenspace_stationarity(K_before: Tensor, K_after: Tensor, k: int) -> Stationarity:
    r"""Compare the top-:math:`k` eigenspaces and eigenvalues of two kernels (module docstring).

    Args:
        K_before: Symmetric PSD kernel, ``Tensor (N, N)`` of any float dtype.
        K_after: Symmetric PSD kernel on the same inputs, ``Tensor (N, N)``.
        k: Number of leading eigenpairs, :math:`1 \leq k < N`.

    Returns:
        A :class:`Stationarity`, computed in float64.

    Raises:
        ValueError: If a kernel is not square, finite and symmetric, the shapes differ, ``k`` is
            out of range, or a top-:math:`k` eigenvalue of ``K_before`` or a Rayleigh quotient
            is not positive (the log ratio is undefined).
    """
    before = _check_kernel(K_before, "K_before")
    after = _check_kernel(K_after, "K_after")
    if before.shape != after.shape:
        raise ValueError(
            f"K_before and K_after must have the same shape, got {tuple(before.shape)} "
            f"and {tuple(after.shape)}"
        )
    N = before.shape[0]
    _check_k(k, N)
    after = after.to(before.device)

    lam, U = eigh_sorted(before)
    lam_after, U_after = eigh_sorted(after)
    lam, U = lam[:k], U[:, :k]
    if (lam <= 0).any():
        raise ValueError(
            f"the top k={k} eigenvalues of K_before must be positive for log ratios, "
            f"got λ_k = {lam[-1].item():.3e}; choose a smaller k"
        )
    rayleigh = ((after @ U) * U).sum(0)  # (k,): u_iᵀ K_after u_i
    if (rayleigh <= 0).any():
        raise ValueError(
            f"u_i^T K_after u_i must be positive for the top k={k} eigenvectors u_i of K_before "
            f"for log ratios, got min {rayleigh.min().item():.3e}; choose a smaller k"
        )
    log_ratios = torch.log(rayleigh / lam)
    return Stationarity(
        k=k,
        overlap=normalized_overlap(U, U_after[:, :k]),
        eigenvalues=lam,
        rayleigh=rayleigh,
        log_ratios=log_ratios,
        median_abs_log_ratio=log_ratios.abs().quantile(0.5).item(),
        chance=overlap_chance(N, k, k),
        top_eigenvalue_change=(lam_after[0] / lam[0]).item() - 1.0,
    )


def random_rotation(K: Tensor, generator: torch.Generator) -> Tensor:
    r""":math:`Q K Q^\top` for a Haar-random orthogonal :math:`Q` — the negative control.

    :math:`Q` is the QR factor of an :math:`N \times N` standard Gaussian matrix with the signs
    of its columns fixed so that :math:`\operatorname{diag}(R) > 0`, which makes it Haar
    distributed (Mezzadri 2007, "How to generate random matrices from the classical compact
    groups"). The spectrum of :math:`K` is kept and its eigenbasis is replaced by a uniformly
    random one.

    Args:
        K: Symmetric matrix, ``Tensor (N, N)``.
        generator: Source of randomness; the same seed gives the same rotation.

    Returns:
        The rotated matrix, symmetric float64 ``Tensor (N, N)`` on ``K``'s device.
    """
    K = _check_kernel(K, "K")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    N = K.shape[0]
    A = torch.randn(N, N, generator=generator, dtype=torch.float64, device=generator.device)
    Q, R = torch.linalg.qr(A)
    Q = (Q * torch.sign(torch.diagonal(R))[None, :]).to(K.device)
    rotated = Q @ K @ Q.T
    return (rotated + rotated.T) / 2


def scale_spectrum(K: Tensor, factors: float | Sequence[float] | Tensor, k: int) -> Tensor:
    r"""Keep the eigenvectors of :math:`K` and multiply its top-:math:`k` eigenvalues by
    ``factors`` — the planted positive.

    .. math:: K' = K + U_k \operatorname{diag}\big((f_i - 1)\lambda_i\big) U_k^\top,

    which leaves the other eigenpairs untouched exactly. The top-:math:`k` eigenspace of
    :math:`K'` is still :math:`U_k` only if the scaled eigenvalues stay above
    :math:`\lambda_{k+1}`; choose the factors accordingly.

    Args:
        K: Symmetric matrix, ``Tensor (N, N)``.
        factors: Positive scalar, or one positive factor per eigenvalue, ``(k,)``.
        k: Number of leading eigenvalues to scale, :math:`1 \leq k < N`.

    Returns:
        :math:`K'`, symmetric float64 ``Tensor (N, N)``.
    """
    K = _check_kernel(K, "K")
    _check_k(k, K.shape[0])
    f = torch.as_tensor(factors, dtype=torch.float64, device=K.device)
    if f.ndim == 0:
        f = f.expand(k)
    if f.shape != (k,):
        raise ValueError(f"factors must be a scalar or have shape ({k},), got {tuple(f.shape)}")
    if not (torch.isfinite(f) & (f > 0)).all():
        raise ValueError(f"factors must be finite and positive, got {f.tolist()}")
    lam, U = eigh_sorted(K)
    U = U[:, :k]
    scaled = K + (U * ((f - 1) * lam[:k])[None, :]) @ U.T
    return (scaled + scaled.T) / 2
