"""Falsifiability of the trajectory claims' statistics (H4, H5, H6) and their shared
computations, on planted cases and tiny networks (SCIENCE.md §2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import kendalltau

from hypotheses.test_h4_kernel_rank import H4_RATIO_MIN, H4_SPEARMAN_MIN, rank_verdict
from hypotheses.test_h5_grokking_spectrum import central_difference, outside, peak
from hypotheses.test_h6_cka_cca import H6_KENDALL_MIN, kendall, paired_similarities
from hypotheses.trajectories import (
    is_constant,
    kernel_family,
    loss_gradient_gram,
    pair_similarities,
    rank_statistics,
    thinned,
)
from metrics.entk import entk
from metrics.noise import per_example_gradients
from metrics.spectra import cosine_normalize, effective_rank
from testbeds import modadd, tms
from testbeds.contract import Probe


def _frame(steps, values, metric="erank"):
    return pd.DataFrame(
        {
            "testbed": "x",
            "preset": "x",
            "seed": 0,
            "step": list(steps),
            "metric": metric,
            "value": list(values),
        }
    )


def _planted_kernels(n=60, steps=12, seed=0):
    """Kernels whose inputs separate over 'training': a shared constant direction plus an
    input-specific part whose weight grows, so the cosine-normalised effective rank climbs."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n, generator=g, dtype=torch.float64)
    specific = X @ X.T / n
    shared = torch.ones(n, n, dtype=torch.float64)
    return [shared + (t / steps) ** 2 * 4 * specific for t in range(steps + 1)]


def _erank(K):
    return effective_rank(torch.linalg.eigvalsh(cosine_normalize(K)).clamp_min(0))


def test_h4_passes_a_planted_climb_and_fails_its_reverse():
    eranks = [_erank(K) for K in _planted_kernels()]
    steps = range(0, 130, 10)
    climb = rank_verdict(_frame(steps, eranks))
    assert climb["spearman"] >= H4_SPEARMAN_MIN and climb["ratio"] >= H4_RATIO_MIN
    fall = rank_verdict(_frame(steps, eranks[::-1]))
    assert fall["spearman"] < 0 and fall["ratio"] < 1
    with pytest.warns(Warning, match="constant"):  # ρ of a constant series is undefined
        flat = rank_verdict(_frame(steps, [eranks[0]] * len(eranks)))
    assert flat["ratio"] == pytest.approx(1.0)


def test_rank_statistics_on_known_spectra():
    n = 20
    K = torch.eye(n, dtype=torch.float64) * torch.arange(1, n + 1)  # cosine-normalised: I
    out = rank_statistics(K, {"a": K, "b": torch.zeros(n, n)}, torch.ones(n, n))
    assert out["erank"] == pytest.approx(n) and out["participation_ratio"] == pytest.approx(n)
    lam = torch.arange(1, n + 1, dtype=torch.float64)
    assert out["erank_raw"] == pytest.approx(effective_rank(lam))
    assert out["erank_loss_gradient"] == pytest.approx(1.0)  # rank one
    assert "erank_layer/a" in out and "erank_layer/b" not in out  # an all-zero kernel is skipped


def test_h5_peak_finder_and_window():
    t = np.arange(0, 205, 5)
    s = pd.Series(1 / (1 + np.exp(-(t - 95) / 8)), index=t)
    epoch, rate = peak(s)
    assert epoch in (90, 95, 100) and rate > 0
    d = central_difference(s)
    assert d.index[0] == 5 and d.index[-1] == 195
    assert d.loc[50] == pytest.approx((s.loc[55] - s.loc[45]) / 10)
    assert outside(95, 80, 110) == 0 and outside(70, 80, 110) == 10 and outside(120, 80, 110) == 10
    assert outside(float("nan"), 80, 110) == float("inf")
    # a flat series has no peak larger than zero
    assert peak(pd.Series(np.ones(10), index=range(0, 50, 5)))[1] == 0


def test_h6_statistic_controls():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=2000), rng.uniform(size=2000)
    assert abs(kendall(a, b)) < 0.05  # independent random scores: τ ≈ 0
    assert kendall(a, np.sqrt(a)) == pytest.approx(1.0)  # monotone: τ = 1
    assert kendall(a, -a) == pytest.approx(-1.0)
    assert kendall(a, a + rng.normal(scale=0.05, size=a.size)) >= H6_KENDALL_MIN
    assert kendall(a, np.sqrt(a)) == pytest.approx(kendalltau(a, np.sqrt(a)).statistic)


def test_paired_similarities_matches_items():
    frame = pd.concat(
        [
            _frame([0, 1], [0.1, 0.2], "cka/F/x|B/x"),
            _frame([0, 1], [0.3, 0.4], "svcca/F/x|B/x"),
            _frame([0, 1], [0.5, 0.6], "cka/F/x|Θ/x"),
            _frame([0, 1], [0.7, 0.8], "svcca/F/x|Θ/x"),
            _frame([0, 1], [9.0, 9.0], "erank"),
        ]
    )
    items = paired_similarities(frame)
    assert len(items) == 4
    row = items[(items["step"] == 1) & (items["pair"] == "F/x|Θ/x")].iloc[0]
    assert (row["cka"], row["svcca"]) == (0.6, 0.8)


def test_pair_similarities_leave_out_constant_kernels():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 4, generator=g, dtype=torch.float64)
    kernels = {
        "F/a": X @ X.T,
        "B/a": torch.full((30, 30), 0.25, dtype=torch.float64),
        "Θ/a": (X @ X.T) ** 2,
    }
    assert is_constant(kernels["B/a"]) and not is_constant(kernels["F/a"])
    out = pair_similarities(kernels)
    assert out["constant/B/a"] == 1.0
    assert set(k for k in out if k.startswith("cka/")) == {"cka/F/a|Θ/a"}
    assert out["svcca_dim/F/a"] == 4.0


def test_kernel_family_sums_to_the_full_kernel():
    torch.manual_seed(0)
    model = modadd.ModAddTransformer(p=5, d_model=8, n_heads=2, d_mlp=16).double()
    tokens = torch.stack([*modadd.pairs(5), torch.full((25,), 5)], 1)
    kernels, full = kernel_family(model, tokens)
    assert torch.allclose(full, entk(model, tokens).double(), atol=1e-10)
    assert {k.split("/")[0] for k in kernels} == {"F", "B", "Θ"}
    assert len(kernels) == 3 * 8  # eight Linear/Embedding layers


def _gram(G):
    return G @ G.T


@pytest.mark.parametrize("arch", ["mlp", "transformer", "tms"])
def test_loss_gradient_gram_equals_per_example_gradients(arch):
    torch.manual_seed(0)
    if arch == "tms":
        model = tms.TMSModel(6, 3).double()
        x = torch.rand(12, 6, dtype=torch.float64)
        w = 0.8 ** torch.arange(6, dtype=torch.float64)

        def loss(out, y):
            return ((out - y) ** 2 * w).sum(-1)

        inputs, targets = x, x
    else:
        config = modadd.Config(
            arch=arch,
            p=5,
            width=8,
            d_model=8,
            n_heads=2,
            d_mlp=8,
            loss=("mse" if arch == "mlp" else "cross_entropy"),
        )
        model = config.build_model().double()
        inputs = modadd.probe_inputs(config)
        inputs = inputs.double() if inputs.is_floating_point() else inputs
        targets = modadd.labels(5)
        loss = modadd.per_example_loss(config)

    G, _ = per_example_gradients(model, loss, inputs, targets)
    probe = Probe(inputs=inputs, targets=targets, loss=loss)
    assert torch.allclose(loss_gradient_gram(model, probe), _gram(G), rtol=1e-9, atol=1e-12)


def test_thinned_keeps_ends():
    steps = list(range(39))
    kept = thinned(steps)
    assert kept[0] == 0 and kept[-1] == 38 and len(kept) == 14


# ---- H4′: the erank trajectory and its random-move control -------------------------------------
def test_h4_v2_statistics_against_a_float64_brute_force(tmp_path, monkeypatch):
    from torch.func import functional_call, jacrev, vmap

    from hypotheses.test_h4_rank_above_random_move import cosine_erank, h4_v2_statistics
    from testbeds import runs

    monkeypatch.setenv(runs.CACHE_ENV, str(tmp_path))
    run = modadd.train(modadd.Config(p=5, width=12, epochs=30, checkpoints=(0, 10, 20, 30)), 3)
    probe = modadd.testbed.probe(run)

    def brute(model) -> float:
        model = model.double()
        params = {k: v.detach() for k, v in model.named_parameters()}
        x = probe.inputs.double()

        def out(p, xi):
            return functional_call(model, p, (xi[None],))[0]

        jac = vmap(jacrev(out), in_dims=(None, 0))(params, x)  # per input: (outputs, *param)
        flat = torch.cat([j.reshape(len(x), j.shape[1], -1) for j in jac.values()], -1)
        K = torch.einsum("icp,jcp->ij", flat, flat)
        d = K.diagonal().rsqrt()
        lam = torch.linalg.eigvalsh(d[:, None] * K * d[None]).clamp_min(0)
        p = lam / lam.sum()
        return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))

    for step in run.steps:
        assert cosine_erank(run.model_at(step), probe) == pytest.approx(
            brute(run.model_at(step)), rel=1e-4
        )
    stats = h4_v2_statistics(run, "lin2025_mlp", seed=3)
    assert stats["checkpoints"] == 4
    assert stats["erank_init"] == pytest.approx(brute(run.model_at(0)), rel=1e-4)
    assert stats["end_over_moved"] == pytest.approx(stats["erank_end"] / stats["erank_moved"])
    assert stats["moved_over_init"] == pytest.approx(stats["erank_moved"] / stats["erank_init"])
