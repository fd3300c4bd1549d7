"""Configs that refuse nonsense, runs that diverged are never cached, and saves that fail do not
lose training: every field of every testbed config is checked for its type and finiteness with
an error that names it; the modular-addition split keeps both sets non-empty."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import torch

from testbeds import modadd, runs, tms
from testbeds.lm import Config as LMConfig
from testbeds.lm import Language, RLConfig, SFTConfig

# one small valid instance of every config type the testbeds define
VALID = {
    "modadd.Config": modadd.Config(p=5, width=8, epochs=5),
    "tms.Config": tms.Config(n_features=5, n_hidden=2, n_points=20, steps=5),
    "lm.Language": Language(),
    "lm.Config": LMConfig(),
    "lm.RLConfig": RLConfig(),
    "lm.SFTConfig": SFTConfig(),
}


def _bad_values(hint) -> list:
    """Values of the wrong type, or non-finite numbers, for a field annotated ``hint``."""
    args = typing.get_args(hint)
    if hint is float or float in args:
        return [math.nan, math.inf, -math.inf, "0.5", True]
    if hint is int or int in args:
        return [1.5, "3", True, math.nan]
    if hint is bool:
        return [1, "yes"]
    if typing.get_origin(hint) is tuple or any(typing.get_origin(a) is tuple for a in args):
        return [("a",), (math.nan,)]
    return []


CASES = [
    (name, item.name, bad)
    for name, config in VALID.items()
    for item in dataclasses.fields(config)
    for bad in _bad_values(typing.get_type_hints(type(config))[item.name])
]


@pytest.mark.parametrize(
    ("config", "field", "bad"), CASES, ids=[f"{c}.{f}={b!r}" for c, f, b in CASES]
)
def test_every_field_refuses_a_wrong_type_or_a_non_finite_number(config, field, bad):
    with pytest.raises(ValueError, match=rf"^{field} must be .*got {field}="):
        dataclasses.replace(VALID[config], **{field: bad})


def test_every_numeric_field_is_covered():
    numeric = {
        (name, item.name)
        for name, config in VALID.items()
        for item in dataclasses.fields(config)
        if _bad_values(typing.get_type_hints(type(config))[item.name])
    }
    assert ("modadd.Config", "lr") in numeric and ("lm.SFTConfig", "tolerance") in numeric
    assert ("tms.Config", "checkpoints") in numeric and ("lm.Language", "topic_leak") in numeric
    assert len(numeric) >= 60  # every int, float, bool and tuple field of the six types


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(train_fraction=0.0005), "training and test sets are both non-empty.*= 0 of"),
        (dict(train_fraction=0.9999), "training and test sets are both non-empty.*= 841 of"),
        (dict(lr=math.inf), "lr must be a finite number, got lr=inf"),
        (dict(lr="0.05"), "lr must be a finite number, got lr='0.05' \\(str\\)"),
        (dict(epochs=10.0), "epochs must be an int, got epochs=10.0"),
        (dict(betas=(0.9, math.nan)), "betas must be a tuple of 2"),
    ],
)
def test_modadd_refuses_the_reported_configs(change, message):
    with pytest.raises(ValueError, match=message):
        modadd.preset("lin2025_mlp", **change)


def test_tms_sparsity_still_accepts_a_number_and_refuses_nan():
    assert tms.Config(sparsity=0.9).sparsity == (0.9,)
    with pytest.raises(ValueError, match="sparsity must be"):
        tms.Config(sparsity=(math.nan,))


def test_every_preset_is_valid():
    from testbeds import get, names

    for testbed in names():
        for name in get(testbed).presets:
            get(testbed).preset(name)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NTKBENCH_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    "config",
    [
        modadd.Config(p=5, width=8, epochs=20, lr=1e30),
        tms.Config(n_features=5, n_hidden=2, n_points=20, steps=20, lr=1e30),
    ],
    ids=["modadd", "tms"],
)
def test_a_diverged_run_is_reported_and_not_cached(cache, config):
    train = modadd.train if isinstance(config, modadd.Config) else tms.train
    with pytest.raises(runs.DivergedRun, match="seed 0 diverged: .* non-finite values at step 20"):
        train(config, seed=0)
    assert not list(cache.rglob("*.pt"))  # neither the run nor a partial state was kept


def test_divergence_reads_the_final_training_loss():
    finite = {"w": torch.ones(2)}
    assert runs.divergence({"checkpoints": {3: finite}, "log": {"loss": [1.0, 0.5]}}) is None
    padded = {"loss": [1.0, 0.5, math.nan]}  # a NaN-padded last row is not a divergence
    assert runs.divergence({"checkpoints": {3: finite}, "log": padded}) is None
    inf = {"train_loss": [1.0, math.inf], "loss": [0.1, 0.1]}
    assert "final train_loss is inf" in runs.divergence({"checkpoints": {3: finite}, "log": inf})
    bad = {0: finite, 3: {"w": torch.tensor([1.0, math.nan])}}
    assert "w has non-finite values at step 3" in runs.divergence({"checkpoints": bad, "log": {}})


def test_a_failing_partial_save_warns_and_training_continues(cache, monkeypatch):
    config = modadd.Config(p=5, width=8, epochs=6)
    reference = modadd.train(config, seed=1, cache=False)
    monkeypatch.setattr(runs, "PARTIAL_SAVE_SECONDS", 0.0)

    def full_disk(self, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs.RunStore, "save_partial", full_disk)
    with pytest.warns(UserWarning, match="could not save the resumable state .* continues"):
        run = modadd.train(config, seed=1)
    assert run.final_step == 6 and not run.from_cache
    for step in reference.steps:
        for name, tensor in reference.checkpoints[step].items():
            assert torch.equal(run.checkpoints[step][name], tensor)
    assert modadd.train(config, seed=1).from_cache  # the finished run was still cached


def test_a_failing_final_save_returns_the_trained_run(cache, monkeypatch):
    config = modadd.Config(p=5, width=8, epochs=3)

    def full_disk(self, payload):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs.RunStore, "save", full_disk)
    with pytest.warns(UserWarning, match="could not cache the run .* returned uncached"):
        run = modadd.train(config, seed=0)
    assert run.final_step == 3 and not run.from_cache
