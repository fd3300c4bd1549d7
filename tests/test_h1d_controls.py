"""Falsifiability of the H1d statistics (``hypotheses/test_h1d_transformer.py``): unit tests of
their arithmetic on kernels built from the Fourier families (the sum family of H1d, the axis-sum
family of Lin 2025 Table 2's second number), and the untrained transformers as negative
controls."""

from __future__ import annotations

import math

import pytest
import torch

from hypotheses.test_h1d_transformer import (
    H1D_KEY_SUM_MIN,
    NANDA_PRESET,
    TRANSFORMER_PRESET,
    axis_sum_family,
    h1d_statistic,
    key_axis_sum_overlap,
    key_shares,
    key_sum_overlap,
    sum_overlap_per_frequency,
)
from metrics.spectra import orthonormal_basis
from testbeds import modadd

P = 29
KEY = torch.tensor([3, 7, 12])


def _sum_kernel_at(key, noise_seed=None, noise=0.0):
    family = modadd.restrict_to_frequencies(modadd.fourier_family(P, "sum"), key)
    kernel = family @ family.T + 0.5  # plus a constant mode, as real kernels have
    if noise_seed is not None:
        g = torch.Generator().manual_seed(noise_seed)
        X = torch.randn(P * P, 40, generator=g, dtype=torch.float64)
        kernel = kernel + noise * X @ X.T / 40
    return kernel


def _layered_kernel(first: str, noise: float = 0.0) -> torch.Tensor:
    """Constant mode on top, then the ``first`` family's modes at KEY, then the other's (sum or
    axis-sum), each block with a distinct eigenvalue, plus a small random kernel."""
    sum_basis = orthonormal_basis(
        modadd.restrict_to_frequencies(modadd.fourier_family(P, "sum"), KEY), center=True
    )
    axis_basis = orthonormal_basis(axis_sum_family(P, KEY), center=True)
    upper, lower = (sum_basis, axis_basis) if first == "sum" else (axis_basis, sum_basis)
    ones = torch.full((P * P, 1), 1 / P, dtype=torch.float64)
    kernel = 20 * ones @ ones.T + 10 * upper @ upper.T + 5 * lower @ lower.T
    g = torch.Generator().manual_seed(0)
    X = torch.randn(P * P, 40, generator=g, dtype=torch.float64)
    return kernel + noise * X @ X.T / 40


def test_h1d_passes_on_a_planted_kernel_and_fails_on_the_wrong_frequencies():
    key = KEY
    assert key_sum_overlap(_sum_kernel_at(key, noise_seed=0, noise=0.2), key, P) >= H1D_KEY_SUM_MIN
    wrong = torch.tensor([1, 5, 9])
    assert key_sum_overlap(_sum_kernel_at(wrong), key, P) < 0.05
    g = torch.Generator().manual_seed(1)
    X = torch.randn(P * P, 60, generator=g, dtype=torch.float64)
    assert key_sum_overlap(X @ X.T, key, P) < H1D_KEY_SUM_MIN
    assert math.isnan(key_sum_overlap(X @ X.T, torch.tensor([], dtype=torch.long), P))


def test_axis_sum_family_is_cos_plus_cos_and_orthogonal_to_the_sum_family():
    family = axis_sum_family(P, KEY)
    assert family.shape == (P * P, 2 * len(KEY))
    a, b = modadd.pairs(P)
    i, k = 5 * P + 17, 7  # input (5, 17); KEY[1] = 7 → columns 2, 3
    assert (a[i], b[i]) == (5, 17)
    angle = 2 * math.pi * k / P
    assert math.isclose(family[i, 2].item(), math.cos(angle * 5) + math.cos(angle * 17))
    assert math.isclose(family[i, 3].item(), math.sin(angle * 5) + math.sin(angle * 17))
    assert family.sum(0).abs().max() < 1e-9  # already centred
    total = modadd.restrict_to_frequencies(modadd.fourier_family(P, "sum"), KEY)
    assert (total.T @ family).abs().max() < 1e-9


def test_axis_sum_overlap_reads_the_block_after_h1d():
    """Sum modes on top and axis-sum modes next: both statistics pass. Swapped: H1d's top
    block holds the axis-sum modes and both fail."""
    kernel = _layered_kernel("sum", noise=0.1)
    assert key_sum_overlap(kernel, KEY, P) >= H1D_KEY_SUM_MIN
    assert key_axis_sum_overlap(kernel, KEY, P) >= H1D_KEY_SUM_MIN
    swapped = _layered_kernel("axis_sum", noise=0.1)
    assert key_sum_overlap(swapped, KEY, P) < 0.05
    assert key_axis_sum_overlap(swapped, KEY, P) < 0.05
    g = torch.Generator().manual_seed(2)
    X = torch.randn(P * P, 60, generator=g, dtype=torch.float64)
    assert key_axis_sum_overlap(X @ X.T, KEY, P) < 0.2
    assert math.isnan(key_axis_sum_overlap(kernel, torch.tensor([], dtype=torch.long), P))


def test_key_shares_of_a_planted_embedding():
    model = modadd.ModAddTransformer(P, 16, 2, 8, mlp_bias=False, unembed_eq=True, init="lin2025")
    v = torch.arange(P, dtype=torch.float32)
    with torch.no_grad():
        model.embed.weight.zero_()
        model.embed.weight[:P, 0] = torch.cos(2 * math.pi * 4 * v / P)
        model.embed.weight[:P, 1] = 2 * torch.cos(2 * math.pi * 11 * v / P)
    shares = key_shares(model)
    assert shares.shape == ((P - 1) // 2,)
    torch.testing.assert_close(shares[[3, 10]], torch.tensor([0.2, 0.8], dtype=torch.float64))
    # share 0.2 is ≥ 2 × uniform (1/7) but < 3 × uniform (3/14): key, not strong
    assert modadd.key_frequencies(model).tolist() == [11, 4]
    assert modadd.key_frequencies(model, factor=3.0).tolist() == [11]


@pytest.mark.parametrize("preset", [TRANSFORMER_PRESET, NANDA_PRESET])
def test_h1d_fails_for_an_untrained_transformer(preset):
    model = modadd.preset(preset).build_model()
    model.reset_parameters(torch.Generator().manual_seed(0))
    assert h1d_statistic(model, KEY) < H1D_KEY_SUM_MIN


def test_per_frequency_parts_average_to_h1d():
    """Each key frequency's part of H1d: 1 for the planted frequencies, near 0 for one whose sum
    pair is missing from the kernel, and the mean over K is the H1d statistic."""
    kernel = _sum_kernel_at(torch.tensor([3, 7]))
    parts = sum_overlap_per_frequency(kernel, KEY, P)
    assert list(parts) == KEY.tolist()
    assert parts[3] > 0.999 and parts[7] > 0.999 and parts[12] < 0.05
    g = torch.Generator().manual_seed(3)
    X = torch.randn(P * P, 60, generator=g, dtype=torch.float64)
    parts = sum_overlap_per_frequency(X @ X.T, KEY, P)
    assert math.isclose(sum(parts.values()) / len(KEY), key_sum_overlap(X @ X.T, KEY, P))
