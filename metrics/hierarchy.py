r"""Binary trees over parameter units, and the unit similarities they are built from.

A :class:`Tree` has leaves 0..U−1 (the units) and internal nodes U..2U−2, each with two
children; the root is node 2U−2. *Height* counts up from the leaves (a leaf has height 0, a
node 1 + the larger of its children's heights); *depth* counts down from the root (depth 0).
Level k of a tree is the set of nodes at depth k together with the leaves shallower than k:
a partition of the units into at most 2^k *sectors*.

Trees from a unit similarity S (U, U), non-negative and symmetric:

* :func:`spectral_bisection` — recursive spectral bisection (Pothen, Simon & Liou 1990):
  split every node at the median of the Fiedler vector of its normalised Laplacian, so that
  sibling subtrees differ in size by at most one unit and every tree over U units has the
  same shape as :meth:`Tree.balanced` (heights are comparable between trees).
* :func:`agglomerative_tree` — average-linkage clustering on the distance 1 − S (SciPy); its
  shape follows the data, so heights are not comparable with a balanced tree.
* :meth:`Tree.random` — the control: a balanced tree over a random permutation of the units.

Unit similarities from three parameter-space matrices (the eNTK one is
:func:`metrics.entk.unit_similarity`):

* :func:`block_energy_similarity` — the normalised block energy
  ‖M_jk‖_F² / (‖M_jj‖_F ‖M_kk‖_F) of a PSD matrix M = F Fᵀ given by its rows for each unit;
  with F_j = rows of (H_z^{1/2} J)ᵀ this is the Gauss–Newton block energy
  (:func:`gauss_newton_factor`).
* :func:`whitened_unit_similarity` — the eNTK unit similarity with each unit's Jacobian J_j
  replaced by J_j S_j, S Sᵀ = C the gradient-noise covariance: the unit pieces of the
  noise-whitened kernel J C Jᵀ (:mod:`metrics.whitened`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev, vmap

Nested = int | tuple  # a leaf index or a pair of nested trees


@dataclass(frozen=True)
class Tree:
    """A full binary tree over ``n_leaves`` players.

    ``children[i]`` is the (left, right) pair of internal node ``n_leaves + i``; children come
    before their parents, so the root is the last node.
    """

    n_leaves: int
    children: tuple[tuple[int, int], ...]
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        U = self.n_leaves
        if not isinstance(U, int) or U < 1:
            raise ValueError(f"n_leaves must be a positive int, got n_leaves={U!r}")
        if len(self.children) != U - 1:
            raise ValueError(f"a binary tree over {U} leaves has {U - 1} internal nodes")
        seen = []
        for i, (a, b) in enumerate(self.children):
            if not (0 <= a < U + i and 0 <= b < U + i) or a == b:
                raise ValueError(f"node {U + i} has children {(a, b)}; they must be earlier nodes")
            seen += [a, b]
        if sorted(seen) != list(range(2 * U - 2)):
            raise ValueError("every node but the root must be the child of exactly one node")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_nested(cls, nested: Nested, n_leaves: int | None = None) -> Tree:
        """From nested pairs of leaf indices, e.g. ``((0, 1), (2, (3, 4)))``."""
        children: list[tuple[int, int]] = []
        leaves: list[int] = []

        def walk(node) -> int:
            if isinstance(node, (int, np.integer)):
                leaves.append(int(node))
                return int(node)
            left, right = node
            a, b = walk(left), walk(right)
            children.append((a, b))
            return -len(children)  # provisional id of internal node

        walk(nested)
        U = len(leaves) if n_leaves is None else n_leaves
        if sorted(leaves) != list(range(U)):
            raise ValueError(f"the leaves must be 0..{U - 1}, each once; got {sorted(leaves)}")
        fix = lambda c: c if c >= 0 else U - c - 1  # noqa: E731 - -1 → U, -2 → U + 1 …
        return cls(U, tuple((fix(a), fix(b)) for a, b in children))

    @classmethod
    def from_linkage(cls, Z: np.ndarray) -> Tree:
        """From a SciPy linkage matrix (n−1, 4): row i merges nodes Z[i, 0] and Z[i, 1]."""
        Z = np.asarray(Z)
        return cls(len(Z) + 1, tuple((int(a), int(b)) for a, b in Z[:, :2]))

    @classmethod
    def balanced(cls, n_leaves: int, order: Sequence[int] | None = None) -> Tree:
        """Split ``order`` (default 0..U−1) into halves recursively (left half ⌊m/2⌋)."""
        order = list(range(n_leaves)) if order is None else [int(i) for i in order]

        def split(items: list[int]) -> Nested:
            if len(items) == 1:
                return items[0]
            half = len(items) // 2
            return (split(items[:half]), split(items[half:]))

        return cls.from_nested(split(order), n_leaves)

    @classmethod
    def random(cls, n_leaves: int, generator: torch.Generator) -> Tree:
        """A balanced tree over a random permutation of the leaves (the control tree)."""
        return cls.balanced(n_leaves, torch.randperm(n_leaves, generator=generator).tolist())

    # ---- structure ----------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return 2 * self.n_leaves - 1

    @property
    def root(self) -> int:
        return self.n_nodes - 1

    @property
    def internal(self) -> list[int]:
        return list(range(self.n_leaves, self.n_nodes))

    def children_of(self, node: int) -> tuple[int, int]:
        if node < self.n_leaves:
            raise ValueError(f"node {node} is a leaf")
        return self.children[node - self.n_leaves]

    @cached_property
    def _parents(self) -> list[int]:
        parent = [-1] * self.n_nodes
        for i, (a, b) in enumerate(self.children):
            parent[a] = parent[b] = self.n_leaves + i
        return parent

    @cached_property
    def _heights(self) -> list[int]:
        h = [0] * self.n_nodes
        for i, (a, b) in enumerate(self.children):
            h[self.n_leaves + i] = 1 + max(h[a], h[b])
        return h

    @cached_property
    def _depths(self) -> list[int]:
        d = [0] * self.n_nodes
        for node in reversed(range(self.n_nodes - 1)):
            d[node] = d[self._parents[node]] + 1
        return d

    def parent(self, node: int) -> int:
        """The parent of ``node`` (−1 for the root)."""
        return self._parents[node]

    def height(self, node: int) -> int:
        return self._heights[node]

    def depth(self, node: int) -> int:
        return self._depths[node]

    def node_masks(self) -> Tensor:
        """Bool (n_nodes, U): the leaves under every node."""
        if "masks" not in self._cache:
            masks = torch.zeros(self.n_nodes, self.n_leaves, dtype=torch.bool)
            masks[torch.arange(self.n_leaves), torch.arange(self.n_leaves)] = True
            for i, (a, b) in enumerate(self.children):
                masks[self.n_leaves + i] = masks[a] | masks[b]
            self._cache["masks"] = masks
        return self._cache["masks"].clone()

    def members(self, node: int) -> list[int]:
        """The leaves under ``node``, ascending."""
        return torch.nonzero(self.node_masks()[node]).flatten().tolist()

    def siblings_upwards(self, node: int) -> list[int]:
        """The sibling of ``node`` and of each of its ancestors below the root, bottom-up."""
        out = []
        while node != self.root:
            parent = self._parents[node]
            a, b = self.children_of(parent)
            out.append(b if a == node else a)
            node = parent
        return out

    def level(self, k: int) -> list[int]:
        """Nodes at depth k and leaves shallower than k, ordered by their smallest leaf."""
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"level must be a non-negative int, got k={k!r}")
        nodes = [
            n
            for n in range(self.n_nodes)
            if self.depth(n) == k or (n < self.n_leaves and self.depth(n) < k)
        ]
        return sorted(nodes, key=lambda n: self.members(n)[0])

    def labels(self, k: int) -> np.ndarray:
        """Sector label of every leaf at level k (0..len(level(k)) − 1)."""
        labels = np.empty(self.n_leaves, dtype=int)
        for label, node in enumerate(self.level(k)):
            labels[self.members(node)] = label
        return labels

    def to_nested(self, node: int | None = None) -> Nested:
        node = self.root if node is None else node
        if node < self.n_leaves:
            return node
        a, b = self.children_of(node)
        return (self.to_nested(a), self.to_nested(b))


def _affinity(S: Tensor) -> np.ndarray:
    A = torch.as_tensor(S, dtype=torch.float64).cpu().numpy()
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"similarity must be a square matrix, got shape {tuple(A.shape)}")
    if not np.isfinite(A).all():
        raise ValueError("similarity must be finite")
    if (A < -1e-9).any():
        raise ValueError(f"similarity must be non-negative, got min {A.min():.3g}")
    return np.clip((A + A.T) / 2, 0.0, None)


def _fiedler(A: np.ndarray) -> np.ndarray:
    """Fiedler vector D^{-1/2} u₂ of the normalised Laplacian of affinity A, sign fixed so that
    its entry of largest magnitude is positive."""
    degree = A.sum(1)
    inv_sqrt = np.where(degree > 0, 1 / np.sqrt(np.where(degree > 0, degree, 1)), 0.0)
    L = np.eye(len(A)) - inv_sqrt[:, None] * A * inv_sqrt[None, :]
    _, vectors = np.linalg.eigh((L + L.T) / 2)
    v = inv_sqrt * vectors[:, 1]
    return v if v[np.argmax(np.abs(v))] >= 0 else -v


def spectral_bisection(S: Tensor) -> Tree:
    """Recursive spectral bisection of the units by similarity S (U, U) (module docstring).

    Each node's units are sorted by their Fiedler-vector entry (stable; ties keep unit order)
    and split into the lower ⌊m/2⌋ and the rest; the child holding the smaller unit index is
    the left one. Units without any similarity to the others (zero degree) sort as 0.
    """
    A = _affinity(S)

    def split(items: np.ndarray) -> Nested:
        if len(items) == 1:
            return int(items[0])
        if len(items) == 2:
            return (int(items[0]), int(items[1]))
        order = np.argsort(_fiedler(A[np.ix_(items, items)]), kind="stable")
        half = len(items) // 2
        a, b = np.sort(items[order[:half]]), np.sort(items[order[half:]])
        if b[0] < a[0]:
            a, b = b, a
        return (split(a), split(b))

    return Tree.from_nested(split(np.arange(len(A))), len(A))


def agglomerative_tree(S: Tensor, method: str = "average") -> Tree:
    """Hierarchical clustering of the units on the distance 1 − S/max diag (SciPy linkage)."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    methods = ("average", "complete", "single", "weighted")
    if method not in methods:
        raise ValueError(f"method must be one of {methods}, got method={method!r}")
    A = _affinity(S)
    scale = A.diagonal().max() if A.diagonal().max() > 0 else 1.0
    D = np.clip(1.0 - A / scale, 0.0, None)
    np.fill_diagonal(D, 0.0)
    return Tree.from_linkage(linkage(squareform(D, checks=False), method=method))


# ---- unit similarities from curvature and noise ------------------------------------------
def _packed(K: Tensor) -> Tensor:
    """Upper triangle of a symmetric (m, m) matrix, off-diagonal entries scaled by √2, so that
    packed(K)·packed(L) = ⟨K, L⟩_F."""
    m = K.shape[-1]
    rows, cols = torch.triu_indices(m, m)
    weight = torch.where(rows == cols, 1.0, 2**0.5).to(K.dtype)
    return K[..., rows, cols] * weight


def _cosine_gram(packed_blocks: Callable[[int, int], Tensor], U: int, per_block: int) -> Tensor:
    gram = torch.zeros(U, U, dtype=torch.float64)
    starts = list(range(0, U, per_block))
    for i, si in enumerate(starts):
        Ki = packed_blocks(si, min(U, si + per_block))
        for sj in starts[i:]:
            Kj = Ki if sj == si else packed_blocks(sj, min(U, sj + per_block))
            g = (Ki @ Kj.T).double()
            gram[si : si + len(Ki), sj : sj + len(Kj)] = g
            gram[sj : sj + len(Kj), si : si + len(Ki)] = g.T
    norms = gram.diagonal().clamp_min(0).sqrt()
    scale = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))
    return gram * scale[:, None] * scale[None, :]


def block_energy_similarity(
    factor: Tensor, masks: Tensor, *, max_block_bytes: int = 2**28
) -> Tensor:
    r"""Normalised block energies of M = Fᵀ F over units, (U, U) float64.

    .. math::  S_{jk} = \frac{\lVert M_{jk}\rVert_F^2}
                               {\lVert M_{jj}\rVert_F\,\lVert M_{kk}\rVert_F},
               \qquad M_{jk} = F_j^\top F_k ,

    with F (m, P) and F_j its columns owned by unit j (``masks`` (U, P) bool). Computed in data
    space, ‖F_jᵀ F_k‖_F² = ⟨F_j F_jᵀ, F_k F_kᵀ⟩_F, at O(U² m²) cost; S ∈ [0, 1] and S_jj = 1
    (0 for a unit whose block is zero).
    """
    if factor.dim() != 2 or masks.dim() != 2 or masks.shape[1] != factor.shape[1]:
        raise ValueError(
            f"factor (m, P) and masks (U, P) must share P; got {tuple(factor.shape)} and "
            f"{tuple(masks.shape)}"
        )
    m = factor.shape[0]
    per_block = max(1, max_block_bytes // (m * (m + 1) // 2 * factor.element_size()))

    def packed_blocks(start: int, stop: int) -> Tensor:
        return torch.stack(
            [_packed(factor[:, masks[j]] @ factor[:, masks[j]].T) for j in range(start, stop)]
        )

    return _cosine_gram(packed_blocks, len(masks), per_block)


def output_jacobian(model: nn.Module, inputs: Tensor, params: Sequence[str] | None = None):
    """Per-example Jacobians of the outputs, (N, R, P), columns in ``params`` order (default:
    trainable parameters), each tensor flattened; outputs are flattened to R per example."""
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    names = list(named) if params is None else list(params)
    fixed = {n: p.detach() for n, p in model.named_parameters()}

    def one(theta, x):
        return functional_call(model, {**fixed, **theta}, (x[None],)).reshape(-1)

    J = vmap(jacrev(one), in_dims=(None, 0))({n: fixed[n] for n in names}, inputs)
    return torch.cat([J[n].reshape(len(inputs), J[n].shape[1], -1) for n in names], dim=2)


def gauss_newton_factor(
    model: nn.Module,
    loss: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    jacobian: Tensor | None = None,
) -> Tensor:
    r"""F (N·R, P) with Fᵀ F = G = (1/N) Σ_n J_nᵀ H_n J_n, the Gauss–Newton matrix of the mean
    of ``loss(outputs, targets) -> (n,)``; H_n = ∇²_z ℓ(z_n, y_n) = L_n L_nᵀ (eigh, negative
    eigenvalues clipped) and F's rows are L_nᵀ J_n / √N."""
    J = output_jacobian(model, inputs) if jacobian is None else jacobian  # (N, R, P)
    with torch.no_grad():
        z = model(inputs).detach().reshape(len(inputs), -1)

    def per_example(zn, yn):
        return loss(zn[None], yn[None])[0]

    H = vmap(hessian(per_example))(z, targets).to(J.dtype)  # (N, R, R)
    lam, V = torch.linalg.eigh((H + H.transpose(1, 2)) / 2)
    L = V * lam.clamp_min(0).sqrt()[:, None, :]  # H_n = L_n L_nᵀ
    F = torch.einsum("nrs,nrp->nsp", L, J) / len(inputs) ** 0.5
    return F.reshape(-1, J.shape[-1])


def whitened_unit_similarity(
    jacobian: Tensor, factor: Tensor, masks: Tensor, *, center: bool = True
) -> Tensor:
    r"""The eNTK unit similarity of the noise-whitened kernel, (U, U) float64.

    Unit j's whitened kernel is the class average K_j = (1/R) Σ_c (J_{c,j} S_j)(J_{c,j} S_j)ᵀ
    (N, N), with J (N, R, P) per-example output Jacobians, S (P, r) a factor of the noise
    metric (S Sᵀ = C, :func:`metrics.whitened.noise_factor`) and ·_j unit j's parameters;
    Σ_j J_j S_j = J S is the factor of the whitened kernel J C Jᵀ. S_jk is the cosine of K_j
    and K_k (double-centred over inputs when ``center``), as in
    :func:`metrics.entk.unit_similarity`; with S = I it is that similarity.
    """
    N, R, P = jacobian.shape
    if factor.shape[0] != P or masks.shape[1] != P:
        raise ValueError(
            f"jacobian (N, R, P={P}), factor (P, r) and masks (U, P) must share P; got "
            f"{tuple(factor.shape)} and {tuple(masks.shape)}"
        )
    H = torch.eye(N, dtype=torch.float64) - 1.0 / N
    kernels = []
    for j in range(len(masks)):
        A = jacobian[:, :, masks[j]].double() @ factor[masks[j]].double()  # (N, R, r)
        K = torch.einsum("ncr,mcr->nm", A, A) / R
        kernels.append(_packed(H @ K @ H if center else K))
    packed = torch.stack(kernels)
    return _cosine_gram(lambda a, b: packed[a:b], len(masks), len(masks))
