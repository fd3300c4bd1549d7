"""The matrix-free flattened eNTK and the top-k eigensolvers, against brute-force float64
references: per-example Jacobians from one autograd call per (input, readout) and dense
eigendecompositions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metrics import operators
from metrics.eigensolvers import DenseOperator, top_eigenpairs
from metrics.operators import EntkOperator, channel_scale, flatten_full, flattened_entk
from metrics.spectra import normalized_overlap
from testbeds.tms import TMSModel


def brute_jacobian(model: nn.Module, inputs: torch.Tensor, readout) -> torch.Tensor:
    """(R·N, P) channel-major Jacobian, one autograd call per (input, readout), float64."""
    model = model.double()
    params = [p for p in model.parameters() if p.requires_grad]
    rows = {}
    inputs = inputs.double() if inputs.is_floating_point() else inputs
    for i, x in enumerate(inputs):
        y = readout(model(x[None]))[0]
        for r in range(len(y)):
            grads = torch.autograd.grad(y[r], params, retain_graph=True, allow_unused=True)
            rows[r, i] = torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
    R = 1 + max(r for r, _ in rows)
    return torch.stack([rows[r, i] for r in range(R) for i in range(len(inputs))])


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def tms_model() -> TMSModel:
    model = TMSModel(7, 3)
    model.reset_parameters(torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.b.copy_(torch.linspace(-0.3, 0.2, 7)[None])
    return model


def embedding_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(5, 3), nn.Flatten(), nn.Linear(6, 2))


CASES = {
    "structured_embedding_full": (
        embedding_net,
        lambda: torch.randint(5, (9, 2)),
        "full",
        lambda z: z,
    ),
    "structured_mlp_full": (mlp, lambda: torch.randn(9, 4), "full", lambda z: z),
    "structured_mlp_sum": (mlp, lambda: torch.randn(9, 4), "sum", lambda z: z.sum(1, keepdim=True)),
    "structured_mlp_index": (mlp, lambda: torch.randn(9, 4), 2, lambda z: z[:, 2:3]),
    "generic_tms_full": (tms_model, lambda: torch.rand(11, 7), "full", lambda z: z),
    "generic_tms_callable": (
        tms_model,
        lambda: torch.rand(11, 7),
        lambda z: (z**2).sum(1),
        lambda z: (z**2).sum(1, keepdim=True),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk_size", [4, 1024])
def test_operator_matches_brute_force_kernel(case, chunk_size):
    make_model, make_inputs, output, readout = CASES[case]
    torch.manual_seed(3)
    model, inputs = make_model(), make_inputs()
    J = brute_jacobian(make_model(), inputs, readout)
    scale = torch.rand(J.shape[0], dtype=torch.float64) + 0.5
    op = EntkOperator(model, inputs, output=output, scale=scale, chunk_size=chunk_size)
    reference = scale[:, None] * (J @ J.T) * scale[None, :]
    assert op.shape == reference.shape
    V = torch.randn(J.shape[0], 5, dtype=torch.float64)
    torch.testing.assert_close(op.matmat(V), reference @ V, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op.matmat(V[:, 0]), reference @ V[:, 0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op.dense(block=3), reference, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op.diagonal(block=4), reference.diagonal(), rtol=1e-10, atol=1e-12)
    assert op.trace() == pytest.approx(float(reference.trace()), rel=1e-10)
    assert op.n_params == J.shape[1]


@pytest.mark.parametrize("make_model", [mlp, tms_model])
def test_jacobian_products_are_adjoint(make_model):
    model = make_model()
    inputs = torch.rand(8, 4 if make_model is mlp else 7)
    op = EntkOperator(model, inputs)
    V = torch.randn(op.shape[0], 3, dtype=torch.float64)
    U = {n: torch.randn(3, *s, dtype=torch.float64) for n, s in op.param_shapes.items()}
    JU = op.matvec_jacobian(U)  # (R·N, 3)
    JtV = op.rmatvec_jacobian(V)  # name -> (3, *shape)
    lhs = (JU * V).sum(0)
    rhs = sum((U[n] * JtV[n]).reshape(3, -1).sum(1) for n in U)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)


def test_dense_flattened_entk_layout_and_scale():
    model, inputs = tms_model(), torch.rand(5, 7)
    J = brute_jacobian(tms_model(), inputs, lambda z: z)
    K = flattened_entk(model, inputs)
    torch.testing.assert_close(K, J @ J.T, rtol=1e-10, atol=1e-12)
    s = channel_scale(torch.linspace(1.0, 0.1, 7), 5, beta=1.0)
    torch.testing.assert_close(flattened_entk(model, inputs, scale=s), s[:, None] * K * s)
    full = torch.randn(5, 5, 7, 7)
    flat = flatten_full(full)
    for c, d, i, j in [(0, 0, 0, 0), (3, 5, 1, 4), (6, 2, 4, 0)]:
        assert flat[c * 5 + i, d * 5 + j] == full[i, j, c, d]


def test_channel_scale_is_importance_to_the_half_beta():
    w = torch.tensor([1.0, 0.8, 0.64])
    s = channel_scale(w, 2, beta=1.0)
    torch.testing.assert_close(
        s, torch.tensor([1.0, 1.0, 0.8**0.5, 0.8**0.5, 0.8, 0.8], dtype=torch.float64)
    )
    assert torch.equal(channel_scale(w, 2, beta=0.0), torch.ones(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="positive"):
        channel_scale(torch.tensor([1.0, 0.0]), 2)
    with pytest.raises(ValueError, match="n_inputs"):
        channel_scale(w, 0)


def test_operator_copies_the_model_and_validates_arguments(monkeypatch):
    model, inputs = tms_model(), torch.rand(6, 7)
    op = EntkOperator(model, inputs)
    before = op.dense()
    with torch.no_grad():
        model.W.mul_(2.0)
    torch.testing.assert_close(op.dense(), before)
    with pytest.raises(ValueError, match="trace"):
        EntkOperator(model, inputs, output="trace")
    with pytest.raises(ValueError, match="scale"):
        EntkOperator(model, inputs, scale=torch.ones(5))
    with pytest.raises(ValueError, match="chunk_size"):
        EntkOperator(model, inputs, chunk_size=0)
    monkeypatch.setattr(operators, "DENSE_MAX_ROWS", 10)
    with pytest.raises(ValueError, match="top_eigenpairs"):
        op.dense()


# ---- eigensolvers -----------------------------------------------------------------------------
def planted_spectrum(size: int = 300, k: int = 12, seed: int = 0):
    """A PSD matrix with known, well separated top eigenvalues 2^-i and a flat tail."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(size, size, generator=g, dtype=torch.float64))
    values = torch.cat(
        [2.0 ** -torch.arange(k, dtype=torch.float64), torch.full((size - k,), 1e-4)]
    )
    return (Q * values) @ Q.T, values[:k], Q[:, :k]


@pytest.mark.parametrize("method", ["lanczos", "dense"])
def test_planted_spectrum_is_recovered(method):
    K, values, vectors = planted_spectrum()
    pairs = top_eigenpairs(DenseOperator(K), 12, method=method)
    torch.testing.assert_close(pairs.values, values, rtol=1e-8, atol=1e-10)
    assert normalized_overlap(pairs.vectors, vectors) >= 1 - 1e-10
    torch.testing.assert_close(pairs.vectors.T @ pairs.vectors, torch.eye(12, dtype=torch.float64))
    assert (pairs.matvecs > 0) == (method != "dense")


def test_matrix_free_eigenpairs_match_dense_on_a_tms_kernel():
    """The issue's acceptance check: on a small flattened eNTK, iterative top-k eigenvectors
    span the dense ones (overlap ≥ 0.999 where the eigenvalues are well separated)."""
    model, inputs = tms_model(), torch.rand(40, 7, generator=torch.Generator().manual_seed(2))
    scale = channel_scale(0.8 ** torch.arange(7.0), 40, beta=1.0)
    op = EntkOperator(model, inputs, scale=scale)
    dense = top_eigenpairs(flattened_entk(model, inputs, scale=scale), 20, method="dense")
    pairs = top_eigenpairs(op, 20, method="lanczos")
    torch.testing.assert_close(pairs.values, dense.values, rtol=1e-7, atol=1e-9 * dense.values[0])
    gaps = dense.values[:-1] / dense.values[1:]
    k = int(torch.nonzero(gaps > 1.05).max()) + 1  # a well separated leading block
    assert k >= 5
    assert normalized_overlap(pairs.vectors[:, :k], dense.vectors[:, :k]) >= 0.999


def test_eigensolver_is_reproducible_and_validates():
    K, _, _ = planted_spectrum(size=80, k=5)
    a = top_eigenpairs(K, 5, seed=3)
    b = top_eigenpairs(K, 5, seed=3)
    assert torch.equal(a.values, b.values) and torch.equal(a.vectors, b.vectors)
    with pytest.raises(ValueError, match="method"):
        top_eigenpairs(K, 5, method="lobpcg")
    with pytest.raises(ValueError, match="k must be"):
        top_eigenpairs(K, 79)
    with pytest.raises(ValueError, match="operator"):
        top_eigenpairs(object(), 3)
    with pytest.raises(ValueError, match="square"):
        DenseOperator(torch.zeros(3, 4))
