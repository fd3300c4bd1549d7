"""H8′'s instruments (hypotheses/police_power.py) against metrics.police's brute-force scores,
and the planted police pair."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hypotheses.police_power import (
    UnitGradients,
    level_labels,
    plant,
    police_pair,
    police_pairs,
    police_statistics,
    random_level_labels,
    random_max_coupling,
)
from metrics.coalitions import parameter_masks
from metrics.hierarchy import Tree
from metrics.noise import per_example_gradients
from metrics.police import loss_hvp, police_scores

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.* is deprecated")


def squared_error(z, t):
    return ((z - t) ** 2).sum(1)


def small(seed: int = 0, n: int = 40):
    """A tanh MLP with 8 hidden units (row of layer 0, its bias, column of layer 2)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    units = [{"0.weight": (0, j), "0.bias": (0, j), "2.weight": (1, j)} for j in range(8)]
    return model, x, y, units


def test_unit_sums_give_metrics_police_scores():
    model, x, y, units = small()
    stats, curvature = police_statistics(model, squared_error, x, y, units, torch.arange(len(x)))
    G, _ = per_example_gradients(model, squared_error, x, y)
    masks = parameter_masks(model, units)
    labels = torch.tensor([2, 0, 1, 2, 0, 1, 1, 0])
    sectors = torch.stack([masks[labels == s].any(0) for s in range(3)])
    reference = police_scores(G, sectors, loss_hvp(model, squared_error, x, y))
    share, coupling = stats.scores(labels)
    torch.testing.assert_close(share, reference.share, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(coupling, reference.coupling, rtol=1e-10, atol=1e-12)
    small_blocks = UnitGradients.from_gradients(G, masks, max_block_bytes=1)  # one unit a block
    torch.testing.assert_close(small_blocks.inner, stats.inner, rtol=1e-12, atol=0)
    members = [frozenset((labels == s).nonzero()[:, 0].tolist()) for s in range(3)]
    for a in range(3):
        for b in range(3):
            assert curvature.kappa(members[a], members[b]) == pytest.approx(
                float(reference.curvature[a, b]), rel=1e-9, abs=1e-14
            )


def test_added_units_score_as_if_they_were_part_of_the_network():
    model, x, y, units = small(1)
    G, _ = per_example_gradients(model, squared_error, x, y)
    masks = parameter_masks(model, units)
    extra = torch.randn(len(x), 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    combined = UnitGradients.from_gradients(G, masks).with_units(extra)
    all_masks = torch.zeros(11, G.shape[1] + 3, dtype=torch.bool)
    all_masks[:8, : G.shape[1]] = masks
    for t in range(3):
        all_masks[8 + t, G.shape[1] + t] = True
    reference = UnitGradients.from_gradients(torch.cat([G, extra], 1), all_masks)
    torch.testing.assert_close(combined.inner, reference.inner, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(combined.mean_sq, reference.mean_sq)
    assert combined.total == pytest.approx(reference.total, rel=1e-12)


def test_random_level_labels_are_those_of_a_random_tree():
    for level in (1, 2, 3):
        a = random_level_labels(13, level, torch.Generator().manual_seed(level))
        b = level_labels(Tree.random(13, torch.Generator().manual_seed(level)), level)
        partition = lambda labels: sorted(  # noqa: E731
            sorted((labels == s).nonzero()[:, 0].tolist()) for s in labels.unique()
        )
        assert partition(a) == partition(b)


def test_the_planted_pair_is_a_police_pair_at_full_resolution():
    for width in (4, 16, 64):
        pair = police_pair(width, 600, torch.Generator().manual_seed(width))
        sectors = torch.zeros(2, 2 * width, dtype=torch.bool)
        sectors[0, :width], sectors[1, width:] = True, True  # Q, P
        hessian = pair.hessian
        scores = police_scores(
            pair.gradients, sectors, hessian.__rmatmul__, curvature_examples=torch.arange(128)
        )
        assert scores.share[1] < 1e-20 < scores.share[0]
        assert 0.5 < scores.coupling[0, 1] < 0.95
        assert scores.curvature[1, 0] < 0
        assert float(pair.kappa(torch.arange(128))[width:, :width].sum()) == pytest.approx(
            float(scores.curvature[1, 0]), rel=1e-10
        )


def test_a_planted_pair_in_sectors_of_its_own_is_found_and_random_labels_miss_it():
    """The detector end to end on a small network with a pair planted on two leaves: at the
    finest level each planted block shares its sector with one network unit whose gradients
    are small, so the pair is found; the threshold from random labellings is met there."""
    model, x, y, units = small(2, n=200)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.05)  # small network gradients: the planted pair dominates its sectors
    stats, curvature = police_statistics(model, squared_error, x, y, units, torch.arange(128))
    tree = Tree.balanced(8)
    planting = plant(stats, tree, 1, torch.Generator().manual_seed(0))
    curvature.planted = planting.pair.kappa(torch.arange(128))
    labels = planting.labels(tree, 3)
    p_sectors, q_sectors = planting.planted_sectors(labels)
    _, police = police_pairs(stats=planting.stats, labels=labels, curvature=curvature,
                             share_max=0.01, coupling_min=0.5)  # fmt: skip
    assert any(a in p_sectors and b in q_sectors for a, b in police), police
    randoms = random_max_coupling(planting.stats, 3, 20, torch.Generator(), planting.attach)
    assert randoms.shape == (20,) and (randoms <= 1).all()


def test_a_coupling_equal_to_the_threshold_up_to_rounding_meets_it():
    """c ≥ c*_L is inclusive: a pair whose coupling is the threshold's value summed in another
    order (a relative difference of 1e-15) is a candidate whichever way the last bits fall; a
    real shortfall of 1e-9 is not."""
    model, x, y, units = small(2, n=200)
    stats, curvature = police_statistics(model, squared_error, x, y, units, torch.arange(128))
    labels = level_labels(Tree.balanced(8), 3)
    _, coupling = stats.scores(labels)
    off = ~torch.eye(len(coupling), dtype=torch.bool)
    c = float(coupling[off].max())
    top = [(int(a), int(b)) for a, b in ((coupling == c) & off).nonzero().tolist()]

    def found(threshold):
        candidates, _ = police_pairs(stats, labels, curvature, share_max=1.0,
                                     coupling_min=threshold)  # fmt: skip
        return set(candidates)

    assert found(c * (1 + 1e-15)) == found(c * (1 - 1e-15)) == found(c) == set(top)
    assert found(c * (1 + 1e-9)) == set()
