"""Eigenspace stationarity against float64 brute force, planted positives and random controls."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

import metrics.stationarity
from metrics.stationarity import eigenspace_stationarity, random_rotation, scale_spectrum


def _gapped_kernel(N: int, k: int, seed: int) -> torch.Tensor:
    """Random-basis PSD kernel, top-k eigenvalues distinct in [10, 20], the rest in [0.1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(N, N, generator=generator, dtype=torch.float64))
    top = torch.linspace(20.0, 10.0, k, dtype=torch.float64)
    rest = torch.linspace(1.0, 0.1, N - k, dtype=torch.float64)
    lam = torch.cat([top, rest])
    return Q @ torch.diag(lam) @ Q.T


def test_docstring_example():
    assert doctest.testmod(metrics.stationarity).failed == 0


def test_identical_kernels_are_stationary():
    K = _gapped_kernel(30, 5, seed=0)
    s = eigenspace_stationarity(K, K.clone(), k=5)
    assert s.k == 5
    assert s.overlap == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(
        s.log_ratios, torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0
    )
    assert s.median_abs_log_ratio == pytest.approx(0.0, abs=1e-12)
    assert s.top_eigenvalue_change == pytest.approx(0.0, abs=1e-12)
    assert s.chance == pytest.approx(5 / 30)
    torch.testing.assert_close(s.eigenvalues, torch.linspace(20.0, 10.0, 5, dtype=torch.float64))


def test_rayleigh_quotients_match_brute_force_loop():
    N, k = 12, 4
    K_before = _gapped_kernel(N, k, seed=1)
    K_after = _gapped_kernel(N, k, seed=2)  # an unrelated basis: every quantity is non-trivial
    s = eigenspace_stationarity(K_before, K_after, k)
    A, B = K_before.numpy(), K_after.numpy()
    lam, U = np.linalg.eigh(A)
    lam, U = lam[::-1][:k], U[:, ::-1][:, :k]
    rayleigh = np.zeros(k)
    for i in range(k):
        for a in range(N):
            for b in range(N):
                rayleigh[i] += U[a, i] * B[a, b] * U[b, i]
    np.testing.assert_allclose(s.eigenvalues.numpy(), lam, rtol=1e-12)
    np.testing.assert_allclose(s.rayleigh.numpy(), rayleigh, rtol=1e-12)
    np.testing.assert_allclose(s.log_ratios.numpy(), np.log(rayleigh / lam), rtol=1e-10, atol=1e-12)
    assert s.median_abs_log_ratio == pytest.approx(np.median(np.abs(np.log(rayleigh / lam))))
    V = np.linalg.eigh(B)[1][:, ::-1][:, :k]
    assert s.overlap == pytest.approx(np.linalg.norm(U.T @ V) ** 2 / k, rel=1e-10)
    assert s.top_eigenvalue_change == pytest.approx(np.linalg.eigvalsh(B)[-1] / lam[0] - 1)


def test_scaled_spectrum_keeps_the_basis_and_reports_the_factors():
    N, k = 40, 8
    K = _gapped_kernel(N, k, seed=3)
    # 1.3 and 1/1.3 alternating: every |log ratio| is log 1.3
    factors = torch.tensor([1.3, 1 / 1.3] * (k // 2), dtype=torch.float64)
    s = eigenspace_stationarity(K, scale_spectrum(K, factors, k), k)
    assert s.overlap == pytest.approx(1.0, abs=1e-8)
    torch.testing.assert_close(s.log_ratios, factors.log(), rtol=1e-10, atol=1e-12)
    assert s.median_abs_log_ratio == pytest.approx(math.log(1.3), rel=1e-10)
    assert s.top_eigenvalue_change == pytest.approx(0.3, rel=1e-10)
    # 1.3 and 0.7 alternating: the median of an even count is the mean of the two middle values
    factors = torch.tensor([1.3, 0.7] * (k // 2), dtype=torch.float64)
    s = eigenspace_stationarity(K, scale_spectrum(K, factors, k), k)
    assert s.overlap == pytest.approx(1.0, abs=1e-8)
    expected = (math.log(1.3) + abs(math.log(0.7))) / 2
    assert s.median_abs_log_ratio == pytest.approx(expected, rel=1e-10)
    # a scalar factor scales everything; the rest of the spectrum is untouched
    scaled = scale_spectrum(K, 2.0, k)
    lam, lam_scaled = torch.linalg.eigvalsh(K).flip(0), torch.linalg.eigvalsh(scaled).flip(0)
    torch.testing.assert_close(lam_scaled[:k], 2 * lam[:k])
    torch.testing.assert_close(lam_scaled[k:], lam[k:])


def test_rotation_inside_the_top_eigenspace_keeps_overlap_one():
    N, k = 30, 6
    K = _gapped_kernel(N, k, seed=4)
    lam, U = torch.linalg.eigh(K)
    lam, U = lam.flip(0), U.flip(1)
    generator = torch.Generator().manual_seed(5)
    R, _ = torch.linalg.qr(torch.randn(k, k, generator=generator, dtype=torch.float64))
    new_top = torch.linspace(30.0, 12.0, k, dtype=torch.float64)  # eigenvalues move too
    mixed = U[:, :k] @ R
    K_after = mixed @ torch.diag(new_top) @ mixed.T + U[:, k:] @ torch.diag(lam[k:]) @ U[:, k:].T
    s = eigenspace_stationarity(K, K_after, k)
    assert s.overlap == pytest.approx(1.0, abs=1e-10)
    # inside the subspace the eigenvalues were mixed: Rayleigh quotients are R-weighted averages
    torch.testing.assert_close(s.rayleigh, (R.square() * new_top[None, :]).sum(1))
    assert s.rayleigh.sum().item() == pytest.approx(new_top.sum().item())


def test_random_rotation_is_the_negative_control():
    N, k = 200, 16
    K = _gapped_kernel(N, k, seed=6)
    overlaps = []
    for seed in range(5):
        rotated = random_rotation(K, torch.Generator().manual_seed(seed))
        s = eigenspace_stationarity(K, rotated, k)
        assert s.overlap < 0.3
        assert s.chance == pytest.approx(k / N)
        # the spectrum is kept, only the basis is random
        assert s.top_eigenvalue_change == pytest.approx(0.0, abs=1e-10)
        overlaps.append(s.overlap)
    assert np.mean(overlaps) == pytest.approx(k / N, abs=0.05)


def test_random_rotation_is_orthogonal_similarity_and_deterministic():
    K = _gapped_kernel(10, 3, seed=7).to(torch.float32)
    first = random_rotation(K, torch.Generator().manual_seed(11))
    again = random_rotation(K, torch.Generator().manual_seed(11))
    other = random_rotation(K, torch.Generator().manual_seed(12))
    assert first.dtype == torch.float64
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    torch.testing.assert_close(first, first.T, rtol=0, atol=0)
    torch.testing.assert_close(
        torch.linalg.eigvalsh(first), torch.linalg.eigvalsh(K.double()), rtol=1e-10, atol=1e-10
    )


def test_float32_inputs_are_accepted():
    K = _gapped_kernel(20, 4, seed=8)
    s64 = eigenspace_stationarity(K, scale_spectrum(K, 1.5, 4), 4)
    s32 = eigenspace_stationarity(K.float(), scale_spectrum(K, 1.5, 4).float(), 4)
    assert s32.eigenvalues.dtype == torch.float64
    assert s32.overlap == pytest.approx(s64.overlap, abs=1e-5)
    torch.testing.assert_close(s32.log_ratios, s64.log_ratios, rtol=1e-4, atol=1e-5)


def test_bad_inputs_name_the_field():
    K = _gapped_kernel(6, 2, seed=9)
    with pytest.raises(ValueError, match="K_before must be a non-empty square"):
        eigenspace_stationarity(K[:, :5], K, 2)
    with pytest.raises(ValueError, match="same shape"):
        eigenspace_stationarity(K, K[:5, :5], 2)
    asymmetric = K.clone()
    asymmetric[0, 1] += 1.0
    with pytest.raises(ValueError, match="K_after must be symmetric"):
        eigenspace_stationarity(K, asymmetric, 2)
    for k in (0, 6, 2.0, True):
        with pytest.raises(ValueError, match="k must be an int in 1..N-1=5"):
            eigenspace_stationarity(K, K, k)
    with pytest.raises(ValueError, match="finite"):
        eigenspace_stationarity(torch.full((3, 3), float("nan")), K[:3, :3], 1)
    low_rank = torch.diag(torch.tensor([2.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="top k=3 eigenvalues"):
        eigenspace_stationarity(low_rank, low_rank, 3)
    other = torch.diag(torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="K_after .* top k=1"):
        eigenspace_stationarity(low_rank, other, 1)
    with pytest.raises(TypeError, match="K_before must be a torch.Tensor"):
        eigenspace_stationarity(K.numpy(), K, 2)
    with pytest.raises(TypeError, match="generator"):
        random_rotation(K, 0)
    with pytest.raises(ValueError, match=r"factors must be a scalar or have shape \(2,\)"):
        scale_spectrum(K, [1.0, 2.0, 3.0], 2)
    with pytest.raises(ValueError, match="factors must be finite and positive"):
        scale_spectrum(K, -1.0, 2)
