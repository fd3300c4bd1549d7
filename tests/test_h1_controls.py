"""Falsifiability of the H1 statistics (SCIENCE.md §2, rules 6–8): each can fail (negative
controls) and can pass (planted positives), without training.

Gate (``tests/test_gate.py``): the planted positive is a network, Gromov (2023)'s analytic
solution of the quadratic MLP at the preset's sizes (p = 29, width 512), whose neurons each
carry one known frequency; it goes through each claim's own statistic end to end. The negative
control is the same architecture at initialisation. Kernels and similarities built from the
ground truth (a block similarity from the labels, a kernel on the sum family) are unit tests of
the arithmetic, not planted positives.
"""

from __future__ import annotations

import pytest
import torch

from hypotheses.test_h1_fourier_circuits import (
    H1A_CONTROL_CHANCE_MULTIPLE_MAX,
    H1A_DIFFERENCE_MIN,
    H1A_SUM_MIN,
    H1B_OUTPUT_SUM_DIFFERENCE_MIN,
    H1B_SINGLE_OPERAND_MIN,
    H1B_SUM_MAX,
    H1C_ARI_MIN,
    H1C_CONTROL_ARI_MAX,
    H1C_PRIME_ARI_MIN,
    H1C_PRIME_CONTROL_ARI_MAX,
    H1C_PRIME_PLANTED_ARI_MIN,
    _chance_h1a,
    h1a_statistics,
    h1b_statistics,
    h1c_ari,
    h1c_cluster,
    h1c_gram,
    h1c_prime_statistic,
    mlp_layer_kernels,
)
from testbeds import modadd

P, WIDTH = 29, 512


@pytest.fixture(scope="module")
def planted():
    model = modadd.gromov_solution(P, WIDTH, seed=0)
    return model, mlp_layer_kernels(model)


@pytest.fixture(scope="module")
def untrained():
    model = modadd.preset("lin2025_mlp").build_model()
    model.reset_parameters(torch.Generator().manual_seed(0))
    return model, mlp_layer_kernels(model)


@pytest.mark.gate("H1a", "positive")
def test_h1a_passes_on_the_planted_solution(planted):
    stats = h1a_statistics(planted[1], P)
    assert stats["sum"] >= H1A_SUM_MIN and stats["difference"] >= H1A_DIFFERENCE_MIN, stats


@pytest.mark.gate("H1a", "control")
def test_h1a_fails_at_initialisation_and_is_near_chance(untrained):
    stats = h1a_statistics(untrained[1], P)
    assert stats["sum"] < H1A_SUM_MIN and stats["difference"] < H1A_DIFFERENCE_MIN
    chance = _chance_h1a(P)
    assert max(stats.values()) <= H1A_CONTROL_CHANCE_MULTIPLE_MAX * chance, (stats, chance)


@pytest.mark.gate("H1b", "positive")
def test_h1b_passes_on_the_planted_solution(planted):
    stats = h1b_statistics(planted[1], P)
    assert stats["first_layer_single_operand"] >= H1B_SINGLE_OPERAND_MIN, stats
    assert stats["first_layer_sum"] <= H1B_SUM_MAX, stats
    assert stats["output_layer_sum_difference"] >= H1B_OUTPUT_SUM_DIFFERENCE_MIN, stats


@pytest.mark.gate("H1b", "control")
def test_h1b_output_layer_fails_at_initialisation(untrained):
    stats = h1b_statistics(untrained[1], P)
    assert stats["output_layer_sum_difference"] < H1B_OUTPUT_SUM_DIFFERENCE_MIN, stats


def test_h1b_first_layer_statistic_arithmetic_can_fail():
    """Unit test of the arithmetic: the first-layer statistic fails on a kernel built on the
    sum family (a first-layer input Gram that is not the one-hot pair Gram)."""
    fam = modadd.fourier_family(P, "sum")
    sum_kernel = fam @ fam.T
    kernels = {"layer1": sum_kernel, "layer2": sum_kernel}
    stats = h1b_statistics(kernels, P)
    assert stats["first_layer_single_operand"] < H1B_SINGLE_OPERAND_MIN
    assert stats["first_layer_sum"] > H1B_SUM_MAX


def _block_similarity(labels: torch.Tensor, within: float, between: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    same = (labels[:, None] == labels[None, :]).double()
    noise = 0.05 * torch.rand(len(labels), len(labels), generator=g, dtype=torch.float64)
    S = same * within + (1 - same) * between + (noise + noise.T) / 2
    return S.fill_diagonal_(1.0)


def test_h1c_clustering_arithmetic_on_a_block_similarity():
    """Unit test of the clustering stage (eigengap k, spectral clustering, ARI on clear
    neurons) on an S built from the 14 frequency classes — arithmetic, not a planted
    positive."""
    truth = modadd.neuron_frequencies(modadd.gromov_solution(P, WIDTH, seed=0))
    labels, k = h1c_cluster(_block_similarity(truth.dominant, 0.6, 0.05, seed=0))
    assert k == 14
    assert h1c_ari(labels, truth) >= H1C_ARI_MIN


def test_h1c_clustering_arithmetic_fails_on_an_unstructured_similarity():
    truth = modadd.neuron_frequencies(modadd.gromov_solution(P, WIDTH, seed=0))
    shuffled = truth.dominant[torch.randperm(WIDTH, generator=torch.Generator().manual_seed(1))]
    labels, _ = h1c_cluster(_block_similarity(shuffled, 0.6, 0.05, seed=0))
    assert h1c_ari(labels, truth) <= H1C_CONTROL_ARI_MAX


def test_h1c_fails_at_initialisation_against_planted_circuits(untrained):
    """Initial weights are unrelated to the planted partition: ARI near 0."""
    truth = modadd.neuron_frequencies(modadd.gromov_solution(P, WIDTH, seed=0))
    labels, _ = h1c_cluster(h1c_gram(untrained[0]).similarity())
    assert h1c_ari(labels, truth) <= H1C_CONTROL_ARI_MAX


def test_uncentred_unit_similarity_of_the_planted_solution_has_a_shared_floor(planted):
    """Why the literal S cannot separate circuits even on Gromov's solution: every unit kernel
    carries the same positive constant mode, so S between different frequencies sits near
    its within-frequency value; double-centring removes that floor."""
    model = planted[0]
    freq = modadd.neuron_frequencies(model).dominant
    same = (freq[:, None] == freq[None, :]) & ~torch.eye(WIDTH, dtype=torch.bool)
    different = freq[:, None] != freq[None, :]
    gram = h1c_gram(model)
    S = gram.similarity()
    assert S[different].mean() > 0.75 * S[same].mean()
    S_centred = gram.similarity(center=True)
    assert S_centred[different].mean() < 0.25 * S_centred[same].mean()


@pytest.mark.parametrize("phase_seed", [0, 1])
def test_h1c_v1_fails_its_planted_positive(phase_seed):
    """Why H1c (v1) is superseded: the literal statistic cannot recognise Gromov's solution."""
    model = modadd.gromov_solution(P, WIDTH, seed=phase_seed)
    labels, _ = h1c_cluster(h1c_gram(model).similarity())
    assert h1c_ari(labels, modadd.neuron_frequencies(model)) < H1C_ARI_MIN


@pytest.mark.gate("H1c′", "positive")
@pytest.mark.parametrize("phase_seed", [0, 1])
def test_h1c_prime_passes_on_the_planted_solution(phase_seed):
    model = modadd.gromov_solution(P, WIDTH, seed=phase_seed)
    ari = h1c_prime_statistic(model, modadd.neuron_frequencies(model))
    assert ari >= H1C_PRIME_PLANTED_ARI_MIN >= H1C_PRIME_ARI_MIN, ari


@pytest.mark.gate("H1c′", "control")
def test_h1c_prime_fails_at_initialisation(untrained):
    """The untrained network, scored against the planted network's partition."""
    truth = modadd.neuron_frequencies(modadd.gromov_solution(P, WIDTH, seed=0))
    ari = h1c_prime_statistic(untrained[0], truth)
    assert ari <= H1C_PRIME_CONTROL_ARI_MAX < H1C_PRIME_ARI_MIN, ari
