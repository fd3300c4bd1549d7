"""Ground truth of a trained toy model of superposition, and the feature-recovery score.

Everything here is about one instance (``TMSModel.instance(i)`` selects one of several).
Kernels over (input, output channel) pairs use the **channel-major** flattening: row
``c · N + x`` is output channel c at input x, so channel c's rows form one contiguous block of
N (:func:`flat_index`).

* ``directions`` — W (m, n): column j is feature j's embedding.
* ``norms`` — ‖W_j‖² = (WᵀW)_jj (n,); feature j is *represented* when it is ≥ 0.75 (the
  criterion of Lin 2025).
* ``dimensionality`` — D_j = ‖W_j‖² / Σ_k (Ŵ_j · W_k)² (Elhage et al. 2022): 1 for a feature
  with a dimension of its own, 1/2 for an antipodal pair, 0 for an unembedded feature.
* ``indicators`` — (N·n, n): column j holds feature j's activations x_j over the inputs in
  channel j's block and zeros elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from metrics.spectra import (
    normalized_overlap,
    orthonormal_basis,
    overlap_chance,
    subspace_overlap,
)
from testbeds.tms.models import TMSModel
from testbeds.tms.train import REPRESENTED_NORM


def flat_index(n_inputs: int, x: int | Tensor, channel: int | Tensor) -> int | Tensor:
    """Row of (input x, output channel c) in the channel-major flattening: c · N + x."""
    return channel * n_inputs + x


def _single(model: TMSModel) -> TMSModel:
    if not isinstance(model, TMSModel) or model.n_instances != 1:
        raise ValueError(
            "model must be a single-instance TMSModel; select one with model.instance(i)"
        )
    return model


def dimensionality(W: Tensor) -> Tensor:
    """Per-feature dimensionality D_j = ‖W_j‖² / Σ_k (Ŵ_j · W_k)² of W (m, n); 0 where W_j = 0."""
    W = W.detach().double()
    norms = W.pow(2).sum(0)
    unit = W / norms.sqrt().clamp_min(1e-300)
    interference = (unit.T @ W).pow(2).sum(1)
    return torch.where(norms > 0, norms / interference.clamp_min(1e-300), torch.zeros_like(norms))


def feature_indicators(inputs: Tensor) -> Tensor:
    """(N·n, n) channel-major indicators of inputs (N, n): column j holds x_j in block j."""
    if inputs.dim() != 2:
        raise ValueError(f"inputs must have shape (N, n), got {tuple(inputs.shape)}")
    N, n = inputs.shape
    out = inputs.new_zeros(n, N, n)  # (channel, input, feature)
    idx = torch.arange(n)
    out[idx, :, idx] = inputs.T
    return out.reshape(n * N, n)


def center_blocks(X: Tensor, n_inputs: int) -> Tensor:
    """Columns of X (N·C, k) with their mean over inputs removed inside every channel block."""
    blocks = X.double().reshape(-1, n_inputs, X.shape[1])
    return (blocks - blocks.mean(1, keepdim=True)).reshape(X.shape)


def indicator_basis(indicators: Tensor, n_inputs: int, center: bool = False) -> Tensor:
    """Orthonormal basis of the span of indicator columns (N·C, k); with ``center`` each column
    is first mean-centred over inputs within every channel block."""
    X = center_blocks(indicators, n_inputs) if center else indicators.double()
    return orthonormal_basis(X)


@dataclass(frozen=True)
class GroundTruth:
    """Named ground-truth arrays of one instance on N inputs (shapes in the module docstring)."""

    directions: Tensor  # (m, n)
    norms: Tensor  # (n,)
    represented: Tensor  # (n,) bool
    dimensionality: Tensor  # (n,)
    indicators: Tensor  # (N·n, n)
    n_inputs: int

    @property
    def n_represented(self) -> int:
        return int(self.represented.sum())

    @property
    def n_features(self) -> int:
        return int(self.represented.numel())

    def represented_indicators(self) -> Tensor:
        """Indicator columns of the represented features, (N·n, r)."""
        return self.indicators[:, self.represented]


def ground_truth(
    model: TMSModel, inputs: Tensor, threshold: float = REPRESENTED_NORM
) -> GroundTruth:
    """Ground truth of a single-instance model on inputs (N, n)."""
    W = _single(model).W.detach()[0].double()
    norms = W.pow(2).sum(0)
    return GroundTruth(
        directions=W,
        norms=norms,
        represented=norms >= threshold,
        dimensionality=dimensionality(W),
        indicators=feature_indicators(inputs.detach().double()),
        n_inputs=len(inputs),
    )


def feature_recovery(
    directions: Tensor, truth: GroundTruth, center: bool = False, budget: int | None = None
) -> tuple[float, float]:
    """Leaderboard task "recover TMS features": the normalised subspace overlap between a
    method's data-space directions (N·n, k) over the channel-major (input, channel) pairs and
    the span of the represented features' indicator columns, with its chance level
    max(k, r) / (N·n). Score in [0, 1]; the indicator columns themselves score 1.

    ``center=True`` removes the per-channel mean over inputs from both the directions and the
    indicator columns first, so that knowing only *which channels* carry features earns nothing
    (a vector constant on channel j's block overlaps feature j's column by E[x_j]²/E[x_j²] —
    about 0.5 for dense inputs — without centring). Centring only the feature side would
    score the exact indicator columns below 1, so both sides are treated alike.

    ``budget`` (default: the number of columns) is the k used for normalisation and chance,
    ‖Uᵀ B‖² / min(budget, r): directions that lose rank (e.g. to centring) then score lower
    instead of being renormalised by their own rank.
    """
    rows = truth.indicators.shape[0]
    if directions.dim() != 2 or directions.shape[0] != rows:
        raise ValueError(
            f"directions must have shape ({rows}, k) over (input, channel) pairs, "
            f"got {tuple(directions.shape)}"
        )
    if truth.n_represented == 0:
        raise ValueError("the model represents no feature; feature recovery is undefined")
    if not torch.isfinite(directions).all():
        raise ValueError("directions contain NaN or Inf")
    k = directions.shape[1] if budget is None else budget
    if not 1 <= k <= rows or directions.shape[1] > k:
        raise ValueError(
            f"budget must be in {directions.shape[1]}..{rows} (at least the number of "
            f"directions), got budget={budget}"
        )
    basis = indicator_basis(truth.represented_indicators(), truth.n_inputs, center=center)
    D = center_blocks(directions, truth.n_inputs) if center else directions.double()
    U = orthonormal_basis(D)
    chance = overlap_chance(rows, k, basis.shape[1])
    if U.shape[1] == 0:  # nothing left (e.g. channel-constant directions after centring)
        return 0.0, chance
    if budget is None:
        return normalized_overlap(U, basis), chance
    return subspace_overlap(U, basis) / min(k, basis.shape[1]), chance


def matched_cosines(vectors: Tensor, truth: GroundTruth) -> tuple[np.ndarray, np.ndarray]:
    """Best one-to-one match (Hungarian) between vectors (N·n, k) and the represented features'
    indicator columns by |cosine|. Returns (feature index, |cosine|) per represented feature,
    sorted by feature index; features left unmatched (k < r) get cosine 0."""
    feats = truth.represented_indicators().double()
    feats = feats / feats.norm(dim=0).clamp_min(1e-300)
    V = vectors.double()
    V = V / V.norm(dim=0).clamp_min(1e-300)
    cos = (V.T @ feats).abs().numpy()  # (k, r)
    rows, cols = linear_sum_assignment(cos, maximize=True)
    best = np.zeros(feats.shape[1])
    best[cols] = cos[rows, cols]
    return torch.nonzero(truth.represented).flatten().numpy(), best
