"""Police-sector scores against brute-force float64 references, a planted police sector and
negative controls."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

import metrics.police
from metrics.noise import per_example_gradients
from metrics.police import PoliceScores, loss_hvp, police_scores, police_scores_for

D = 4  # weights per block of the planted model
SHARE_MAX, COUPLING_MIN = 0.01, 0.5
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.* is deprecated")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are small: on a busy 2-core machine, thread wake-ups cost more than
    the arithmetic (20× on the random-partition control), so run this module on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def squared_error(z, t):
    return ((z - t) ** 2).sum(1)


def tiny(n_examples: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(n_examples, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(n_examples, 2, generator=generator, dtype=torch.float64)
    n_params = sum(p.numel() for p in model.parameters())
    order = torch.randperm(n_params, generator=generator)
    sectors = torch.zeros(3, n_params, dtype=torch.bool)
    for i, part in enumerate(order.tensor_split(3)):
        sectors[i, part] = True
    return model, x, y, sectors


def dense_reference(model, loss, x, y):
    """Gradient matrix (N, P) by an autograd loop and the Hessian (P, P) of the mean loss."""
    params = list(model.parameters())
    rows = [
        torch.cat(
            [
                g.reshape(-1)
                for g in torch.autograd.grad(loss(model(x[i : i + 1]), y[i : i + 1])[0], params)
            ]
        )
        for i in range(len(x))
    ]
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]

    def mean_loss(flat):
        theta = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes, strict=True)}
        return loss(functional_call(model, theta, (x,)), y).mean()

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    return torch.stack(rows).detach(), hessian(mean_loss)(flat)


def reference_scores(G, H, sectors, examples):
    """s, c, κ straight from the definitions, with explicit covariance blocks."""
    mean = G.mean(0)
    share = torch.stack([mean[m].square().sum() for m in sectors]) / mean.square().sum()
    C = (G - mean).T @ (G - mean) / len(G)
    norm = [[torch.linalg.matrix_norm(C[p][:, q]) for q in sectors] for p in sectors]
    S = len(sectors)
    coupling = torch.tensor(
        [[norm[i][j] / (norm[i][i] * norm[j][j]).sqrt() for j in range(S)] for i in range(S)],
        dtype=torch.float64,
    )
    rows = G[examples]
    curvature = torch.tensor(
        [[(rows[:, p] @ H[p][:, q] * rows[:, q]).sum(1).mean() for q in sectors] for p in sectors],
        dtype=torch.float64,
    )
    return share, coupling, curvature


def test_docstring_example():
    assert doctest.testmod(metrics.police).failed == 0


@pytest.mark.parametrize("n_examples", [7, 40])  # data-space (N ≤ P) and parameter-space forms
def test_scores_match_dense_reference(n_examples):
    model, x, y, sectors = tiny(n_examples)
    G, H = dense_reference(model, squared_error, x, y)
    for examples in (torch.arange(n_examples), torch.tensor([0, 3, 5])):
        subset = None if len(examples) == n_examples else examples
        scores = police_scores_for(
            model, squared_error, x, y, sectors, curvature_examples=subset, chunk_size=16
        )
        share, coupling, curvature = reference_scores(G, H, sectors, examples)
        torch.testing.assert_close(scores.share, share, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(scores.coupling, coupling, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(scores.curvature, curvature, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(scores.curvature, scores.curvature.T, rtol=1e-10, atol=1e-14)
        assert scores.share.dtype == scores.coupling.dtype == torch.float64
    partial = police_scores_for(model, squared_error, x, y, sectors[:2])  # P outside sectors
    torch.testing.assert_close(partial.share, scores.share[:2])
    torch.testing.assert_close(partial.coupling, scores.coupling[:2, :2])


def test_loss_hvp_matches_dense_hessian():
    model, x, y, _ = tiny(7, seed=1)
    G, H = dense_reference(model, squared_error, x, y)
    V = torch.randn(10, H.shape[0], generator=torch.Generator().manual_seed(2), dtype=H.dtype)
    hvp = loss_hvp(model, squared_error, x, y, chunk_size=3)
    torch.testing.assert_close(hvp(V), V @ H, rtol=1e-10, atol=1e-12)
    G_model, _ = per_example_gradients(model, squared_error, x, y)
    torch.testing.assert_close(G_model, G, rtol=1e-12, atol=1e-14)  # the same layout


def test_partner_police_and_table():
    scores = PoliceScores(
        share=torch.tensor([0.6, 0.0, 0.4, 0.001], dtype=torch.float64),
        coupling=torch.tensor(
            [
                [1.0, 0.9, 0.2, 0.1],
                [0.9, 1.0, 0.7, 0.3],
                [0.2, 0.7, 1.0, 0.6],
                [0.1, 0.3, 0.6, 1.0],
            ],
            dtype=torch.float64,
        ),
        curvature=torch.tensor(
            [
                [2.0, 1.0, 0.0, 0.5],
                [1.0, 3.0, -0.5, 0.0],
                [0.0, -0.5, 1.0, -1.0],
                [0.5, 0.0, -1.0, 1.0],
            ],
            dtype=torch.float64,
        ),
    )
    assert scores.partner().tolist() == [1, 0, 1, 2]
    # sector 1: partner 0 has κ > 0 but sector 2 (c = 0.7, κ < 0) qualifies; sector 3 polices 2
    assert scores.police(SHARE_MAX, COUPLING_MIN) == [(1, 2), (3, 2)]
    table = scores.table(SHARE_MAX, COUPLING_MIN)
    assert list(table.columns) == [
        "sector",
        "share",
        "partner",
        "coupling",
        "curvature",
        "sign",
        "police",
    ]
    assert table["partner"].tolist() == [1, 0, 1, 2]
    assert table["coupling"].tolist() == [0.9, 0.9, 0.7, 0.6]
    assert table["sign"].tolist() == [1, 1, -1, -1]
    assert table["police"].tolist() == [False, True, False, True]
    assert scores.police(share_max=0.0, coupling_min=0.65) == [(1, 2)]
    with pytest.raises(ValueError, match="coupling_min"):
        scores.police(SHARE_MAX, float("nan"))


def test_zero_mean_gradient_and_zero_covariance():
    """ḡ = 0 gives s = 0; a sector with constant gradients (C_PP = 0) has c = 0 off the
    diagonal."""
    G = torch.tensor([[1.0, -1.0, 2.0], [-1.0, 1.0, 2.0]], dtype=torch.float64)
    sectors = torch.eye(3, dtype=torch.bool)
    scores = police_scores(G, sectors, lambda V: V)
    assert scores.share.tolist() == [0.0, 0.0, 1.0]
    assert scores.coupling.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    torch.testing.assert_close(scores.curvature, torch.diag(G.square().mean(0)))  # H = I
    G[:, 2] = 0.0
    assert police_scores(G, sectors, lambda V: V).share.tolist() == [0.0, 0.0, 0.0]


def planted(noise_fraction: float = 0.2, n_examples: int = 4000, seed: int = 0):
    r"""A linear model in which block P exists only to cancel block Q's noise.

    f(x) = a·x_Q + b·x_P + c·x_R (a, b, c ∈ R^4; sectors Q, P, R = weights 0–3, 4–7, 8–11),
    loss ½(f − y)². A fraction 1 − π of *signal* examples has x_Q = x_P = s ~ N(0, I) and target
    w*·s; a fraction π (= 0.2) of *noise* examples has x_Q = ξ, x_P = −ξ, ξ ~ N(0, I) and target
    0, so f = (a − b)·ξ there: Q writes noise into the output that P can subtract. R reads an
    independent channel z ~ N(0, σ_z² I), σ_z = 3, on every example, with target part v*·z.

    Q sits off the optimum, a = w*/2 + δ; R slightly off, c = v* + e; b is the least-squares
    optimum given a and c, so ḡ_P = 0 exactly. With u = a + b − w*, m = a − b the residual
    weights on signal and noise examples and ρ = σ_z²‖e‖² R's residual variance, population
    values are (1 − π) u = π m at P's optimum (here m = 1.6 δ), ḡ_Q = 2π m, ḡ_R = σ_z² e,
    H_PQ = (1 − 2π) I > 0 and g_P = g_Q = r s on signal examples, g_P = −g_Q = −r ξ on noise
    examples, whence

        κ_PQ = (1 − 2π)[(d + 2)(π²/(1 − π) − π)‖m‖² + (1 − 2π) d ρ]  (= −1.32 here) < 0:

    the residual energy sits on the noise examples, where P's and Q's gradients are
    anti-aligned. With M_x = ‖x‖² I + 2 x xᵀ, C_PQ = (1 − π)(M_u + ρI) − π(M_m + ρI) and
    C_PP = (1 − π)(M_u + ρI) + π(M_m + ρI), C_QQ = C_PP − ḡ_Q ḡ_Qᵀ, so c_PQ ≈ (1 − 2π)
    (‖C_PP‖_F / ‖C_QQ‖_F)^½ (= 0.61 here; the signal examples, where g_P = g_Q, pull it below
    1). R's residual is noise shared by P and Q that raises C_PQ and κ_PQ on the signal
    examples, hence the strong channel with a small weight error: R's mean gradient σ_z² e is
    large (s_R ≈ 0.5) while ρ = 0.044 stays small.

    Returns the model (float64), inputs (N, 12), targets (N,) and the masks (3, 12) of Q, P, R.
    """
    generator = torch.Generator().manual_seed(seed)
    n_noise = round(noise_fraction * n_examples)
    w = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    v = torch.tensor([0.5, 1.0, -1.0, 0.3], dtype=torch.float64)
    signal = torch.randn(n_examples - n_noise, D, generator=generator, dtype=torch.float64)
    xi = torch.randn(n_noise, D, generator=generator, dtype=torch.float64)
    z = 3.0 * torch.randn(n_examples, D, generator=generator, dtype=torch.float64)
    x_q, x_p = torch.cat([signal, xi]), torch.cat([signal, -xi])
    y = torch.cat([signal @ w, torch.zeros(n_noise, dtype=torch.float64)]) + z @ v
    a = w / 2 + 0.5 * torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    c = v + 0.035 * torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    b = torch.linalg.lstsq(x_p, (y - x_q @ a - z @ c)[:, None]).solution[:, 0]
    model = nn.Linear(3 * D, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.cat([a, b, c])[None])
    sectors = torch.zeros(3, 3 * D, dtype=torch.bool)
    for i in range(3):
        sectors[i, i * D : (i + 1) * D] = True
    return model, torch.cat([x_q, x_p, z], dim=1), y, sectors


def half_squared_error(z, t):
    return 0.5 * (z[:, 0] - t) ** 2


Q, P, R = 0, 1, 2


def test_planted_police_sector_is_found():
    model, x, y, sectors = planted()
    scores = police_scores_for(model, half_squared_error, x, y, sectors, chunk_size=1024)
    assert scores.police(SHARE_MAX, COUPLING_MIN) == [(P, Q)]
    assert scores.police(1.0, COUPLING_MIN) == [(Q, P), (P, Q)]  # c, κ are symmetric; s is not
    assert scores.share[P] < 1e-20
    assert scores.share[Q] > 0.3 and scores.share[R] > 0.3
    assert scores.coupling[P, Q] >= 0.55
    assert scores.curvature[P, Q] < -1.0
    table = scores.table(SHARE_MAX, COUPLING_MIN)
    assert table["police"].tolist() == [False, True, False]
    assert table.loc[P, "partner"] == Q and table.loc[P, "sign"] == -1


def test_random_sectors_are_not_police():
    """20 random partitions of the 12 weights into 3 sectors of 4: only a sector equal to the
    true P could be flagged, since every single Q or R weight carries a mean-gradient share of
    about 0.12 (≫ share_max). Without the share condition (share_max = 1) none is flagged
    either: a random sector mixes P's and Q's weights, and the coupling between sectors stays
    below 0.35 (P's and Q's i-th weights, the strongly co-varying pairs, often share a sector)."""
    model, x, y, sectors = planted()
    G, _ = per_example_gradients(model, half_squared_error, x, y)
    H = loss_hvp(model, half_squared_error, x, y)(torch.eye(3 * D, dtype=torch.float64))
    torch.testing.assert_close(H, x.T @ x / len(x))  # ∇²L = E[x xᵀ] for this linear model
    generator = torch.Generator().manual_seed(3)
    flagged = 0
    for _ in range(20):
        order = torch.randperm(3 * D, generator=generator)
        labels = torch.empty(3 * D, dtype=torch.long)
        labels[order] = torch.arange(3 * D) // D
        random_sectors = labels[None, :] == torch.arange(3)[:, None]
        scores = police_scores(G, random_sectors, lambda V: V @ H)
        police = scores.police(SHARE_MAX, COUPLING_MIN)
        true_p = [i for i in range(3) if torch.equal(random_sectors[i], sectors[P])]
        assert all(p in true_p for p, _ in police)
        flagged += len(police)
        assert scores.police(1.0, COUPLING_MIN) == []
    assert flagged == 0


def test_no_noise_examples_no_police():
    """π = 0: x_P = x_Q on every example, so at P's optimum g_P = g_Q per example — both have
    zero mean gradient and c_PQ = 1, but κ_PQ = E[g_Pᵀ E[s sᵀ] g_P] > 0: P duplicates Q instead
    of cancelling it, and nothing is flagged (R's gradient noise is uncorrelated with P's)."""
    model, x, y, sectors = planted(noise_fraction=0.0)
    examples = torch.arange(0, len(x), 8)  # κ_PQ > 0 on any subset; spares HVPs
    scores = police_scores_for(
        model, half_squared_error, x, y, sectors, curvature_examples=examples, chunk_size=1024
    )
    assert scores.police(SHARE_MAX, COUPLING_MIN) == []
    assert scores.share[P] < 1e-20 and scores.share[Q] < 1e-20
    assert scores.coupling[P, Q] > 1 - 1e-9
    assert scores.curvature[P, Q] > 0
    assert scores.coupling[P, R] < 0.3


def test_errors_name_the_argument():
    G = torch.randn(5, 6, dtype=torch.float64)
    sectors = torch.zeros(2, 6, dtype=torch.bool)
    sectors[0, :3], sectors[1, 3:] = True, True
    identity = lambda V: V  # noqa: E731
    overlapping = sectors.clone()
    overlapping[1, 2] = True
    cases = [
        (dict(sectors=overlapping), "sectors must be disjoint"),
        (dict(sectors=sectors[:, :5]), r"sectors must be a bool matrix \(S, P=6\)"),
        (dict(sectors=sectors.long()), "sectors must be a bool matrix"),
        (dict(sectors=sectors[:1]), "sectors must hold at least 2"),
        (dict(sectors=torch.cat([sectors, torch.zeros(1, 6, dtype=torch.bool)])), "nonempty"),
        (dict(gradients=G[0]), "gradients must have shape"),
        (dict(curvature_examples=torch.tensor([0, 5])), "curvature_examples"),
        (dict(curvature_examples=torch.tensor([0.0])), "curvature_examples"),
        (dict(hvp=lambda V: V[:, :5]), "hvp must map"),
    ]
    for change, message in cases:
        arguments = dict(gradients=G, sectors=sectors, hvp=identity, curvature_examples=None)
        arguments.update(change)
        gradients, sectors_, hvp = (arguments.pop(k) for k in ("gradients", "sectors", "hvp"))
        with pytest.raises(ValueError, match=message):
            police_scores(gradients, sectors_, hvp, **arguments)
    model, x, y, _ = tiny(7)
    with pytest.raises(ValueError, match="chunk_size"):
        loss_hvp(model, squared_error, x, y, chunk_size=0)
    with pytest.raises(ValueError, match="differ in length"):
        loss_hvp(model, squared_error, x, y[:5])
    with pytest.raises(ValueError, match="V must have shape"):
        loss_hvp(model, squared_error, x, y)(torch.ones(2, 3, dtype=torch.float64))
