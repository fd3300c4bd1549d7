"""Falsifiability of the H1d statistic (``hypotheses/test_h1d_transformer.py``): unit tests of
its arithmetic on kernels built from the Fourier families, and the untrained transformer as a
negative control."""

from __future__ import annotations

import math

import torch

from hypotheses.test_h1d_transformer import H1D_KEY_SUM_MIN, h1d_statistic, key_sum_overlap
from testbeds import modadd

P = 29


def _sum_kernel_at(key, noise_seed=None, noise=0.0):
    family = modadd.restrict_to_frequencies(modadd.fourier_family(P, "sum"), key)
    kernel = family @ family.T + 0.5  # plus a constant mode, as real kernels have
    if noise_seed is not None:
        g = torch.Generator().manual_seed(noise_seed)
        X = torch.randn(P * P, 40, generator=g, dtype=torch.float64)
        kernel = kernel + noise * X @ X.T / 40
    return kernel


def test_h1d_passes_on_a_planted_kernel_and_fails_on_the_wrong_frequencies():
    key = torch.tensor([3, 7, 12])
    assert key_sum_overlap(_sum_kernel_at(key, noise_seed=0, noise=0.2), key, P) >= H1D_KEY_SUM_MIN
    wrong = torch.tensor([1, 5, 9])
    assert key_sum_overlap(_sum_kernel_at(wrong), key, P) < 0.05
    g = torch.Generator().manual_seed(1)
    X = torch.randn(P * P, 60, generator=g, dtype=torch.float64)
    assert key_sum_overlap(X @ X.T, key, P) < H1D_KEY_SUM_MIN
    assert math.isnan(key_sum_overlap(X @ X.T, torch.tensor([], dtype=torch.long), P))


def test_h1d_fails_for_an_untrained_transformer():
    model = modadd.preset("lin2025_transformer").build_model()
    model.reset_parameters(torch.Generator().manual_seed(0))
    assert h1d_statistic(model, torch.tensor([3, 7, 12])) < H1D_KEY_SUM_MIN
