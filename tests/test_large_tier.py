"""The large tier (``hypotheses/test_large_p113.py``): the gates of H1d and H1c′ at p = 113 (their
own statistics on the hand-built transformer in ``nanda2023``'s architecture, and on the same
architecture at initialisation), the registered instrument details, and the one-line skip
where no p = 113 run can be had."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from hypotheses import test_large_p113 as large
from hypotheses.test_h1_fourier_circuits import h1c_ari
from testbeds import modadd, runs

HAND_BUILT_KEY = (14, 35)  # |K| ≤ 2 fits d_mlp = 512 at p = 113 (hand_built.py's sizes)


@pytest.fixture(scope="module")
def config():
    return large.config()


@pytest.mark.gate("H1d@113", "positive")
def test_h1d_at_p113_passes_on_the_hand_built_transformer(config):
    model = modadd.fourier_transformer(config, key=HAND_BUILT_KEY)
    key = modadd.key_frequencies(model)
    assert sorted(key.tolist()) == sorted(HAND_BUILT_KEY)
    assert large.h1d_value(model, key) >= large.H1D_MIN


@pytest.mark.gate("H1d@113", "control")
def test_h1d_at_p113_fails_at_initialisation(config):
    model = config.build_model()
    model.reset_parameters(torch.Generator().manual_seed(0))
    assert large.h1d_value(model, torch.tensor(HAND_BUILT_KEY)) < large.H1D_MIN


@pytest.fixture(scope="module")
def hand_built_neurons(config):
    """The hand-built transformer, its neurons' frequencies and the scored (clear, key) ones."""
    model = modadd.fourier_transformer(config, key=HAND_BUILT_KEY)
    truth = modadd.neuron_frequencies(model)
    scored = truth.clear & torch.isin(truth.dominant, modadd.key_frequencies(model))
    return model, truth, scored


@pytest.mark.gate("H1c′@113", "positive")
def test_h1c_prime_at_p113_passes_on_the_hand_built_transformer(hand_built_neurons):
    model, truth, scored = hand_built_neurons
    labels, _ = large.h1c_labels(model)
    assert scored.sum() >= 2 * len(HAND_BUILT_KEY)
    assert h1c_ari(labels, truth, scored) >= large.H1C_ARI_MIN


@pytest.mark.gate("H1c′@113", "control")
def test_h1c_prime_at_p113_fails_at_initialisation(config, hand_built_neurons):
    _, truth, scored = hand_built_neurons
    model = config.build_model()
    model.reset_parameters(torch.Generator().manual_seed(0))
    labels, _ = large.h1c_labels(model)
    assert h1c_ari(labels, truth, scored) <= large.H1C_CONTROL_ARI_MAX < large.H1C_ARI_MIN


def test_h5_checkpoints_are_dense_through_circuit_formation(config):
    steps = config.checkpoint_epochs
    assert steps[0] == 0 and steps[-1] == modadd.preset(large.PRESET).epochs
    dense = [s for s in steps if s <= large.H5_DENSE_UNTIL]
    assert dense == list(range(0, large.H5_DENSE_UNTIL + 1, large.H5_EVERY))
    assert len(steps) == len(dense) + 5  # 20k, 25k, … 40k


def test_h1c_inputs_are_a_fixed_sample_of_distinct_pairs():
    tokens = large.h1c_inputs(113)
    assert tokens.shape == (large.H1C_INPUTS, 3)
    assert torch.equal(tokens, large.h1c_inputs(113))
    pairs = tokens[:, 0] * 113 + tokens[:, 1]
    assert pairs.unique().numel() == large.H1C_INPUTS and torch.equal(pairs, pairs.sort().values)
    assert (tokens[:, 2] == 113).all()
    assert large.h1c_inputs(5).shape == (25, 3)  # fewer pairs than the sample: all of them


def test_top_vectors_lanczos_and_dense_span_the_same_subspace():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 30, generator=g, dtype=torch.float64)
    K = X @ torch.diag(torch.linspace(10, 1, 30, dtype=torch.float64)) @ X.T
    lanczos = large.top_vectors(K, 5)
    _, dense = torch.linalg.eigh(K)
    dense = dense[:, -5:].flip(1)
    torch.testing.assert_close(lanczos @ lanczos.T, dense @ dense.T, rtol=0, atol=1e-8)


def test_steepest_rise_reads_central_differences():
    series = pd.Series([0.0, 0.1, 0.2, 0.8, 0.85, 0.9], index=[0, 500, 1000, 1500, 2000, 2500])
    assert large.steepest_rise(series) == (1000, pytest.approx((0.8 - 0.1) / 1000))


def test_without_a_gpu_or_a_copied_run_the_checks_skip_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv("NTKBENCH_ALLOW_SLOW_CPU", raising=False)
    monkeypatch.delenv(runs.TRAINED_ON_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="large tier needs nanda2023 runs") as info:
        large.load_run(0)
    assert "\n" not in str(info.value) and "NTKBENCH_DEVICE=cuda" in str(info.value)
    monkeypatch.setenv(runs.TRAINED_ON_ENV, "cuda:NVIDIA H200")
    with pytest.raises(pytest.skip.Exception, match="trained on 'cuda:NVIDIA H200'"):
        large.load_run(0)
