"""The corrupted-label testbed and the falsifiability of the H3 statistics (SCIENCE.md §2).

Planted positive: per-example gradients laid out like the quadratic MLP's parameters, where one
set of neurons has a coherent mean gradient and the other pure zero-mean noise; the SNR ratio
must be far above H3a's threshold. Negative control: random neuron splits of the same gradients
give a ratio near 1. The testbed pieces (label corruption, IPR, circuit masks, continued
training) are checked against direct computations on tiny configs.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from hypotheses.test_h3_memorisation_noise import (
    H3A_CONTROL_RATIO_BAND,
    H3A_SNR_RATIO_MIN,
    PRESET,
    h3a_statistics,
    half_life,
    snr_ratio,
    training_noise,
)
from metrics.noise import GradientNoise
from testbeds import modadd, runs
from testbeds.modadd import Config
from testbeds.modadd.ground_truth import NeuronFrequencies

NOISY = Config(p=7, width=24, label_noise=0.2, train_fraction=0.8, epochs=40, lr=0.05)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.CACHE_ENV, str(tmp_path / "cache"))


def test_corrupted_labels_are_wrong_training_labels_and_seeded():
    y_true = modadd.labels(NOISY.p)
    train_idx, test_idx = modadd.split(NOISY, 0)
    y, mask = modadd.corrupted_labels(NOISY, 0)
    assert int(mask.sum()) == NOISY.n_corrupted == round(0.2 * NOISY.n_train)
    assert mask[train_idx].sum() == mask.sum() and not mask[test_idx].any()
    assert (y[mask] != y_true[mask]).all() and torch.equal(y[~mask], y_true[~mask])
    y2, mask2 = modadd.corrupted_labels(NOISY, 0)
    assert torch.equal(y, y2) and torch.equal(mask, mask2)
    assert not torch.equal(modadd.corrupted_labels(NOISY, 1)[1], mask)
    clean_y, clean_mask = modadd.corrupted_labels(NOISY.replace(label_noise=0.0), 0)
    assert torch.equal(clean_y, y_true) and not clean_mask.any()
    groups = modadd.evaluation_groups(NOISY, 0)
    clean, corrupted = groups["clean"][0], groups["corrupted"][0]
    assert sorted(torch.cat([clean, corrupted]).tolist()) == train_idx.tolist()
    with pytest.raises(ValueError, match="label_noise"):
        Config(label_noise=1.0)


def test_training_logs_corrupted_accuracy_that_ground_truth_reproduces():
    run = modadd.train(NOISY, seed=0)
    last = run.log.iloc[-1]
    truth = modadd.corruption_ground_truth(run.final_model(), NOISY, 0)
    for name in ("train", "clean", "corrupted", "corrupted_true", "test"):
        assert truth["accuracy"][name] == pytest.approx(
            last[f"{name}_acc"], abs=1e-6
        )  # float32 log
    # each corrupted example is either memorised or predicted by the rule, never both
    assert last["corrupted_acc"] + last["corrupted_true_acc"] <= 1.0 + 1e-9
    assert truth["corrupted"].sum() == NOISY.n_corrupted


def test_ipr_single_frequency_is_one_and_flat_is_one_over_k():
    K = 5
    flat = NeuronFrequencies.from_power(torch.ones(1, K), torch.ones(1) * K)
    assert flat.ipr.item() == pytest.approx(1 / K)
    single = torch.zeros(1, K)
    single[0, 2] = 3.0
    assert NeuronFrequencies.from_power(single, single.sum(-1)).ipr.item() == pytest.approx(1.0)
    # Gromov's analytic solution: every neuron one frequency → all generalising
    truth = modadd.ground_truth(modadd.gromov_solution(11, 40))
    assert (truth["neuron_ipr"] > 0.999).all() and truth["neuron_generalising"].all()
    # random Gaussian weights spread their power: IPR ≈ 2/K, below the threshold
    model = modadd.ModAddMLP(29, 200)
    model.reset_parameters(torch.Generator().manual_seed(0))
    ipr = modadd.ground_truth(model)["neuron_ipr"]
    assert ipr.median() < 0.25 and (ipr < modadd.GENERALISING_IPR).float().mean() > 0.95


def test_neuron_mask_selects_incoming_and_outgoing_weights():
    model = modadd.ModAddMLP(5, 6)
    with torch.no_grad():
        model.layer1.weight.copy_(torch.arange(60.0).reshape(6, 10))
        model.layer2.weight.copy_(100 + torch.arange(30.0).reshape(5, 6))
    flat = torch.cat([p.flatten() for p in model.parameters()])
    neurons = torch.tensor([1, 4])
    picked = flat[modadd.mlp_neuron_mask(model, neurons)]
    expected = torch.cat(
        [model.layer1.weight[neurons].flatten(), model.layer2.weight[:, neurons].T.flatten()]
    )
    assert sorted(picked.tolist()) == sorted(expected.tolist())
    assert modadd.circuit_norm(model, neurons) == pytest.approx(expected.double().norm().item())
    boolean = torch.zeros(6, dtype=torch.bool)
    boolean[neurons] = True
    assert torch.equal(
        modadd.mlp_neuron_mask(model, boolean), modadd.mlp_neuron_mask(model, neurons)
    )


def test_snr_ratio_planted_positive_and_random_split_control():
    """Neurons 0..n/2-1 get gradients with a coherent mean; the rest pure zero-mean noise of a
    similar scale. The statistic must pass H3a's threshold by far; random splits must land in
    the control band."""
    model = modadd.ModAddMLP(5, 40)
    P = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(0)
    G = torch.randn(300, P, generator=generator, dtype=torch.float64)
    coherent = torch.arange(40) < 20
    mask = modadd.mlp_neuron_mask(model, coherent)
    G[:, mask] += 0.5  # a mean gradient on the first circuit only
    G[:, ~mask] -= G[:, ~mask].mean(0)  # exactly zero mean on the other
    noise = GradientNoise(G)
    assert snr_ratio(noise, model, coherent) > 100 * H3A_SNR_RATIO_MIN
    assert snr_ratio(noise, model, ~coherent) < 1 / H3A_SNR_RATIO_MIN
    ratios = []
    for s in range(20):
        first = torch.zeros(40, dtype=torch.bool)
        first[torch.randperm(40, generator=torch.Generator().manual_seed(s))[:20]] = True
        ratios.append(snr_ratio(noise, model, first))
    median = float(torch.tensor(ratios).median())
    assert abs(math.log(median)) <= math.log(H3A_CONTROL_RATIO_BAND)


def test_half_life_and_budget():
    steps = pd.Series([0, 1, 2, 3])
    assert half_life(pd.Series([4.0, 3.0, 2.0, 1.0]), steps, 3) == (2, True)
    assert half_life(pd.Series([4.0, 3.9, 3.0, 2.5]), steps, 3) == (3, False)


def test_continue_training_is_deterministic_and_tracks():
    run = modadd.train(NOISY, seed=0)
    model = run.final_model()
    before = [p.detach().clone() for p in model.parameters()]

    def track(net):
        return {"norm": sum(p.double().square().sum() for p in net.parameters()).sqrt().item()}

    a = modadd.continue_training(model, NOISY, 0, steps=12, batch_size=8, track=track)
    b = modadd.continue_training(model, NOISY, 0, steps=12, batch_size=8, track=track)
    full = modadd.continue_training(model, NOISY, 0, steps=12, batch_size=None, track=track)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["step", "norm"] and a.step.tolist() == list(range(13))
    assert a.norm.iloc[0] == full.norm.iloc[0] and a.norm.iloc[-1] != full.norm.iloc[-1]
    assert all(torch.equal(x, y) for x, y in zip(before, model.parameters(), strict=True))
    sparse = modadd.continue_training(
        model, NOISY, 0, steps=12, batch_size=8, track=track, track_every=5
    )
    assert sparse.step.tolist() == [0, 5, 10, 12]
    with pytest.raises(ValueError, match="steps"):
        modadd.continue_training(model, NOISY, 0, steps=0, batch_size=8, track=track)
    with pytest.raises(ValueError, match="batch_size"):
        modadd.continue_training(model, NOISY, 0, steps=3, batch_size=0, track=track)


# ---- the gate: H3a's own statistic on a hand-built network in the registered regime ----------
# Logit scales of the planted network: 1 is Gromov's normalisation (mean correct-class logit 1);
# 4 is about the mean correct-class logit of trained doshi2023_mlp (seed 0) at its H3a checkpoint.
PLANTED_LOGIT_SCALES = (1.0, 4.0)


@pytest.mark.gate("H3a", "positive")
@pytest.mark.parametrize("logit_scale", PLANTED_LOGIT_SCALES)
def test_h3a_passes_on_the_hand_built_memorisation_solution(logit_scale):
    config, seed = modadd.preset(PRESET), 0
    model = modadd.memorisation_solution(config, seed, logit_scale=logit_scale)
    stats = h3a_statistics(model, config, seed)
    assert stats["n_memorising"] == 2 * config.n_corrupted, stats["n_memorising"]
    accuracy = stats["accuracy"]  # corrupted_true: the rule's label on memorised examples
    assert accuracy["corrupted_true"] == 0.0, accuracy
    assert all(accuracy[g] == 1.0 for g in ("train", "clean", "corrupted", "test")), accuracy
    assert stats["ratio"] >= H3A_SNR_RATIO_MIN, stats["ratio"]
    assert abs(math.log(stats["control_median"])) <= math.log(H3A_CONTROL_RATIO_BAND), stats


@pytest.mark.gate("H3a", "control")
def test_h3a_fails_at_initialisation():
    """The untrained network, scored against the planted network's circuits (at
    initialisation no neuron is generalising by its own IPR, so its own split is empty)."""
    config, seed = modadd.preset(PRESET), 0
    planted = modadd.corruption_ground_truth(
        modadd.memorisation_solution(config, seed), config, seed
    )["neuron_generalising"]
    model = config.build_model()
    model.reset_parameters(torch.Generator().manual_seed(0))
    assert not modadd.corruption_ground_truth(model, config, seed)["neuron_generalising"].any()
    ratio = snr_ratio(training_noise(model, config, seed), model, planted)
    assert ratio < H3A_SNR_RATIO_MIN, ratio


def test_memorisation_solution_memorises_only_its_own_examples():
    config, seed = NOISY.replace(width=64, loss="cross_entropy"), 0
    model = modadd.memorisation_solution(config, seed).double()
    y, corrupted = modadd.corrupted_labels(config, seed)
    general = config.width - 2 * int(corrupted.sum())
    x = modadd.probe_inputs(config).double()
    with torch.no_grad():
        memorising = model.layer2.weight[:, general:] @ (
            (model.layer1.weight[general:] @ x.T / math.sqrt(2 * config.p)) ** 2
        )  # (p, p²): the memorising circuit's logits, before the 1/width
    off = memorising.abs().sum(0)[~corrupted]  # zero up to float64 round-off of u₊² − u₋²
    assert off.max() <= 1e-12 * memorising.abs().max(), off.max()
    assert (model(x).argmax(-1)[corrupted] == y[corrupted]).all()
    with pytest.raises(ValueError, match="label_noise"):
        modadd.memorisation_solution(config.replace(label_noise=0.0), seed)


# ---- H3b′: censored half-lives ---------------------------------------------------------------
def test_censored_half_life_ratios_are_decided_only_when_the_bounds_decide():
    from hypotheses.test_h3b_censored_half_lives import RATIO_MIN, censored_ratio

    exact = censored_ratio((3000, True), (1000, True), 6000)
    assert exact == dict(value=3.0, bound="exact", decided=True, passed=True)
    assert censored_ratio((1500, True), (1000, True), 6000)["passed"] is False
    lower = censored_ratio((6000, False), (2000, True), 6000)  # > 6000 / 2000 = 3
    assert lower == dict(value=3.0, bound="lower", decided=True, passed=True)
    weak = censored_ratio((6000, False), (4000, True), 6000)  # the bound 1.5 is judged as is
    assert weak == dict(value=1.5, bound="lower", decided=True, passed=False)
    empty = censored_ratio((0, True), (0, True), 6000)  # a circuit with no neurons
    assert not empty["decided"] and empty["passed"] is None
    upper = censored_ratio((3000, True), (6000, False), 6000)  # < 0.5
    assert upper == dict(value=0.5, bound="upper", decided=True, passed=False)
    both = censored_ratio((6000, False), (6000, False), 6000)
    assert not both["decided"] and both["passed"] is None and math.isnan(both["value"])
    assert both["value"] != 1.0 and RATIO_MIN == 2.0  # two censored times are never a ratio


def test_h3b_v2_checkpoint_needs_every_label_fitted_and_generalisation():
    from types import SimpleNamespace

    from hypotheses.test_h3b_censored_half_lives import both_circuits_checkpoint

    log = pd.DataFrame(
        {
            "epoch": [0, 5, 10, 15],
            "train_acc": [0.1, 1.0, 1.0, 1.0],
            "test_acc": [0.0, 0.13, 0.95, 0.97],
        }
    )
    run = SimpleNamespace(log=log, config=SimpleNamespace(checkpoint_epochs=(0, 5, 10, 15)))
    assert both_circuits_checkpoint(run) == 10  # 5 fits every label before generalising
    run.log = log.assign(test_acc=0.5)
    assert both_circuits_checkpoint(run) is None


def test_h3b_v2_seed_outcome_end_to_end_on_a_tiny_run(tmp_path, monkeypatch):
    from hypotheses import test_h3b_censored_half_lives as h3b

    monkeypatch.setenv("NTKBENCH_RESULTS", str(tmp_path))
    monkeypatch.setattr(h3b.tier, "preset", lambda bed, name: NOISY)  # the claim's presets
    monkeypatch.setattr(h3b, "both_circuits_checkpoint", lambda run: run.steps[-1])
    monkeypatch.setattr(h3b, "BUDGET", 30)
    outcome = h3b.seed_outcome(0)
    extra = outcome["extra"]
    assert extra["budget"] == 30 and extra["checkpoint_epoch"] == NOISY.epochs
    assert outcome["bound"] in ("exact", "lower", "upper", "none")
    assert outcome["decided"] == (outcome["passed"] is not None)
    for arm in ("minibatch", "full"):
        value = extra[f"half_life_mem_{arm}"]
        assert value == "> 30" or 0 < value <= 30
        assert (tmp_path / "h3b_v2" / f"seed0_{arm}.csv").exists()
    monkeypatch.setattr(h3b, "both_circuits_checkpoint", lambda run: None)
    undecided = h3b.seed_outcome(0)
    assert not undecided["decided"] and "no checkpoint" in undecided["extra"]["reason"]
