"""Tests for ``metrics.spectra`` against float64 brute-force references."""

import numpy as np
import pytest
import scipy.linalg
import torch

from metrics.spectra import (
    cosine_normalize,
    effective_rank,
    eigh_sorted,
    largest_cliff,
    normalized_overlap,
    orthonormal_basis,
    overlap_chance,
    participation_ratio,
    principal_angles,
    spectral_cliffs,
    stable_rank,
    subspace_overlap,
)


def _random_psd(n: int, seed: int) -> torch.Tensor:
    A = torch.randn(n, n + 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return A @ A.T


def _random_basis(n: int, k: int, seed: int) -> torch.Tensor:
    G = torch.randn(n, k, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return torch.linalg.qr(G).Q


def _planted_spectrum(seed: int = 0) -> torch.Tensor:
    """5 eigenvalues near 10, 20 near 1, 25 near 1e-3, sorted decreasingly."""
    gen = torch.Generator().manual_seed(seed)
    levels = torch.cat([torch.full((5,), 10.0), torch.ones(20), torch.full((25,), 1e-3)])
    jitter = 1 + 0.05 * torch.rand(50, dtype=torch.float64, generator=gen)
    return (levels.double() * jitter).sort(descending=True).values


# eigh_sorted


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eigh_sorted_reconstructs_and_matches_numpy(dtype):
    K = _random_psd(30, seed=1)
    evals, evecs = eigh_sorted(K.to(dtype))
    assert evals.dtype == evecs.dtype == torch.float64
    assert evals.shape == (30,) and evecs.shape == (30, 30)
    assert (evals[:-1] >= evals[1:]).all()
    K_ref = K.to(dtype).double()
    torch.testing.assert_close(evecs @ torch.diag(evals) @ evecs.T, K_ref, rtol=1e-9, atol=1e-9)
    ref = np.sort(np.linalg.eigvalsh(K_ref.numpy()))[::-1].copy()
    torch.testing.assert_close(evals, torch.from_numpy(ref), rtol=1e-9, atol=1e-9)


def test_eigh_sorted_symmetrises():
    K = _random_psd(10, seed=2)
    skew = torch.randn(10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    evals, _ = eigh_sorted(K + skew - skew.T)
    torch.testing.assert_close(evals, eigh_sorted(K)[0], rtol=1e-10, atol=1e-10)


def test_eigh_sorted_ridge_does_not_shift_eigenvalues():
    K = _random_psd(40, seed=4)
    without, _ = eigh_sorted(K, ridge=0.0)
    for ridge in (1e-10, 1e-6):
        with_ridge, _ = eigh_sorted(K, ridge=ridge)
        rel = ((with_ridge - without).abs() / without.abs().max()).max()
        assert rel <= 1e-8


@pytest.mark.parametrize(
    "K, match",
    [
        (torch.ones(3, 4), r"square.*\(3, 4\)"),
        (torch.ones(3), r"2-D.*\(3,\)"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "finite"),
    ],
)
def test_eigh_sorted_rejects_bad_input(K, match):
    with pytest.raises(ValueError, match=match):
        eigh_sorted(K)


# spectral_cliffs / largest_cliff


def test_spectral_cliffs_brute_force():
    lam = _planted_spectrum()
    cliffs = spectral_cliffs(lam)
    assert cliffs.dtype == torch.float64 and cliffs.shape == (49,)
    ref = torch.tensor([lam[i] / lam[i + 1] for i in range(49)], dtype=torch.float64)
    torch.testing.assert_close(cliffs, ref, rtol=1e-12, atol=0.0)
    assert spectral_cliffs(lam, top=7).shape == (6,)


def test_largest_cliff_finds_planted_gap():
    lam = _planted_spectrum()
    # The 1 -> 1e-3 gap (after 25) is larger than 10 -> 1 (after 5).
    assert largest_cliff(lam) == 25
    # Restricted to the leading 20 eigenvalues, only the 10 -> 1 gap is visible.
    assert largest_cliff(lam, top=20) == 5
    # With a deeper first gap it wins over the whole spectrum.
    lam_deep = lam.clone()
    lam_deep[:5] *= 1e4
    assert largest_cliff(lam_deep) == 5


def test_spectral_cliffs_floor_handles_zeros():
    lam = torch.tensor([4.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    cliffs = spectral_cliffs(lam, floor=1e-6)
    assert torch.isfinite(cliffs).all()
    torch.testing.assert_close(cliffs, torch.tensor([2.0, 2.0 / 4e-6, 1.0], dtype=torch.float64))
    assert largest_cliff(lam) == 2


@pytest.mark.parametrize(
    "lam, top, match",
    [
        (torch.tensor([1.0, 2.0, 0.5]), None, "sorted decreasingly"),
        (torch.tensor([3.0, 2.0, 1.0]), 4, r"top must be in 2..N=3, got top=4"),
        (torch.tensor([3.0, 2.0, 1.0]), 1, r"top must be in 2..N=3, got top=1"),
        (torch.tensor([0.0, 0.0]), None, "largest eigenvalue must be positive"),
    ],
)
def test_spectral_cliffs_rejects_bad_input(lam, top, match):
    with pytest.raises(ValueError, match=match):
        spectral_cliffs(lam, top=top)


# orthonormal_basis


def test_orthonormal_basis_spans_column_space():
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(50, 8, dtype=torch.float64, generator=gen)
    Q = orthonormal_basis(X)
    assert Q.shape == (50, 8) and Q.dtype == torch.float64
    torch.testing.assert_close(Q.T @ Q, torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(Q @ (Q.T @ X), X, rtol=0, atol=1e-10)


def test_orthonormal_basis_rank_deficient():
    gen = torch.Generator().manual_seed(6)
    X = torch.randn(40, 3, dtype=torch.float64, generator=gen) @ torch.randn(
        3, 10, dtype=torch.float64, generator=gen
    )
    Q = orthonormal_basis(X)
    assert Q.shape == (40, 3)
    torch.testing.assert_close(Q @ (Q.T @ X), X, rtol=0, atol=1e-10)
    assert orthonormal_basis(torch.zeros(5, 2)).shape == (5, 0)


def test_orthonormal_basis_center_removes_mean():
    gen = torch.Generator().manual_seed(7)
    X = torch.randn(30, 4, dtype=torch.float64, generator=gen) + 5.0
    Q = orthonormal_basis(X, center=True)
    assert Q.shape == (30, 4)
    Xc = X - X.mean(dim=0)
    torch.testing.assert_close(Q @ (Q.T @ Xc), Xc, rtol=0, atol=1e-10)
    # Centred columns are orthogonal to the all-ones vector, and so is the basis.
    torch.testing.assert_close(
        Q.sum(dim=0), torch.zeros(4, dtype=torch.float64), atol=1e-10, rtol=0
    )
    # A constant column disappears after centring.
    X_const = torch.cat([X[:, :2], torch.full((30, 1), 3.0, dtype=torch.float64)], dim=1)
    assert orthonormal_basis(X_const, center=True).shape == (30, 2)
    assert orthonormal_basis(X_const).shape == (30, 3)


# subspace_overlap / normalized_overlap / principal_angles


def test_subspace_overlap_identical_and_orthogonal():
    Q = _random_basis(20, 7, seed=8)
    assert subspace_overlap(Q, Q) == pytest.approx(7.0, abs=1e-12)
    assert normalized_overlap(Q, Q) == pytest.approx(1.0, abs=1e-12)
    assert subspace_overlap(Q[:, :3], Q[:, 3:]) == pytest.approx(0.0, abs=1e-12)
    # A subspace contained in another one overlaps fully relative to the smaller dimension.
    assert normalized_overlap(Q[:, :3], Q) == pytest.approx(1.0, abs=1e-12)


def test_subspace_overlap_matches_dense_projectors():
    U, V = _random_basis(25, 6, seed=9), _random_basis(25, 4, seed=10)
    P_U, P_V = U @ U.T, V @ V.T
    ref = torch.trace(P_U @ P_V).item()
    assert ref == pytest.approx(torch.linalg.matrix_norm(P_U @ P_V).item() ** 2, rel=1e-10)
    assert subspace_overlap(U, V) == pytest.approx(ref, rel=1e-10)
    assert subspace_overlap(V, U) == pytest.approx(ref, rel=1e-10)
    assert normalized_overlap(U, V) == pytest.approx(ref / 4, rel=1e-10)


def test_subspace_overlap_invariant_to_basis_rotation():
    U, V = _random_basis(25, 6, seed=11), _random_basis(25, 5, seed=12)
    R, S = _random_basis(6, 6, seed=13), _random_basis(5, 5, seed=14)
    assert subspace_overlap(U @ R, V @ S) == pytest.approx(subspace_overlap(U, V), rel=1e-10)


def test_subspace_overlap_rejects_non_orthonormal():
    U, V = _random_basis(10, 3, seed=15), _random_basis(10, 2, seed=16)
    with pytest.raises(ValueError, match=r"U must have orthonormal columns"):
        subspace_overlap(2 * U, V)
    with pytest.raises(ValueError, match=r"V must have orthonormal columns"):
        subspace_overlap(U, V + 1e-3)
    with pytest.raises(ValueError, match=r"V must have orthonormal columns"):
        principal_angles(U, V + 1e-3)


def test_subspace_overlap_rejects_mismatched_n():
    with pytest.raises(ValueError, match=r"same space.*\(10, 3\).*\(11, 2\)"):
        subspace_overlap(_random_basis(10, 3, seed=17), _random_basis(11, 2, seed=18))


def test_overlap_chance_monte_carlo():
    n, k, m, trials = 60, 10, 4, 2000
    V = _random_basis(n, m, seed=19)
    gen = torch.Generator().manual_seed(20)
    G = torch.randn(trials, n, k, dtype=torch.float64, generator=gen)
    Us = torch.linalg.qr(G).Q
    samples = torch.tensor([normalized_overlap(U, V) for U in Us])
    stderr = samples.std() / trials**0.5
    expected = overlap_chance(n, k, m)
    assert expected == pytest.approx(max(k, m) / n)
    assert abs(samples.mean().item() - expected) <= 3 * stderr.item()


@pytest.mark.parametrize(
    "n, k, m, match",
    [
        (10, 0, 3, r"k must be in 1..n=10, got k=0"),
        (10, 11, 3, r"k must be in 1..n=10, got k=11"),
        (10, 3, 12, r"m must be in 1..n=10, got m=12"),
    ],
)
def test_overlap_chance_rejects_out_of_range(n, k, m, match):
    with pytest.raises(ValueError, match=match):
        overlap_chance(n, k, m)


def test_principal_angles_match_scipy():
    U, V = _random_basis(30, 5, seed=21), _random_basis(30, 8, seed=22)
    angles = principal_angles(U, V)
    assert angles.shape == (5,) and angles.dtype == torch.float64
    assert (angles[1:] >= angles[:-1]).all()
    ref = np.sort(scipy.linalg.subspace_angles(U.numpy(), V.numpy()))
    np.testing.assert_allclose(angles.numpy(), ref, rtol=0, atol=1e-10)
    assert angles.cos().square().sum().item() == pytest.approx(subspace_overlap(U, V), rel=1e-10)


def test_principal_angles_identical_subspace_is_zero():
    Q = _random_basis(15, 4, seed=23)
    torch.testing.assert_close(principal_angles(Q, Q), torch.zeros(4, dtype=torch.float64))


# effective_rank / participation_ratio / stable_rank


@pytest.mark.parametrize("fn", [effective_rank, participation_ratio, stable_rank])
def test_rank_measures_on_uniform_and_rank_one_spectra(fn):
    for r in (1, 4, 17):
        lam = torch.cat([torch.full((r,), 2.5), torch.zeros(6)])
        assert fn(lam) == pytest.approx(r, rel=1e-12)
    assert fn(torch.tensor([3.0, 0.0, 0.0])) == pytest.approx(1.0, rel=1e-12)


def test_rank_measures_match_direct_formulas():
    lam = np.random.default_rng(24).exponential(size=50)
    p = lam / lam.sum()
    t = torch.from_numpy(lam)
    assert effective_rank(t) == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-12)
    assert participation_ratio(t) == pytest.approx(lam.sum() ** 2 / np.sum(lam**2), rel=1e-12)
    assert stable_rank(t) == pytest.approx(lam.sum() / lam.max(), rel=1e-12)


def test_rank_measures_ordering_on_random_spectrum():
    # stable rank <= participation ratio (= exp of Renyi-2 entropy) <= effective rank (Shannon).
    lam = torch.from_numpy(np.random.default_rng(25).exponential(size=40) ** 3)
    assert 1.0 <= stable_rank(lam) <= participation_ratio(lam) <= effective_rank(lam) <= 40.0


def test_rank_measures_clip_round_off_negatives():
    lam = torch.tensor([1.0, 1.0, -1e-12], dtype=torch.float64)
    assert effective_rank(lam) == pytest.approx(2.0, rel=1e-12)
    assert participation_ratio(lam) == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("fn", [effective_rank, participation_ratio, stable_rank])
@pytest.mark.parametrize(
    "lam, match",
    [
        (torch.tensor([1.0, -0.1]), r"PSD.*got min -1\.000e-01"),
        (torch.zeros(3), "positive value"),
        (torch.ones(2, 2), r"1-D.*\(2, 2\)"),
    ],
)
def test_rank_measures_reject_bad_input(fn, lam, match):
    with pytest.raises(ValueError, match=match):
        fn(lam)


def test_cosine_normalize_against_loops():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(6, 4))
    X[2] = 0.0  # an input without direction
    K = X @ X.T
    expected = np.zeros((6, 6))
    for i in range(6):
        for j in range(6):
            ni, nj = np.linalg.norm(X[i]), np.linalg.norm(X[j])
            if ni > 0 and nj > 0:
                expected[i, j] = X[i] @ X[j] / (ni * nj)
    C = cosine_normalize(torch.from_numpy(K))
    np.testing.assert_allclose(C.numpy(), expected, atol=1e-14)
    assert C.dtype == torch.float64
    # invariant to rescaling each input's features
    S = np.diag(rng.uniform(0.1, 10, size=6))
    np.testing.assert_allclose(
        cosine_normalize(torch.from_numpy(S @ K @ S)).numpy(), expected, atol=1e-12
    )


def test_cosine_normalize_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        cosine_normalize(torch.ones(2, 3))
    with pytest.raises(ValueError, match="positive diagonal"):
        cosine_normalize(torch.zeros(3, 3))
