"""Falsifiability of the T1 and T2 statistics (SCIENCE.md §2): each can pass (planted
positives) and each fails at initialisation.

Planted positives: for T1, the hand-built orthogonal solution (every feature represented) with
n = m = 10 on dense inputs, whose flattened eNTK has one dominant mode per output channel, so
the cliff sits at n; for T2, a kernel whose top eigenvectors are the feature indicator columns.
(The orthogonal solution is *not* a T2 positive: its top eigenvectors mix every feature's
activations within a channel block. The claim records its T2 value beside every preset.)
"""

from __future__ import annotations

import pytest
import torch

from hypotheses.test_t1_tms_cliffs import T1_CONTROL_MIN_DISTANCE, T1_TOLERANCE
from hypotheses.test_t2_tms_eigenspaces import T2_OVERLAP_MIN
from hypotheses.tms_kernels import (
    BETA,
    channel_baseline,
    cliff_match,
    cliff_position,
    feature_overlap,
    kernel_operator,
    setting,
    spectrum,
)
from metrics.eigensolvers import top_eigenpairs
from metrics.spectra import overlap_chance
from testbeds import runs, tms


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv(runs.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "cache"))


def test_cliff_position_and_match_on_planted_spectra():
    values = torch.cat([torch.linspace(10, 8, 7), torch.linspace(1, 0.5, 13)]).double()
    assert cliff_position(values, 10) == 7
    assert cliff_match(7, 7, 50) == (0, "represented")
    assert cliff_match(49, 19, 50) == (1, "total")
    assert cliff_match(30, 19, 50) == (11, "represented")


def test_t1_passes_on_the_hand_built_orthogonal_solution():
    config = tms.preset("lin2025_tms_m10_s0.3", n_features=10, n_points=100)
    inputs = tms.probe_inputs(config, seed=0)
    model = tms.orthogonal_solution(10, 10)
    assert tms.ground_truth(model, inputs).n_represented == 10
    values = top_eigenpairs(kernel_operator(model, inputs, config, BETA), 20).values
    position = cliff_position(values, 10)
    distance, _ = cliff_match(position, 10, 10)
    assert distance <= T1_TOLERANCE, position


@pytest.mark.slow
def test_t1_fails_at_initialisation():
    preset, seed = "lin2025_tms_m10_s0.3", 0
    s = setting(preset, seed)
    init = cliff_position(spectrum(preset, seed, "init", BETA).values, s.n)
    distance, _ = cliff_match(init, s.truth.n_represented, s.n)
    assert distance > T1_TOLERANCE and abs(init - s.truth.n_represented) >= T1_CONTROL_MIN_DISTANCE


def test_t2_passes_on_a_kernel_built_from_the_features_and_not_on_noise():
    config = tms.preset("lin2025_tms_m10_s0.9", n_features=12, n_points=60)
    inputs = tms.probe_inputs(config, seed=0)
    W = torch.eye(12)[:6] * 1.0  # features 0-5 represented, 6-11 not
    W = torch.cat([W, 0.5 * torch.eye(12)[6:]], 0)
    truth = tms.ground_truth(tms.TMSModel.from_weights(W), inputs)
    assert truth.n_represented == 6
    F = truth.represented_indicators()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(F.shape[0], 30, generator=g, dtype=torch.float64)
    planted = F @ F.T * 10 + noise @ noise.T * 1e-3
    assert feature_overlap(top_eigenpairs(planted, 6).vectors, truth) >= 0.99
    random = top_eigenpairs(noise @ noise.T, 6).vectors
    chance = overlap_chance(F.shape[0], 6, 6)
    assert feature_overlap(random, truth) <= 10 * chance < T2_OVERLAP_MIN
    assert tms.feature_recovery(channel_baseline(truth), truth, center=True)[0] < 1e-12


@pytest.mark.slow
def test_t2_fails_at_initialisation():
    preset, seed = "lin2025_tms_m10_s0.9", 0
    s = setting(preset, seed)
    init = feature_overlap(spectrum(preset, seed, "init", BETA).vectors, s.truth)
    assert init < T2_OVERLAP_MIN
