"""Falsifiability of the H1 statistics (SCIENCE.md §2): each can fail (negative controls) and
can pass (planted positives), without training.

Planted positive: Gromov (2023)'s analytic solution of the quadratic MLP, whose neurons each
carry one known frequency. Negative controls: the same architecture at initialisation; a
random kernel; a kernel planted on the wrong family.
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
    _chance_h1a,
    h1a_statistics,
    h1b_statistics,
    h1c_ari,
    h1c_cluster,
    h1c_gram,
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


def test_h1a_passes_on_the_planted_solution(planted):
    stats = h1a_statistics(planted[1], P)
    assert stats["sum"] >= H1A_SUM_MIN and stats["difference"] >= H1A_DIFFERENCE_MIN, stats


def test_h1a_fails_at_initialisation_and_is_near_chance(untrained):
    stats = h1a_statistics(untrained[1], P)
    assert stats["sum"] < H1A_SUM_MIN and stats["difference"] < H1A_DIFFERENCE_MIN
    chance = _chance_h1a(P)
    assert max(stats.values()) <= H1A_CONTROL_CHANCE_MULTIPLE_MAX * chance, (stats, chance)


def test_h1b_passes_on_the_planted_solution(planted):
    stats = h1b_statistics(planted[1], P)
    assert stats["first_layer_single_operand"] >= H1B_SINGLE_OPERAND_MIN, stats
    assert stats["first_layer_sum"] <= H1B_SUM_MAX, stats
    assert stats["output_layer_sum_difference"] >= H1B_OUTPUT_SUM_DIFFERENCE_MIN, stats


def test_h1b_output_layer_fails_at_initialisation(untrained):
    stats = h1b_statistics(untrained[1], P)
    assert stats["output_layer_sum_difference"] < H1B_OUTPUT_SUM_DIFFERENCE_MIN, stats


def test_h1b_first_layer_statistic_can_fail():
    """The first-layer statistic fails when the first layer's kernel is built on the sum
    family: a planted model whose first-layer input Gram is not the one-hot pair Gram."""
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


def test_h1c_recovers_planted_circuits_from_a_block_similarity():
    """A planted S whose blocks are the 14 frequency classes: the clustering stage (eigengap k,
    spectral clustering, ARI on clear neurons) must pass."""
    truth = modadd.neuron_frequencies(modadd.gromov_solution(P, WIDTH, seed=0))
    labels, k = h1c_cluster(_block_similarity(truth.dominant, 0.6, 0.05, seed=0))
    assert k == 14
    assert h1c_ari(labels, truth) >= H1C_ARI_MIN


def test_h1c_fails_on_an_unstructured_similarity():
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
