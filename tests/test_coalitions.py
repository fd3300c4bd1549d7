"""Coalition games over unit hierarchies: the telescoping identity, interactions and the Winter
value against brute force on the full lattice (Möbius transform, enumeration of orderings),
against shapiq's exact Shapley and Möbius computations, and the update game against direct
loss evaluations in float64."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from metrics.coalitions import (
    UpdateGame,
    all_coalitions,
    lattice_values,
    mobius_transform,
    parameter_masks,
    tree_decomposition,
    tree_decompositions,
    winter_value,
)
from metrics.entk import hidden_units
from metrics.hierarchy import Tree

TREES = [
    Tree.balanced(2),
    Tree.balanced(5),
    Tree.from_nested(((0, (1, 2)), ((3, 4), (5, 6)))),
    Tree.from_nested((((0, 1), 2), 3)),  # a caterpillar
    Tree.random(8, torch.Generator().manual_seed(3)),
]


def table_game(values: torch.Tensor):
    """The game given by its values on the lattice (bitmask order)."""
    U = values.numel().bit_length() - 1
    bits = 2 ** torch.arange(U)

    def game(masks):
        return values[(masks.long() * bits).sum(1)]

    return game


def random_game(U: int, seed: int, order: int | None = None) -> torch.Tensor:
    """Values of a random game with v(∅) = 0 whose Möbius coefficients are Gaussian (only on
    coalitions of size ≤ order, when given)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(2**U, generator=g, dtype=torch.float64)
    sizes = all_coalitions(U).sum(1)
    m[0] = 0.0
    if order is not None:
        m[sizes > order] = 0.0
    # v(S) = Σ_{T ⊆ S} m(T): the zeta transform (inverse of the Möbius transform)
    v = m.clone()
    for i in range(U):
        v = v.reshape(-1, 2, 2**i)
        v[:, 1] += v[:, 0]
        v = v.reshape(-1)
    return v


def bitmask(members) -> int:
    return sum(1 << i for i in members)


def consistent(order: tuple[int, ...], tree: Tree) -> bool:
    """Every subtree's leaves are contiguous in the ordering."""
    position = {p: i for i, p in enumerate(order)}
    for node in tree.internal:
        places = sorted(position[i] for i in tree.members(node))
        if places[-1] - places[0] != len(places) - 1:
            return False
    return True


def winter_by_orderings(values: torch.Tensor, tree: Tree) -> torch.Tensor:
    """Average marginal contributions over all tree-consistent orderings (brute force)."""
    U = tree.n_leaves
    phi = torch.zeros(U, dtype=torch.float64)
    orders = [o for o in itertools.permutations(range(U)) if consistent(o, tree)]
    for order in orders:
        before = 0
        for player in order:
            phi[player] += values[before | (1 << player)] - values[before]
            before |= 1 << player
    return phi / len(orders)


def winter_by_dividends(values: torch.Tensor, tree: Tree) -> torch.Tensor:
    """Each Harsanyi dividend m(T) passed down from the root and split in halves at every
    node where T meets both children (the hierarchical dividend sharing of Winter 1989)."""
    U = tree.n_leaves
    m = mobius_transform(values)
    phi = torch.zeros(U, dtype=torch.float64)

    def share(node: int, T: set[int], amount: float) -> None:
        if node < U:
            phi[node] += amount
            return
        parts = [(c, T & set(tree.members(c))) for c in tree.children_of(node)]
        parts = [(c, part) for c, part in parts if part]
        for c, part in parts:
            share(c, part, amount / len(parts))

    for mask in range(1, 2**U):
        T = {i for i in range(U) if mask >> i & 1}
        share(tree.root, T, float(m[mask]))
    return phi


# ---- the lattice --------------------------------------------------------------------------
@pytest.mark.parametrize("U", [1, 3, 6])
def test_mobius_inverts_the_zeta_transform(U):
    m = torch.randn(2**U, generator=torch.Generator().manual_seed(U), dtype=torch.float64)
    m[0] = 0
    v = random_game(U, U)
    sizes = all_coalitions(U).sum(1)
    direct = torch.zeros(2**U, dtype=torch.float64)
    for T in range(2**U):  # m(T) = Σ_{S ⊆ T} (−1)^{|T|−|S|} v(S), by definition
        for S in range(2**U):
            if S & ~T == 0:
                direct[T] += (-1) ** int(sizes[T] - sizes[S]) * v[S]
    torch.testing.assert_close(mobius_transform(v), direct, rtol=0, atol=1e-12)
    torch.testing.assert_close(lattice_values(table_game(v), U), v - v[0])


def test_lattice_guards_its_size():
    with pytest.raises(ValueError, match="n_players"):
        all_coalitions(21)
    with pytest.raises(ValueError, match="2\\^U"):
        mobius_transform(torch.zeros(6))


# ---- the decomposition --------------------------------------------------------------------
@pytest.mark.parametrize("tree", TREES, ids=lambda t: f"U{t.n_leaves}-{t.to_nested()}")
def test_interactions_telescope_and_match_the_mobius_coefficients(tree):
    U = tree.n_leaves
    values = random_game(U, seed=U + 10)
    d = tree_decomposition(table_game(values), tree)
    assert abs(d.residual()) < 1e-12
    assert d.total == pytest.approx(float(values[-1]))
    m = mobius_transform(values)
    for node, interaction in zip(tree.internal, d.interactions, strict=True):
        a, b = (bitmask(tree.members(c)) for c in tree.children_of(node))
        # I(node) = Σ m(T) over the T ⊆ A ∪ B that meet both A and B
        expected = sum(float(m[T]) for T in range(2**U) if T & ~(a | b) == 0 and T & a and T & b)
        assert float(interaction) == pytest.approx(expected, abs=1e-12)
    torch.testing.assert_close(d.leaf_values, values[2 ** torch.arange(U)])


def test_depth_profile_places_a_planted_interaction_at_its_height():
    tree = Tree.balanced(8)  # leaves 0-3 and 4-7 meet at the root (height 3); 0 and 1 at height 1
    values = torch.zeros(2**8, dtype=torch.float64)
    sets = all_coalitions(8)
    values += 1.0 * (sets[:, 0] & sets[:, 1])  # m({0, 1}) = 1 → height 1
    values += 3.0 * (sets[:, 2] & sets[:, 5])  # m({2, 5}) = 3 → the root, height 3
    values += 4.0 * sets[:, 7]  # a leaf value
    d = tree_decomposition(table_game(values), tree)
    torch.testing.assert_close(d.profile(), torch.tensor([0.5, 0.125, 0.0, 0.375]).double())
    assert d.interaction_share() == pytest.approx(0.5)
    assert d.attribution_height() == pytest.approx(0.125 + 3 * 0.375)


def test_profile_sums_to_one_and_additive_games_stay_at_the_leaves():
    values = random_game(6, seed=2, order=1)
    for tree in (Tree.balanced(6), Tree.random(6, torch.Generator().manual_seed(0))):
        d = tree_decomposition(table_game(values), tree)
        assert d.profile().sum() == pytest.approx(1.0)
        assert d.interaction_share() == pytest.approx(0.0, abs=1e-12)
    zero = tree_decomposition(lambda masks: torch.zeros(len(masks)), Tree.balanced(4))
    assert zero.profile().sum() == 0 and zero.attribution_height() == 0


def test_several_trees_share_evaluations():
    calls = []
    values = random_game(6, seed=5)

    def game(masks):
        calls.append(len(masks))
        return table_game(values)(masks)

    trees = {"a": Tree.balanced(6), "b": Tree.random(6, torch.Generator().manual_seed(1))}
    parts = tree_decompositions(game, trees)
    for name, tree in trees.items():
        single = tree_decomposition(table_game(values), tree)
        torch.testing.assert_close(parts[name].interactions, single.interactions)
    assert sum(calls) - 1 < 2 * trees["a"].n_nodes  # leaves and root evaluated once
    with pytest.raises(ValueError, match="share their players"):
        tree_decompositions(game, {"a": Tree.balanced(3), "b": Tree.balanced(4)})


# ---- the Winter value ---------------------------------------------------------------------
@pytest.mark.parametrize("tree", TREES[:4], ids=lambda t: f"U{t.n_leaves}-{t.to_nested()}")
def test_winter_value_against_orderings_and_dividend_sharing(tree):
    values = random_game(tree.n_leaves, seed=tree.n_leaves)
    phi = winter_value(table_game(values), tree)
    torch.testing.assert_close(phi, winter_by_orderings(values, tree), rtol=0, atol=1e-12)
    torch.testing.assert_close(phi, winter_by_dividends(values, tree), rtol=0, atol=1e-12)
    assert float(phi.sum()) == pytest.approx(float(values[-1]))  # efficiency


def test_winter_value_differs_from_shapley_when_the_tree_matters():
    """A single dividend on {0, 1, 2}: the tree ((0, 1), 2) gives player 2 half of it at the
    root and players 0 and 1 a quarter each, where the Shapley value gives each a third."""
    sets = all_coalitions(3)
    values = (sets[:, 0] & sets[:, 1] & sets[:, 2]).double() * 6.0  # m({0,1,2}) = 6
    phi = winter_value(table_game(values), Tree.from_nested(((0, 1), 2)))
    torch.testing.assert_close(phi, torch.tensor([1.5, 1.5, 3.0]).double())  # Shapley: 2, 2, 2


shapiq = pytest.importorskip("shapiq")


def test_against_shapiq_exact_computer():
    """shapiq computes Shapley values and Möbius coefficients of any game exactly, but has no
    nested coalition structures. Where the Winter value equals the Shapley value — games whose
    dividends sit on coalitions of ≤ 2 players, each split in halves at the two players' lowest
    common ancestor — it is the reference; its Möbius transform checks ours on the lattice."""
    U = 7
    values = random_game(U, seed=11, order=2)
    game = table_game(values)

    def shapiq_game(coalitions):
        return game(torch.as_tensor(coalitions, dtype=torch.bool)).numpy()

    computer = shapiq.ExactComputer(n_players=U, game=shapiq_game)
    shapley = computer(index="SV", order=1)
    reference = torch.tensor([shapley[(i,)] for i in range(U)], dtype=torch.float64)
    for tree in (Tree.balanced(U), Tree.random(U, torch.Generator().manual_seed(2))):
        torch.testing.assert_close(winter_value(game, tree), reference, rtol=0, atol=1e-10)

    full = random_game(5, seed=12)
    moebius = shapiq.ExactComputer(
        n_players=5, game=lambda c: table_game(full)(torch.as_tensor(c, dtype=torch.bool)).numpy()
    )(index="Moebius", order=5)
    ours = mobius_transform(full)
    for T in range(1, 2**5):
        key = tuple(i for i in range(5) if T >> i & 1)
        assert float(ours[T]) == pytest.approx(float(moebius[key]), abs=1e-10)


def test_winter_value_guards_its_cost():
    with pytest.raises(ValueError, match="max_coalitions"):
        winter_value(lambda m: m.sum(1).double(), Tree.balanced(64), max_coalitions=1000)


# ---- the update game ----------------------------------------------------------------------
def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def mse(outputs, targets):
    return (outputs - targets).pow(2).mean(-1)


def test_parameter_masks_follow_units():
    net = mlp(0)
    units = hidden_units(net, "0", "2")
    masks = parameter_masks(net, units)
    assert masks.shape == (5, sum(p.numel() for p in net.parameters()))
    assert (masks.sum(0) <= 1).all()  # disjoint
    assert masks.sum(0).sum() == 5 * (3 + 1 + 2)  # rows of W₁, biases, columns of W₂
    W1 = torch.zeros(5, 3, dtype=torch.bool)
    W1[2] = True
    assert torch.equal(masks[2, :15], W1.reshape(-1))
    with pytest.raises(ValueError, match="not among"):
        parameter_masks(net, [{"nope.weight": (0, 0)}])
    with pytest.raises(ValueError, match="axis"):
        parameter_masks(net, [{"0.weight": (2, 0)}])


def test_update_game_against_direct_evaluation():
    net, later = mlp(0), mlp(1)
    x = torch.randn(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randn(9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    units = hidden_units(net, "0", "2")
    before, after = net.state_dict(), later.state_dict()
    game = UpdateGame(net, mse, x, y, before, after, units, chunk_size=3)
    masks = parameter_masks(net, units)

    def direct(coalition) -> float:
        owned = masks[coalition].any(0)
        flat_b = torch.cat([before[n].reshape(-1) for n, _ in net.named_parameters()])
        flat_a = torch.cat([after[n].reshape(-1) for n, _ in net.named_parameters()])
        moved = torch.where(owned, flat_a, flat_b)
        probe = mlp(0)
        torch.nn.utils.vector_to_parameters(moved, probe.parameters())
        torch.nn.utils.vector_to_parameters(flat_b, net.parameters())
        with torch.no_grad():
            return float(mse(net(x), y).mean() - mse(probe(x), y).mean())

    coalitions = all_coalitions(5)
    values = game(coalitions)
    for row in (0, 1, 6, 19, 31):
        assert float(values[row]) == pytest.approx(direct(coalitions[row]), abs=1e-13)
    assert float(values[0]) == 0.0
    # the units own every parameter except the output bias, which stays at θ_t
    with torch.no_grad():
        base, full = mse(net(x), y).mean(), mse(later(x), y).mean()
    assert float(values[-1]) != pytest.approx(float(base - full))
    with pytest.raises(ValueError, match="coalitions must be"):
        game(torch.zeros(2, 4, dtype=torch.bool))


def test_interactions_are_the_cross_curvature_of_a_quadratic_loss():
    """For a linear model and squared loss, L is quadratic in θ, so
    I(A, B) = v(A ∪ B) − v(A) − v(B) = −Δθ_Aᵀ H Δθ_B exactly: the cooperation term the finite
    update keeps (a first-order value would make it zero)."""
    torch.manual_seed(0)
    net = nn.Linear(4, 1, bias=False).double()
    x = torch.randn(20, 4, dtype=torch.float64)
    y = torch.randn(20, 1, dtype=torch.float64)
    before = {"weight": net.weight.detach().clone()}
    after = {"weight": before["weight"] + torch.randn(1, 4, dtype=torch.float64)}
    units = [{"weight": (1, i)} for i in range(4)]
    game = UpdateGame(net, mse, x, y, before, after, units)
    d = tree_decomposition(game, Tree.from_nested(((0, 1), (2, 3))))
    H = 2 * x.T @ x / len(x)  # Hessian of mean (w·x − y)²
    delta = (after["weight"] - before["weight"]).reshape(-1)
    expected_root = -(delta[:2] @ H[:2, 2:] @ delta[2:])
    assert float(d.interactions[-1]) == pytest.approx(float(expected_root), rel=1e-10)
    # the gradient-free check of telescoping on a real update
    assert abs(d.residual()) < 1e-14


def test_update_game_validates_its_inputs():
    net = mlp(0)
    x, y = torch.randn(4, 3).double(), torch.randn(4, 2).double()
    state = net.state_dict()
    with pytest.raises(ValueError, match="chunk_size"):
        UpdateGame(net, mse, x, y, state, state, hidden_units(net, "0", "2"), chunk_size=0)
    with pytest.raises(ValueError, match="missing"):
        UpdateGame(net, mse, x, y, {}, state, hidden_units(net, "0", "2"))
    with pytest.raises(ValueError, match="at least one"):
        UpdateGame(net, mse, x, y, state, state, [])


def test_winter_value_of_an_update_is_efficient():
    net, later = mlp(0), mlp(2)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    y = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    units = hidden_units(net, "0", "2")
    game = UpdateGame(net, mse, x, y, net.state_dict(), later.state_dict(), units)
    tree = Tree.balanced(5)
    phi = winter_value(game, tree)
    values = lattice_values(game, 5)
    torch.testing.assert_close(phi, winter_by_orderings(values, tree), rtol=0, atol=1e-12)
    assert math.isclose(float(phi.sum()), float(values[-1]), abs_tol=1e-12)


def test_claim_players_of_the_modadd_networks():
    """Heads and MLP neurons of the transformer, hidden neurons of the MLP: disjoint units."""
    from hypotheses.coalitions import players
    from testbeds import modadd

    net = modadd.preset("lin2025_transformer").build_model()
    units = players(net)
    assert len(units) == net.n_heads + net.d_mlp
    masks = parameter_masks(net, units)
    assert (masks.sum(0) <= 1).all()
    sizes = masks.sum(1)
    assert sizes[: net.n_heads].tolist() == [4 * net.d_model * net.d_head] * net.n_heads
    bias = int(net.mlp_in.bias is not None)  # lin2025_transformer's MLP has no biases
    assert sizes[net.n_heads :].unique().tolist() == [2 * net.d_model + bias]
    mlp_units = players(modadd.preset("lin2025_mlp").build_model())
    assert len(mlp_units) == 512
    with pytest.raises(ValueError, match="must be a ModAddMLP or ModAddTransformer"):
        players(nn.Linear(2, 2))


def _modadd_update(width: int = 12, loss: str = "cross_entropy", seed: int = 0):
    """A small ModAddMLP update on one-hot inputs: (net, loss, x, y, before, after, units)."""
    from testbeds import modadd
    from testbeds.modadd.models import ModAddMLP
    from testbeds.modadd.train import per_example_loss

    config = modadd.preset("doshi2023_mlp").replace(width=width, p=7, loss=loss)
    net, later = ModAddMLP(7, width), ModAddMLP(7, width)
    net.reset_parameters(torch.Generator().manual_seed(seed))
    later.reset_parameters(torch.Generator().manual_seed(seed + 1))
    a, b = torch.arange(7).repeat_interleave(7), torch.arange(7).repeat(7)
    x, y = ModAddMLP.encode(a, b, 7), (a + b) % 7
    units = hidden_units(net, "layer1", "layer2")
    return net, per_example_loss(config), x, y, net.state_dict(), later.state_dict(), units


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_update_game_hidden_neuron_path_is_exact(loss):
    """The hidden-neuron shortcut reproduces the whole forward pass bit for bit."""
    net, loss_fn, x, y, before, after, units = _modadd_update(loss=loss)
    game = UpdateGame(net, loss_fn, x, y, before, after, units)
    assert game._shortcut is not None
    coalitions = torch.rand(50, 12, generator=torch.Generator().manual_seed(3)) < 0.4
    coalitions = torch.cat([coalitions, torch.eye(12, dtype=torch.bool)])
    values = game(coalitions)
    assert torch.equal(values, game._plain(coalitions))
    assert game(torch.zeros(0, 12, dtype=torch.bool)).shape == (0,)
    # grouped neurons (two per unit) and a neuron no unit owns still take the shortcut
    grouped = [
        {"layer1.weight": (0, [2 * j, 2 * j + 1]), "layer2.weight": (1, [2 * j, 2 * j + 1])}
        for j in range(5)
    ]
    game = UpdateGame(net, loss_fn, x, y, before, after, grouped)
    assert game._shortcut is not None
    assert torch.equal(game(coalitions[:, :5]), game._plain(coalitions[:, :5]))


def test_update_game_hidden_neuron_path_only_where_it_applies():
    net, loss_fn, x, y, before, after, units = _modadd_update()
    # a unit holding a neuron's row but another unit's column: whole forward passes
    crossed = [dict(u) for u in units]
    crossed[0]["layer2.weight"], crossed[1]["layer2.weight"] = (1, 1), (1, 0)
    assert UpdateGame(net, loss_fn, x, y, before, after, crossed)._shortcut is None
    # overlapping units, and a network without the form
    overlapping = [*units, {"layer1.weight": (0, 0)}]
    assert UpdateGame(net, loss_fn, x, y, before, after, overlapping)._shortcut is None
    other, later = mlp(0), mlp(1)
    xs = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ys = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    game = UpdateGame(
        other, mse, xs, ys, other.state_dict(), later.state_dict(), hidden_units(other, "0", "2")
    )
    assert game._shortcut is None


def _transformer_update(mlp_bias: bool, seed: int = 0):
    """A small ModAddTransformer update: (net, loss, tokens, y, before, after, heads + neurons)."""
    from hypotheses.coalitions import players
    from testbeds import modadd
    from testbeds.modadd.models import ModAddTransformer
    from testbeds.modadd.train import per_example_loss

    p = 7
    nets = [ModAddTransformer(p, 16, 4, 24, mlp_bias=mlp_bias) for _ in range(2)]
    for i, net in enumerate(nets):
        net.reset_parameters(torch.Generator().manual_seed(seed + i))
    a, b = torch.arange(p).repeat_interleave(p), torch.arange(p).repeat(p)
    tokens, y = torch.stack([a, b, torch.full_like(a, p)], 1), (a + b) % p
    loss = per_example_loss(modadd.preset("lin2025_transformer").replace(p=p))
    before, after = nets[0].state_dict(), nets[1].state_dict()
    return nets[0], loss, tokens, y, before, after, players(nets[0])


@pytest.mark.parametrize("mlp_bias", [True, False])
def test_update_game_head_path_matches_whole_forward_passes(mlp_bias):
    """With heads as players the transformer's attention is computed twice, not once per
    coalition; values equal whole forward passes up to rounding (embeddings and unembedding,
    owned by no unit, stay at θ_t in both)."""
    net, loss, tokens, y, before, after, units = _transformer_update(mlp_bias)
    game = UpdateGame(net, loss, tokens, y, before, after, units)
    assert type(game._shortcut).__name__ == "_HeadPath"
    U = len(units)
    coalitions = torch.rand(60, U, generator=torch.Generator().manual_seed(3)) < 0.4
    coalitions = torch.cat([coalitions, torch.eye(U, dtype=torch.bool)])
    fast, plain = game(coalitions), game._plain(coalitions)
    assert plain.abs().max() > 1e-3  # a real update
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-12 * float(plain.abs().max()))
    # a head split between two units: whole forward passes
    split = [dict(u) for u in units]
    split[0]["W_O.weight"], split[1]["W_O.weight"] = split[1]["W_O.weight"], split[0]["W_O.weight"]
    assert UpdateGame(net, loss, tokens, y, before, after, split)._shortcut is None
    # heads owned by no unit (MLP neurons only): whole forward passes
    neurons = units[net.n_heads :]
    assert UpdateGame(net, loss, tokens, y, before, after, neurons)._shortcut is None
