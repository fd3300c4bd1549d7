r"""Spectral summaries of kernel matrices and overlaps between subspaces.

Pure functions on torch tensors. Everything numerically delicate is done in ``float64``.

* Eigendecomposition sorted by decreasing eigenvalue (:func:`eigh_sorted`) and the gaps in
  such a spectrum (:func:`spectral_cliffs`, :func:`largest_cliff`).
* Orthonormal bases of column spans (:func:`orthonormal_basis`) and how much two such subspaces
  overlap (:func:`subspace_overlap`, :func:`normalized_overlap`, :func:`principal_angles`),
  with the chance level of a random subspace (:func:`overlap_chance`).
* Scalar "how many directions matter" summaries of a PSD spectrum: the effective rank of
  Roy & Vetterli (2007), the participation ratio and the stable rank.

Reference:
    O. Roy and M. Vetterli, "The effective rank: A measure of effective dimensionality",
    15th European Signal Processing Conference (EUSIPCO), 2007, pp. 606-610.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "cosine_normalize",
    "eigh_sorted",
    "spectral_cliffs",
    "largest_cliff",
    "orthonormal_basis",
    "subspace_overlap",
    "normalized_overlap",
    "overlap_chance",
    "principal_angles",
    "effective_rank",
    "participation_ratio",
    "stable_rank",
]

_ORTHONORMAL_TOL = 1e-6
_NEGATIVE_EIGENVALUE_TOL = 1e-9


def _as_float64(x: Tensor, name: str, ndim: int) -> Tensor:
    """Check that ``x`` is a finite tensor with ``ndim`` dimensions; return it in float64."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite, got {int((~torch.isfinite(x)).sum())} NaN/inf")
    return x


def eigh_sorted(K: Tensor, ridge: float = 1e-10) -> tuple[Tensor, Tensor]:
    r"""Eigendecomposition of a symmetric matrix, sorted by decreasing eigenvalue.

    Computes :math:`K_s = (K + K^\top)/2 = V \operatorname{diag}(\lambda) V^\top` in float64. For
    stability, :math:`\epsilon = \text{ridge} \cdot \operatorname{tr}(K)/N` is added to the
    diagonal before ``torch.linalg.eigh`` and subtracted from the eigenvalues afterwards.

    Args:
        K: Square matrix, ``Tensor (N, N)``.
        ridge: Relative size of the diagonal shift.

    Returns:
        Eigenvalues ``Tensor (N,)`` with :math:`\lambda_0 \geq \lambda_1 \geq \dots`, and
        eigenvectors ``Tensor (N, N)`` whose column ``i`` belongs to :math:`\lambda_i`.
    """
    K = _as_float64(K, "K", ndim=2)
    N = K.shape[0]
    if N == 0 or K.shape[1] != N:
        raise ValueError(f"K must be square and non-empty, got shape {tuple(K.shape)}")
    shift = ridge * torch.trace(K) / N
    identity = torch.eye(N, dtype=K.dtype, device=K.device)
    eigenvalues, eigenvectors = torch.linalg.eigh((K + K.T) / 2 + shift * identity)
    return (eigenvalues - shift).flip(0), eigenvectors.flip(1)


def spectral_cliffs(eigenvalues: Tensor, top: int | None = None, floor: float = 1e-12) -> Tensor:
    r"""Ratios of consecutive eigenvalues, :math:`r_i = \lambda_i / \lambda_{i+1}`.

    Eigenvalues below :math:`\text{floor} \cdot \lambda_0` are clamped to that value, so every
    ratio is finite and at least 1.

    Args:
        eigenvalues: Spectrum sorted decreasingly with :math:`\lambda_0 > 0`, ``Tensor (N,)``.
        top: Use only the leading ``top`` eigenvalues, :math:`2 \leq \text{top} \leq N`.
            Defaults to ``N``.
        floor: Clamp level relative to :math:`\lambda_0`.

    Returns:
        :math:`(r_0, \dots, r_{\text{top}-2})`, float64 ``Tensor (top - 1,)``.
    """
    lam = _as_float64(eigenvalues, "eigenvalues", ndim=1)
    N = lam.shape[0]
    top = N if top is None else top
    if not 2 <= top <= N:
        raise ValueError(f"top must be in 2..N={N}, got top={top}")
    if (lam[1:] > lam[:-1]).any():
        raise ValueError("eigenvalues must be sorted decreasingly (e.g. from eigh_sorted)")
    if lam[0] <= 0:
        raise ValueError(f"the largest eigenvalue must be positive, got {lam[0].item():.3e}")
    lam = lam[:top].clamp(min=floor * lam[0].item())
    return lam[:-1] / lam[1:]


def largest_cliff(eigenvalues: Tensor, top: int | None = None) -> int:
    r"""Position of the largest gap in a decreasing spectrum.

    The position is the number of eigenvalues *above* the gap: if :math:`r_i =
    \lambda_i / \lambda_{i+1}` (see :func:`spectral_cliffs`) is largest, this returns
    :math:`i + 1`. A spectrum with 5 large eigenvalues followed by small ones gives 5.

    Args:
        eigenvalues: Spectrum sorted decreasingly, ``Tensor (N,)``.
        top: Search only among the leading ``top`` eigenvalues; see :func:`spectral_cliffs`.

    Returns:
        Position in ``1..top-1``.
    """
    return int(spectral_cliffs(eigenvalues, top=top).argmax()) + 1


def orthonormal_basis(X: Tensor, center: bool = False, tol: float = 1e-10) -> Tensor:
    r"""Orthonormal basis of the column span of ``X``, via the SVD.

    Left singular vectors whose singular value is at most ``tol`` times the largest are dropped,
    so the number of columns returned is the numerical rank :math:`r`.

    Args:
        X: Matrix whose columns span the subspace, ``Tensor (n, m)``; rows index inputs.
        center: Subtract the mean over rows from every column before taking the span.
        tol: Relative singular-value cutoff.

    Returns:
        :math:`Q` with :math:`Q^\top Q = I_r`, float64 ``Tensor (n, r)``.
    """
    X = _as_float64(X, "X", ndim=2)
    if center:
        X = X - X.mean(dim=0, keepdim=True)
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    if S.numel() == 0 or S[0] == 0:
        return U[:, :0]
    rank = int((S > tol * S[0]).sum())
    return U[:, :rank]


def _check_basis(U: Tensor, name: str) -> Tensor:
    """Check that ``U`` has at least one column and orthonormal columns; return it in float64."""
    U = _as_float64(U, name, ndim=2)
    k = U.shape[1]
    if k == 0:
        raise ValueError(f"{name} must have at least one column, got shape {tuple(U.shape)}")
    identity = torch.eye(k, dtype=U.dtype, device=U.device)
    error = torch.linalg.matrix_norm(U.T @ U - identity, ord=2).item()
    if error > _ORTHONORMAL_TOL:
        raise ValueError(
            f"{name} must have orthonormal columns (use orthonormal_basis), "
            f"got ||{name}^T {name} - I||_2 = {error:.3e} > {_ORTHONORMAL_TOL:.0e}"
        )
    return U


def _cross_gram(U: Tensor, V: Tensor) -> Tensor:
    """Validated :math:`U^\\top V`, float64 ``Tensor (k, m)``."""
    U, V = _check_basis(U, "U"), _check_basis(V, "V")
    if U.shape[0] != V.shape[0]:
        raise ValueError(
            f"U and V must live in the same space, got U {tuple(U.shape)} and V {tuple(V.shape)}"
        )
    return U.T @ V


def subspace_overlap(U: Tensor, V: Tensor) -> float:
    r"""Sum of squared cosines of the principal angles between two subspaces.

    .. math:: \operatorname{overlap}(U, V) = \sum_i \sigma_i(U^\top V)^2 = \|U^\top V\|_F^2
        = \operatorname{tr}(P_U P_V).

    Ranges from 0 (orthogonal) to :math:`\min(k, m)` (one subspace contains the other).

    Args:
        U: Orthonormal basis, ``Tensor (n, k)``.
        V: Orthonormal basis, ``Tensor (n, m)``.

    Returns:
        The overlap.

    Raises:
        ValueError: If a basis is not orthonormal (it is never re-orthonormalised silently).
    """
    return torch.linalg.matrix_norm(_cross_gram(U, V)).square().item()


def normalized_overlap(U: Tensor, V: Tensor) -> float:
    r""":func:`subspace_overlap` divided by :math:`\min(k, m)`, in :math:`[0, 1]`."""
    return subspace_overlap(U, V) / min(U.shape[1], V.shape[1])


def overlap_chance(n: int, k: int, m: int) -> float:
    r"""Expected :func:`normalized_overlap` of a uniformly random subspace with a fixed one.

    For a Haar-random :math:`k`-dimensional subspace of :math:`\mathbb{R}^n` and a fixed
    :math:`m`-dimensional one, :math:`\mathbb{E}[\sum_i \sigma_i^2] = km/n`; divided by
    :math:`\min(k, m)` this is :math:`\max(k, m)/n`.

    Args:
        n: Ambient dimension.
        k: Dimension of the random subspace, :math:`1 \leq k \leq n`.
        m: Dimension of the fixed subspace, :math:`1 \leq m \leq n`.

    Returns:
        :math:`\max(k, m) / n`.
    """
    for name, value in (("k", k), ("m", m)):
        if not 1 <= value <= n:
            raise ValueError(f"{name} must be in 1..n={n}, got {name}={value}")
    return max(k, m) / n


def principal_angles(U: Tensor, V: Tensor) -> Tensor:
    r"""Principal angles between two subspaces, in radians and ascending.

    :math:`\theta_i = \arccos \sigma_i(U^\top V)`, with the singular values clamped to
    :math:`[0, 1]` against round-off.

    Args:
        U: Orthonormal basis, ``Tensor (n, k)``.
        V: Orthonormal basis, ``Tensor (n, m)``.

    Returns:
        float64 ``Tensor (min(k, m),)``.
    """
    return torch.linalg.svdvals(_cross_gram(U, V)).clamp(0.0, 1.0).arccos()


def _psd_spectrum(eigenvalues: Tensor) -> Tensor:
    """Validate a non-zero PSD spectrum and clip round-off negatives to zero; float64."""
    lam = _as_float64(eigenvalues, "eigenvalues", ndim=1)
    if lam.numel() == 0 or lam.max() <= 0:
        raise ValueError(f"eigenvalues must contain a positive value, got {lam.tolist()[:5]}")
    threshold = -_NEGATIVE_EIGENVALUE_TOL * lam.max().item()
    if lam.min() < threshold:
        raise ValueError(
            f"eigenvalues must be PSD (each >= {threshold:.3e}), got min {lam.min().item():.3e}"
        )
    return lam.clamp(min=0.0)


def effective_rank(eigenvalues: Tensor) -> float:
    r"""Effective rank of Roy & Vetterli (2007).

    .. math:: \operatorname{erank} = \exp\Big(-\sum_i p_i \log p_i\Big), \qquad
        p_i = \lambda_i / \textstyle\sum_j \lambda_j,

    with :math:`0 \log 0 = 0`. Equals :math:`r` for :math:`r` equal non-zero eigenvalues.

    Args:
        eigenvalues: PSD spectrum, ``Tensor (N,)``, in any order. Negatives down to
            :math:`-10^{-9} \lambda_{\max}` are treated as 0.

    Returns:
        The effective rank, in :math:`[1, N]`.
    """
    lam = _psd_spectrum(eigenvalues)
    p = lam / lam.sum()
    return torch.exp(-torch.xlogy(p, p).sum()).item()


def participation_ratio(eigenvalues: Tensor) -> float:
    r"""Participation ratio :math:`(\sum_i \lambda_i)^2 / \sum_i \lambda_i^2`, in :math:`[1, N]`.

    Args:
        eigenvalues: PSD spectrum, ``Tensor (N,)``; see :func:`effective_rank`.
    """
    lam = _psd_spectrum(eigenvalues)
    return (lam.sum().square() / lam.square().sum()).item()


def stable_rank(eigenvalues: Tensor) -> float:
    r"""Stable rank :math:`\sum_i \lambda_i / \lambda_{\max}`, in :math:`[1, N]`.

    For a Gram matrix :math:`K = A A^\top` this is :math:`\|A\|_F^2 / \|A\|_2^2`.

    Args:
        eigenvalues: PSD spectrum, ``Tensor (N,)``; see :func:`effective_rank`.
    """
    lam = _psd_spectrum(eigenvalues)
    return (lam.sum() / lam.max()).item()


def cosine_normalize(K: Tensor, tol: float = 1e-12) -> Tensor:
    r"""The cosine-normalised kernel :math:`D^{-1/2} K D^{-1/2}`, :math:`D = \mathrm{diag}(K)`.

    Its entries are the cosines between the inputs' feature vectors, its diagonal is 1, and its
    trace is N, so spectra of kernels with different scales (checkpoints along training) are
    comparable. An input whose diagonal entry is at most ``tol · max diag(K)`` has no
    direction (a zero feature vector, e.g. an all-zero input of a bias-free network); its row
    and column are set to zero instead of dividing by zero.

    Args:
        K: symmetric PSD kernel ``Tensor (N, N)``.

    Returns:
        ``Tensor (N, N)`` float64.
    """
    K = _as_float64(K, "K", ndim=2)
    if K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be square, got shape {tuple(K.shape)}")
    d = K.diagonal()
    if d.numel() == 0 or d.max() <= 0:
        raise ValueError("K must have a positive diagonal entry")
    scale = torch.where(d > tol * d.max(), d.clamp_min(1e-300).rsqrt(), torch.zeros_like(d))
    return scale[:, None] * K * scale[None, :]
