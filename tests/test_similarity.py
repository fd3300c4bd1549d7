"""Tests for ``metrics.similarity`` against float64 brute-force references."""

import doctest
import itertools

import numpy as np
import pytest
import torch
from sklearn.cross_decomposition import CCA

import metrics.similarity
from metrics.similarity import (
    canonical_correlations,
    center_gram,
    hsic,
    kernel_svcca,
    kernel_svcca_basis,
    kernel_svcca_dimension,
    linear_cka,
    linear_cka_features,
    linear_cka_matrix,
    svcca,
    svcca_dimension,
    svcca_of_bases,
)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(_randn(d, d, seed=seed)).Q


def _well_conditioned(d: int, seed: int) -> torch.Tensor:
    """Random invertible map with singular values in [0.5, 2]."""
    s = torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    return _orthogonal(d, seed) @ torch.diag(s) @ _orthogonal(d, seed + 1)


def _shared_latent(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy linear read-outs (dims 6 and 8) of the same 3-d latent, plus offsets."""
    Z = _randn(n, 3, seed=seed)
    X = Z @ _randn(3, 6, seed=seed + 1) + 0.3 * _randn(n, 6, seed=seed + 2) + 1.0
    Y = Z @ _randn(3, 8, seed=seed + 3) + 0.3 * _randn(n, 8, seed=seed + 4) - 2.0
    return X, Y


def _random_gram(n: int, seed: int) -> torch.Tensor:
    A = _randn(n, 3, seed=seed)
    return torch.tanh(A @ A.T) + A @ A.T


def _planted_features(variances: list[float], n: int = 60, d: int = 9, seed: int = 0):
    """Features ``(n, d)`` whose centred singular values are ``sqrt(variances)``."""
    k = len(variances)
    G = _randn(n, k, seed=seed)
    U = torch.linalg.qr(G - G.mean(dim=0)).Q  # (n, k), orthogonal to the ones vector
    V = torch.linalg.qr(_randn(d, k, seed=seed + 1)).Q  # (d, k)
    S = torch.tensor(variances, dtype=torch.float64).sqrt()
    return U @ torch.diag(S) @ V.T + 3.0


def test_doctests():
    assert doctest.testmod(metrics.similarity).failed == 0


# center_gram


def test_center_gram_is_hkh():
    K = _randn(7, 7, seed=0)
    H = torch.eye(7, dtype=torch.float64) - torch.ones(7, 7, dtype=torch.float64) / 7
    Kc = center_gram(K)
    torch.testing.assert_close(Kc, H @ K @ H, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(center_gram(Kc), Kc, rtol=1e-12, atol=1e-12)
    X = _randn(7, 3, seed=1)
    Xc = X - X.mean(dim=0)
    torch.testing.assert_close(center_gram((X @ X.T).float()), Xc @ Xc.T, rtol=1e-5, atol=1e-5)


# hsic


def _hsic_biased_loops(K: np.ndarray, L: np.ndarray) -> float:
    """tr(KHLH) / (n-1)^2 written out as sums over indices."""
    n = K.shape[0]
    pair = sum(K[i, j] * L[i, j] for i in range(n) for j in range(n))
    triple = sum(K[i, j] * L[i, q] for i in range(n) for j in range(n) for q in range(n))
    totals = K.sum() * L.sum()
    return (pair - 2 * triple / n + totals / n**2) / (n - 1) ** 2


def _hsic_u_statistic(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (2012): mean over distinct (i, j, q, r) of the symmetrised kernel h_ijqr."""
    n = K.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        h = 0.0
        for s, t, u, v in itertools.permutations((i, j, q, r)):
            h += K[s, t] * L[s, t] + K[s, t] * L[u, v] - 2 * K[s, t] * L[s, u]
        total += h / 24
        count += 1
    return total / count


@pytest.mark.parametrize("n", [5, 8])
def test_hsic_biased_matches_loops_and_trace(n):
    K, L = _random_gram(n, seed=n), _random_gram(n, seed=n + 100)
    H = torch.eye(n, dtype=torch.float64) - 1 / n
    trace = (torch.trace(K @ H @ L @ H) / (n - 1) ** 2).item()
    value = hsic(K, L)
    assert isinstance(value, float)
    assert value == pytest.approx(trace, rel=1e-12)
    assert value == pytest.approx(_hsic_biased_loops(K.numpy(), L.numpy()), rel=1e-12)


@pytest.mark.parametrize("n", [6, 7])
def test_hsic_unbiased_matches_u_statistic(n):
    K, L = _random_gram(n, seed=n), _random_gram(n, seed=n + 100)
    ref = _hsic_u_statistic(K.numpy(), L.numpy())
    assert hsic(K, L, unbiased=True) == pytest.approx(ref, rel=1e-10, abs=1e-12)
    assert hsic(L, K, unbiased=True) == pytest.approx(ref, rel=1e-10, abs=1e-12)


def test_hsic_unbiased_ignores_rank_one_additions():
    K, L = _random_gram(9, seed=1), _random_gram(9, seed=2)
    a = _randn(9, 1, seed=3)
    ones = torch.ones(9, 1, dtype=torch.float64)
    shifted = K + a @ ones.T + ones @ a.T + 4.0
    assert hsic(shifted, L, unbiased=True) == pytest.approx(hsic(K, L, unbiased=True), rel=1e-10)
    # The biased estimator ignores only the constant shift.
    assert hsic(K + 4.0, L) == pytest.approx(hsic(K, L), rel=1e-10)


# linear CKA


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_grams_equal_features(unbiased):
    X, Y = _shared_latent(n=40)
    from_grams = linear_cka(X @ X.T, Y @ Y.T, unbiased=unbiased)
    assert from_grams == pytest.approx(linear_cka_features(X, Y, unbiased=unbiased), abs=1e-12)
    Kc, Lc = center_gram(X @ X.T), center_gram(Y @ Y.T)
    ref = hsic(Kc, Lc, unbiased=unbiased) / np.sqrt(
        hsic(Kc, Kc, unbiased=unbiased) * hsic(Lc, Lc, unbiased=unbiased)
    )
    assert from_grams == pytest.approx(ref, abs=1e-12)


def test_linear_cka_brute_force_and_range():
    X, Y = _randn(30, 4, seed=0), _randn(30, 5, seed=1)
    Xc, Yc = X - X.mean(dim=0), Y - Y.mean(dim=0)
    ref = (Yc.T @ Xc).norm() ** 2 / ((Xc.T @ Xc).norm() * (Yc.T @ Yc).norm())
    value = linear_cka_features(X, Y)
    assert value == pytest.approx(ref.item(), rel=1e-12)
    assert 0.0 < value < 1.0


@pytest.mark.parametrize("unbiased", [False, True])
def test_linear_cka_identity_orthogonal_and_scale_invariance(unbiased):
    X, Y = _shared_latent(n=50)
    assert linear_cka_features(X, X, unbiased=unbiased) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X @ X.T, 3 * X @ X.T, unbiased=unbiased) == pytest.approx(1.0, abs=1e-12)
    base = linear_cka_features(X, Y, unbiased=unbiased)
    moved = linear_cka_features(
        2.5 * X @ _orthogonal(6, 7), 0.1 * Y @ _orthogonal(8, 8), unbiased=unbiased
    )
    assert moved == pytest.approx(base, abs=1e-10)


def test_linear_cka_not_invariant_to_ill_conditioned_maps():
    X, Y = _shared_latent(n=100)
    A = _orthogonal(6, 1) @ torch.diag(torch.logspace(0, -3, 6, dtype=torch.float64))
    A = A @ _orthogonal(6, 2)
    assert abs(linear_cka_features(X @ A, Y) - linear_cka_features(X, Y)) > 1e-3
    # CCA on the same pair is unchanged: the difference is CKA's, not the data's.
    torch.testing.assert_close(
        canonical_correlations(X @ A, Y), canonical_correlations(X, Y), rtol=0, atol=1e-9
    )


# canonical correlations


def _cca_reference(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Singular values of Sxx^{-1/2} Sxy Syy^{-1/2} from sample covariances."""

    def inverse_sqrt(S):
        w, V = np.linalg.eigh(S)
        return V @ np.diag(w**-0.5) @ V.T

    X, Y = X - X.mean(axis=0), Y - Y.mean(axis=0)
    Sxx, Syy, Sxy = X.T @ X, Y.T @ Y, X.T @ Y
    return np.linalg.svd(inverse_sqrt(Sxx) @ Sxy @ inverse_sqrt(Syy), compute_uv=False)


def test_canonical_correlations_match_covariance_formula():
    X, Y = _shared_latent(n=120)
    rho = canonical_correlations(X, Y)
    assert rho.dtype == torch.float64 and rho.shape == (6,)
    assert (rho[:-1] >= rho[1:]).all() and (rho >= 0).all() and (rho <= 1).all()
    ref = torch.from_numpy(_cca_reference(X.numpy(), Y.numpy()))
    torch.testing.assert_close(rho, ref, rtol=1e-9, atol=1e-9)
    assert rho[:3].min() > 0.9 > rho[3:].max()  # three shared latent directions


def test_canonical_correlations_first_matches_sklearn():
    X, Y = _shared_latent(n=120)
    cca = CCA(n_components=1, scale=False, max_iter=5000, tol=1e-14).fit(X.numpy(), Y.numpy())
    u, v = cca.transform(X.numpy(), Y.numpy())
    first = np.corrcoef(u[:, 0], v[:, 0])[0, 1]
    assert canonical_correlations(X, Y)[0].item() == pytest.approx(first, abs=1e-8)


def test_canonical_correlations_invariant_to_invertible_maps():
    X, Y = _shared_latent(n=80)
    rho = canonical_correlations(X, Y)
    moved = canonical_correlations(X @ _well_conditioned(6, 3) + 7.0, Y @ _well_conditioned(8, 4))
    torch.testing.assert_close(moved, rho, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        canonical_correlations(X, X @ _well_conditioned(6, 5)),
        torch.ones(6, dtype=torch.float64),
        rtol=0,
        atol=1e-10,
    )
    base = svcca(X, Y, variance=1.0)
    assert base == pytest.approx(rho.mean().item(), abs=1e-12)
    assert svcca(X @ _well_conditioned(6, 6), Y, variance=1.0) == pytest.approx(base, abs=1e-10)
    assert svcca(X, Y @ _well_conditioned(8, 7), variance=1.0) == pytest.approx(base, abs=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_canonical_correlations_drop_null_directions(dtype):
    Z = _randn(50, 4, seed=0)
    X = (Z @ _randn(4, 10, seed=1)).to(dtype)  # rank 4 in 10 columns
    Y = torch.cat([Z, _randn(50, 2, seed=2)], dim=1).to(dtype)
    rho = canonical_correlations(X, Y)
    assert rho.shape == (4,)
    torch.testing.assert_close(rho, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-5)
    assert svcca_dimension(X, variance=1.0) == 4
    assert kernel_svcca_dimension(X @ X.T, variance=1.0) == 4


# SVCCA


def test_svcca_keeps_the_planted_number_of_directions():
    variances = [50.0, 30.0, 15.0, 4.0, 0.9, 0.1]  # fractions of a total of 100
    X = _planted_features(variances)
    for variance, k in [(0.3, 1), (0.45, 1), (0.7, 2), (0.9, 3), (0.97, 4), (0.995, 5), (1.0, 6)]:
        assert svcca_dimension(X, variance=variance) == k
        assert kernel_svcca_dimension(X @ X.T, variance=variance) == k
    # The reduced representation is the span of the kept left singular vectors.
    Y = _randn(60, 4, seed=5)
    Xc = X - X.mean(dim=0)
    U = torch.linalg.svd(Xc, full_matrices=False).U[:, :3]
    assert svcca(X, Y, variance=0.9) == pytest.approx(canonical_correlations(U, Y).mean().item())


@pytest.mark.parametrize("variance", [0.5, 0.9, 0.99, 1.0])
def test_kernel_svcca_equals_svcca(variance):
    X, Y = _shared_latent(n=90)
    value = svcca(X, Y, variance=variance)
    assert kernel_svcca(X @ X.T, Y @ Y.T, variance=variance) == pytest.approx(value, abs=1e-10)
    assert kernel_svcca_dimension(X @ X.T, variance=variance) == svcca_dimension(
        X, variance=variance
    )


def test_svcca_orthogonal_and_scale_invariance():
    X, Y = _shared_latent(n=70)
    base = svcca(X, Y)
    moved = svcca(4.0 * X @ _orthogonal(6, 1), 0.01 * Y @ _orthogonal(8, 2) + 5.0)
    assert moved == pytest.approx(base, abs=1e-10)
    assert svcca(X, X) == pytest.approx(1.0, abs=1e-12)


def test_svcca_separates_independent_from_shared():
    independent = svcca(_randn(500, 5, seed=0), _randn(500, 5, seed=1))
    assert 0.0 <= independent < 0.2
    X, Y = _shared_latent(n=500)
    assert svcca(X, Y, variance=0.9) > 0.9
    assert kernel_svcca(X @ X.T, Y @ Y.T, variance=0.9) > 0.9


def test_correlations_saturate_when_subspaces_must_intersect():
    # Two 6-dimensional spans in the 9-dimensional centred space of N = 10 samples share >= 3.
    X, Y = _randn(10, 6, seed=0), _randn(10, 6, seed=1)
    rho = canonical_correlations(X, Y)
    torch.testing.assert_close(rho[:3], torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-10)
    value = kernel_svcca(X @ X.T, Y @ Y.T, variance=1.0)
    assert value == pytest.approx(rho.mean().item(), abs=1e-10)
    assert value >= 0.5


# errors


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: hsic(_random_gram(5, 0), _random_gram(6, 1)), r"K and L.*\(5, 5\).*\(6, 6\)"),
        (lambda: hsic(_random_gram(3, 0), _random_gram(3, 1), unbiased=True), "N >= 4"),
        (lambda: linear_cka(_random_gram(3, 0), _random_gram(3, 1), unbiased=True), "N >= 4"),
        (lambda: hsic(_randn(4, 5, seed=0), _random_gram(4, 1)), r"K must be square.*\(4, 5\)"),
        (lambda: hsic(_randn(4, 4, seed=0), _random_gram(4, 1)), "K must be symmetric"),
        (lambda: center_gram(torch.ones(3)), r"K must be 2-D.*\(3,\)"),
        (lambda: linear_cka(_random_gram(4, 0), torch.ones(4, 4)), "L has zero variance"),
        (lambda: linear_cka_features(torch.ones(9, 2), _randn(9, 3, seed=0)), "X has zero var"),
        (lambda: linear_cka_features(_randn(9, 2, seed=0), _randn(8, 2, seed=1)), "X and Y.*rows"),
        (lambda: canonical_correlations(_randn(9, 2, seed=0), _randn(8, 2, seed=1)), "X and Y"),
        (lambda: svcca(_randn(9, 2, seed=0), torch.full((9, 2), 2.0)), "Y has zero variance"),
        (lambda: svcca(_randn(9, 2, seed=0), _randn(9, 2, seed=1), variance=0.0), "variance=0"),
        (lambda: svcca(_randn(9, 2, seed=0), _randn(9, 2, seed=1), variance=1.5), "variance"),
        (lambda: kernel_svcca(_random_gram(5, 0), _random_gram(5, 1), variance=-0.1), "variance"),
        (lambda: svcca_dimension(_randn(9, 2, seed=0), variance=float("nan")), "variance"),
        (lambda: kernel_svcca(_random_gram(5, 0), _random_gram(4, 1)), "K and L"),
        (lambda: kernel_svcca_dimension(torch.eye(3)[:, :2]), "K must be square"),
        (
            lambda: svcca(torch.tensor([[1.0], [float("nan")]]), torch.ones(2, 1)),
            "X must be finite",
        ),
        (lambda: linear_cka(_random_gram(4, 0), torch.full((4, 4), float("inf"))), "L must be fin"),
        (lambda: svcca_dimension(torch.ones(1, 3)), "X must have at least 2 rows"),
    ],
)
def test_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_kernel_svcca_from_precomputed_bases():
    g = torch.Generator().manual_seed(11)
    X, Y = (
        torch.randn(40, 6, generator=g, dtype=torch.float64),
        torch.randn(40, 9, generator=g, dtype=torch.float64),
    )
    Y[:, :3] += X[:, :3]
    K, L = X @ X.T, Y @ Y.T
    for variance in (0.5, 0.99, 1.0):
        U, V = kernel_svcca_basis(K, variance=variance), kernel_svcca_basis(L, variance=variance)
        assert torch.allclose(U.T @ U, torch.eye(U.shape[1], dtype=torch.float64), atol=1e-10)
        assert U.shape[1] == kernel_svcca_dimension(K, variance=variance)
        assert svcca_of_bases(U, V) == pytest.approx(
            kernel_svcca(K, L, variance=variance), abs=1e-12
        )
    with pytest.raises(ValueError, match="same N"):
        svcca_of_bases(U, V[:-1])


def test_linear_cka_matrix_equals_pairwise_cka():
    kernels = [(X @ X.T) for X in (_randn(12, d, seed=d) for d in (2, 3, 5, 8))]
    M = linear_cka_matrix(kernels)
    for i in range(4):
        for j in range(4):
            assert M[i, j].item() == pytest.approx(linear_cka(kernels[i], kernels[j]), abs=1e-12)
    with pytest.raises(ValueError, match="kernels"):
        linear_cka_matrix([kernels[0], kernels[1][:-1, :-1]])
    with pytest.raises(ValueError, match="kernels"):
        linear_cka_matrix([])
