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
        ({"init": "xavier"}, "init"),
        ({"mlp_bias": 1}, "mlp_bias"),
        ({"unembed_eq": "yes"}, "unembed_eq"),
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
    # the paper's code: no MLP biases, p + 1 unembedding rows, MLP input weights N(0, 1/d_mlp)
    assert (tf.mlp_bias, tf.unembed_eq, tf.init) == (False, True, "lin2025")
    # Nanda et al.'s network in the same setting: only the three architecture fields differ
    nanda_p29 = modadd.preset("nanda2023_p29")
    assert (nanda_p29.mlp_bias, nanda_p29.unembed_eq, nanda_p29.init) == (True, False, "nanda")
    assert nanda_p29 == tf.replace(mlp_bias=True, unembed_eq=False, init="nanda")
    nanda = modadd.preset("nanda2023")
    assert (nanda.mlp_bias, nanda.unembed_eq, nanda.init) == (True, False, "nanda")
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


TRANSFORMER_PRESETS = ("lin2025_transformer", "nanda2023_p29")


def reference_transformer(w: dict[str, torch.Tensor], tokens: torch.Tensor):
    """The one-layer transformer written out as in Nanda et al.'s code (their weight layouts
    and einsums): every position, causal mask, no LayerNorm. Returns the logits at "=" over
    every row of W_U (N, d_vocab_out) and the post-ReLU MLP activations at "=" (N, d_mlp).
    Biases are added only if ``w`` has them."""
    n_heads, d_head, _ = w["W_Q"].shape
    x = torch.einsum("dbp->bpd", w["W_E"][:, tokens]) + w["W_pos"]  # (B, T, d_model)
    k = torch.einsum("ihd,bpd->biph", w["W_K"], x)  # (B, heads, T, d_head)
    q = torch.einsum("ihd,bpd->biph", w["W_Q"], x)
    v = torch.einsum("ihd,bpd->biph", w["W_V"], x)
    scores = torch.einsum("biph,biqh->biqp", k, q)  # (B, heads, query, key)
    mask = torch.tril(torch.ones(x.shape[1], x.shape[1], dtype=x.dtype))
    pattern = torch.softmax((torch.tril(scores) - 1e10 * (1 - mask)) / math.sqrt(d_head), -1)
    z = torch.einsum("biph,biqp->biqh", v, pattern)  # (B, heads, T, d_head)
    z_flat = z.permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], n_heads * d_head)
    x = x + torch.einsum("df,bqf->bqd", w["W_O"], z_flat)
    pre = torch.einsum("md,bpd->bpm", w["W_in"], x) + w.get("b_in", 0.0)  # (B, T, d_mlp)
    x = x + torch.einsum("dm,bpm->bpd", w["W_out"], torch.relu(pre)) + w.get("b_out", 0.0)
    return (x @ w["W_U"])[:, -1], torch.relu(pre)[:, -1]  # at "="


def reference_weights(model: modadd.ModAddTransformer, seed: int) -> dict[str, torch.Tensor]:
    """Random float64 weights in Nanda et al.'s layouts for ``model``'s shapes (biases only
    if the model has them), copied into ``model`` too."""
    g = torch.Generator().manual_seed(seed)
    d, h, dh, m = model.d_model, model.n_heads, model.d_head, model.d_mlp

    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64) / math.sqrt(shape[-1])

    w = {
        "W_E": draw(d, model.p + 1),
        "W_pos": draw(3, d),
        **{name: draw(h, dh, d) for name in ("W_Q", "W_K", "W_V")},
        "W_O": draw(d, h * dh),
        "W_in": draw(m, d),
        "W_out": draw(d, m),
        "W_U": draw(d, model.unembed.out_features),
    }
    if model.mlp_in.bias is not None:
        w["b_in"], w["b_out"] = draw(m), draw(d)
    with torch.no_grad():
        model.embed.weight.copy_(w["W_E"].T)
        model.pos.copy_(w["W_pos"])
        for name in ("W_Q", "W_K", "W_V"):
            getattr(model, name).weight.copy_(w[name].reshape(h * dh, d))
        model.W_O.weight.copy_(w["W_O"])
        model.mlp_in.weight.copy_(w["W_in"])
        model.mlp_out.weight.copy_(w["W_out"])
        model.unembed.weight.copy_(w["W_U"].T)
        if "b_in" in w:
            model.mlp_in.bias.copy_(w["b_in"])
            model.mlp_out.bias.copy_(w["b_out"])
    return w


@pytest.mark.parametrize("name", TRANSFORMER_PRESETS)
def test_transformer_matches_a_hand_written_forward_pass(name):
    config = modadd.preset(name)
    model = config.build_model().double()
    w = reference_weights(model, seed=0)
    tokens = modadd.probe_inputs(config)
    expected, acts = reference_transformer(w, tokens)  # (p², rows of W_U), (p², d_mlp)
    assert expected.shape == (config.p**2, config.p + 1 if config.unembed_eq else config.p)
    torch.testing.assert_close(model.token_logits(tokens), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(tokens), expected[:, : config.p], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.neuron_activations(tokens), acts, rtol=1e-12, atol=1e-12)


def test_the_paper_transformer_differs_from_nanda_in_biases_outputs_and_init():
    paper = modadd.preset("lin2025_transformer").build_model()
    nanda = modadd.preset("nanda2023_p29").build_model()
    assert paper.mlp_in.bias is None and paper.mlp_out.bias is None
    assert nanda.mlp_in.bias.shape == (256,) and nanda.mlp_out.bias.shape == (64,)
    assert paper.unembed.weight.shape == (30, 64) and nanda.unembed.weight.shape == (29, 64)
    weights = {n: p.shape for n, p in nanda.named_parameters() if not n.endswith("bias")}
    weights["unembed.weight"] = torch.Size([30, 64])
    assert {n: p.shape for n, p in paper.named_parameters()} == weights


def test_the_eq_logit_is_read_by_nothing():
    """With p + 1 unembedding rows, loss, accuracy and gradients see the first p logits only:
    a huge "=" row changes nothing that is read, and the loss sends it no gradient."""
    from testbeds.modadd.train import _evaluate, _loss

    config = modadd.preset("lin2025_transformer")
    model = config.build_model().double()
    reference_weights(model, seed=1)
    x, y = modadd.probe_inputs(config), modadd.labels(config.p)
    groups = modadd.evaluation_groups(config, seed=0)
    before = (model(x), _evaluate(config, model, x, groups))
    with torch.no_grad():
        model.unembed.weight[config.p] = 1e3
    assert model.token_logits(x)[:, config.p].abs().max() > 1e3  # the unread logit is huge
    torch.testing.assert_close(model(x), before[0], rtol=0, atol=0)
    assert _evaluate(config, model, x, groups) == before[1]
    _loss(config, model(x), y).backward()
    grad = model.unembed.weight.grad
    assert grad[config.p].abs().max() == 0 and grad[: config.p].abs().max() > 0


def test_the_eq_row_only_decays_in_training():
    """AdamW on the p + 1-row unembedding: the "=" row gets zero gradient, so it only shrinks by
    (1 − lr·wd) per optimizer step, while the answer rows move."""
    config = TINY_TF.replace(mlp_bias=False, unembed_eq=True, init="lin2025", epochs=3)
    run = modadd.train(config, seed=0, cache=False)
    start, end = run.checkpoints[0]["unembed.weight"], run.checkpoints[3]["unembed.weight"]
    steps = 3 * math.ceil(config.n_train / config.batch_size)
    decay = (1 - config.lr * config.weight_decay) ** steps
    torch.testing.assert_close(end[config.p], start[config.p] * decay, rtol=1e-5, atol=1e-7)
    assert (end[: config.p] - start[: config.p] * decay).abs().max() > 1e-3


def _pooled_std(name: str, draws: int = 60) -> dict[str, torch.Tensor]:
    """Every parameter of ``draws`` initialisations of a preset, flattened and pooled."""
    config = modadd.preset(name)
    pooled: dict[str, list] = {}
    for seed in range(draws):
        model = config.build_model()
        model.reset_parameters(torch.Generator().manual_seed(seed))
        for key, value in model.named_parameters():
            pooled.setdefault(key, []).append(value.detach().double().flatten())
    return {key: torch.cat(values) for key, values in pooled.items()}


@pytest.mark.parametrize("name", TRANSFORMER_PRESETS)
def test_transformer_initial_scales(name):
    """Sample variance of each weight against its convention's variance: within 4 standard
    errors (√(2/n) relative), and the other convention's variance (where it differs) outside
    4 standard errors. 60 initialisations pooled, so W_U's 1/30 and 1/29 are told apart."""
    config = modadd.preset(name)
    d_model, d_mlp, p = config.d_model, config.d_mlp, config.p
    paper = {"mlp_in.weight": 1 / d_mlp, "unembed.weight": 1 / (p + 1)}
    nanda = {"mlp_in.weight": 1 / d_model, "unembed.weight": 1 / p}
    expected, other = (paper, nanda) if name == "lin2025_transformer" else (nanda, paper)
    for key, values in _pooled_std(name).items():
        if key.endswith("bias"):
            assert values.abs().max() == 0, key
            continue
        variance, n = values.square().mean(), values.numel()
        tolerance = 4 * math.sqrt(2 / n)
        assert abs(values.mean()) < 4 * math.sqrt(variance / n), key
        target = expected.get(key, 1 / d_model)
        assert abs(variance / target - 1) < tolerance, (key, variance.item(), target)
        if key in other:
            assert abs(variance / other[key] - 1) > tolerance, (key, variance.item())


def test_entk_of_the_paper_transformer_reads_the_first_p_logits():
    """The eNTK engine on the p + 1-row unembedding equals the brute-force kernel of the p
    answer logits (float64, every class pair, by layer)."""
    from torch.func import functional_call, jacrev, vmap

    from metrics.entk import entk

    config = TINY_TF.replace(mlp_bias=False, unembed_eq=True, init="lin2025")
    model = config.build_model().double()
    model.reset_parameters(torch.Generator().manual_seed(0))
    tokens = modadd.probe_inputs(config)[:9]
    params = {k: v.detach() for k, v in model.named_parameters()}

    def logits(theta, t):
        return functional_call(model, theta, (t[None],))[0]  # (p,)

    jac = vmap(jacrev(logits), in_dims=(None, 0))(params, tokens)  # name → (N, p, *shape)
    kernels = entk(model, tokens, output="full", by_layer=True)
    assert next(iter(kernels.values())).shape == (9, 9, config.p, config.p)
    for group, kernel in kernels.items():
        names = [n for n in params if n == group or n.startswith(group + ".")]
        J = torch.cat([jac[n].reshape(9, config.p, -1) for n in names], -1)  # (N, p, P_g)
        brute = torch.einsum("ncq,mdq->nmcd", J, J)
        torch.testing.assert_close(kernel, brute, rtol=1e-10, atol=1e-10)


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
        if make_state()["step"] == 6:
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
