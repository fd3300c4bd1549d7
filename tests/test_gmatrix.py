"""Trait Jacobians and G-matrices against brute-force float64 references and planted blocks."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from torch import nn
from torch.func import functional_call, jacrev

import metrics.gmatrix
from metrics.gmatrix import GMatrix, g_matrix, trait_jacobian
from metrics.noise import GradientNoise, per_example_gradients, unflatten
from testbeds.modadd.models import ModAddTransformer

TRAIT_NAMES = ["mean output 0", "mean p(class 1)", "logsumexp at x_0"]


def tiny(seed: int = 0):
    """A float64 MLP, a fixed batch and three traits read from it."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    x = torch.randn(12, 3, generator=generator, dtype=torch.float64)

    def read(forward) -> torch.Tensor:
        out = forward(x)  # (12, 4)
        return torch.stack(
            [
                out[:, 0].mean(),
                out.softmax(-1)[:, 1].mean(),
                torch.logsumexp(forward(x[:1])[0], dim=0),
            ]
        )  # (3,)

    return model, x, read


def reference_jacobian(model: nn.Module, read) -> torch.Tensor:
    """J (K, P) from torch.func.jacrev of a pure function of the parameters."""
    theta = {n: p.detach() for n, p in model.named_parameters()}
    jac = jacrev(lambda th: read(lambda x: functional_call(model, th, (x,))))(theta)
    return torch.cat([jac[n].reshape(jac[n].shape[0], -1) for n in theta], dim=1)


def finite_difference_jacobian(model: nn.Module, read, h: float = 1e-6) -> torch.Tensor:
    """J (K, P) by central differences, one parameter entry at a time."""
    columns = []
    with torch.no_grad():
        for p in model.parameters():
            flat = p.view(-1)
            for j in range(flat.numel()):
                original = flat[j].item()
                flat[j] = original + h
                plus = read(model)
                flat[j] = original - h
                minus = read(model)
                flat[j] = original
                columns.append((plus - minus) / (2 * h))
    return torch.stack(columns, dim=1)


def planted_jacobian(seed: int = 0) -> torch.Tensor:
    """J (6, 20): rows 0-2 live on parameters 0-9, rows 3-5 on 10-19, each group around one
    shared direction."""
    generator = torch.Generator().manual_seed(seed)
    J = torch.zeros(6, 20, dtype=torch.float64)
    for rows, cols in ((slice(0, 3), slice(0, 10)), (slice(3, 6), slice(10, 20))):
        shared = torch.randn(10, generator=generator, dtype=torch.float64)
        J[rows, cols] = shared + 0.3 * torch.randn(3, 10, generator=generator, dtype=torch.float64)
    return J


def test_docstring_example():
    assert doctest.testmod(metrics.gmatrix).failed == 0


def test_trait_jacobian_matches_jacrev_and_finite_differences():
    model, _, read = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    tj = trait_jacobian(model, read)
    assert tj.J.dtype == torch.float64 and tj.J.shape == (3, 5 * 3 + 5 + 4 * 5 + 4)
    torch.testing.assert_close(tj.J, reference_jacobian(model, read), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(tj.J, finite_difference_jacobian(model, read), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(tj.values, read(model).detach())
    assert tj.layout == [(n, p.shape) for n, p in model.named_parameters()]
    # the model is left as it was: same parameters, no .grad
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q) and p.grad is None


def test_trait_jacobian_of_a_transformer_with_softmax_attention():
    torch.manual_seed(0)
    model = ModAddTransformer(p=5, d_model=8, n_heads=2, d_mlp=8).double()
    model.reset_parameters(torch.Generator().manual_seed(0))
    tokens = torch.tensor([[0, 1, 5], [2, 3, 5], [4, 4, 5]])

    def read(forward) -> torch.Tensor:
        logits = forward(tokens)  # (3, 5)
        probs = logits.softmax(-1)
        return torch.stack([probs[0, 1], probs[:, 0].mean(), logits.logsumexp(-1).mean()])

    tj = trait_jacobian(model, read)
    torch.testing.assert_close(tj.J, reference_jacobian(model, read), rtol=1e-10, atol=1e-12)


def test_trait_jacobian_params_subset_and_unused_parameters():
    model, _, read = tiny(1)
    full = trait_jacobian(model, read)
    sub = trait_jacobian(model, read, params=["2.bias", "0.weight"])
    torch.testing.assert_close(sub.J, torch.cat([full.J[:, -4:], full.J[:, :15]], dim=1))
    assert sub.layout == [("2.bias", torch.Size([4])), ("0.weight", torch.Size([5, 3]))]

    def partial(m: nn.Module) -> torch.Tensor:  # a constant trait and a first-layer-only one
        return torch.stack([torch.tensor(1.0, dtype=torch.float64), m[0].bias.square().sum()])

    tj = trait_jacobian(model, partial)
    assert torch.equal(tj.J[0], torch.zeros(full.J.shape[1], dtype=torch.float64))
    bias = unflatten(tj.J[1][:, None], tj.layout)
    torch.testing.assert_close(bias["0.bias"][0], 2 * model[0].bias.detach())
    assert all(bias[n].abs().sum() == 0 for n in ("0.weight", "2.weight", "2.bias"))
    constant = trait_jacobian(model, lambda m: torch.ones(2, dtype=torch.float64))
    assert torch.equal(constant.J, torch.zeros(2, full.J.shape[1], dtype=torch.float64))


def test_each_trait_pass_runs_only_through_its_own_branch():
    """Traits computed separately and concatenated: trait a's backward pass sends no gradient
    (rather than zeros) into the other traits' branches, so their backward formulas skip
    their work, and J is still the exact Jacobian."""
    calls = {"a": 0, "b": 0}

    class Counted(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, name):
            ctx.name = name
            ctx.set_materialize_grads(False)  # see an undefined gradient as None
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            calls[ctx.name] += grad is not None  # the work a backward formula does
            return grad, None

    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def traits(m):
        out = m(x)
        first = Counted.apply(out[:, 0], "a").mean(0, keepdim=True)
        second = Counted.apply(out[:, 1] ** 2, "b")[:3]  # three traits from one branch
        return torch.cat([first, second])

    jac = trait_jacobian(model, traits)
    assert calls == {"a": 1, "b": 3}  # not 4 and 4: zero slices end at the cat
    params = dict(model.named_parameters())
    brute = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    rows = []
    for k in range(4):
        parts = []
        for name in params:
            J = brute[name]  # (5, 2, *shape)
            full = J[:, 0].mean(0) if k == 0 else 2 * model(x)[k - 1, 1] * J[k - 1, 1]
            parts.append(full.reshape(-1))
        rows.append(torch.cat(parts))
    torch.testing.assert_close(jac.J, torch.stack(rows).detach(), rtol=1e-12, atol=1e-12)


def test_unflatten_gives_parameter_shaped_gradients():
    model, _, read = tiny(2)
    tj = trait_jacobian(model, read)
    theta = {n: p.detach() for n, p in model.named_parameters()}
    jac = jacrev(lambda th: read(lambda x: functional_call(model, th, (x,))))(theta)
    blocks = unflatten(tj.J.T, tj.layout)  # name -> (K, *shape)
    for name, p in model.named_parameters():
        assert blocks[name].shape == (3, *p.shape)
        torch.testing.assert_close(blocks[name], jac[name], rtol=1e-12, atol=1e-14)
    row = unflatten(tj.J[1][:, None], tj.layout)  # one trait's gradient
    for name, p in model.named_parameters():
        assert row[name][0].shape == p.shape


def test_g_matrix_identity_dense_and_operator():
    model, _, read = tiny(3)
    J = trait_jacobian(model, read).J
    Jn = J.numpy()
    np.testing.assert_allclose(g_matrix(J).numpy(), Jn @ Jn.T, rtol=1e-13)
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(J.shape[1], J.shape[1], generator=generator, dtype=torch.float64)
    M = A @ A.T
    dense = g_matrix(J, M)
    np.testing.assert_allclose(dense.numpy(), Jn @ M.numpy() @ Jn.T, rtol=1e-12)
    assert torch.equal(dense, dense.T)

    class MatmatOnly:  # no ``shape``: the output shape is checked instead
        def matmat(self, V: torch.Tensor) -> torch.Tensor:
            return M @ V

    torch.testing.assert_close(g_matrix(J, MatmatOnly()), dense, rtol=1e-12, atol=1e-12)
    # a float32 Jacobian is computed in float64
    assert g_matrix(J.float(), M).dtype == torch.float64


def test_g_matrix_with_gradient_noise_equals_j_c_jt():
    model, x, read = tiny(4)
    generator = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (len(x),), generator=generator)

    def loss(z, t):
        return nn.functional.cross_entropy(z, t, reduction="none")

    G, layout = per_example_gradients(model, loss, x, y)
    noise = GradientNoise(G, layout)
    tj = trait_jacobian(model, read)
    assert tj.layout == noise.layout
    C = noise.covariance().numpy()
    Jn = tj.J.numpy()
    reference = Jn @ C @ Jn.T
    np.testing.assert_allclose(g_matrix(tj.J, noise).numpy(), reference, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(
        g_matrix(tj.J, noise.covariance_operator()).numpy(), reference, rtol=1e-10, atol=1e-15
    )
    np.testing.assert_allclose(
        g_matrix(tj.J, noise.covariance()).numpy(), reference, rtol=1e-10, atol=1e-15
    )


def test_g_matrix_bad_inputs_name_the_field():
    J = torch.ones(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"M must have shape \(P, P\) = \(5, 5\)"):
        g_matrix(J, torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"M \(GradientNoise\) has 4 parameters"):
        g_matrix(J, GradientNoise(torch.ones(3, 4, dtype=torch.float64)))
    with pytest.raises(ValueError, match=r"M must have shape \(P, P\) = \(5, 5\)"):
        g_matrix(J, GradientNoise(torch.ones(3, 4, dtype=torch.float64)).covariance_operator())

    class Wrong:
        def matmat(self, V):
            return V[:3]

    with pytest.raises(ValueError, match=r"M.matmat\(J.T\) must return shape \(5, 2\)"):
        g_matrix(J, Wrong())
    with pytest.raises(TypeError, match="M must be None"):
        g_matrix(J, "identity")
    with pytest.raises(ValueError, match="J must be a Tensor of shape"):
        g_matrix(torch.ones(5))
    model, _, read = tiny()
    with pytest.raises(ValueError, match="unknown params"):
        trait_jacobian(model, read, params=["nope"])
    with pytest.raises(ValueError, match="repeat"):
        trait_jacobian(model, read, params=["2.bias", "2.bias"])
    with pytest.raises(ValueError, match=r"shape \(K,\)"):
        trait_jacobian(model, lambda m: read(m)[None])


def test_gmatrix_eigendecomposition_and_correlation():
    J = planted_jacobian(1)
    J[2] = 0.0  # a trait with no variance
    gm = GMatrix.from_matrix(g_matrix(J), list("abcdef"))
    G = gm.matrix.numpy()
    assert gm.names == tuple("abcdef")
    assert (gm.eigenvalues[:-1] >= gm.eigenvalues[1:]).all()
    V, lam = gm.eigenvectors, gm.eigenvalues
    torch.testing.assert_close(V @ torch.diag(lam) @ V.T, gm.matrix, rtol=1e-10, atol=1e-10)
    R = gm.correlation().numpy()
    reference = np.zeros_like(G)
    for a in range(6):
        for b in range(6):
            if G[a, a] > 0 and G[b, b] > 0:
                reference[a, b] = G[a, b] / np.sqrt(G[a, a] * G[b, b])
    np.testing.assert_allclose(R, reference, rtol=1e-12, atol=1e-15)
    assert R[2, 2] == 0.0 and np.all(R[2] == 0) and np.all(R[:, 2] == 0)
    np.testing.assert_allclose(np.delete(np.diag(R), 2), 1.0)


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
def test_clusters_recover_planted_trait_modules():
    J = planted_jacobian(2)
    truth = [0, 0, 0, 1, 1, 1]
    permutation = torch.tensor([3, 0, 4, 1, 5, 2])  # interleave the groups
    gm = GMatrix.from_matrix(g_matrix(J[permutation]), [f"t{i}" for i in range(6)])
    R = gm.correlation().numpy()
    assert np.abs(R[np.ix_([1, 3, 5], [0, 2, 4])]).max() < 1e-12  # disjoint parameter blocks
    labels = gm.clusters()
    assert labels.dtype == torch.int64 and labels.shape == (6,)
    assert adjusted_rand_score(np.array(truth)[permutation.numpy()], labels.numpy()) == 1.0
    assert (
        adjusted_rand_score(truth, GMatrix.from_matrix(g_matrix(J), list("abcdef")).clusters(2))
        == 1.0
    )
    assert torch.equal(gm.clusters(1), torch.zeros(6, dtype=torch.int64))


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
def test_clusters_of_a_two_branch_model():
    """End to end: readouts of two subnetworks that share no parameters form two modules."""

    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            self.left = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
            self.right = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))

        def forward(self, x):
            return torch.cat([self.left(x), self.right(x)], dim=-1)  # (N, 2)

    torch.manual_seed(0)
    model = TwoBranches().double()
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def read(m: nn.Module) -> torch.Tensor:  # three readouts of each branch's output
        out = m(x)  # (16, 2)
        return torch.cat([out.mean(0), out[:8].mean(0), out[0]])[[0, 2, 4, 1, 3, 5]]

    tj = trait_jacobian(model, read)
    gm = GMatrix.from_matrix(g_matrix(tj.J), [f"t{i}" for i in range(6)])
    assert gm.correlation()[:3, 3:].abs().max() == 0.0
    assert adjusted_rand_score([0, 0, 0, 1, 1, 1], gm.clusters()) == 1.0


def test_top_overlap_against_brute_force():
    G1 = g_matrix(planted_jacobian(3))
    G2 = g_matrix(planted_jacobian(4))
    names = list("abcdef")
    a, b = GMatrix.from_matrix(G1, names), GMatrix.from_matrix(G2, names)
    assert a.top_overlap(a, 2) == pytest.approx(1.0)
    V1 = np.linalg.eigh(G1.numpy())[1][:, ::-1][:, :2]
    V2 = np.linalg.eigh(G2.numpy())[1][:, ::-1][:, :2]
    assert a.top_overlap(b, 2) == pytest.approx(np.linalg.norm(V1.T @ V2) ** 2 / 2, rel=1e-10)
    with pytest.raises(ValueError, match="names must match"):
        a.top_overlap(GMatrix.from_matrix(G2, list("abcdeg")), 2)
    with pytest.raises(ValueError, match="k must be an int in 1..K-1=5"):
        a.top_overlap(b, 6)


def test_gmatrix_bad_inputs_name_the_field():
    G = g_matrix(planted_jacobian(5))
    with pytest.raises(ValueError, match="names must be 6 distinct"):
        GMatrix.from_matrix(G, list("abcde"))
    with pytest.raises(ValueError, match="names must be 6 distinct"):
        GMatrix.from_matrix(G, list("aabcde"))
    with pytest.raises(ValueError, match="G must be a non-empty square"):
        GMatrix.from_matrix(G[:5], list("abcdef"))
    asymmetric = G.clone()
    asymmetric[0, 1] += 1.0
    with pytest.raises(ValueError, match="G must be symmetric"):
        GMatrix.from_matrix(asymmetric, list("abcdef"))
    gm = GMatrix.from_matrix(G, list("abcdef"))
    with pytest.raises(ValueError, match="n_clusters must be None or an int in 1..K=6"):
        gm.clusters(7)
    with pytest.raises(ValueError, match="n_clusters must be given for fewer than 4 traits"):
        GMatrix.from_matrix(G[:3, :3], list("abc")).clusters()
