"""Modular-addition testbed: data, validation, ground truth, determinism and the run cache."""

from __future__ import annotations

import math
import multiprocessing as mp

import pytest
import torch

from testbeds import modadd, runs
from testbeds.modadd import Config

TINY = Config(arch="mlp", p=5, width=16, epochs=12, lr=0.05, checkpoints=(0, 3, 12))
TINY_TF = Config(
    arch="transformer",
    p=5,
    d_model=8,
    n_heads=2,
    d_mlp=16,
    loss="cross_entropy",
    train_fraction=0.6,
    lr=1e-2,
    weight_decay=1.0,
    batch_size=4,
    epochs=6,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.CACHE_ENV, str(tmp_path / "cache"))


def test_pairs_labels_and_split():
    a, b = modadd.pairs(7)
    assert a.tolist()[:8] == [0] * 7 + [1] and b.tolist()[:8] == [0, 1, 2, 3, 4, 5, 6, 0]
    assert torch.equal(modadd.labels(7), (a + b) % 7)
    config = Config(p=7, train_fraction=0.3)
    train, test = modadd.split(config, seed=3)
    assert len(train) == round(0.3 * 49) and len(train) + len(test) == 49
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert torch.equal(modadd.split(config, 3)[0], train)
    assert not torch.equal(modadd.split(config, 4)[0], train)


def test_probe_inputs_shapes():
    mlp = modadd.probe_inputs(Config(p=5))
    assert mlp.shape == (25, 10) and torch.equal(mlp.sum(1), torch.full((25,), 2.0))
    tokens = modadd.probe_inputs(TINY_TF)
    assert tokens.shape == (25, 3) and (tokens[:, 2] == 5).all()


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"p": 28}, "p"),
        ({"p": 2}, "p"),
        ({"p": 9}, "p"),
        ({"width": 0}, "width"),
        ({"d_model": -4}, "d_model"),
        ({"train_fraction": 1.0}, "train_fraction"),
        ({"train_fraction": 0.0}, "train_fraction"),
        ({"arch": "cnn"}, "arch"),
        ({"activation": "gelu"}, "activation"),
        ({"loss": "hinge"}, "loss"),
        ({"n_heads": 3, "d_model": 8}, "n_heads"),
        ({"checkpoints": (0, 999)}, "checkpoints"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
    ],
)
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"^{field} must be .*got {field}="):
        Config(**changes)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="preset must be one of.*lin2025_mlp"):
        modadd.preset("lin2024")


def test_presets_match_the_papers():
    mlp = modadd.preset("lin2025_mlp")
    assert (mlp.p, mlp.width, mlp.train_fraction, mlp.lr, mlp.weight_decay, mlp.epochs) == (
        29,
        512,
        0.7,
        0.05,
        0.01,
        500,
    )
    tf = modadd.preset("lin2025_transformer")
    assert (tf.p, tf.d_model, tf.n_heads, tf.d_mlp, tf.batch_size, tf.epochs) == (
        29,
        64,
        4,
        256,
        64,
        4000,
    )
    nanda = modadd.preset("nanda2023")
    assert (nanda.p, nanda.d_model, nanda.d_mlp, nanda.train_fraction, nanda.betas) == (
        113,
        128,
        512,
        0.3,
        (0.9, 0.98),
    )
    assert len(mlp.checkpoint_epochs) >= 25 and mlp.checkpoint_epochs[0] == 0
    early = [e for e in mlp.checkpoint_epochs if e <= mlp.epochs // 4]
    assert len(early) > len(mlp.checkpoint_epochs) / 2  # denser early


def test_fourier_families_are_orthogonal_and_centred():
    p = 7
    fam = modadd.fourier_families(p)
    for name, mat in fam.items():
        assert mat.shape == (49, 6), name
        assert torch.allclose(mat.sum(0), torch.zeros(6, dtype=torch.float64), atol=1e-10)
        assert torch.allclose(mat.T @ mat, 49 / 2 * torch.eye(6, dtype=torch.float64), atol=1e-10)
    cross = fam["sum"].T @ fam["difference"]
    assert cross.abs().max() < 1e-10
    with pytest.raises(ValueError, match="family must be one of"):
        modadd.fourier_family(7, "product")


def test_frequency_power_finds_a_planted_frequency():
    p, k = 11, 3
    v = torch.arange(p, dtype=torch.float64)
    signal = torch.cos(2 * math.pi * k * v / p + 0.4) + 0.1
    power = modadd.frequency_power(signal)
    assert power.argmax().item() == k - 1
    assert power[k - 1] / power.sum() > 0.999


def test_gromov_solution_is_a_planted_positive():
    model = modadd.gromov_solution(29, 512, seed=0)
    x = modadd.probe_inputs(Config(p=29))
    accuracy = (model(x).argmax(-1) == modadd.labels(29)).float().mean().item()
    assert accuracy == 1.0
    neurons = modadd.neuron_frequencies(model)
    assert neurons.clear.all()
    assert torch.equal(neurons.dominant, torch.arange(512) % 14 + 1)
    # every frequency is used equally, so none stands out as key
    assert len(modadd.key_frequencies(model)) == 0


def test_key_frequencies_of_a_planted_embedding():
    model = modadd.ModAddTransformer(29, 16, 2, 8)
    v = torch.arange(29, dtype=torch.float32)
    with torch.no_grad():
        model.embed.weight.zero_()
        for i, k in enumerate((4, 11)):
            model.embed.weight[:29, 2 * i] = torch.cos(2 * math.pi * k * v / 29)
            model.embed.weight[:29, 2 * i + 1] = torch.sin(2 * math.pi * k * v / 29)
    assert sorted(modadd.key_frequencies(model).tolist()) == [4, 11]


def test_activation_frequencies_of_planted_neurons():
    p = 11
    a, b = modadd.pairs(p)
    acts = torch.stack(
        [
            torch.cos(2 * math.pi * 2 * (a + b) / p),
            torch.cos(2 * math.pi * 5 * a / p) * torch.cos(2 * math.pi * 5 * b / p),
            torch.randn(p * p, generator=torch.Generator().manual_seed(0)),
        ],
        1,
    )
    from testbeds.modadd.ground_truth import activation_neuron_frequencies

    nf = activation_neuron_frequencies(acts)
    assert nf.dominant[:2].tolist() == [2, 5] and nf.clear[:2].all() and not nf.clear[2]


def test_ground_truth_names_and_shapes():
    model = TINY.build_model()
    truth = modadd.ground_truth(model)
    assert truth["fourier_sum"].shape == (25, 4)
    assert truth["neuron_frequency"].shape == (16,) and truth["neuron_clear"].dtype == torch.bool


@pytest.mark.parametrize("config", [TINY, TINY_TF], ids=["mlp", "transformer"])
def test_training_is_deterministic_and_logged(config):
    first = modadd.train(config, seed=1, cache=False)
    second = modadd.train(config, seed=1, cache=False)
    assert first.steps == list(config.checkpoint_epochs)
    for step in first.steps:
        for name, tensor in first.checkpoints[step].items():
            assert torch.equal(tensor, second.checkpoints[step][name]), (step, name)
    assert list(first.log.columns) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc"]
    assert first.log["epoch"].iloc[-1] == config.epochs
    other = modadd.train(config, seed=2, cache=False)
    assert not torch.equal(
        other.checkpoints[0][next(iter(other.checkpoints[0]))],
        first.checkpoints[0][next(iter(first.checkpoints[0]))],
    )


def test_lin2025_mlp_groks():
    """The paper's setting memorises first and generalises later (Lin 2025: epochs 70-130)."""
    run = modadd.train(modadd.preset("lin2025_mlp"), seed=0, cache=False)
    log = run.log.set_index("epoch")
    t_train = log.index[log.train_acc >= 0.99].min()
    t_test = log.index[log.test_acc >= 0.9].min()
    assert t_train < t_test <= 200
    assert log.test_acc.iloc[-1] == 1.0
    assert log.test_acc.loc[t_train] < 0.5


def test_cache_second_call_loads_and_model_at_works():
    first = modadd.train(TINY, seed=0)
    again = modadd.train(TINY, seed=0)
    assert not first.from_cache and again.from_cache
    assert torch.equal(
        again.checkpoints[12]["layer1.weight"], first.checkpoints[12]["layer1.weight"]
    )
    assert again.meta["config_hash"] == runs.config_hash(TINY)
    assert {"git_sha", "versions", "seconds", "code_hash"} <= set(again.meta)
    model = again.model_at(3)
    assert torch.equal(model.layer1.weight, first.checkpoints[3]["layer1.weight"])
    with pytest.raises(ValueError, match="no checkpoint at step=4"):
        again.model_at(4)
    assert modadd.train(TINY, seed=0, force=True).from_cache is False


def test_corrupted_cache_file_is_retrained(tmp_path):
    first = modadd.train(TINY, seed=0)
    path = runs.cache_dir() / "runs" / "modadd" / f"{first.meta['cache_key']}.pt"
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="discarding unreadable cache file"):
        again = modadd.train(TINY, seed=0)
    assert not again.from_cache
    assert torch.equal(
        again.checkpoints[12]["layer2.weight"], first.checkpoints[12]["layer2.weight"]
    )


def _train_in_child(cache: str, queue) -> None:
    import os

    os.environ[runs.CACHE_ENV] = cache
    torch.set_num_threads(1)
    queue.put(modadd.train(TINY.replace(epochs=60, checkpoints=None), seed=5).from_cache)


def test_two_processes_asking_at_once_train_once():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_train_in_child, args=(str(runs.cache_dir()), queue)) for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    assert results == [False, True]


def test_interrupted_training_resumes_to_identical_checkpoints(monkeypatch):
    config = TINY_TF.replace(epochs=10, checkpoints=(0, 2, 5, 8, 10))
    reference = modadd.train(config, seed=3, cache=False)
    monkeypatch.setattr(runs, "PARTIAL_SAVE_SECONDS", 0.0)
    real_save = runs.PartialSaver.maybe_save

    def save_then_stop(self, make_state):
        real_save(self, make_state)
        if make_state()["epoch"] == 6:
            raise KeyboardInterrupt

    monkeypatch.setattr(runs.PartialSaver, "maybe_save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        modadd.train(config, seed=3)
    monkeypatch.setattr(runs.PartialSaver, "maybe_save", real_save)
    resumed = modadd.train(config, seed=3)
    assert not resumed.from_cache
    for step in reference.steps:
        for name, tensor in reference.checkpoints[step].items():
            assert torch.equal(resumed.checkpoints[step][name], tensor), (step, name)
    assert reference.log.equals(resumed.log)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_per_example_loss_averages_to_the_training_loss_and_vmaps(loss):
    from torch.func import grad, vmap

    from testbeds.modadd.train import _loss

    config = Config(p=5, width=8, loss=loss)
    model = config.build_model()
    x, y = modadd.probe_inputs(config), modadd.labels(config.p)
    per_example = modadd.per_example_loss(config)
    torch.testing.assert_close(per_example(model(x), y).mean(), _loss(config, model(x), y))
    z = model(x).detach()
    g = vmap(grad(lambda zi, yi: per_example(zi[None], yi[None])[0]))(z, y)
    assert g.shape == z.shape
