"""Trees over units and the unit similarities they are built from, against dense float64
references and planted block structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score
from torch import nn
from torch.func import hessian

from metrics.coalitions import parameter_masks
from metrics.entk import hidden_units, unit_similarity
from metrics.hierarchy import (
    Tree,
    agglomerative_tree,
    block_energy_similarity,
    gauss_newton_factor,
    output_jacobian,
    spectral_bisection,
    whitened_unit_similarity,
)


def planted_similarity(blocks: int, size: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Similarity 0.9 within blocks, 0.1 across, plus noise, over shuffled units."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(blocks).repeat_interleave(size)
    labels = labels[torch.randperm(len(labels), generator=g)]
    S = torch.where(labels[:, None] == labels[None, :], 0.9, 0.1).double()
    noise = 0.05 * torch.rand(len(S), len(S), generator=g, dtype=torch.float64)
    return S + (noise + noise.T) / 2, labels.numpy()


# ---- the tree -----------------------------------------------------------------------------
def test_tree_structure():
    tree = Tree.from_nested(((0, 1), (2, (3, 4))))
    assert tree.n_nodes == 9 and tree.root == 8 and tree.to_nested() == ((0, 1), (2, (3, 4)))
    assert [tree.height(n) for n in range(9)] == [0, 0, 0, 0, 0, 1, 1, 2, 3]
    assert [tree.depth(n) for n in range(9)] == [2, 2, 2, 3, 3, 1, 2, 1, 0]
    assert tree.members(7) == [2, 3, 4] and tree.parent(8) == -1
    assert tree.siblings_upwards(3) == [4, 2, 5]
    assert tree.level(1) == [5, 7]
    assert tree.level(2) == [0, 1, 2, 6]  # leaves shallower than 2 are their own sectors
    assert tree.labels(2).tolist() == [0, 1, 2, 3, 3]
    masks = tree.node_masks()
    assert masks[tree.root].all() and masks.sum(1)[:5].tolist() == [1] * 5


def test_tree_validation():
    with pytest.raises(ValueError, match="internal nodes"):
        Tree(3, ((0, 1),))
    with pytest.raises(ValueError, match="earlier nodes"):
        Tree(2, ((0, 0),))
    with pytest.raises(ValueError, match="exactly one"):
        Tree(3, ((0, 1), (0, 3)))
    with pytest.raises(ValueError, match="leaves must be"):
        Tree.from_nested((0, (1, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        Tree.balanced(4).level(-1)


def test_linkage_and_balanced_trees():
    from scipy.cluster.hierarchy import linkage

    Z = linkage(np.array([[0.0], [0.1], [5.0], [5.2]]), method="average")
    tree = Tree.from_linkage(Z)
    assert {frozenset(tree.members(n)) for n in tree.internal[:2]} == {
        frozenset({0, 1}),
        frozenset({2, 3}),
    }
    for U in (1, 2, 7, 16, 512):
        tree = Tree.balanced(U)
        assert tree.height(tree.root) == int(np.ceil(np.log2(U)))
        sizes = [len(tree.members(n)) for n in tree.level(3)]
        assert max(sizes) - min(sizes) <= 1
    a = Tree.random(16, torch.Generator().manual_seed(0))
    b = Tree.random(16, torch.Generator().manual_seed(0))
    assert a == b and a != Tree.balanced(16) and a.height(a.root) == 4


def test_spectral_bisection_recovers_planted_blocks_and_is_balanced():
    S, labels = planted_similarity(blocks=4, size=8, seed=0)
    tree = spectral_bisection(S)
    assert adjusted_rand_score(labels, tree.labels(2)) == 1.0
    assert tree.height(tree.root) == Tree.balanced(32).height(Tree.balanced(32).root)
    sizes = [len(tree.members(n)) for n in tree.level(4)]
    assert max(sizes) - min(sizes) <= 1
    # a random tree is the control: it does not recover the blocks
    control = Tree.random(32, torch.Generator().manual_seed(0))
    assert adjusted_rand_score(labels, control.labels(2)) < 0.2
    with pytest.raises(ValueError, match="non-negative"):
        spectral_bisection(-S)


def test_agglomerative_tree_has_each_planted_block_as_a_subtree():
    S, labels = planted_similarity(blocks=3, size=5, seed=1)
    tree = agglomerative_tree(S)
    subtrees = {frozenset(tree.members(n)) for n in range(tree.n_nodes)}
    for block in range(3):
        assert frozenset(np.flatnonzero(labels == block).tolist()) in subtrees
    with pytest.raises(ValueError, match="method"):
        agglomerative_tree(S, method="ward")


# ---- unit similarities ----------------------------------------------------------------------
def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 4)).double()


def dense_jacobian(net, x) -> torch.Tensor:
    """(N, R, P) by autograd, one example and output at a time."""
    rows = []
    for xn in x:
        out = net(xn[None]).reshape(-1)
        per_output = []
        for r in range(len(out)):
            grads = torch.autograd.grad(out[r], list(net.parameters()), retain_graph=True)
            per_output.append(torch.cat([g.reshape(-1) for g in grads]))
        rows.append(torch.stack(per_output))
    return torch.stack(rows)


def test_output_jacobian_against_autograd():
    net = small_net()
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(output_jacobian(net, x), dense_jacobian(net, x))


def test_block_energy_similarity_against_dense_blocks():
    g = torch.Generator().manual_seed(0)
    Fm = torch.randn(7, 10, generator=g, dtype=torch.float64)
    masks = torch.zeros(4, 10, dtype=torch.bool)
    for u, cols in enumerate([[0, 1], [2, 3, 4], [5], [6, 7, 8, 9]]):
        masks[u, cols] = True
    M = Fm.T @ Fm
    block = lambda j, k: M[masks[j]][:, masks[k]]  # noqa: E731
    expected = torch.tensor(
        [
            [block(j, k).norm() ** 2 / (block(j, j).norm() * block(k, k).norm()) for k in range(4)]
            for j in range(4)
        ]
    ).double()
    torch.testing.assert_close(block_energy_similarity(Fm, masks), expected)
    torch.testing.assert_close(block_energy_similarity(Fm, masks, max_block_bytes=1), expected)
    with pytest.raises(ValueError, match="share P"):
        block_energy_similarity(Fm, masks[:, :9])


def test_gauss_newton_factor_against_the_dense_gauss_newton_matrix():
    net = small_net(1)
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (6,))

    def loss(outputs, targets):
        return F.cross_entropy(outputs, targets, reduction="none")

    Fgn = gauss_newton_factor(net, loss, x, y)
    J = dense_jacobian(net, x)
    G = torch.zeros(J.shape[-1], J.shape[-1], dtype=torch.float64)
    for n in range(len(x)):
        z = net(x[n : n + 1]).detach()[0]
        H = hessian(lambda zz, n=n: F.cross_entropy(zz[None], y[n : n + 1]))(z)
        G += J[n].T @ H @ J[n] / len(x)
    torch.testing.assert_close(Fgn.T @ Fgn, G, rtol=1e-10, atol=1e-12)
    # the curvature tree's similarity is the normalised block energy of G
    units = hidden_units(net, "0", "2")
    masks = parameter_masks(net, units)
    S = block_energy_similarity(Fgn, masks)
    blk = lambda j, k: G[masks[j]][:, masks[k]]  # noqa: E731
    assert float(S[1, 4]) == pytest.approx(
        float(blk(1, 4).norm() ** 2 / (blk(1, 1).norm() * blk(4, 4).norm())), rel=1e-7
    )


def test_whitened_similarity_reduces_to_the_entk_similarity_and_matches_brute_force():
    net = small_net(2)
    x = torch.randn(7, 3, dtype=torch.float64)
    units = hidden_units(net, "0", "2")
    masks = parameter_masks(net, units)
    J = output_jacobian(net, x)
    P = J.shape[-1]
    identity = whitened_unit_similarity(J, torch.eye(P, dtype=torch.float64), masks)
    torch.testing.assert_close(identity, unit_similarity(net, x, units, center=True))

    Sfac = torch.randn(P, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    N, R, _ = J.shape
    H = torch.eye(N, dtype=torch.float64) - 1 / N
    kernels = []
    for j in range(len(units)):
        Jj = torch.where(masks[j], J, torch.zeros_like(J))  # unit j's columns only
        C = Sfac @ Sfac.T
        K = sum(Jj[:, c] @ C @ Jj[:, c].T for c in range(R)) / R  # (1/R) Σ_c J_cj C_jj J_cjᵀ
        kernels.append((H @ K @ H).reshape(-1))
    K = torch.stack(kernels)
    expected = K @ K.T / (K.norm(dim=1)[:, None] * K.norm(dim=1)[None, :])
    torch.testing.assert_close(whitened_unit_similarity(J, Sfac, masks), expected)
    with pytest.raises(ValueError, match="share P"):
        whitened_unit_similarity(J, Sfac[:-1], masks)
