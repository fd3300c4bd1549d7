"""H7′'s instruments (hypotheses/circuit_depth.py) against brute-force float64 references, and
its gate: the hand-built circuits pass the claim's statistic with their true tree and fail it
with a shuffled one."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from hypotheses.circuit_depth import (
    CIRCUITS,
    HAND_BUILT_SEEDS,
    depth_ratios,
    hand_built,
    random_triples,
    resolution_depth,
    shuffled,
    third_order_mass,
)
from hypotheses.test_h7_resolution_depth import (
    DEPTH_RATIO_MIN,
    hand_built_ratios,
    pair_starts,
)
from metrics.coalitions import lattice_values, mobius_transform, tree_decomposition
from metrics.hierarchy import Tree


def pair_game(weights: dict[tuple[int, int], float], singles: torch.Tensor):
    """v(S) = Σ_i∈S singles_i + Σ_{i<j both in S} weights_ij."""

    def game(masks):
        masks = torch.as_tensor(masks).double()
        value = masks @ singles
        for (i, j), w in weights.items():
            value = value + w * masks[:, i] * masks[:, j]
        return value

    return game


def test_resolution_depth_is_how_far_below_the_root_interactions_meet():
    tree = Tree.balanced(8)  # height 3; leaves 0, 1 meet at height 1, leaves 0, 7 at the root
    singles = torch.arange(1.0, 9.0, dtype=torch.float64)
    assert resolution_depth(tree_decomposition(pair_game({}, singles), tree)) == 0.0
    low = tree_decomposition(pair_game({(0, 1): -2.0}, singles), tree)
    assert resolution_depth(low) == pytest.approx(2.0)
    top = tree_decomposition(pair_game({(0, 7): 5.0}, singles), tree)
    assert resolution_depth(top) == pytest.approx(0.0)
    both = tree_decomposition(pair_game({(0, 1): 1.0, (0, 7): -3.0}, singles), tree)
    assert resolution_depth(both) == pytest.approx(3 - (1 * 1 + 3 * 3) / 4)


def test_shuffled_keeps_the_shape_and_permutes_the_leaves():
    tree = Tree.from_nested(((0, (1, 2)), ((3, 4), (5, (6, 7)))))
    a = shuffled(tree, torch.Generator().manual_seed(3))
    b = shuffled(tree, torch.Generator().manual_seed(3))
    assert a == b and a != tree
    shape = lambda t: sorted(len(t.members(n)) for n in t.internal)  # noqa: E731
    assert shape(a) == shape(tree)
    assert sorted(a.members(a.root)) == list(range(8))


def test_third_order_mass_matches_the_mobius_transform():
    U = 6
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(2**U, generator=generator, dtype=torch.float64)
    bits = 2 ** torch.arange(U)

    def game(masks):
        return table[(torch.as_tensor(masks).long() * bits).sum(1)]

    triples = random_triples(U, 10, torch.Generator().manual_seed(1))
    m = mobius_transform(lattice_values(game, U))
    index = lambda members: int(sum(2**i for i in members))  # noqa: E731
    third = [abs(float(m[index(t.tolist())])) for t in triples]
    pairs = [
        abs(float(m[index(p)]))
        for t in triples.tolist()
        for p in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2]))
    ]
    out = third_order_mass(game, U, triples)
    assert out.triples == 10
    assert out.mean_abs_third == pytest.approx(sum(third) / len(third), rel=1e-12)
    assert out.mean_abs_pair == pytest.approx(sum(pairs) / len(pairs), rel=1e-12)


def test_a_pairwise_game_has_no_third_order_mass():
    singles = torch.tensor([1.0, -2.0, 0.5, 3.0, 1.5], dtype=torch.float64)
    game = pair_game({(0, 1): 2.0, (1, 2): -1.0, (3, 4): 0.7, (0, 4): 0.2}, singles)
    out = third_order_mass(game, 5, random_triples(5, 20, torch.Generator().manual_seed(2)))
    assert out.mean_abs_pair > 0.1 and out.mean_abs_third < 1e-14 and out.ratio < 1e-13


def test_random_triples_hold_three_distinct_players():
    triples = random_triples(7, 200, torch.Generator().manual_seed(0))
    assert triples.shape == (200, 3)
    assert all(len(set(t)) == 3 for t in triples.tolist())
    assert set(triples.flatten().tolist()) == set(range(7))
    with pytest.raises(ValueError, match="at least 3 players"):
        random_triples(2, 1, torch.Generator())


def test_depth_ratios_need_random_trees_and_are_nan_without_interactions():
    tree = Tree.balanced(4)
    additive = pair_game({}, torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="random tree"):
        depth_ratios(additive, {"t": tree}, [])
    out = depth_ratios(additive, {"t": tree}, [Tree.random(4, torch.Generator())])
    assert math.isnan(out["t"]) and out["random_mean"] == 0


def test_the_hand_built_circuits_compute_their_targets_and_start_empty():
    built = hand_built(0)
    assert len(built.units) == 4 * CIRCUITS and built.tree.n_leaves == 4 * CIRCUITS
    game = built.game()
    everyone = torch.ones(1, 4 * CIRCUITS, dtype=torch.bool)
    assert float(game(everyone)[0]) == pytest.approx(game.base, rel=1e-12)  # loss 0 at θ*
    pair = torch.zeros(1, 4 * CIRCUITS, dtype=torch.bool)
    pair[0, :2] = True  # one product pair: worth more than its two neurons alone
    alone = torch.eye(4 * CIRCUITS, dtype=torch.bool)[:2]
    assert float(game(pair)[0]) > float(game(alone).sum())


def test_pair_starts_are_the_registered_four():
    run = SimpleNamespace(steps=list(range(0, 100, 10)))  # 10 checkpoints: indices 0, 3, 5, 8
    assert pair_starts(run) == [0, 30, 50, 80]


@pytest.mark.gate("H7′", "positive")
@pytest.mark.parametrize("seed", HAND_BUILT_SEEDS)
def test_h7p_true_tree_of_the_hand_built_circuits_passes(seed):
    ratios = hand_built_ratios(seed)
    assert ratios["true"] >= DEPTH_RATIO_MIN, ratios
    assert ratios["random_max"] < DEPTH_RATIO_MIN, ratios  # no random tree reaches it


@pytest.mark.gate("H7′", "control")
@pytest.mark.parametrize("seed", HAND_BUILT_SEEDS)
def test_h7p_shuffled_tree_of_the_hand_built_circuits_fails(seed):
    ratios = hand_built_ratios(seed)
    assert ratios["shuffled"] < DEPTH_RATIO_MIN, ratios
