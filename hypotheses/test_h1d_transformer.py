"""H1d — the transformer's unembedding kernel holds the sum modes of its key frequencies.

Claim (Lin 2025, "Feature Identification via the Empirical NTK", arXiv 2510.00468, v3, Table 2),
part of H1 (``test_h1_fourier_circuits.py``); pre-registered in the foundation issue; seeds
0, 1, 2.

* H1d (Lin 2025 v3, Table 2 setting; ``lin2025_transformer``): with K the key frequencies, the
  top 2|K| + 1 eigenvectors (index 0 included) of the unembedding layer's kernel of the
  summed logits contain the sum family restricted to K: overlap / 2|K| ≥ 0.90. Control: the
  same network at initialisation, scored against the trained network's K.
"""

from __future__ import annotations

import pytest
import torch

from metrics.entk import entk
from metrics.spectra import eigh_sorted, orthonormal_basis, overlap_chance, subspace_overlap
from testbeds import modadd

TRANSFORMER_PRESET = "lin2025_transformer"
SEEDS = (0, 1, 2)

# Pre-registered threshold (foundation issue, "Claim H1").
H1D_KEY_SUM_MIN = 0.90

UNEMBED = "unembed"  # ModAddTransformer's unembedding layer


def key_sum_overlap(kernel: torch.Tensor, key: torch.Tensor, p: int) -> float:
    """Overlap of a kernel's top 2|K|+1 eigenvectors (index 0 included) with the sum family at
    the key frequencies K, divided by 2|K|; NaN when K is empty."""
    if len(key) == 0:
        return float("nan")
    _, vectors = eigh_sorted(kernel)
    family = modadd.restrict_to_frequencies(modadd.fourier_family(p, "sum"), key)
    basis = orthonormal_basis(family, center=True)
    return subspace_overlap(vectors[:, : 2 * len(key) + 1], basis) / (2 * len(key))


def h1d_statistic(model: modadd.ModAddTransformer, key: torch.Tensor) -> float:
    """:func:`key_sum_overlap` of the unembedding layer's kernel of the summed logits."""
    p = model.p
    tokens = torch.stack([*modadd.pairs(p), torch.full((p * p,), p)], dim=1)
    kernel = entk(model, tokens, output="sum", groups={UNEMBED: [UNEMBED]})
    return key_sum_overlap(kernel, key, p)


TRANSFORMER_SEEDS = [pytest.param(s, marks=pytest.mark.xdist_group(f"tf-{s}")) for s in SEEDS]


@pytest.mark.parametrize("seed", TRANSFORMER_SEEDS)
def test_h1d_transformer_key_frequency_sum_modes(seed, record):
    run = modadd.train(modadd.preset(TRANSFORMER_PRESET), seed)
    trained = run.final_model()
    key = modadd.key_frequencies(trained)
    real, control = h1d_statistic(trained, key), h1d_statistic(run.model_at(0), key)
    p = run.config.p
    common = dict(
        claim="H1d",
        testbed="modadd",
        preset=TRANSFORMER_PRESET,
        seed=seed,
        config=run.config,
        chance=overlap_chance(p * p, 2 * len(key) + 1, 2 * len(key)) if len(key) else None,
    )
    extra = {"key_frequencies": key.tolist(), "test_acc": float(run.log["test_acc"].iloc[-1])}
    record(
        statistic="unembed_top_sum_at_key_frequencies",
        value=real,
        threshold=H1D_KEY_SUM_MIN,
        comparison=">=",
        control_value=control,
        extra=extra,
        **common,
    )
    # the control must not reach the claim's threshold
    record(
        statistic="control_init_unembed_top_sum",
        value=control,
        threshold=H1D_KEY_SUM_MIN,
        comparison="<=",
        extra=extra,
        **common,
    )
    record.assert_passed(extra)
