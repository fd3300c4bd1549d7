r"""Attribution of a training update over a hierarchy of parameter coalitions.

Players are parameter *units* (a hidden neuron with its incoming and outgoing weights, an
attention head with its W_Q, W_K, W_V rows and W_O columns …), given as ``UnitSpec`` maps
``{parameter name: (axis, index)}`` as in :func:`metrics.entk.unit_kernels`. A coalition S
of units has the value of the update restricted to it,

.. math::  v(S) = L(\theta_t) - L(\theta_t + \Delta\theta_S), \qquad
           \Delta\theta = \theta_{t+1} - \theta_t ,

the training-loss decrease produced by applying the update between two consecutive
checkpoints only to the parameters of S (:class:`UpdateGame`; v(∅) = 0). With a first-order
value, v(S) = −∇L·Δθ_S, the game would be additive and every interaction would vanish; the
finite update keeps the cross-curvature terms (−½ Δθ_Aᵀ H_AB Δθ_B − … at second order) that
make cooperation between coalitions measurable.

Along a binary tree over the players (:class:`metrics.hierarchy.Tree`) every internal node
with children A and B carries the gain from cooperation at that level,

.. math::  I(\text{node}) = v(A \cup B) - v(A) - v(B),

and the terms telescope exactly: v(root) = Σ_leaves v(leaf) + Σ_internal I(node)
(:func:`tree_decomposition`). The *depth profile* is the share of Σ|terms| carried by the
terms at each tree height (height 0 = the leaves' own values) and its centre of mass is the
*attribution height* (:class:`TreeDecomposition`).

:func:`winter_value` gives each leaf its Winter value (Winter 1989, the nested Owen value) for
the tree, computed exactly: the average marginal contribution of the leaf over the orderings
of the players that keep every subtree contiguous. :func:`mobius_transform` is the brute-force
reference on the full lattice of ≤ 20 players.

Example — for an additive game every interaction is zero and the leaves carry everything::

    >>> import torch
    >>> from metrics.hierarchy import Tree
    >>> weights = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    >>> game = lambda masks: masks.double() @ weights
    >>> tree = Tree.balanced(4)
    >>> d = tree_decomposition(game, tree)
    >>> d.interactions.abs().max().item(), d.profile().tolist()
    (0.0, [1.0, 0.0, 0.0])
    >>> winter_value(game, tree).tolist()
    [1.0, 2.0, 3.0, 4.0]
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from metrics.entk import UnitSpec
from metrics.hierarchy import Tree

Game = Callable[[Tensor], Tensor]  # coalitions (M, U) bool -> values (M,) float64
Loss = Callable[[Tensor, Tensor], Tensor]  # (outputs (n, ...), targets (n, ...)) -> (n,)

MAX_LATTICE_PLAYERS = 20
DEFAULT_MAX_COALITIONS = 2**20


def parameter_masks(
    model: nn.Module, units: Sequence[UnitSpec], params: Sequence[str] | None = None
) -> Tensor:
    """Bool (U, P): which flattened parameter entries each unit owns.

    Columns follow ``params`` (default: all trainable parameters in ``named_parameters``
    order), each tensor flattened — the layout of :func:`metrics.noise.per_example_gradients`.
    A unit maps parameter names to ``(axis, index)``: the entries whose ``axis`` coordinate is
    ``index`` (an int or a list of ints).
    """
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    names = list(named) if params is None else list(params)
    unknown = sorted({n for unit in units for n in unit} - set(names))
    if unknown:
        raise ValueError(f"units name parameters {unknown} not among {names}")
    offsets, start = {}, 0
    for name in names:
        offsets[name] = start
        start += named[name].numel()
    masks = torch.zeros(len(units), start, dtype=torch.bool)
    for u, unit in enumerate(units):
        for name, (axis, index) in unit.items():
            shape = named[name].shape
            if not 0 <= axis < len(shape):
                raise ValueError(
                    f"unit axis for {name!r} must be in 0..{len(shape) - 1}, got {axis}"
                )
            block = torch.zeros(shape, dtype=torch.bool)
            block.index_fill_(axis, torch.as_tensor(index).reshape(-1), True)
            masks[u, offsets[name] : offsets[name] + block.numel()] |= block.reshape(-1)
    return masks


class UpdateGame:
    r"""The coalition game of one training update: v(S) = L(θ_t) − L(θ_t + Δθ_S).

    Args:
        model: the network (its parameters are not modified; only the names are used).
        loss: per-example training loss ``loss(outputs (n, ...), targets (n, ...)) -> (n,)``;
            L is its mean over ``inputs``.
        inputs, targets: the training set (N, ...).
        before, after: parameter dicts θ_t and θ_{t+1} (e.g. two checkpoints' state dicts).
        units: the players (see the module docstring). Parameters that no unit owns stay at
            θ_t in every coalition, so v(all units) is the loss decrease of the units' update.
        dtype: the precision of the forward passes (float64 by default: late updates change the
            loss by 1e-6 and interactions are differences of such values).
        chunk_size: coalitions evaluated together (vmapped) per forward pass.

    Calling the game on bool coalitions (M, U) returns their values (M,), float64.

    For a network whose players are the hidden neurons of ``forward(x) = head(hidden(x))`` —
    modules ``layer1`` and ``layer2`` without biases, a ``hidden`` method, every neuron with its
    ``layer1`` row and ``layer2`` column owned by one unit (or by none) — the hidden activations
    of θ_t and θ_{t+1} are computed once and each coalition's forward pass starts from them
    (:class:`_HiddenNeuronPath`). It is used only where it reproduces the plain forward pass
    bit for bit on probe coalitions. For a one-layer transformer whose attention heads are
    players (``heads``, ``head_outputs`` and ``_attend`` methods), each head's write into the
    residual stream at θ_t and θ_{t+1} is computed once and each coalition sums its heads'
    writes (:class:`_HeadPath`; equal to the plain pass up to rounding, checked on probe
    coalitions). Elsewhere every coalition runs the whole network.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: Loss,
        inputs: Tensor,
        targets: Tensor,
        before: dict[str, Tensor],
        after: dict[str, Tensor],
        units: Sequence[UnitSpec],
        *,
        dtype: torch.dtype = torch.float64,
        chunk_size: int = 32,
    ):
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive int, got chunk_size={chunk_size!r}")
        if not units:
            raise ValueError("units must name at least one player")
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        missing = [n for n in names if n not in before or n not in after]
        if missing:
            raise ValueError(f"before and after must hold every parameter; missing {missing}")
        self.model, self.loss, self.dtype, self.chunk_size = model, loss, dtype, chunk_size
        self.inputs = inputs.to(dtype) if inputs.is_floating_point() else inputs
        self.targets = targets.to(dtype) if targets.is_floating_point() else targets
        self.names = names
        self.shapes = [before[n].shape for n in names]
        self.theta = torch.cat([before[n].detach().to(dtype).reshape(-1) for n in names])
        after_flat = torch.cat([after[n].detach().to(dtype).reshape(-1) for n in names])
        self.delta = after_flat - self.theta
        masks = parameter_masks(model, units, names)  # (U, P)
        self.n_units = len(masks)
        if (masks.sum(0) <= 1).all():  # disjoint units: each entry has at most one owner
            owned = masks.any(0)
            self.owner = torch.where(owned, masks.to(torch.int64).argmax(0), self.n_units)
            self.masks = None
        else:
            self.owner, self.masks = None, masks.to(dtype)
        self.fixed = {
            n: t.detach().to(dtype) if t.is_floating_point() else t
            for n, t in {**dict(model.named_buffers()), **before}.items()
            if n not in names
        }
        self.base = float(self._losses(self.theta[None])[0])
        self._shortcut = _HiddenNeuronPath.build(self) or _HeadPath.build(self)

    @property
    def n_players(self) -> int:
        return self.n_units

    def _moved(self, chosen: Tensor) -> Tensor:
        """(m, P) in {0, 1}: the parameter entries that coalitions ``chosen`` (m, U) own."""
        if self.owner is None:
            return (chosen.to(self.dtype) @ self.masks).clamp_max(1.0)
        padded = torch.cat([chosen, torch.zeros(len(chosen), 1, dtype=torch.bool)], dim=1)
        return padded[:, self.owner].to(self.dtype)  # column U: owned by no unit

    def _unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            size = shape.numel()
            out[name] = flat[start : start + size].reshape(shape)
            start += size
        return out

    def _losses(self, thetas: Tensor) -> Tensor:
        def loss_at(flat: Tensor) -> Tensor:
            params = {**self.fixed, **self._unflatten(flat)}
            outputs = functional_call(self.model, params, (self.inputs,))
            return self.loss(outputs, self.targets).mean()

        with torch.no_grad():
            return vmap(loss_at)(thetas).double()

    def __call__(self, coalitions: Tensor) -> Tensor:
        coalitions = torch.as_tensor(coalitions)
        if coalitions.dim() != 2 or coalitions.shape[1] != self.n_players:
            raise ValueError(
                f"coalitions must be a bool matrix (M, {self.n_players}), "
                f"got shape {tuple(coalitions.shape)}"
            )
        if self._shortcut is not None:
            return self._shortcut(coalitions.bool())
        return self._plain(coalitions.bool())

    def _plain(self, coalitions: Tensor) -> Tensor:
        """v of bool coalitions (M, U), running the whole network for each."""
        values = []
        for start in range(0, len(coalitions), self.chunk_size):
            moved = self._moved(coalitions[start : start + self.chunk_size])
            values.append(self.base - self._losses(self.theta + moved * self.delta))
        if not values:
            return torch.zeros(0, dtype=torch.float64)
        return torch.cat(values)


class _Method(nn.Module):
    """``model.<method>`` as a module's forward (for :func:`functional_call`)."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *args):
        return getattr(self.model, self.method)(*args)


class _HiddenNeuronPath:
    r"""The values of an :class:`UpdateGame` on a network whose players are hidden neurons,
    without recomputing the hidden layer for every coalition.

    The network is ``forward(x) = head(hidden(x))`` with ``hidden`` reading only ``layer1``
    (whose row j makes neuron j) and the rest of ``forward`` only ``layer2`` (whose column j
    reads neuron j), both without biases, and every neuron's row and column owned by the same
    unit or by none. Column j of a coalition's hidden activations is then column j of the
    activations at θ_t or at θ_t + Δθ, by whether neuron j's unit is in the coalition: both are
    computed once, and each coalition only selects its columns and runs the rest of ``forward``
    (``hidden`` overridden on a shallow copy of the model), with the parameters formed exactly
    as in the plain path (θ_t + moved · Δθ).

    Whether a column of a matrix product is computed the same way in a product of another
    shape depends on the kernel (it is exact for one-hot inputs, whatever the kernel), so
    :meth:`build` keeps the path only if it reproduces the plain forward pass bit for bit on
    ``PROBES`` coalitions (the empty and full ones and random ones).
    """

    PROBES = 8
    CHUNK = 8  # coalitions per vmapped pass: (CHUNK, N, width) activations in memory

    def __init__(self, game: UpdateGame, neuron_owner: Tensor, second: slice):
        self.game, self.second = game, second
        self.neuron_owner = neuron_owner  # (H,): the unit owning each neuron, U for none
        self.owner2 = game.owner[second]  # owners of the layer2 entries
        self.theta2, self.delta2 = game.theta[second], game.delta[second]
        names = list(zip(game.names, game.shapes, strict=True))
        self.shape2 = dict(names)["layer2.weight"]
        ends = torch.tensor([[0.0], [1.0]], dtype=game.dtype)  # moved: none, all
        thetas = game.theta + ends * game.delta  # as the plain path forms them
        method = _Method(game.model, "hidden")

        def hidden_at(flat: Tensor) -> Tensor:
            params = {f"model.{n}": t for n, t in game._unflatten(flat).items()}
            return functional_call(method, params, (game.inputs,))

        with torch.no_grad():
            self.before, self.after = vmap(hidden_at)(thetas)  # (N, H) each
        self.buffer = torch.empty(self.CHUNK, *self.before.shape, dtype=self.before.dtype)
        self.first = game._unflatten(game.theta)["layer1.weight"]  # read by nothing
        self.shell = copy.copy(game.model)  # shares the modules; ``hidden`` set per pass

    @classmethod
    def build(cls, game: UpdateGame) -> _HiddenNeuronPath | None:
        """The path for ``game``, or None where the network does not have that form or the
        path does not reproduce the plain forward pass exactly."""
        model = game.model
        layers = [getattr(model, n, None) for n in ("layer1", "layer2")]
        if (
            game.owner is None
            or game.fixed
            or not callable(getattr(model, "hidden", None))
            or sorted(game.names) != ["layer1.weight", "layer2.weight"]
            or not all(isinstance(layer, nn.Linear) and layer.bias is None for layer in layers)
            or layers[0].out_features != layers[1].in_features
        ):
            return None
        offsets, start = {}, 0
        for name, shape in zip(game.names, game.shapes, strict=True):
            offsets[name] = slice(start, start + shape.numel())
            start += shape.numel()
        H = layers[0].out_features
        rows = game.owner[offsets["layer1.weight"]].reshape(H, -1)  # (H, in)
        columns = game.owner[offsets["layer2.weight"]].reshape(-1, H)  # (out, H)
        neuron_owner = rows[:, 0]
        if not ((rows == neuron_owner[:, None]).all() and (columns == neuron_owner).all()):
            return None
        path = cls(game, neuron_owner, offsets["layer2.weight"])
        generator = torch.Generator().manual_seed(0)
        probes = torch.rand(cls.PROBES, game.n_units, generator=generator) < 0.5
        probes[0], probes[1] = False, True
        return path if torch.equal(path(probes), game._plain(probes)) else None

    def __call__(self, coalitions: Tensor) -> Tensor:
        values = [
            self._values(coalitions[start : start + self.CHUNK])
            for start in range(0, len(coalitions), self.CHUNK)
        ]
        return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)

    def _values(self, chosen: Tensor) -> Tensor:
        game = self.game
        padded = torch.cat([chosen, torch.zeros(len(chosen), 1, dtype=torch.bool)], dim=1)
        moved = padded[:, self.owner2].to(game.dtype)  # as UpdateGame._moved, layer2 only
        second = self.theta2 + moved * self.delta2  # (m, out · H)
        selected = padded[:, self.neuron_owner]  # (m, H)
        hidden = self.buffer[: len(chosen)]  # (m, N, H), reused across chunks
        torch.where(selected[:, None, :], self.after, self.before, out=hidden)

        def loss_at(h: Tensor, weight: Tensor) -> Tensor:
            object.__setattr__(self.shell, "hidden", lambda _: h)
            params = {"layer1.weight": self.first, "layer2.weight": weight.reshape(self.shape2)}
            outputs = functional_call(self.shell, params, (game.inputs,))
            return game.loss(outputs, game.targets).mean()

        with torch.no_grad():
            return game.base - vmap(loss_at)(hidden, second).double()


class _HeadPath:
    r"""The values of an :class:`UpdateGame` on a one-layer transformer whose attention heads
    are players, without recomputing attention for every coalition.

    The network has ``heads()`` (each head's parameter slices, as a unit maps them),
    ``head_outputs(x)`` (the residual stream before attention and what each head writes into
    it) and ``_attend(x)`` (their sum), which its ``forward`` calls once. What head h writes
    depends only on its own slices and on parameters no player owns, so it is the write at
    θ_t or at θ_t + Δθ, by whether the head's unit is in the coalition: both are computed
    once, and each coalition sums its heads' writes and runs the rest of ``forward`` (``_attend``
    overridden on a shallow copy of the model) with the parameters formed as in the plain path.

    The heads' writes are summed one by one rather than through one W_O product, so values
    agree with the plain path up to rounding, not bit for bit; :meth:`build` keeps the path
    only if ``PROBES`` coalitions agree to ``RTOL`` of the largest value.
    """

    PROBES = 8
    RTOL = 1e-9
    CHUNK = 32

    def __init__(self, game: UpdateGame, head_owner: Tensor):
        self.game, self.head_owner = game, head_owner  # (H,): the unit owning each head
        every = torch.ones(1, game.n_units, dtype=torch.bool)
        ends = torch.cat([torch.zeros_like(game.theta)[None], game._moved(every)])
        thetas = game.theta + ends * game.delta  # θ_t and every unit moved, as the plain path
        method = _Method(game.model, "head_outputs")

        def writes_at(flat: Tensor) -> tuple[Tensor, Tensor]:
            params = {f"model.{n}": t for n, t in game._unflatten(flat).items()}
            buffers = {f"model.{n}": t for n, t in game.fixed.items()}
            return functional_call(method, {**buffers, **params}, (game.inputs,))

        with torch.no_grad():
            bases, writes = vmap(writes_at)(thetas)
        self.base = bases[0]  # (N, d): owned by no head (checked by build's probes)
        self.before, self.after = writes[0], writes[1]  # (N, H, d) each
        self.shell = copy.copy(game.model)

    @classmethod
    def build(cls, game: UpdateGame) -> _HeadPath | None:
        """The path for ``game``, or None where the network does not have that form or the
        path does not reproduce the plain forward pass to ``RTOL`` on probe coalitions."""
        model = game.model
        if game.owner is None or not all(
            callable(getattr(model, m, None)) for m in ("heads", "head_outputs", "_attend")
        ):
            return None
        masks = parameter_masks(model, model.heads(), game.names)  # (H, P)
        head_owner = []
        for mask in masks:
            owners = game.owner[mask].unique()
            if len(owners) != 1 or int(owners[0]) == game.n_units:
                return None  # a head split between units, or owned by none
            head_owner.append(int(owners[0]))
        if len(set(head_owner)) != len(head_owner):
            return None
        path = cls(game, torch.tensor(head_owner))
        generator = torch.Generator().manual_seed(0)
        probes = torch.rand(cls.PROBES, game.n_units, generator=generator) < 0.5
        probes[0], probes[1] = False, True
        probes[2] = False
        probes[2, head_owner[0]] = True  # one head alone
        fast, plain = path(probes), game._plain(probes)
        scale = float(plain.abs().max())
        return path if bool(((fast - plain).abs() <= cls.RTOL * scale).all()) else None

    def __call__(self, coalitions: Tensor) -> Tensor:
        values = [
            self._values(coalitions[start : start + self.CHUNK])
            for start in range(0, len(coalitions), self.CHUNK)
        ]
        return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)

    def _values(self, chosen: Tensor) -> Tensor:
        game = self.game
        padded = torch.cat([chosen, torch.zeros(len(chosen), 1, dtype=torch.bool)], dim=1)
        heads = padded[:, self.head_owner]  # (m, H)
        writes = torch.where(heads[:, None, :, None], self.after, self.before)  # (m, N, H, d)
        residual = self.base + writes.sum(2)  # (m, N, d)
        thetas = game.theta + game._moved(chosen) * game.delta

        def loss_at(r: Tensor, flat: Tensor) -> Tensor:
            object.__setattr__(self.shell, "_attend", lambda _: r)
            params = {**game.fixed, **game._unflatten(flat)}
            outputs = functional_call(self.shell, params, (game.inputs,))
            return game.loss(outputs, game.targets).mean()

        with torch.no_grad():
            return game.base - vmap(loss_at)(residual, thetas).double()


def _normalised(game: Game, n_players: int) -> Callable[[Tensor], Tensor]:
    """The game minus v(∅), so that the empty coalition is worth zero."""
    empty = float(torch.as_tensor(game(torch.zeros(1, n_players, dtype=torch.bool)))[0])

    def value(coalitions: Tensor) -> Tensor:
        return torch.as_tensor(game(coalitions), dtype=torch.float64).reshape(-1) - empty

    return value


@dataclass(frozen=True)
class TreeDecomposition:
    """v over the nodes of a tree and the interaction terms it telescopes into.

    ``values`` (n_nodes,) holds v(node) (v(∅) = 0); ``interactions`` (n_internal,) holds
    I(node) = v(A ∪ B) − v(A) − v(B) for the internal nodes in ``tree.internal`` order.
    """

    tree: Tree
    values: Tensor
    interactions: Tensor

    @property
    def leaf_values(self) -> Tensor:
        return self.values[: self.tree.n_leaves]

    @property
    def total(self) -> float:
        """v(root): the value of the whole update."""
        return float(self.values[self.tree.root])

    def terms(self) -> tuple[Tensor, Tensor]:
        """All terms of the telescoping sum and their heights: leaf values (height 0) then the
        interactions of the internal nodes; (n_nodes,) each."""
        terms = torch.cat([self.leaf_values, self.interactions])
        heights = torch.as_tensor(
            [0] * self.tree.n_leaves + [self.tree.height(n) for n in self.tree.internal]
        )
        return terms, heights

    def residual(self) -> float:
        """v(root) − Σ terms: zero up to rounding (the telescoping identity)."""
        terms, _ = self.terms()
        return self.total - float(terms.sum())

    def profile(self) -> Tensor:
        """Share of Σ|terms| at each height 0..tree height (float64); zeros if all terms are 0."""
        terms, heights = self.terms()
        mass = torch.zeros(self.tree.height(self.tree.root) + 1, dtype=torch.float64)
        mass.index_add_(0, heights, terms.abs())
        total = mass.sum()
        return mass / total if total > 0 else mass

    def interaction_share(self) -> float:
        """Share of Σ|terms| carried by interactions (height ≥ 1)."""
        return float(self.profile()[1:].sum())

    def attribution_height(self) -> float:
        """Centre of mass of the depth profile, Σ_h h · share_h."""
        profile = self.profile()
        return float((torch.arange(len(profile), dtype=torch.float64) * profile).sum())


def tree_decomposition(game: Game, tree: Tree) -> TreeDecomposition:
    """v(node) for every node of ``tree`` (one game call) and the interactions I(node)."""
    return tree_decompositions(game, {"tree": tree})["tree"]


def tree_decompositions(game: Game, trees: Mapping[str, Tree]) -> dict[str, TreeDecomposition]:
    """:func:`tree_decomposition` for several trees over the same players, evaluating each
    distinct coalition once (the leaves and the root are shared by every tree)."""
    sizes = {tree.n_leaves for tree in trees.values()}
    if len(sizes) != 1:
        raise ValueError(f"trees must share their players, got leaf counts {sorted(sizes)}")
    value = _normalised(game, sizes.pop())
    masks = [tree.node_masks() for tree in trees.values()]
    values = _unique_values(value, torch.cat(masks)).split([len(m) for m in masks])
    out = {}
    for (name, tree), v in zip(trees.items(), values, strict=True):
        internal = torch.as_tensor(tree.internal, dtype=torch.long)
        left, right = torch.as_tensor(tree.children, dtype=torch.long).reshape(-1, 2).T
        out[name] = TreeDecomposition(tree, v, v[internal] - v[left] - v[right])
    return out


def _unique_values(value: Callable[[Tensor], Tensor], masks: Tensor) -> Tensor:
    """value(masks) evaluating each distinct coalition once."""
    unique, inverse = torch.unique(masks, dim=0, return_inverse=True)
    return value(unique)[inverse]


def winter_value(game: Game, tree: Tree, *, max_coalitions: int = DEFAULT_MAX_COALITIONS) -> Tensor:
    r"""The Winter value (U,) of every leaf for a binary tree, exactly, float64.

    Over the orderings of the players in which every subtree is contiguous (uniformly: at
    every internal node either child comes first with probability ½), leaf i receives its
    expected marginal contribution

    .. math::  \varphi_i = 2^{-d_i} \sum_{R} \big[v(R \cup \{i\}) - v(R)\big],

    R running over the 2^{d_i} unions of the siblings of i's ancestors (d_i = depth of i).
    The values sum to v(all) − v(∅) (efficiency). For a tree of U leaves and depth D this needs
    up to U · 2^{D+1} coalition values (each distinct coalition is evaluated once); more than
    ``max_coalitions`` raises ``ValueError``.
    """
    U = tree.n_leaves
    needed = sum(2 ** (tree.depth(i) + 1) for i in range(U))
    if needed > max_coalitions:
        raise ValueError(
            f"the Winter value of this tree needs {needed} coalition values, more than "
            f"max_coalitions={max_coalitions}; use a shallower tree or raise the limit"
        )
    value = _normalised(game, U)
    masks = tree.node_masks()
    rows, owners = [], []
    for leaf in range(U):
        contexts = torch.zeros(1, U, dtype=torch.bool)
        for sibling in tree.siblings_upwards(leaf):
            contexts = torch.cat([contexts, contexts | masks[sibling]])
        rows.extend([contexts | masks[leaf], contexts])
        owners.append(len(contexts))
    values = _unique_values(value, torch.cat(rows))
    phi, start = torch.zeros(U, dtype=torch.float64), 0
    for leaf, n in enumerate(owners):
        with_leaf, without = values[start : start + n], values[start + n : start + 2 * n]
        phi[leaf] = (with_leaf - without).mean()
        start += 2 * n
    return phi


def all_coalitions(n_players: int) -> Tensor:
    """Bool (2^U, U): row s is the coalition whose bitmask is s (player i ↔ bit i)."""
    if not 0 <= n_players <= MAX_LATTICE_PLAYERS:
        raise ValueError(f"n_players must be in 0..{MAX_LATTICE_PLAYERS}, got {n_players}")
    bits = torch.arange(2**n_players)[:, None]
    return (bits >> torch.arange(n_players)) & 1 == 1


def mobius_transform(values: Tensor) -> Tensor:
    r"""Möbius transform (Harsanyi dividends) of a game on the full lattice, float64.

    ``values`` (2^U,) is v(S) indexed by bitmask (:func:`all_coalitions`); the result is
    m(T) = Σ_{S ⊆ T} (−1)^{|T|−|S|} v(S), so that v(S) = Σ_{T ⊆ S} m(T). O(U 2^U).
    """
    m = torch.as_tensor(values, dtype=torch.float64).clone()
    n = m.numel()
    U = n.bit_length() - 1
    if n != 2**U or U > MAX_LATTICE_PLAYERS:
        raise ValueError(f"values must have 2^U entries with U ≤ {MAX_LATTICE_PLAYERS}, got {n}")
    for i in range(U):
        m = m.reshape(-1, 2, 2**i)  # axis 1: bit i
        m[:, 1] -= m[:, 0]
        m = m.reshape(-1)
    return m


def lattice_values(game: Game, n_players: int) -> Tensor:
    """v(S) − v(∅) for all 2^U coalitions (bitmask order), float64."""
    return _normalised(game, n_players)(all_coalitions(n_players))
