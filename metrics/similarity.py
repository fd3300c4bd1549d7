r"""Representational similarity of kernels and features: HSIC, CKA, CCA and SVCCA.

Pure functions on torch tensors; every computation is done in ``float64`` and scalar results are
returned as Python floats. Rows index samples throughout: a representation is a feature matrix
``Tensor (N, d)`` or its Gram matrix ``Tensor (N, N)`` over the same ``N`` inputs.

* Centring (:func:`center_gram`) and the Hilbert-Schmidt independence criterion (:func:`hsic`),
  biased (Gretton et al., 2005) or unbiased (Song et al., 2012).
* Linear centred kernel alignment, CKA (Kornblith et al., 2019), from Grams (:func:`linear_cka`)
  or from features (:func:`linear_cka_features`). CKA is invariant to orthogonal maps and
  isotropic scaling of the features, but not to general invertible linear maps.
* Canonical correlations (:func:`canonical_correlations`) and SVCCA (Raghu et al., 2017), from
  features (:func:`svcca`) or from Grams alone (:func:`kernel_svcca`); with
  :func:`svcca_dimension` and :func:`kernel_svcca_dimension` for the number of directions kept.
  CCA is invariant to every invertible linear map of the retained subspace.

Numerical rank. A direction of a centred representation (a squared singular value of the
features, or an eigenvalue of the centred Gram) counts as non-zero when its variance exceeds
:math:`\max(10^{-10}, \text{floor})` times the largest one, where the floor is the round-off
level of the input's dtype :math:`\varepsilon`: :math:`(\max(N, d)\,\varepsilon)^2` for features
and :math:`N \varepsilon` for Grams. In float64 both are below :math:`10^{-10}`, so the feature
and the Gram routes keep the same directions. A representation whose centred Frobenius norm is
at most :math:`N \varepsilon` times its raw norm has zero variance across samples (it is constant)
and is rejected with a ``ValueError`` by every function here except :func:`center_gram` and
:func:`hsic` (for which 0 is a valid answer).

Example — HSIC of a planted centred vector, and two invariances::

    >>> import torch
    >>> x = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]], dtype=torch.float64)
    >>> round(hsic(x @ x.T, x @ x.T), 12)  # (x^T x)^2 / (N - 1)^2 = 16 / 9
    1.777777777778
    >>> gen = torch.Generator().manual_seed(0)
    >>> X = torch.randn(50, 3, dtype=torch.float64, generator=gen)
    >>> Q = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=gen)).Q
    >>> round(linear_cka_features(X, 2 * X @ Q), 12)
    1.0
    >>> A = torch.randn(3, 3, dtype=torch.float64, generator=gen)
    >>> canonical_correlations(X, X @ A + 5).round(decimals=12).tolist()
    [1.0, 1.0, 1.0]

References:
    A. Gretton, O. Bousquet, A. Smola and B. Schölkopf, "Measuring statistical dependence with
    Hilbert-Schmidt norms", ALT 2005.
    L. Song, A. Smola, A. Gretton, J. Bedo and K. Borgwardt, "Feature selection via dependence
    maximization", JMLR 13, 2012, pp. 1393-1434 (unbiased HSIC: eq. 5 and Theorem 2).
    S. Kornblith, M. Norouzi, H. Lee and G. Hinton, "Similarity of neural network
    representations revisited", ICML 2019.
    M. Raghu, J. Gilmer, J. Yosinski and J. Sohl-Dickstein, "SVCCA: Singular vector canonical
    correlation analysis for deep learning dynamics and interpretability", NeurIPS 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from metrics.spectra import eigh_sorted

__all__ = [
    "linear_cka_matrix",
    "kernel_svcca_basis",
    "svcca_of_bases",
    "center_gram",
    "hsic",
    "linear_cka",
    "linear_cka_features",
    "canonical_correlations",
    "svcca",
    "kernel_svcca",
    "svcca_dimension",
    "kernel_svcca_dimension",
]

# Default fraction of variance kept by SVCCA; Raghu et al. (2017) keep the top directions that
# explain 99% of the variance.
SVCCA_VARIANCE = 0.99
# Directions whose variance is at most this times the largest are numerically zero.
_VARIANCE_RTOL = 1e-10
# Largest relative asymmetry ||K - K^T||_max / ||K||_max accepted for a Gram matrix.
_SYMMETRY_RTOL = 1e-6


def _as_float64(x: Tensor, name: str) -> tuple[Tensor, float]:
    """Check that ``x`` is a finite 2-D tensor with at least 2 rows.

    Returns it in float64, with the machine epsilon of its own dtype (float64's for integers).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must have at least 2 rows and 1 column, got {tuple(x.shape)}")
    eps = torch.finfo(x.dtype if x.is_floating_point() else torch.float64).eps
    x = x.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite, got {int((~torch.isfinite(x)).sum())} NaN/inf")
    return x, eps


def _square(K: Tensor, name: str) -> tuple[Tensor, float]:
    """Validated square matrix in float64, with the epsilon of its dtype."""
    K, eps = _as_float64(K, name)
    if K.shape[1] != K.shape[0]:
        raise ValueError(f"{name} must be square (a Gram matrix), got shape {tuple(K.shape)}")
    return K, eps


def _gram(K: Tensor, name: str) -> tuple[Tensor, float]:
    """Validated symmetric Gram matrix, symmetrised exactly, with the epsilon of its dtype."""
    K, eps = _square(K, name)
    asymmetry = (K - K.T).abs().max().item()
    scale = K.abs().max().item()
    if asymmetry > _SYMMETRY_RTOL * scale:
        raise ValueError(
            f"{name} must be symmetric, got max|{name} - {name}^T| = {asymmetry:.3e} "
            f"> {_SYMMETRY_RTOL:.0e} * max|{name}| = {_SYMMETRY_RTOL * scale:.3e}"
        )
    return (K + K.T) / 2, eps


def _same_samples(A: Tensor, B: Tensor, names: tuple[str, str], gram: bool) -> None:
    """Check that two representations are over the same number of samples."""
    a, b = names
    if gram and A.shape != B.shape:
        raise ValueError(
            f"{a} and {b} must be Grams over the same samples, "
            f"got {a} {tuple(A.shape)} and {b} {tuple(B.shape)}"
        )
    if A.shape[0] != B.shape[0]:
        raise ValueError(
            f"{a} and {b} must have the same number of samples (rows), "
            f"got {a} {tuple(A.shape)} and {b} {tuple(B.shape)}"
        )


def _check_variance(variance: float) -> None:
    if not 0 < variance <= 1:
        raise ValueError(f"variance must be a fraction in (0, 1], got variance={variance}")


def _center(K: Tensor) -> Tensor:
    """:math:`HKH` without forming :math:`H`: subtract row and column means, add the grand mean."""
    return K - K.mean(dim=0, keepdim=True) - K.mean(dim=1, keepdim=True) + K.mean()


def _nonconstant(centered: Tensor, raw: Tensor, name: str, eps: float) -> Tensor:
    """Reject a representation whose centred version is round-off (all samples identical)."""
    n = raw.shape[0]
    size, raw_size = centered.norm().item(), raw.norm().item()
    if size <= n * eps * raw_size:
        raise ValueError(
            f"{name} has zero variance across samples (a constant representation): "
            f"||centred {name}||_F = {size:.3e} against ||{name}||_F = {raw_size:.3e}"
        )
    return centered


def _centered_features(X: Tensor, name: str) -> tuple[Tensor, float]:
    """Validated, mean-centred, non-constant features ``(N, d)`` with the input's epsilon."""
    X, eps = _as_float64(X, name)
    return _nonconstant(X - X.mean(dim=0, keepdim=True), X, name, eps), eps


def _centered_gram(K: Tensor, name: str) -> tuple[Tensor, float]:
    """Validated, double-centred, non-constant Gram ``(N, N)`` with the input's epsilon."""
    K, eps = _gram(K, name)
    return _nonconstant(_center(K), K, name, eps), eps


def _kept(variances: Tensor, variance: float, floor: float) -> int:
    """Fewest leading directions explaining ``variance`` of the total, capped at the rank.

    ``variances`` is sorted decreasingly, non-negative, with a positive first entry.
    """
    rank = int((variances > max(_VARIANCE_RTOL, floor) * variances[0]).sum())
    cumulative = variances.cumsum(dim=0)
    reaching = int(torch.searchsorted(cumulative, variance * cumulative[-1]))
    return min(reaching + 1, rank)


def _feature_basis(Xc: Tensor, eps: float, variance: float) -> Tensor:
    """Orthonormal basis of the top SVD directions of centred features, ``Tensor (N, k)``."""
    U, S, _ = torch.linalg.svd(Xc, full_matrices=False)
    floor = (max(Xc.shape) * eps) ** 2
    return U[:, : _kept(S.square(), variance, floor)]


def _gram_basis(Kc: Tensor, eps: float, variance: float) -> Tensor:
    """Orthonormal basis of the top eigenvectors of a centred Gram, ``Tensor (N, k)``."""
    eigenvalues, eigenvectors = eigh_sorted(Kc)
    floor = Kc.shape[0] * eps
    return eigenvectors[:, : _kept(eigenvalues.clamp(min=0.0), variance, floor)]


def _mean_correlation(U: Tensor, V: Tensor) -> float:
    """Mean cosine of the principal angles between two orthonormal bases: the square roots of
    the eigenvalues of the smaller of (UᵀV)(UᵀV)ᵀ and (UᵀV)ᵀ(UᵀV), which is cheaper than an
    SVD of UᵀV and equal to its singular values."""
    M = U.T @ V
    gram = M @ M.T if M.shape[0] <= M.shape[1] else M.T @ M
    return torch.linalg.eigvalsh(gram).clamp(0.0, 1.0).sqrt().mean().item()


def center_gram(K: Tensor) -> Tensor:
    r"""Double-centred matrix :math:`HKH`, with :math:`H = I - \mathbf{1}\mathbf{1}^\top / N`.

    For a Gram :math:`K = XX^\top` this is the Gram of the mean-centred features. Rows and columns
    of the result sum to zero.

    Args:
        K: Square matrix, ``Tensor (N, N)``.

    Returns:
        :math:`HKH`, float64 ``Tensor (N, N)``.
    """
    K, _ = _square(K, "K")
    return _center(K)


def _hsic_biased(K: Tensor, L: Tensor) -> Tensor:
    n = K.shape[0]
    return (_center(K) * L).sum() / (n - 1) ** 2


def _hsic_unbiased(K: Tensor, L: Tensor) -> Tensor:
    n = K.shape[0]
    K = K - torch.diag_embed(K.diagonal())
    L = L - torch.diag_embed(L.diagonal())
    trace = (K * L).sum()
    totals = K.sum() * L.sum() / ((n - 1) * (n - 2))
    cross = 2 / (n - 2) * (K.sum(dim=0) @ L.sum(dim=1))
    return (trace + totals - cross) / (n * (n - 3))


def hsic(K: Tensor, L: Tensor, *, unbiased: bool = False) -> float:
    r"""Hilbert-Schmidt independence criterion of two Gram matrices over the same samples.

    The biased estimator of Gretton et al. (2005) is

    .. math:: \operatorname{HSIC}_0(K, L) = \frac{\operatorname{tr}(KHLH)}{(N-1)^2},
        \qquad H = I - \tfrac{1}{N}\mathbf{1}\mathbf{1}^\top.

    The unbiased estimator of Song et al. (2012, eq. 5) uses the Grams with zeroed diagonals
    :math:`\tilde K, \tilde L`:

    .. math:: \operatorname{HSIC}_1(K, L) = \frac{1}{N(N-3)} \Big[
        \operatorname{tr}(\tilde K \tilde L)
        + \frac{\mathbf{1}^\top \tilde K \mathbf{1} \; \mathbf{1}^\top \tilde L \mathbf{1}}
               {(N-1)(N-2)}
        - \frac{2}{N-2} \mathbf{1}^\top \tilde K \tilde L \mathbf{1} \Big].

    It equals the U-statistic :math:`\frac{1}{(N)_4} \sum_{(i,j,q,r)} h_{ijqr}` over distinct
    indices (their Theorem 2), and may be negative. It is unchanged by
    :math:`K \mapsto K + \mathbf{a}\mathbf{1}^\top + \mathbf{1}\mathbf{a}^\top`, so centring the
    features of a linear kernel does not change it.

    Args:
        K: Symmetric Gram matrix, ``Tensor (N, N)``.
        L: Symmetric Gram matrix over the same samples, ``Tensor (N, N)``.
        unbiased: Use :math:`\operatorname{HSIC}_1` (needs :math:`N \geq 4`) instead of
            :math:`\operatorname{HSIC}_0`.

    Returns:
        The estimate.
    """
    K, _ = _gram(K, "K")
    L, _ = _gram(L, "L")
    _same_samples(K, L, ("K", "L"), gram=True)
    if unbiased:
        n = K.shape[0]
        if n < 4:
            raise ValueError(f"unbiased HSIC needs N >= 4 samples, got K of shape {(n, n)}")
        return _hsic_unbiased(K, L).item()
    return _hsic_biased(K, L).item()


def _cka(Kc: Tensor, Lc: Tensor, unbiased: bool) -> float:
    """CKA of two validated, centred, non-constant Grams."""
    if not unbiased:
        return ((Kc * Lc).sum() / (Kc.norm() * Lc.norm())).item()
    n = Kc.shape[0]
    if n < 4:
        raise ValueError(f"unbiased CKA needs N >= 4 samples, got N={n}")
    self_k, self_l = _hsic_unbiased(Kc, Kc), _hsic_unbiased(Lc, Lc)
    for name, value in (("K", self_k), ("L", self_l)):
        if value <= 0:
            raise ValueError(
                f"unbiased HSIC({name}, {name}) = {value.item():.3e} is not positive, so CKA "
                f"is undefined; use more samples (N={n}) or unbiased=False"
            )
    return (_hsic_unbiased(Kc, Lc) / (self_k * self_l).sqrt()).item()


def linear_cka(K: Tensor, L: Tensor, *, unbiased: bool = False) -> float:
    r"""Centred kernel alignment of two Gram matrices (Kornblith et al., 2019).

    .. math:: \operatorname{CKA}(K, L) = \frac{\operatorname{HSIC}(K, L)}
        {\sqrt{\operatorname{HSIC}(K, K) \, \operatorname{HSIC}(L, L)}}.

    With the biased :func:`hsic` this is the cosine between :math:`HKH` and :math:`HLH`, in
    :math:`[0, 1]` for PSD Grams. With ``unbiased=True`` every HSIC is the unbiased estimator;
    the ratio is then less biased for small :math:`N` but is not confined to :math:`[0, 1]`
    (it can fall slightly outside either end). For linear kernels :math:`K = XX^\top`,
    :math:`L = YY^\top` see :func:`linear_cka_features`.

    Args:
        K: Symmetric Gram matrix, ``Tensor (N, N)``.
        L: Symmetric Gram matrix over the same samples, ``Tensor (N, N)``.
        unbiased: Use the unbiased HSIC (needs :math:`N \geq 4`).

    Returns:
        The alignment; 1 for :math:`L = cK`, :math:`c > 0`.

    Raises:
        ValueError: If a Gram is constant after centring (zero variance), or if an unbiased
            self-HSIC is not positive.
    """
    Kc, _ = _centered_gram(K, "K")
    Lc, _ = _centered_gram(L, "L")
    _same_samples(Kc, Lc, ("K", "L"), gram=True)
    return _cka(Kc, Lc, unbiased)


def linear_cka_matrix(kernels: Sequence[Tensor]) -> Tensor:
    r"""Biased linear CKA of every pair of Gram matrices, ``Tensor (m, m)`` float64.

    Each Gram is validated and centred once, so comparing m kernels costs m centrings and
    m(m−1)/2 inner products instead of m(m−1) centrings; entry (i, j) equals
    ``linear_cka(kernels[i], kernels[j])``.

    Raises:
        ValueError: If a Gram is constant after centring, or the Grams differ in size.
    """
    if len(kernels) == 0:
        raise ValueError("kernels must hold at least one Gram matrix, got none")
    centred = [_centered_gram(K, f"kernels[{i}]")[0] for i, K in enumerate(kernels)]
    for i, Kc in enumerate(centred[1:], start=1):
        _same_samples(centred[0], Kc, ("kernels[0]", f"kernels[{i}]"), gram=True)
    flat = torch.stack([Kc.reshape(-1) / Kc.norm() for Kc in centred])
    return flat @ flat.T


def linear_cka_features(X: Tensor, Y: Tensor, *, unbiased: bool = False) -> float:
    r"""Linear CKA of two feature matrices over the same samples.

    Equals :func:`linear_cka` of :math:`XX^\top` and :math:`YY^\top`. With centred features
    :math:`X_c, Y_c`, the biased version is computed in feature space,

    .. math:: \operatorname{CKA}(X, Y) = \frac{\|Y_c^\top X_c\|_F^2}
        {\|X_c^\top X_c\|_F \, \|Y_c^\top Y_c\|_F},

    at cost :math:`O(N d_1 d_2)`; the unbiased one forms the :math:`N \times N` Grams.

    Args:
        X: Features, ``Tensor (N, d1)``.
        Y: Features of the same samples, ``Tensor (N, d2)``.
        unbiased: Use the unbiased HSIC (needs :math:`N \geq 4`).

    Returns:
        The alignment, invariant to orthogonal maps and isotropic scaling of either side.
    """
    Xc, _ = _centered_features(X, "X")
    Yc, _ = _centered_features(Y, "Y")
    _same_samples(Xc, Yc, ("X", "Y"), gram=False)
    if unbiased:
        return _cka(Xc @ Xc.T, Yc @ Yc.T, unbiased=True)
    cross = (Yc.T @ Xc).square().sum()
    return (cross / ((Xc.T @ Xc).norm() * (Yc.T @ Yc).norm())).item()


def canonical_correlations(X: Tensor, Y: Tensor) -> Tensor:
    r"""All canonical correlations of two feature matrices over the same samples.

    After mean-centring, let :math:`Q_X, Q_Y` be orthonormal bases of the column spaces of
    :math:`X_c, Y_c` (left singular vectors above the numerical rank cutoff, see the module
    docstring). The canonical correlations are

    .. math:: \rho_i = \sigma_i(Q_X^\top Q_Y), \qquad i = 1, \dots, \min(r_X, r_Y),

    the cosines of the principal angles between the two spans. For full-rank data they are the
    singular values of :math:`\Sigma_{XX}^{-1/2} \Sigma_{XY} \Sigma_{YY}^{-1/2}`, without forming
    the inverses. They are invariant to invertible linear maps and translations of either side.
    The centred spans live in an :math:`(N-1)`-dimensional space, so when
    :math:`r_X + r_Y > N - 1` at least :math:`r_X + r_Y - N + 1` correlations are 1 whatever the
    data: CCA needs many more samples than features.

    Args:
        X: Features, ``Tensor (N, d1)``.
        Y: Features of the same samples, ``Tensor (N, d2)``.

    Returns:
        :math:`\rho_1 \geq \rho_2 \geq \dots`, clipped to :math:`[0, 1]`, float64
        ``Tensor (min(r_X, r_Y),)``.
    """
    return _svcca_correlations(X, Y, variance=1.0)


def _svcca_correlations(X: Tensor, Y: Tensor, variance: float) -> Tensor:
    Xc, eps_x = _centered_features(X, "X")
    Yc, eps_y = _centered_features(Y, "Y")
    _same_samples(Xc, Yc, ("X", "Y"), gram=False)
    U, V = _feature_basis(Xc, eps_x, variance), _feature_basis(Yc, eps_y, variance)
    return torch.linalg.svdvals(U.T @ V).clamp(0.0, 1.0)


def svcca(X: Tensor, Y: Tensor, *, variance: float = SVCCA_VARIANCE) -> float:
    r"""SVCCA similarity of two feature matrices (Raghu et al., 2017).

    Each representation is mean-centred and reduced by its SVD :math:`X_c = U S V^\top` to the
    fewest :math:`k` leading directions with
    :math:`\sum_{i \le k} s_i^2 \geq \text{variance} \cdot \sum_i s_i^2`; the result is the mean
    of the :math:`\min(k_X, k_Y)` canonical correlations of the reduced representations
    :math:`U_k S_k` (see :func:`canonical_correlations`). ``variance=1.0`` keeps every direction
    above the numerical rank cutoff, i.e. it is the mean of :func:`canonical_correlations`. The
    number of directions kept is :func:`svcca_dimension`.

    Invariant to orthogonal maps, isotropic scaling and translations of either side; for
    ``variance=1.0`` to every invertible linear map. With few directions relative to :math:`N`,
    independent representations score near 0; see :func:`canonical_correlations` for why
    :math:`k_X + k_Y > N - 1` forces correlations of 1.

    Args:
        X: Features, ``Tensor (N, d1)``.
        Y: Features of the same samples, ``Tensor (N, d2)``.
        variance: Fraction of variance the kept directions must explain, in :math:`(0, 1]`.

    Returns:
        The mean canonical correlation, in :math:`[0, 1]`.
    """
    _check_variance(variance)
    return _svcca_correlations(X, Y, variance).mean().item()


def kernel_svcca(K: Tensor, L: Tensor, *, variance: float = SVCCA_VARIANCE) -> float:
    r"""SVCCA computed from PSD Gram matrices alone.

    Double-centre, :math:`HKH = U \operatorname{diag}(\lambda) U^\top`, and use the features
    :math:`U_k \operatorname{diag}(\lambda_{1:k})^{1/2}` of the fewest leading eigenvalues with
    :math:`\sum_{i \le k} \lambda_i \geq \text{variance} \cdot \sum_i \lambda_i^+`. Since
    :math:`X_c = U S V^\top` gives :math:`HXX^\top H = U S^2 U^\top`, this equals
    :func:`svcca` of the features: ``kernel_svcca(X @ X.T, Y @ Y.T) == svcca(X, Y)``.

    CCA is invariant to invertible maps of the kept subspace, so the features are never formed:
    the result is the mean of the :math:`\min(k_K, k_L)` singular values of
    :math:`U_{K,k}^\top U_{L,k}`. Cost: two :math:`N \times N` eigendecompositions.

    The kept subspaces lie in the :math:`(N-1)`-dimensional space orthogonal to
    :math:`\mathbf{1}`. When :math:`k_K + k_L > N - 1` they necessarily intersect, so at least
    :math:`k_K + k_L - N + 1` correlations are 1 and the mean approaches 1 whatever the kernels;
    compare the value with :func:`kernel_svcca_dimension` of both.

    Args:
        K: Symmetric PSD Gram matrix, ``Tensor (N, N)``; negative eigenvalues of :math:`HKH`
            (round-off) are ignored.
        L: Symmetric PSD Gram matrix over the same samples, ``Tensor (N, N)``.
        variance: Fraction of variance the kept directions must explain, in :math:`(0, 1]`.

    Returns:
        The mean canonical correlation, in :math:`[0, 1]`.
    """
    _check_variance(variance)
    Kc, eps_k = _centered_gram(K, "K")
    Lc, eps_l = _centered_gram(L, "L")
    _same_samples(Kc, Lc, ("K", "L"), gram=True)
    return _mean_correlation(_gram_basis(Kc, eps_k, variance), _gram_basis(Lc, eps_l, variance))


def kernel_svcca_basis(K: Tensor, *, variance: float = SVCCA_VARIANCE) -> Tensor:
    r"""The orthonormal basis (N, k) of the directions :func:`kernel_svcca` keeps for ``K``.

    Comparing many kernels pairwise costs one eigendecomposition per kernel this way:
    ``svcca_of_bases(kernel_svcca_basis(K), kernel_svcca_basis(L)) == kernel_svcca(K, L)``.
    """
    _check_variance(variance)
    Kc, eps = _centered_gram(K, "K")
    return _gram_basis(Kc, eps, variance)


def svcca_of_bases(U: Tensor, V: Tensor) -> float:
    r"""Mean canonical correlation of two kept subspaces given by orthonormal bases (N, k) and
    (N, m) from :func:`kernel_svcca_basis`: the mean of the :math:`\min(k, m)` singular values
    of :math:`U^\top V`."""
    if U.dim() != 2 or V.dim() != 2 or U.shape[0] != V.shape[0]:
        raise ValueError(
            f"U and V must be bases (N, k) over the same N samples, got shapes "
            f"{tuple(U.shape)} and {tuple(V.shape)}"
        )
    return _mean_correlation(U.double(), V.double())


def svcca_dimension(X: Tensor, *, variance: float = SVCCA_VARIANCE) -> int:
    r"""Number of SVD directions of the centred features that :func:`svcca` keeps.

    Args:
        X: Features, ``Tensor (N, d)``.
        variance: Fraction of variance the kept directions must explain, in :math:`(0, 1]`.

    Returns:
        :math:`k \in [1, \operatorname{rank} X_c]`; the numerical rank for ``variance=1.0``.
    """
    _check_variance(variance)
    Xc, eps = _centered_features(X, "X")
    return _feature_basis(Xc, eps, variance).shape[1]


def kernel_svcca_dimension(K: Tensor, *, variance: float = SVCCA_VARIANCE) -> int:
    r"""Number of eigenvectors of the centred Gram that :func:`kernel_svcca` keeps.

    Equals :func:`svcca_dimension` of ``X`` for ``K = X @ X.T`` (in float64).

    Args:
        K: Symmetric PSD Gram matrix, ``Tensor (N, N)``.
        variance: Fraction of variance the kept directions must explain, in :math:`(0, 1]`.

    Returns:
        :math:`k \in [1, \operatorname{rank} HKH]`.
    """
    _check_variance(variance)
    Kc, eps = _centered_gram(K, "K")
    return _gram_basis(Kc, eps, variance).shape[1]
