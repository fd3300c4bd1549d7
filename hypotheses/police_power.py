r"""Instruments of H8′ (policing circuits, claims v2 part 2): police-sector scores for any
labelling of a network's units from one pass over its gradients, a coupling threshold that
random labellings fail, and a hand-built police pair planted into a trained network to measure
the detector's power.

**Unit statistics** (:class:`UnitGradients`). The detector of :mod:`metrics.police` scores
sectors: unions of units. With per-example gradients G (N, P), centred G̃, and unit u owning
columns G_u, everything it needs from G adds up over units: ‖ḡ_S‖² = Σ_{u∈S} ‖ḡ_u‖² and
⟨K_A, K_B⟩_F = Σ_{u∈A, v∈B} ⟨K_u, K_v⟩_F with K_u = G̃_u G̃_uᵀ, so the (U, U) matrix of
⟨K_u, K_v⟩ (formed once, in data space) gives the share s and the coupling c of every labelling
at the cost of two small matrix products (:meth:`UnitGradients.scores`; equal to
:func:`metrics.police.police_scores`' values). The curvature coupling κ_AB still needs
Hessian-vector products; :class:`Curvature` computes a column κ_{·B} only for the sectors B it
is asked about, and caches it.

**Coupling threshold.** v1's c_PQ ≥ 0.5 is met by random sector labellings (0.91–0.96 on seeds
0–2). H8′ requires c_PQ ≥ c*_L, the 99th percentile over 100 random labellings (balanced trees
over a random permutation of the units, cut at the same level L) of the largest c between two
of their sectors (:func:`random_max_coupling`).

**Planted police pair** (:class:`PolicePair`, :func:`plant`). The linear police toy of
``tests/test_police.py`` without its third block: D weights in Q and D in P, f = a·x_Q + b·x_P,
loss λ·½(f − y)². A fraction π = 0.2 of the examples are *noise* examples (x_Q = ξ, x_P = −ξ,
target 0), the rest *signal* examples (x_Q = x_P = s, target w*·s); Q sits off its optimum
(a = w*/2 + δ) and b is the least-squares optimum given a, so ḡ_P = 0 exactly, c_PQ ≈ 0.6 and
κ_PQ = λ³(1 − 2π)(D + 2)(π²/(1 − π) − π)‖a − b‖² < 0. It is planted into a trained network as
a second loss term on the same examples (example n of the toy rides with training example n;
which examples are noise is drawn at random): the network's own gradients, shares and curvature
are unchanged, the toy's weights are units of their own, and λ is set so that a toy weight's
per-example gradient energy E_n g_n² equals that of the network's median unit. Each toy weight
is attached to a leaf of the network's tree — P's D weights to the D leaves of a random subtree
of D leaves, Q's to one in the other half of the tree — and sits in that leaf's sector at
every level. The detector runs on the combined network end to end; a *hit* at level L is a
police pair (A, B) found there with A holding a weight of P and B a weight of Q.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from metrics.coalitions import parameter_masks
from metrics.entk import UnitSpec
from metrics.hierarchy import Tree
from metrics.noise import Loss, per_example_gradients
from metrics.police import loss_hvp

NOISE_FRACTION = 0.2
# Couplings that equal the threshold up to rounding meet it (c ≥ c*_L is inclusive). At a level
# whose random labellings all cut the same sectors (one unit each), c*_L is itself a pair's
# coupling, summed in another order; without the tolerance its last bits, which follow the
# thread count, decided whether the planted pair tied or missed.
TIE_TOLERANCE = 1e-12  # relative to |coupling_min|; the smallest real margin seen is 1e-3
OFFSET = 0.5  # Q's distance from its optimum per weight, δ = ±OFFSET


def packed(K: Tensor) -> Tensor:
    """Upper triangle of symmetric (…, m, m) matrices, the off-diagonal entries × √2 in K's
    dtype, so that packed(K)·packed(L) = ⟨K, L⟩_F."""
    m = K.shape[-1]
    rows, cols = torch.triu_indices(m, m)
    root2 = torch.tensor(2.0, dtype=K.dtype).sqrt()
    weight = torch.where(rows == cols, torch.ones((), dtype=K.dtype), root2)
    return K[..., rows, cols] * weight


@dataclass(frozen=True)
class UnitGradients:
    """Per-unit gradient statistics (module docstring), float64.

    ``mean_sq`` (U,) ‖ḡ_u‖²; ``total`` ‖ḡ‖² over all parameters (units or not); ``inner``
    (U, U) ⟨K_u, K_v⟩_F of the centred per-unit Grams; ``energy`` (U,) E_n ‖g_{n,u}‖²;
    ``centred`` (N, P) and ``owner`` (P,) (the unit of each column, U for none) are kept to
    add planted units (:meth:`with_units`)."""

    mean_sq: Tensor
    total: float
    inner: Tensor
    energy: Tensor
    centred: Tensor = field(repr=False)
    owner: Tensor = field(repr=False)

    @property
    def n_units(self) -> int:
        return len(self.mean_sq)

    @classmethod
    def from_gradients(
        cls, gradients: Tensor, masks: Tensor, *, max_block_bytes: int = 2**30
    ) -> UnitGradients:
        """From per-example gradients G (N, P) and disjoint unit masks (U, P)."""
        if gradients.dim() != 2 or masks.dim() != 2 or masks.shape[1] != gradients.shape[1]:
            raise ValueError(
                f"gradients (N, P) and masks (U, P) must share P; got "
                f"{tuple(gradients.shape)} and {tuple(masks.shape)}"
            )
        if (masks.sum(0) > 1).any():
            raise ValueError("units must be disjoint: a parameter entry lies in several")
        G = gradients.detach().double()
        N = len(G)
        mean = G.mean(0)
        centred = G - mean
        U = len(masks)
        owner = torch.where(masks.any(0), masks.to(torch.int64).argmax(0), U)
        mean_sq = torch.zeros(U + 1, dtype=torch.float64).index_add_(0, owner, mean.square())[:U]
        energy = torch.zeros(U + 1, dtype=torch.float64)
        energy.index_add_(0, owner, G.square().mean(0))
        per_block = max(1, max_block_bytes // (N * (N + 1) // 2 * 8))
        blocks = []  # one block of units at a time: (units, N(N+1)/2) each
        for start in range(0, U, per_block):
            block = range(start, min(U, start + per_block))
            blocks.append(torch.stack([packed(centred[:, masks[u]] @ centred[:, masks[u]].T)
                                       for u in block]))  # fmt: skip
        inner = torch.zeros(U, U, dtype=torch.float64)
        offsets = [0]
        for block in blocks:
            offsets.append(offsets[-1] + len(block))
        for i, a in enumerate(blocks):
            for j in range(i, len(blocks)):
                g = a @ blocks[j].T
                inner[offsets[i] : offsets[i + 1], offsets[j] : offsets[j + 1]] = g
                inner[offsets[j] : offsets[j + 1], offsets[i] : offsets[i + 1]] = g.T
        return cls(mean_sq, float(mean.square().sum()), inner, energy[:U], centred, owner)

    def with_units(self, gradients: Tensor) -> UnitGradients:
        """These units and T more, one parameter each, with per-example gradients (N, T) of a
        separate loss term on the same examples (their columns are appended to the layout)."""
        G = gradients.detach().double()
        if G.dim() != 2 or len(G) != len(self.centred):
            raise ValueError(
                f"gradients must have shape (N={len(self.centred)}, T), got {tuple(G.shape)}"
            )
        U, T = self.n_units, G.shape[1]
        mean = G.mean(0)
        centred = G - mean
        projections = self.centred.T @ centred  # (P, T): G̃_eᵀ g̃_t per column e
        cross = torch.zeros(U + 1, T, dtype=torch.float64)
        cross.index_add_(0, self.owner, projections.square())
        inner = torch.zeros(U + T, U + T, dtype=torch.float64)
        inner[:U, :U] = self.inner
        inner[:U, U:] = cross[:U]
        inner[U:, :U] = cross[:U].T
        inner[U:, U:] = (centred.T @ centred).square()
        owner = torch.where(self.owner == U, U + T, self.owner)
        return UnitGradients(
            torch.cat([self.mean_sq, mean.square()]),
            self.total + float(mean.square().sum()),
            inner,
            torch.cat([self.energy, G.square().mean(0)]),
            torch.cat([self.centred, centred], 1),
            torch.cat([owner, torch.arange(U, U + T)]),
        )

    def scores(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Share s (S,) and coupling c (S, S) of the sectors ``labels`` (U,) ∈ 0..S−1 (every
        label used), as :func:`metrics.police.police_scores` defines them."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (self.n_units,):
            raise ValueError(f"labels must have shape ({self.n_units},), got {tuple(labels.shape)}")
        S = int(labels.max()) + 1
        if torch.bincount(labels, minlength=S).min() == 0:
            raise ValueError("every sector label 0..S−1 must be used")
        blocks = torch.zeros(S, dtype=torch.float64).index_add_(0, labels, self.mean_sq)
        share = blocks / self.total if self.total > 0 else torch.zeros_like(blocks)
        by_column = torch.zeros(self.n_units, S, dtype=torch.float64)
        by_column.index_add_(1, labels, self.inner)
        inner = torch.zeros(S, S, dtype=torch.float64).index_add_(0, labels, by_column)
        return share, coupling_of(inner)


def coupling_of(inner: Tensor) -> Tensor:
    """c (S, S) from ⟨K_A, K_B⟩ (S, S): √ of the cosine, 0 for an empty Gram, diagonal 1."""
    inner = inner.clamp(min=0)
    norms = inner.diagonal().sqrt()
    scale = norms[:, None] * norms[None, :]
    cosine = torch.where(scale > 0, inner / scale.where(scale > 0, 1), 0)
    coupling = cosine.clamp(0, 1).sqrt()
    coupling.fill_diagonal_(1)
    return coupling


def police_statistics(
    model: nn.Module,
    loss: Loss,
    inputs: Tensor,
    targets: Tensor,
    units: Sequence[UnitSpec],
    examples: Tensor,
) -> tuple[UnitGradients, Curvature]:
    """:class:`UnitGradients` and :class:`Curvature` (κ over ``examples``) of ``model``'s
    training loss on ``inputs``, ``targets``, from one pass of per-example gradients."""
    gradients, _ = per_example_gradients(model, loss, inputs, targets)
    stats = UnitGradients.from_gradients(gradients, parameter_masks(model, units))
    curvature = Curvature(model, loss, inputs, targets, units, gradients[examples])
    return stats, curvature


# ---- labellings ----------------------------------------------------------------------------


def level_labels(tree: Tree, level: int) -> Tensor:
    """(U,) long: the sector of every leaf at ``level`` of ``tree``."""
    return torch.as_tensor(tree.labels(level), dtype=torch.long)


@functools.lru_cache(maxsize=64)
def _balanced_labels(n_units: int, level: int) -> Tensor:
    return level_labels(Tree.balanced(n_units), level)


def random_level_labels(n_units: int, level: int, generator: torch.Generator) -> Tensor:
    """The sectors at ``level`` of ``Tree.random(n_units, generator)``, without building it."""
    base = _balanced_labels(n_units, level)
    perm = torch.randperm(n_units, generator=generator)
    labels = torch.empty(n_units, dtype=torch.long)
    labels[perm] = base
    return labels  # the same sectors as Tree.random's, numbered in another order


def max_off_diagonal(coupling: Tensor) -> float:
    off = coupling.clone()
    off.fill_diagonal_(-1.0)
    return float(off.max())


def random_max_coupling(
    stats: UnitGradients,
    level: int,
    labellings: int,
    generator: torch.Generator,
    attach: Tensor | None = None,
) -> Tensor:
    """(labellings,): the largest c between two sectors of each random labelling at
    ``level``. With ``attach`` (T,), the last T units follow the leaves they are attached to."""
    leaves = stats.n_units - (0 if attach is None else len(attach))
    out = []
    for _ in range(labellings):
        labels = random_level_labels(leaves, level, generator)
        if attach is not None:
            labels = torch.cat([labels, labels[attach]])
        out.append(max_off_diagonal(stats.scores(labels)[1]))
    return torch.tensor(out, dtype=torch.float64)


# ---- curvature -----------------------------------------------------------------------------


class Curvature:
    """κ_AB = E_n[g_{n,A}ᵀ H_AB g_{n,B}] of a network's loss, the mean over the examples whose
    per-example gradients are ``chosen`` (H: the Hessian of the loss over all ``inputs``), for
    sectors given as sets of units; one batch of Hessian-vector products per distinct B, cached.
    Units beyond the network's (planted ones) add ``planted`` (T, T): κ between single planted
    units, whose Hessian has no block with the network's."""

    def __init__(
        self,
        model: nn.Module,
        loss: Loss,
        inputs: Tensor,
        targets: Tensor,
        units: Sequence[UnitSpec],
        chosen: Tensor,
        *,
        chunk_size: int = 64,
    ):
        self.chosen = chosen.detach().double()  # (n, P): g_n of the examples κ averages over
        self.masks = parameter_masks(model, units)
        self.hvp = loss_hvp(model, loss, inputs, targets, chunk_size=chunk_size)
        self.planted: Tensor | None = None
        self._columns: dict[frozenset[int], Tensor] = {}

    @property
    def n_units(self) -> int:
        return len(self.masks) + (0 if self.planted is None else len(self.planted))

    def column(self, sector: frozenset[int]) -> Tensor:
        """(P,): E_n[g_n ⊙ H (g_n restricted to the network units of ``sector``)]."""
        own = frozenset(u for u in sector if u < len(self.masks))
        if own not in self._columns:
            if not own:
                self._columns[own] = torch.zeros(self.chosen.shape[1], dtype=torch.float64)
            else:
                mask = self.masks[sorted(own)].any(0).double()
                V = self.chosen * mask
                self._columns[own] = (self.hvp(V).double() * self.chosen).mean(0)
        return self._columns[own]

    def kappa(self, a: frozenset[int], b: frozenset[int]) -> float:
        U = len(self.masks)
        rows = [u for u in a if u < U]
        value = float(self.column(b)[self.masks[rows].any(0)].sum()) if rows else 0.0
        if self.planted is not None:
            pa = [u - U for u in a if u >= U]
            pb = [u - U for u in b if u >= U]
            if pa and pb:
                value += float(self.planted[pa][:, pb].sum())
        return value


def police_pairs(
    stats: UnitGradients,
    labels: Tensor,
    curvature: Curvature,
    *,
    share_max: float,
    coupling_min: float,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(candidates, police) at one labelling: sector pairs (A, B), A ≠ B, with s_A ≤
    ``share_max`` and c_AB ≥ ``coupling_min`` (up to ``TIE_TOLERANCE``); the police pairs are
    the candidates with κ_AB < 0."""
    share, coupling = stats.scores(labels)
    S = len(share)
    floor = coupling_min - TIE_TOLERANCE * abs(coupling_min)
    flags = (share <= share_max)[:, None] & (coupling >= floor)
    flags &= ~torch.eye(S, dtype=torch.bool)
    candidates = [(int(a), int(b)) for a, b in flags.nonzero().tolist()]
    members = [frozenset((labels == s).nonzero()[:, 0].tolist()) for s in range(S)]
    police = [(a, b) for a, b in candidates if curvature.kappa(members[a], members[b]) < 0]
    return candidates, police


# ---- the planted police pair ---------------------------------------------------------------


@dataclass(frozen=True)
class PolicePair:
    """The linear police toy (module docstring) on N examples: per-example gradients (N, 2D)
    of λ·½(f − y)² (columns Q then P), its Hessian (2D, 2D) and which examples are noise."""

    gradients: Tensor
    hessian: Tensor
    noise: Tensor

    @property
    def width(self) -> int:
        return self.gradients.shape[1] // 2

    def kappa(self, examples: Tensor) -> Tensor:
        """(2D, 2D): E_n[g_{n,t} H_{tt'} g_{n,t'}] over ``examples``, between single weights."""
        chosen = self.gradients[examples]
        return (chosen.T @ chosen) * self.hessian / len(examples)


def police_pair(width: int, n_examples: int, generator: torch.Generator) -> PolicePair:
    """The toy with D = ``width`` weights per block on ``n_examples`` examples, λ = 1."""
    n_noise = round(NOISE_FRACTION * n_examples)
    noise = torch.zeros(n_examples, dtype=torch.bool)
    noise[torch.randperm(n_examples, generator=generator)[:n_noise]] = True
    w = torch.randn(width, generator=generator, dtype=torch.float64)
    features = torch.randn(n_examples, width, generator=generator, dtype=torch.float64)
    x_q = features
    x_p = torch.where(noise[:, None], -features, features)
    y = torch.where(noise, 0.0, features @ w)
    signs = torch.randint(0, 2, (width,), generator=generator).double() * 2 - 1
    a = w / 2 + OFFSET * signs
    b = torch.linalg.lstsq(x_p, (y - x_q @ a)[:, None]).solution[:, 0]
    x = torch.cat([x_q, x_p], 1)
    residual = x @ torch.cat([a, b]) - y
    return PolicePair(residual[:, None] * x, x.T @ x / n_examples, noise)


def scaled(pair: PolicePair, scale: float) -> PolicePair:
    """The same toy with loss λ·½(f − y)², λ = ``scale`` (gradients and Hessian × λ)."""
    return PolicePair(pair.gradients * scale, pair.hessian * scale, pair.noise)


@dataclass(frozen=True)
class Planting:
    """One planted pair: the combined unit statistics, the curvature of the combined network,
    and the leaves Q's and P's weights are attached to (their unit indices are U.., U+D..)."""

    stats: UnitGradients
    pair: PolicePair
    attach: Tensor  # (2D,) leaves of Q's then P's weights

    @property
    def n_leaves(self) -> int:
        return self.stats.n_units - len(self.attach)

    def labels(self, tree: Tree, level: int) -> Tensor:
        labels = level_labels(tree, level)
        return torch.cat([labels, labels[self.attach]])

    def planted_sectors(self, labels: Tensor) -> tuple[set[int], set[int]]:
        """Sectors holding a weight of P, and of Q."""
        U, D = self.n_leaves, self.pair.width
        return set(labels[U + D :].tolist()), set(labels[U : U + D].tolist())


def subtree_leaves(tree: Tree, size: int, half: int, generator: torch.Generator) -> list[int]:
    """The leaves of a random node with ``size`` leaves inside the root's child ``half``."""
    root_child = tree.children_of(tree.root)[half]
    inside = set(tree.members(root_child))
    nodes = [
        n
        for n in range(tree.n_nodes)
        if len(tree.members(n)) == size and set(tree.members(n)) <= inside
    ]
    if not nodes:
        raise ValueError(f"no subtree of {size} leaves under the root's child {half}")
    return tree.members(nodes[int(torch.randint(len(nodes), (1,), generator=generator))])


def plant(stats: UnitGradients, tree: Tree, width: int, generator: torch.Generator) -> Planting:
    """Plant a police pair of ``width`` weights per block (module docstring)."""
    raw = police_pair(width, len(stats.centred), generator)
    energy = float(raw.gradients.square().mean())  # per weight and example
    pair = scaled(raw, (float(stats.energy.median()) / energy) ** 0.5)
    half = int(torch.randint(2, (1,), generator=generator))
    p_leaves = subtree_leaves(tree, width, half, generator)
    q_leaves = subtree_leaves(tree, width, 1 - half, generator)
    attach = torch.tensor(q_leaves + p_leaves, dtype=torch.long)
    return Planting(stats.with_units(pair.gradients), pair, attach)
