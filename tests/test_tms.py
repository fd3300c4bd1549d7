"""The Toy Models of Superposition testbed: configuration, model, data, ground truth against
brute-force loops, the feature-recovery score, and training (determinism, cache, resume, and
Elhage et al.'s superposition phase change)."""

from __future__ import annotations

import math

import pytest
import torch

from metrics import channel_blocks
from testbeds import runs, tms

TINY = tms.Config(n_features=6, n_hidden=3, sparsity=(0.5,), n_points=40, steps=30, log_every=5)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.CACHE_ENV, str(tmp_path / "cache"))


# ---- configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, field",
    [
        ({"n_features": 0}, "n_features"),
        ({"n_hidden": 2.5}, "n_hidden"),
        ({"sparsity": (0.5, 1.0)}, "sparsity"),
        ({"sparsity": ()}, "sparsity"),
        ({"importance_decay": 0.0}, "importance_decay"),
        ({"data": "stream"}, "data"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"data": "fresh", "batch_size": None}, "batch_size"),
        ({"batch_size": 41}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"checkpoints": (0, 31)}, "checkpoints"),
        ({"normalize": 1}, "normalize"),
    ],
)
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        TINY.replace(**changes)


def test_presets_match_the_papers():
    elhage = tms.preset("elhage2022")
    assert (elhage.n_features, elhage.n_hidden, elhage.data, elhage.batch_size) == (
        5,
        2,
        "fresh",
        1024,
    )
    assert (elhage.optimizer, elhage.lr, elhage.steps, elhage.importance_decay) == (
        "adamw",
        1e-3,
        10_000,
        0.9,
    )
    expected = [1 - 20 ** (-i / 9) for i in range(10)]
    assert elhage.sparsity == pytest.approx(expected, abs=1e-6)
    for name, (m, S) in {
        "lin2025_tms_m10_s0.3": (10, 0.3),
        "lin2025_tms_m10_s0.9": (10, 0.9),
        "lin2025_tms_m40_s0.9": (40, 0.9),
    }.items():
        c = tms.preset(name)
        assert (c.n_features, c.n_hidden, c.sparsity, c.n_points) == (50, m, (S,), 500)
        assert (c.data, c.normalize, c.batch_size, c.optimizer, c.lr, c.steps) == (
            "fixed",
            True,
            None,
            "adam",
            1e-3,
            5000,
        )
        assert c.importance_decay == 0.8
    with pytest.raises(ValueError, match="preset must be one of"):
        tms.preset("elhage2023")
    assert tms.preset("elhage2022", steps=7).steps == 7


# ---- model and data ---------------------------------------------------------------------------
def test_model_computes_relu_wt_w_x_plus_b_per_instance():
    model = tms.TMSModel(5, 2, n_instances=3)
    model.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.b.normal_()
    x = torch.rand(4, 3, 5)
    y = model(x)
    for i in range(3):
        W, b = model.W[i], model.b[i]
        for n in range(4):
            expected = torch.relu(W.T @ (W @ x[n, i]) + b)
            torch.testing.assert_close(y[n, i], expected)
            torch.testing.assert_close(model.hidden(x)[n, i], W @ x[n, i])
    single = model.instance(1)
    torch.testing.assert_close(single(x[:, 1]), y[:, 1])
    with pytest.raises(ValueError, match="inputs must have shape"):
        model(torch.rand(4, 5))
    with pytest.raises(ValueError, match="instance must be in 0..2"):
        model.instance(3)
    big = tms.TMSModel(400, 300)
    std = math.sqrt(2 / (300 + 400))
    assert big.W.std().item() == pytest.approx(std, rel=0.02)
    assert torch.equal(big.b, torch.zeros_like(big.b))


def test_from_weights_validates_shapes():
    W = torch.randn(3, 4)
    model = tms.TMSModel.from_weights(W, torch.ones(4))
    assert torch.equal(model.W[0], W) and torch.equal(model.b[0], torch.ones(4))
    with pytest.raises(ValueError, match=r"W must have shape \(m, n\)"):
        tms.TMSModel.from_weights(torch.randn(3))
    with pytest.raises(ValueError, match=r"b must have shape \(4,\)"):
        tms.TMSModel.from_weights(W, torch.ones(3))


def test_features_are_sparse_uniform_and_rows_unit_norm():
    g = torch.Generator().manual_seed(0)
    x = tms.sample_features(20_000, 10, (0.0, 0.9), g)
    assert x.shape == (20_000, 2, 10)
    zero = (x == 0).float().mean((0, 2))
    assert zero[0].item() < 1e-3 and zero[1].item() == pytest.approx(0.9, abs=0.01)
    active = x[:, 1][x[:, 1] > 0]
    assert active.max() <= 1 and active.mean().item() == pytest.approx(0.5, abs=0.02)
    config = tms.preset("lin2025_tms_m10_s0.9")
    data = tms.dataset(config, seed=0)
    norms = data.norm(dim=-1)
    assert data.shape == (500, 1, 50)
    assert torch.allclose(norms[norms > 0], torch.ones(1)) and (data >= 0).all()
    assert torch.equal(data, tms.dataset(config, seed=0))
    assert not torch.equal(data, tms.dataset(config, seed=1))
    assert tms.probe_inputs(config, seed=0).shape == (500, 50)
    torch.testing.assert_close(tms.importances(config)[:3], torch.tensor([1.0, 0.8, 0.64]))


# ---- ground truth -----------------------------------------------------------------------------
def test_dimensionality_matches_the_definition():
    W = torch.randn(4, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    W[:, 3] = 0
    D = tms.dimensionality(W)
    for i in range(7):
        norm = W[:, i].dot(W[:, i])
        if norm == 0:
            assert D[i] == 0
            continue
        unit = W[:, i] / norm.sqrt()
        expected = norm / sum(unit.dot(W[:, j]) ** 2 for j in range(7))
        assert D[i].item() == pytest.approx(expected.item(), rel=1e-12)
    antipodal = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(
        tms.dimensionality(antipodal), torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64)
    )


def test_feature_indicators_layout_is_channel_major():
    x = torch.rand(5, 4)
    F = tms.feature_indicators(x)
    assert F.shape == (20, 4)
    for j in range(4):
        for c in range(4):
            for i in range(5):
                expected = x[i, j] if c == j else 0.0
                assert F[tms.flat_index(5, i, c), j] == expected


def test_ground_truth_of_a_hand_built_model():
    W = torch.tensor([[1.0, 0.0, 0.5, 0.9], [0.0, 1.0, 0.5, 0.0]])
    model = tms.TMSModel.from_weights(W)
    truth = tms.ground_truth(model, torch.rand(6, 4))
    assert truth.represented.tolist() == [True, True, False, True]  # ‖W_j‖² = 1, 1, 0.5, 0.81
    assert truth.n_represented == 3 and truth.n_features == 4
    assert truth.represented_indicators().shape == (24, 3)
    with pytest.raises(ValueError, match="single-instance"):
        tms.ground_truth(tms.TMSModel(4, 2, n_instances=2), torch.rand(6, 4))
    assert tms.represented(tms.TMSModel(4, 2, n_instances=2)).shape == (2, 4)


def test_channel_blocks_in_closed_form_match_the_generic_metric():
    model = tms.TMSModel(6, 3)
    model.reset_parameters(torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.b.copy_(torch.linspace(-0.2, 0.3, 6)[None])  # some gates on, some off
    x = torch.rand(9, 6, generator=torch.Generator().manual_seed(0))
    x[x < 0.3] = 0
    closed = model.channel_blocks(x)
    assert closed.shape == (6, 9, 9) and closed.dtype == torch.float64
    torch.testing.assert_close(closed, channel_blocks(model, x), rtol=1e-10, atol=1e-12)
    # the registered regime: a hand-built network at a preset's size on the preset's inputs
    x = tms.probe_inputs(tms.preset("lin2025_tms_m10_s0.9"), seed=0)
    planted = tms.antipodal_solution(50, 10, "alive")
    torch.testing.assert_close(
        planted.channel_blocks(x), channel_blocks(planted, x), rtol=1e-10, atol=1e-12
    )
    with pytest.raises(ValueError, match="single-instance"):
        tms.TMSModel(6, 3, n_instances=2).channel_blocks(x)


# ---- hand-built solutions ---------------------------------------------------------------------
LIN2025 = ("lin2025_tms_m10_s0.3", "lin2025_tms_m10_s0.9", "lin2025_tms_m40_s0.9")
LIN2025_SEEDS = (0, 1, 2, 3, 4, 5)  # every seed a TMS claim evaluates


@pytest.mark.parametrize("unrepresented", tms.UNREPRESENTED)
def test_identity_solution_is_exact(unrepresented):
    model = tms.identity_solution(8, 5, unrepresented, features=[0, 2, 4, 6, 7])
    W = model.W[0].detach()
    assert set(W.unique().tolist()) == {0.0, 1.0} and W.sum().item() == 5
    x = torch.rand(30, 8)
    x[x < 0.3] = 0
    y = model(x)
    kept = [0, 2, 4, 6, 7]
    torch.testing.assert_close(y[:, kept], (x[:, kept] - 1e-6).clamp_min(0), rtol=0, atol=1e-7)
    other = 0.0 if unrepresented == "dead" else tms.ALIVE_BIAS
    torch.testing.assert_close(y[:, [1, 3, 5]], torch.full((30, 3), other))
    truth = tms.ground_truth(model, x)
    assert truth.represented.nonzero().flatten().tolist() == kept
    torch.testing.assert_close(truth.norms, truth.represented.double())
    torch.testing.assert_close(truth.dimensionality, truth.represented.double())
    assert tms.identity_solution(50, 10).W[0].detach().pow(2).sum(0)[:10].tolist() == [1.0] * 10
    assert tms.ground_truth(tms.identity_solution(50, 60), x.new_zeros(3, 50)).n_represented == 50


@pytest.mark.parametrize("unrepresented", tms.UNREPRESENTED)
def test_antipodal_solution_is_exact(unrepresented):
    model = tms.antipodal_solution(9, 3, unrepresented)  # 3 pairs: features 0-5
    W = model.W[0].detach()
    assert W[:, 0].tolist() == [1.0, 0.0, 0.0] and W[:, 1].tolist() == [-1.0, 0.0, 0.0]
    assert W[:, 6:].abs().sum() == 0
    x = torch.zeros(4, 9)
    x[0, 2], x[1, 3], x[2, [2, 3]], x[3, 8] = 0.5, 0.25, torch.tensor([0.75, 0.25]), 1.0
    y = model(x).detach()
    assert y[0, 2].item() == pytest.approx(0.5 - 1e-6) and y[0, 3] == 0
    assert y[1, 3].item() == pytest.approx(0.25 - 1e-6) and y[1, 2] == 0
    assert y[2, 2].item() == pytest.approx(0.5 - 1e-6) and y[2, 3] == 0  # interference
    assert y[3, 8].item() == (0.0 if unrepresented == "dead" else pytest.approx(0.02))
    truth = tms.ground_truth(model, x)
    assert truth.n_represented == 6 and tms.partner(2) == 3 and tms.partner(3) == 2
    D = truth.dimensionality
    torch.testing.assert_close(D[:6], torch.full((6,), 0.5, dtype=torch.float64))
    assert (D[6:] == 0).all()
    assert tms.antipodal_solution(50, 10).W[0].detach().abs().sum().item() == 20
    assert tms.ground_truth(tms.antipodal_solution(50, 40), x.new_zeros(3, 50)).n_represented == 50
    assert tms.antipodal_solution(50, 40, n_pairs=24).W[0].detach().abs().sum().item() == 48


def test_hand_built_solutions_validate_their_arguments():
    with pytest.raises(ValueError, match="unrepresented must be one of"):
        tms.identity_solution(5, 3, "asleep")
    with pytest.raises(ValueError, match="features must be"):
        tms.identity_solution(5, 3, features=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="features must be"):
        tms.identity_solution(5, 3, features=[0, 0])
    with pytest.raises(ValueError, match="features must be"):
        tms.identity_solution(5, 3, features=[5])
    with pytest.raises(ValueError, match=r"n_pairs must be an int in 1\.\.min.* = 2"):
        tms.antipodal_solution(5, 3, n_pairs=3)
    with pytest.raises(ValueError, match="n_hidden must be a positive int"):
        tms.antipodal_solution(5, 0)


@pytest.mark.parametrize("preset", LIN2025)
def test_hand_built_gates_sit_off_the_kinks_on_the_presets_inputs(preset):
    """On every input a TMS claim uses, the gates p_c > 0 of the hand-built networks are what
    their docstrings say, with no pre-activation at (or within round-off of) 0."""
    config = tms.preset(preset)
    n, m = config.n_features, config.n_hidden
    for seed in LIN2025_SEEDS:
        x = tms.probe_inputs(config, seed)
        assert x[x > 0].min() > 5 * -tms.REPRESENTED_BIAS  # the bias sits below every feature
        for unrepresented in tms.UNREPRESENTED:
            identity = tms.identity_solution(n, m, unrepresented)
            p = identity.preactivation(x).detach()
            assert torch.equal(p[:, :m] > 0, x[:, :m] > 0)
            assert (p[:, :m][x[:, :m] == 0] == tms.REPRESENTED_BIAS).all()
            pairs = min(m, (n - 1) // 2)
            antipodal = tms.antipodal_solution(n, m, unrepresented, n_pairs=pairs)
            q = antipodal.preactivation(x).detach()
            r = 2 * pairs
            feature, partner = x[:, :r], x[:, [tms.partner(c) for c in range(r)]]
            assert torch.equal(q[:, :r] > 0, feature > partner - tms.REPRESENTED_BIAS)
            alone = partner == 0
            assert torch.equal((q[:, :r] > 0)[alone], (feature > 0)[alone])
            assert q[:, :r].abs().min() >= -tms.REPRESENTED_BIAS / 2
            for model, pre, k in ((identity, p, m), (antipodal, q, r)):
                rest = pre[:, k:]
                if unrepresented == "dead":
                    assert (rest == tms.DEAD_BIAS).all()
                else:
                    assert (rest == tms.ALIVE_BIAS).all()
                assert torch.equal(model.b[0, k:], torch.full((n - k,), rest[0, 0].item()))


def test_feature_recovery_score_and_matching():
    x = torch.rand(30, 6)
    model = tms.TMSModel.from_weights(torch.eye(6)[:, :6] * torch.tensor([1, 1, 1, 1, 0.5, 0.5]))
    truth = tms.ground_truth(model, x)  # features 0-3 represented
    exact = truth.represented_indicators()
    score, chance = tms.feature_recovery(exact, truth)
    assert score == pytest.approx(1.0) and chance == pytest.approx(4 / 180)
    random = torch.randn(180, 4, generator=torch.Generator().manual_seed(0))
    assert tms.feature_recovery(random, truth)[0] < 0.2
    wrong = truth.indicators[:, 4:]  # unrepresented features: orthogonal supports
    assert tms.feature_recovery(wrong, truth)[0] == pytest.approx(0.0, abs=1e-12)
    assert tms.feature_recovery(exact, truth, center=True)[0] == pytest.approx(1.0)
    channels = torch.zeros(6, 30, 6)
    channels[torch.arange(4), :, torch.arange(4)] = 1.0  # "which channel" only
    channels = channels.reshape(180, 6)[:, :4]
    assert tms.feature_recovery(channels, truth)[0] > 0.5
    assert tms.feature_recovery(channels + 1e-3 * exact, truth, center=True)[0] == pytest.approx(
        1.0
    )
    features, cosines = tms.matched_cosines(exact[:, [2, 0, 3, 1]], truth)
    assert features.tolist() == [0, 1, 2, 3] and cosines == pytest.approx([1.0] * 4)
    _, partial = tms.matched_cosines(exact[:, :2], truth)
    assert sorted(partial.round(6).tolist()) == [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"directions must have shape \(180, k\)"):
        tms.feature_recovery(torch.randn(179, 2), truth)
    with pytest.raises(ValueError, match="NaN"):
        tms.feature_recovery(torch.full((180, 2), float("nan")), truth)


# ---- training ---------------------------------------------------------------------------------
def test_training_is_deterministic_logged_and_learns():
    a = tms.train(TINY, seed=0, cache=False)
    b = tms.train(TINY, seed=0, cache=False)
    for step in a.steps:
        for name, tensor in a.checkpoints[step].items():
            assert torch.equal(tensor, b.checkpoints[step][name])
    assert list(a.log.columns) == ["step", "loss", "represented"]
    assert a.log["step"].tolist() == [0, 5, 10, 15, 20, 25, 30]
    assert a.log["loss"].iloc[-1] < a.log["loss"].iloc[0]
    c = tms.train(TINY, seed=1, cache=False)
    assert not torch.equal(c.checkpoints[0]["W"], a.checkpoints[0]["W"])


def test_fresh_batches_and_instances_are_logged_per_instance():
    config = TINY.replace(data="fresh", batch_size=16, sparsity=(0.0, 0.9), steps=10)
    run = tms.train(config, seed=0, cache=False)
    assert {"loss_0", "loss_1", "represented_0", "represented_1"} <= set(run.log.columns)
    assert run.final_model().W.shape == (2, 3, 6)


def test_cache_loads_and_interrupted_training_resumes(monkeypatch):
    config = TINY.replace(steps=20, checkpoints=(0, 5, 12, 20))
    reference = tms.train(config, seed=3, cache=False)
    monkeypatch.setattr(runs, "PARTIAL_SAVE_SECONDS", 0.0)
    real_save = runs.PartialSaver.maybe_save

    def save_then_stop(self, make_state):
        real_save(self, make_state)
        if make_state()["step"] == 9:
            raise KeyboardInterrupt

    monkeypatch.setattr(runs.PartialSaver, "maybe_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        tms.train(config, seed=3)
    monkeypatch.setattr(runs.PartialSaver, "maybe_save", real_save)
    resumed = tms.train(config, seed=3)
    assert not resumed.from_cache
    for step in reference.steps:
        for name, tensor in reference.checkpoints[step].items():
            assert torch.equal(resumed.checkpoints[step][name], tensor), (step, name)
    assert reference.log.equals(resumed.log)
    assert tms.train(config, seed=3).from_cache
    with pytest.raises(ValueError, match="testbeds.tms.Config"):
        tms.train(object(), seed=0)


@pytest.mark.slow
def test_elhage2022_shows_the_superposition_phase_change():
    """Elhage et al. 2022: with 5 features and 2 dimensions, dense inputs give 2 features with
    dimensions of their own (D = 1); sparse inputs pack 4 or more into antipodal pairs."""
    run = tms.train(tms.preset("elhage2022"), seed=0)
    model = run.final_model()
    counts = tms.represented(model).sum(1)
    assert counts[0] == 2 and counts[-1] >= 4
    dense_D = tms.dimensionality(model.W[0].detach())[:2]
    sparse_D = tms.dimensionality(model.W[-1].detach())
    assert dense_D.min() > 0.95
    assert (sparse_D[tms.represented(model)[-1]] < 0.6).all()
