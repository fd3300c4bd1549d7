"""Falsifiability of the H2 statistics (SCIENCE.md §2) on a real kernel: the trace eNTK of a
small language model's last-position log-probabilities.

Planted positive: the kernel with its top-16 eigenvalues scaled (eigenvectors kept) passes H2a
and H2b. Negative controls: a Haar-random rotation of the kernel fails H2a; the unchanged
kernel fails H2b (nothing retuned). For H2d, a G-matrix whose top eigenvalue is scaled passes
both H2d criteria, and a random rotation fails the overlap.
"""

from __future__ import annotations

import torch

from hypotheses.test_h2_rl_stationarity import (
    H2A_OVERLAP_MIN,
    H2B_MEDIAN_ABS_LOG_RATIO_MIN,
    H2D_OVERLAP_MIN,
    H2D_TOP,
    H2D_TOP_CHANGE_MIN,
    K_TOP,
)
from metrics.entk import entk
from metrics.gmatrix import GMatrix
from metrics.stationarity import eigenspace_stationarity, random_rotation, scale_spectrum
from testbeds import lm


def _kernel() -> torch.Tensor:
    lang = lm.Language()
    model = lm.TinyLM(lang.vocab_size, 24, 16, 2, 1, 32)
    model.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10.0)
    prompts = lm.probe_prompts(lang).tokens[::2]  # 128 prompts
    return entk(lm.LastTokenLogProbs(model), prompts, output="trace").double()


def test_planted_retuning_passes_h2a_and_h2b_and_rotation_fails():
    K = _kernel()
    factors = torch.tensor([1.25, 0.8] * (K_TOP // 2), dtype=torch.float64)
    planted = eigenspace_stationarity(K, scale_spectrum(K, factors, K_TOP), K_TOP)
    assert planted.overlap >= H2A_OVERLAP_MIN
    assert planted.median_abs_log_ratio >= H2B_MEDIAN_ABS_LOG_RATIO_MIN
    unchanged = eigenspace_stationarity(K, K, K_TOP)
    assert unchanged.median_abs_log_ratio < H2B_MEDIAN_ABS_LOG_RATIO_MIN  # H2b can fail
    rotated = eigenspace_stationarity(
        K, random_rotation(K, torch.Generator().manual_seed(0)), K_TOP
    )
    assert rotated.overlap < H2A_OVERLAP_MIN  # H2a can fail
    assert rotated.overlap < 3 * rotated.chance


def test_h2d_planted_g_matrix_and_rotation():
    g = torch.Generator().manual_seed(1)
    J = torch.randn(14, 40, generator=g, dtype=torch.float64)
    G = J @ J.T
    names = [f"t{i}" for i in range(14)]
    before = GMatrix.from_matrix(G, names)
    scaled = GMatrix.from_matrix(scale_spectrum(G, 1.5, 1), names)
    assert before.top_overlap(scaled, H2D_TOP) >= H2D_OVERLAP_MIN
    change = scaled.eigenvalues[0] / before.eigenvalues[0] - 1
    assert abs(change.item()) >= H2D_TOP_CHANGE_MIN
    rotated = GMatrix.from_matrix(random_rotation(G, g), names)
    assert before.top_overlap(rotated, H2D_TOP) < H2D_OVERLAP_MIN
