"""Scores shared by the tasks: subspace recovery and partition agreement, with chance levels.

* :func:`subspace_score` — the normalised overlap ‖Uᵀ B‖²_F / min(k, m) of the span U of a
  method's directions with a ground-truth basis B (m columns), where k is the task's *budget*
  (not the number of independent directions returned, so returning fewer never helps). Chance
  is max(k, m)/n, the expected score of a Haar-random k-dimensional subspace.
* :func:`partition_score` — the adjusted Rand index (Hubert & Arabie 1985) on the scored items,
  clipped at 0 so that scores lie in [0, 1] (the raw value is returned too). Chance is the mean
  clipped ARI of uniformly random partitions into k clusters (seeded), ≈ 0.
* :func:`indicator_directions` — cluster indicator vectors (rows, clusters) of a partition, so
  that a partition of a directions task's rows can be scored as directions.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score
from torch import Tensor

from metrics.spectra import orthonormal_basis, overlap_chance, subspace_overlap

CHANCE_DRAWS = 200  # random partitions averaged for the partition chance level


def subspace_score(directions: Tensor, basis: Tensor, k: int) -> tuple[float, float]:
    """(score, chance) of directions (n, j ≤ k) against an orthonormal basis (n, m)."""
    n, m = basis.shape
    if directions.dim() != 2 or directions.shape[0] != n:
        raise ValueError(f"directions must have shape ({n}, k), got {tuple(directions.shape)}")
    if directions.shape[1] > k:
        raise ValueError(f"directions have {directions.shape[1]} columns, budget k={k}")
    chance = overlap_chance(n, k, m)
    U = orthonormal_basis(directions.double())
    if U.shape[1] == 0:
        return 0.0, chance
    return subspace_overlap(U, basis) / min(k, m), chance


def indicator_directions(labels: Tensor) -> Tensor:
    """(rows, c) float64 indicators of the c clusters of integer labels (rows,)."""
    _, inverse = torch.unique(labels, return_inverse=True)
    out = torch.zeros(len(labels), int(inverse.max()) + 1, dtype=torch.float64)
    out[torch.arange(len(labels)), inverse] = 1.0
    return out


def partition_chance(truth: np.ndarray, k: int, seed: int = 0) -> float:
    """Mean clipped ARI of CHANCE_DRAWS uniform random partitions into k clusters."""
    rng = np.random.default_rng(seed)
    draws = [
        max(adjusted_rand_score(truth, rng.integers(0, k, len(truth))), 0.0)
        for _ in range(CHANCE_DRAWS)
    ]
    return float(np.mean(draws))


def partition_score(
    labels: Tensor, truth: Tensor, mask: Tensor, k: int, seed: int = 0
) -> tuple[float, float, float]:
    """(clipped ARI, chance, raw ARI) of labels against truth on the items where mask holds."""
    pred = labels.numpy()[mask.numpy()]
    true = truth.numpy()[mask.numpy()]
    raw = float(adjusted_rand_score(true, pred))
    return max(raw, 0.0), partition_chance(true, k, seed), raw
