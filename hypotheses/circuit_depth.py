r"""Instruments of H7′ (circuit depth, claims v2 part 2): a tree-sensitive depth statistic,
the third-order Möbius mass of an update game, and a hand-built hierarchical network whose
composition is known.

**Resolution depth.** Along a binary tree over the players, an update's coalition game
telescopes into the leaves' values and the interactions I(node) = v(A ∪ B) − v(A) − v(B)
(:mod:`metrics.coalitions`). The cooperation between two players shows up at the lowest node
that holds both. The resolution depth of a tree is how far below the root, on average, it
realises that cooperation:

.. math::  R = H - \frac{\sum_{n\ \text{internal}} |I(n)|\, h(n)}{\sum_{n\ \text{internal}} |I(n)|},

with H the root's height and h(n) the height of node n (leaves have height 0 and carry no
interaction; R ∈ [0, H − 1]). A tree that groups units which only work together realises
their cooperation in small subtrees (large R); a tree that splits them up meets them only near
the root (R ≈ 1 for a balanced random tree over many players, where half of all pairs meet at
the root). Unlike v1's attribution height — which weights the leaves too and is the same for
every balanced tree on a pairwise game — R depends on which units the tree puts together.
It is 0 when there is no interaction at all (an additive game).

**Third-order Möbius mass.** For a triple T = {i, j, k} of players the Harsanyi dividend
m(T) = Σ_{S ⊆ T} (−1)^{|T|−|S|} v(S) is the part of v(T) that no pair explains. On
``lin2025_mlp`` (logits a sum over neurons, MSE) v is a quadratic in the coalition's indicator,
so every m(T) is 0 up to rounding; cross-entropy and attention make it non-zero.
:func:`third_order_mass` reports mean |m(T)| over random triples and its ratio to the mean
|m(pair)| over the pairs inside them.

**Hand-built hierarchy** (:func:`hand_built`). ``CIRCUITS`` copies, each on its own four
Gaussian inputs, of y = h(g₁(x₁, x₂), g₂(x₃, x₄)) with g₁ = x₁x₂, g₂ = x₃x₄ and
h(u, v) = u + v + uv; the output is their sum. Each product is written by hand as one
difference-of-squares pair of quadratic neurons, uv = [(a u + b v)² − (a u − b v)²] / (4ab),
with its own (a, b) ∈ [0.5, 1.5]²; h is fixed arithmetic. Players are the hidden neurons (input
row and output column each). The composition is known at every level: the two neurons of a
pair only work together (alone, each writes the squares a²u², b²v² that the other cancels),
g₁ and g₂ of one circuit cooperate through h's uv term, and circuits on independent inputs
barely interact. The true tree is the balanced tree over the neurons in order (pairs, then
circuits, then groups of circuits). The update Δθ writes every circuit in: θ_t has every
output column 0, θ_{t+1} = θ*; the loss is ½(f(x) − y)² on 512 fixed inputs. On this update
the true tree's resolution depth is 1.68, 1.86 and 1.93 × the mean of 20 random trees for
hand-built seeds 0, 1, 2, and a shuffled true tree 0.96, 0.86, 0.81
(``tests/test_circuit_depth.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hypotheses import tier
from metrics.coalitions import Game, TreeDecomposition, UpdateGame, tree_decompositions
from metrics.hierarchy import Tree

# ---- statistics ------------------------------------------------------------------------------


def resolution_depth(decomposition: TreeDecomposition) -> float:
    """R of one tree decomposition (module docstring); 0 if every interaction is 0."""
    tree = decomposition.tree
    weights = decomposition.interactions.abs()
    total = float(weights.sum())
    if total == 0:
        return 0.0
    heights = torch.as_tensor([tree.height(n) for n in tree.internal], dtype=torch.float64)
    return tree.height(tree.root) - float((weights * heights).sum()) / total


def shuffled(tree: Tree, generator: torch.Generator) -> Tree:
    """The same topology with its leaves relabelled by a random permutation."""
    perm = torch.randperm(tree.n_leaves, generator=generator).tolist()

    def relabel(node):
        return perm[node] if isinstance(node, int) else (relabel(node[0]), relabel(node[1]))

    return Tree.from_nested(relabel(tree.to_nested()), tree.n_leaves)


@dataclass(frozen=True)
class ThirdOrder:
    """Mean |Möbius dividend| of random triples and of the pairs inside them."""

    triples: int
    mean_abs_third: float
    mean_abs_pair: float

    @property
    def ratio(self) -> float:
        """mean |m(triple)| / mean |m(pair)| (0 if there is no pair mass)."""
        return self.mean_abs_third / self.mean_abs_pair if self.mean_abs_pair > 0 else 0.0


def random_triples(n_players: int, n_triples: int, generator: torch.Generator) -> Tensor:
    """(n_triples, 3) long: distinct players per row, drawn independently per row."""
    if n_players < 3:
        raise ValueError(f"a triple needs at least 3 players, got n_players={n_players}")
    keys = torch.rand(n_triples, n_players, generator=generator)
    return keys.argsort(dim=1)[:, :3]


def third_order_mass(game: Game, n_players: int, triples: Tensor) -> ThirdOrder:
    """Harsanyi dividends of ``triples`` (M, 3) and of their three pairs (module docstring),
    from the 8 coalitions of each triple (each distinct coalition evaluated once)."""
    M = len(triples)
    subsets = torch.tensor(
        [[(s >> b) & 1 for b in range(3)] for s in range(8)], dtype=torch.bool
    )  # (8, 3): subset s of the triple, bit b ↔ its b-th player
    coalitions = torch.zeros(M, 8, n_players, dtype=torch.bool)
    rows = torch.arange(M)[:, None]
    for s in range(8):
        chosen = triples[:, subsets[s]]  # (M, |s|)
        if chosen.shape[1]:
            coalitions[rows, s, chosen] = True
    flat = coalitions.reshape(M * 8, n_players)
    unique, inverse = torch.unique(flat, dim=0, return_inverse=True)
    values = torch.as_tensor(game(unique), dtype=torch.float64)[inverse].reshape(M, 8)
    values = values - values[:, :1]  # v(∅) = 0
    size = subsets.sum(1)
    sign = (-1.0) ** (3 - size).double()
    third = (values * sign).sum(1)
    pairs = []
    for pair in (0b011, 0b101, 0b110):
        members = [s for s in range(8) if s & pair == s]
        pair_sign = torch.tensor([(-1.0) ** (2 - int(size[s])) for s in members])
        pairs.append((values[:, members] * pair_sign).sum(1))
    return ThirdOrder(M, float(third.abs().mean()), float(torch.stack(pairs).abs().mean()))


def depth_ratios(
    game: Game, trees: dict[str, Tree], random_trees: Sequence[Tree]
) -> dict[str, float]:
    """R of each named tree over the mean R of ``random_trees`` (the control), from one pass
    over the game; also ``random_mean`` (that mean) and ``random_max`` (the largest random
    tree's R over the mean: the spread of the control). NaN ratios when the random trees see
    no interaction at all."""
    named = dict(trees)
    controls = {f"random/{i}": tree for i, tree in enumerate(random_trees)}
    clash = sorted(set(named) & set(controls))
    if clash or not controls:
        raise ValueError(f"need ≥ 1 random tree and names other than {clash}")
    parts = tree_decompositions(game, {**named, **controls})
    depth = {name: resolution_depth(part) for name, part in parts.items()}
    random = [depth[name] for name in controls]
    mean = sum(random) / len(random)
    scale = (lambda r: r / mean) if mean > 0 else (lambda r: math.nan)
    out = {name: scale(depth[name]) for name in named}
    out.update(random_mean=mean, random_max=scale(max(random)))
    return out


# ---- the hand-built hierarchy ----------------------------------------------------------------

CIRCUITS = 8  # copies of h(g₁, g₂), each on its own 4 inputs: 32 players, 32 inputs
EXAMPLES = 512
HAND_BUILT_SEEDS = tier.seeds(0, 1, 2)


class Circuits(nn.Module):
    r"""x (N, 4C) ↦ f(x) (N, 1) = Σ_c h(g_{c,1}, g_{c,2}), h(u, v) = u + v + uv.

    ``layer1`` (4C → 4C, quadratic) holds two neurons per sub-circuit; ``mix`` (4C → 2C) reads
    sub-circuit k's value g_k from its two neurons; h is fixed arithmetic (no parameters)."""

    def __init__(self, circuits: int = CIRCUITS):
        super().__init__()
        self.layer1 = nn.Linear(4 * circuits, 4 * circuits, bias=False)
        self.mix = nn.Linear(4 * circuits, 2 * circuits, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        g = self.mix(self.layer1(x) ** 2)
        u, v = g[:, 0::2], g[:, 1::2]
        return (u + v + u * v).sum(1, keepdim=True)

    def units(self) -> list[dict]:
        """Players: the hidden neurons, each with its input row and output column."""
        return [
            {"layer1.weight": (0, j), "mix.weight": (1, j)} for j in range(self.layer1.out_features)
        ]


@dataclass(frozen=True)
class HandBuilt:
    """The hand-built circuits and their update (module docstring)."""

    model: Circuits
    inputs: Tensor
    targets: Tensor
    before: dict[str, Tensor]
    after: dict[str, Tensor]
    units: list[dict]
    tree: Tree

    @staticmethod
    def loss(outputs: Tensor, targets: Tensor) -> Tensor:
        return 0.5 * (outputs[:, 0] - targets) ** 2

    def game(self) -> UpdateGame:
        return UpdateGame(
            self.model, self.loss, self.inputs, self.targets, self.before, self.after, self.units
        )


def hand_built(seed: int = 0, circuits: int = CIRCUITS) -> HandBuilt:
    """The circuits at θ* (``after``), the start θ_t (``before``: every output column 0),
    Gaussian inputs, targets Σ_c h(x₁x₂, x₃x₄) of each circuit's inputs, the players and the
    true tree; float64, deterministic in ``seed`` (which draws (a, b) and the inputs)."""
    generator = torch.Generator().manual_seed(seed)
    model = Circuits(circuits).double()
    n = 4 * circuits
    ab = 0.5 + torch.rand(2 * circuits, 2, generator=generator, dtype=torch.float64)
    layer1 = torch.zeros(n, n, dtype=torch.float64)
    mix = torch.zeros(2 * circuits, n, dtype=torch.float64)
    for k, (a, b) in enumerate(ab):  # sub-circuit k: inputs 2k, 2k+1 and neurons 2k, 2k+1
        plus, minus = 2 * k, 2 * k + 1
        layer1[plus, plus], layer1[plus, minus] = a, b
        layer1[minus, plus], layer1[minus, minus] = a, -b
        mix[k, plus], mix[k, minus] = 1 / (4 * a * b), -1 / (4 * a * b)
    after = {"layer1.weight": layer1, "mix.weight": mix}
    before = {"layer1.weight": layer1.clone(), "mix.weight": torch.zeros_like(mix)}
    model.load_state_dict(after)
    inputs = torch.randn(EXAMPLES, n, generator=generator, dtype=torch.float64)
    g = inputs[:, 0::2] * inputs[:, 1::2]
    u, v = g[:, 0::2], g[:, 1::2]
    targets = (u + v + u * v).sum(1)
    with torch.no_grad():
        error = (model(inputs)[:, 0] - targets).abs().max().item()
    if error > 1e-9:
        raise AssertionError(f"θ* must compute the targets exactly; max error {error:.3g}")
    return HandBuilt(model, inputs, targets, before, after, model.units(), Tree.balanced(n))
