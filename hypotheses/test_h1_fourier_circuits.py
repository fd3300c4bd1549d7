"""H1 — Fourier circuits are recovered by the layerwise eNTK.

Claim (Lin 2025, "Feature Identification via the Empirical NTK", arXiv 2510.00468, v1–v3):
in a network that has grokked modular addition, eigenspaces of the empirical NTK computed over
all p² inputs coincide with the Fourier feature families of the learned algorithm, layer by
layer, and clustering hidden units by their eNTK similarity recovers the frequency circuits.

Pre-registered in the foundation issue; 3 seeds; pass means every seed passes.

Conventions. Kernel: class-averaged trace eNTK over all p² inputs, full (sum of layers) unless
stated. Eigenvectors sorted by decreasing eigenvalue, index 0 the top mode. With
F = 2(p − 1), the first cliff is indices 1 … F and the second cliff indices F+1 … 2F.
Feature families are mean-centred and orthonormalised; overlaps are normalised by the smaller
dimension; chance is max(k, m)/N for a random k-dimensional subspace (SCIENCE.md).

* H1a (Lin 2025, Table 1 setting; ``lin2025_mlp``, end of training): normalised overlap of
  the second cliff with the sum family ≥ 0.90 and with the difference family ≥ 0.85.
  Control: the same statistics at initialisation ≤ 3 × chance.
* H1b (layer localisation): the first cliff of the first layer's kernel overlaps the
  single-operand families (a ∪ b) ≥ 0.95 and the sum family ≤ 0.05; the output layer's top 2F
  eigenvectors after index 0 overlap sum ∪ difference ≥ 0.80. The first-layer value at
  initialisation is recorded: if it is ≥ 0.95 there too, that part is architectural.
* H1c (circuit recovery): spectral clustering of all hidden neurons with the unit-similarity
  affinity S (trace reduction, uncentred unit kernels exactly as defined in the issue), k from
  the largest Laplacian eigengap over 2 … U/2, scored by the adjusted Rand index against the
  neuron → dominant-frequency partition on the neurons with a clear dominant frequency
  (≥ 50% of Fourier power at one frequency): ARI ≥ 0.80. Control: the same clustering of the
  network at initialisation, scored against the trained network's partition (the same
  neurons; at initialisation no neuron has a clear frequency, so its own partition is
  undefined): ≤ 0.10. Recorded but not gating: mean S within and between frequencies, and the
  ARI of the same procedure on double-centred unit kernels.
H1d (the transformer) lives in ``test_h1d_transformer.py``.
"""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn

from metrics.clustering import spectral_partition
from metrics.entk import UnitGram, entk, hidden_units, unit_gram
from metrics.spectra import (
    eigh_sorted,
    normalized_overlap,
    orthonormal_basis,
    overlap_chance,
)
from testbeds import modadd

MLP_PRESET = "lin2025_mlp"
SEEDS = (0, 1, 2)

# Pre-registered thresholds (foundation issue, "Claim H1").
H1A_SUM_MIN = 0.90
H1A_DIFFERENCE_MIN = 0.85
H1A_CONTROL_CHANCE_MULTIPLE_MAX = 3.0
H1B_SINGLE_OPERAND_MIN = 0.95
H1B_SUM_MAX = 0.05
H1B_OUTPUT_SUM_DIFFERENCE_MIN = 0.80
H1C_ARI_MIN = 0.80
H1C_CONTROL_ARI_MAX = 0.10

FIRST_LAYER, OUTPUT_LAYER = "layer1", "layer2"  # ModAddMLP's parameter groups


@lru_cache(maxsize=4)
def family_bases(p: int) -> dict[str, torch.Tensor]:
    """Centred orthonormal bases (p², ·) of the four families and two unions."""
    fam = modadd.fourier_families(p)
    bases = {name: orthonormal_basis(mat, center=True) for name, mat in fam.items()}
    bases["single_operand"] = orthonormal_basis(torch.cat([fam["a"], fam["b"]], 1), center=True)
    bases["sum_difference"] = orthonormal_basis(
        torch.cat([fam["sum"], fam["difference"]], 1), center=True
    )
    return bases


def cliff(vectors: torch.Tensor, which: int, p: int) -> torch.Tensor:
    """Eigenvectors of cliff ``which`` (1 or 2): indices 1 … F or F+1 … 2F, F = 2(p − 1)."""
    F = 2 * (p - 1)
    return vectors[:, 1 + (which - 1) * F : 1 + which * F]


def mlp_layer_kernels(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trace eNTK of each layer of a ModAddMLP over all p² inputs."""
    inputs = modadd.ModAddMLP.encode(*modadd.pairs(model.p), model.p)
    return entk(model, inputs, output="trace", by_layer=True)


def h1a_statistics(kernels: dict[str, torch.Tensor], p: int) -> dict[str, float]:
    """Normalised overlap of the full kernel's second cliff with the sum and difference
    families."""
    _, vectors = eigh_sorted(sum(kernels.values()))
    second = cliff(vectors, 2, p)
    bases = family_bases(p)
    return {f: normalized_overlap(second, bases[f]) for f in ("sum", "difference")}


def h1b_statistics(kernels: dict[str, torch.Tensor], p: int) -> dict[str, float]:
    """First layer's first cliff vs a ∪ b and vs sum; output layer's top 2F (after index 0)
    vs sum ∪ difference."""
    bases = family_bases(p)
    _, first = eigh_sorted(kernels[FIRST_LAYER])
    _, output = eigh_sorted(kernels[OUTPUT_LAYER])
    top_2f = output[:, 1 : 1 + 4 * (p - 1)]
    return {
        "first_layer_single_operand": normalized_overlap(
            cliff(first, 1, p), bases["single_operand"]
        ),
        "first_layer_sum": normalized_overlap(cliff(first, 1, p), bases["sum"]),
        "output_layer_sum_difference": normalized_overlap(top_2f, bases["sum_difference"]),
    }


def h1c_gram(model: modadd.ModAddMLP) -> UnitGram:
    """Inner products of the hidden neurons' unit kernels (trace reduction); its
    ``similarity()`` is S, ``similarity(center=True)`` the double-centred variant."""
    inputs = modadd.ModAddMLP.encode(*modadd.pairs(model.p), model.p)
    return unit_gram(model, inputs, hidden_units(model, FIRST_LAYER, OUTPUT_LAYER))


def h1c_cluster(S: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Spectral clustering labels of affinity S with k from the largest eigengap, and k."""
    labels, k = spectral_partition(S, seed=0)
    return torch.as_tensor(labels), k


def h1c_ari(labels: torch.Tensor, truth: modadd.NeuronFrequencies) -> float:
    """ARI between cluster labels and dominant frequencies on the clear neurons."""
    clear = truth.clear
    if clear.sum() < 2:
        return float("nan")
    return float(adjusted_rand_score(truth.dominant[clear].numpy(), labels[clear].numpy()))


# ----------------------------------------------------------------------------- checks
# One xdist group per (network, seed): a worker computes each seed's kernels once.
MLP_SEEDS = [pytest.param(s, marks=pytest.mark.xdist_group(f"mlp-{s}")) for s in SEEDS]


@lru_cache(maxsize=8)
def _mlp(seed: int):
    run = modadd.train(modadd.preset(MLP_PRESET), seed)
    return run, mlp_layer_kernels(run.final_model()), mlp_layer_kernels(run.model_at(0))


def _chance_h1a(p: int) -> float:
    return overlap_chance(p * p, 2 * (p - 1), p - 1)


@pytest.mark.parametrize("seed", MLP_SEEDS)
def test_h1a_second_cliff_is_sum_and_difference(seed, record):
    run, trained, init = _mlp(seed)
    p, config = run.config.p, run.config
    real, control = h1a_statistics(trained, p), h1a_statistics(init, p)
    chance = _chance_h1a(p)
    common = dict(
        claim="H1a", testbed="modadd", preset=MLP_PRESET, seed=seed, config=config, chance=chance
    )
    record(
        statistic="second_cliff_overlap_sum",
        value=real["sum"],
        threshold=H1A_SUM_MIN,
        comparison=">=",
        control_value=control["sum"],
        **common,
    )
    record(
        statistic="second_cliff_overlap_difference",
        value=real["difference"],
        threshold=H1A_DIFFERENCE_MIN,
        comparison=">=",
        control_value=control["difference"],
        **common,
    )
    for family in ("sum", "difference"):
        record(
            statistic=f"control_init_overlap_{family}",
            value=control[family],
            threshold=H1A_CONTROL_CHANCE_MULTIPLE_MAX * chance,
            comparison="<=",
            extra={"multiple_of_chance": control[family] / chance},
            **common,
        )
    record.assert_passed()


@pytest.mark.parametrize("seed", MLP_SEEDS)
def test_h1b_layer_localisation(seed, record):
    run, trained, init = _mlp(seed)
    p, config = run.config.p, run.config
    real, control = h1b_statistics(trained, p), h1b_statistics(init, p)
    architectural = control["first_layer_single_operand"] >= H1B_SINGLE_OPERAND_MIN
    common = dict(claim="H1b", testbed="modadd", preset=MLP_PRESET, seed=seed, config=config)
    n = p * p
    record(
        statistic="first_layer_first_cliff_single_operand",
        value=real["first_layer_single_operand"],
        threshold=H1B_SINGLE_OPERAND_MIN,
        comparison=">=",
        control_value=control["first_layer_single_operand"],
        chance=overlap_chance(n, 2 * (p - 1), 2 * (p - 1)),
        extra={"architectural": bool(architectural)},
        **common,
    )
    record(
        statistic="first_layer_first_cliff_sum",
        value=real["first_layer_sum"],
        threshold=H1B_SUM_MAX,
        comparison="<=",
        control_value=control["first_layer_sum"],
        chance=overlap_chance(n, 2 * (p - 1), p - 1),
        **common,
    )
    record(
        statistic="output_layer_top2F_sum_difference",
        value=real["output_layer_sum_difference"],
        threshold=H1B_OUTPUT_SUM_DIFFERENCE_MIN,
        comparison=">=",
        control_value=control["output_layer_sum_difference"],
        chance=overlap_chance(n, 4 * (p - 1), 2 * (p - 1)),
        **common,
    )
    record.assert_passed()


@pytest.mark.parametrize("seed", MLP_SEEDS)
def test_h1c_circuits_from_unit_similarity(seed, record):
    run, _, _ = _mlp(seed)
    trained_model = run.final_model()
    truth = modadd.neuron_frequencies(trained_model)
    gram = h1c_gram(trained_model)
    S = gram.similarity()
    labels, k = h1c_cluster(S)
    init_labels, init_k = h1c_cluster(h1c_gram(run.model_at(0)).similarity())
    real, control = h1c_ari(labels, truth), h1c_ari(init_labels, truth)
    common = dict(
        claim="H1c", testbed="modadd", preset=MLP_PRESET, seed=seed, config=run.config, chance=0.0
    )
    clear = truth.clear
    same = (truth.dominant[:, None] == truth.dominant[None, :]) & clear[:, None] & clear[None, :]
    different = (truth.dominant[:, None] != truth.dominant[None, :]) & clear[:, None] & clear[None]
    same &= ~torch.eye(len(S), dtype=torch.bool)
    # Diagnostic, not pre-registered and not gating: the same clustering on double-centred
    # unit kernels, which removes the constant mode every unit shares.
    centred_labels, centred_k = h1c_cluster(gram.similarity(center=True))
    extra = {
        "k": k,
        "k_init": init_k,
        "clear_neurons": int(clear.sum()),
        "neurons": len(labels),
        "true_clusters": int(truth.dominant[clear].unique().numel()),
        "mean_S_same_frequency": float(S[same].mean()),
        "mean_S_different_frequency": float(S[different].mean()),
        "diagnostic_centred_ari": h1c_ari(centred_labels, truth),
        "diagnostic_centred_k": centred_k,
    }
    record(
        statistic="ari_neuron_frequency",
        value=real,
        threshold=H1C_ARI_MIN,
        comparison=">=",
        control_value=control,
        extra=extra,
        **common,
    )
    record(
        statistic="control_init_ari",
        value=control,
        threshold=H1C_CONTROL_ARI_MAX,
        comparison="<=",
        extra=extra,
        **common,
    )
    record.assert_passed(extra)
