"""Runs trained on one machine load on another (``trained_on``), and the slow p = 113 preset
never trains on the CPU unless asked to."""

from __future__ import annotations

import importlib
import os
import shutil
import sys

import pytest
import torch

from testbeds import loop, modadd, runs
from testbeds.modadd import Config

sys.path.insert(0, os.path.dirname(__file__))
from test_modadd import TINY_TF  # noqa: E402

train_module = importlib.import_module("testbeds.modadd.train")

FAKE_GPU = "cuda:Fake GPU"
TINY = Config(arch="mlp", p=5, width=16, epochs=5, lr=0.05, checkpoints=(0, 2, 5))


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.CACHE_ENV, str(tmp_path / "cache"))
    for name in (runs.TRAINED_ON_ENV, train_module.SLOW_CPU_ENV, loop.DEVICE_ENV):
        monkeypatch.delenv(name, raising=False)


def _no_training(*args, **kwargs):
    raise AssertionError("the train function was called")


@pytest.fixture
def gpu_run(tmp_path, monkeypatch):
    """TINY seed 0 trained into cache A under a fake GPU device kind, A copied to B, and the
    cache pointed at B with training disabled: (run as trained, cache B)."""
    with monkeypatch.context() as fake:
        fake.setattr(loop, "device_kind", lambda device: FAKE_GPU)
        trained = modadd.train(TINY, seed=0)
    assert trained.device == FAKE_GPU and not trained.from_cache
    copy = tmp_path / "copy"
    shutil.copytree(runs.cache_dir(), copy)
    monkeypatch.setenv(runs.CACHE_ENV, str(copy))
    monkeypatch.setattr(train_module, "_train", _no_training)
    return trained, copy


def _assert_same_checkpoints(run, reference):
    assert run.steps == reference.steps
    for step in reference.steps:
        for name, tensor in reference.checkpoints[step].items():
            assert torch.equal(run.checkpoints[step][name], tensor), (step, name)


def test_run_trained_on_another_device_loads_by_its_kind(gpu_run):
    trained, _ = gpu_run
    run = modadd.train(TINY, seed=0, trained_on=FAKE_GPU)
    assert run.from_cache and run.device == FAKE_GPU
    assert run.meta["cache_key"] == trained.meta["cache_key"]
    _assert_same_checkpoints(run, trained)
    model = run.final_model()
    assert next(model.parameters()).device.type == "cpu"


def test_trained_on_is_read_from_the_environment(gpu_run, monkeypatch):
    trained, _ = gpu_run
    monkeypatch.setenv(runs.TRAINED_ON_ENV, FAKE_GPU)
    run = modadd.train(TINY, seed=0)
    assert run.from_cache
    _assert_same_checkpoints(run, trained)


def test_default_key_is_this_machines_kind(gpu_run):
    with pytest.raises(AssertionError, match="the train function was called"):
        modadd.train(TINY, seed=0)  # the CPU key misses the GPU run and trains as before


def test_missing_kind_lists_the_cached_kinds_and_never_trains(gpu_run):
    _, copy = gpu_run
    with pytest.raises(runs.RunNotCached) as err:
        modadd.train(TINY, seed=0, trained_on="cuda:Other GPU")
    message = str(err.value)
    assert "\n" not in message
    assert "'cuda:Other GPU'" in message and "'cuda:Fake GPU'" in message
    assert str(copy) in message
    with pytest.raises(runs.RunNotCached, match="this config and seed: none"):
        modadd.train(TINY, seed=1, trained_on=FAKE_GPU)


def test_trained_on_cannot_be_combined_with_training(gpu_run):
    with pytest.raises(ValueError, match="never trains"):
        modadd.train(TINY, seed=0, trained_on=FAKE_GPU, force=True)
    with pytest.raises(ValueError, match="never trains"):
        modadd.train(TINY, seed=0, trained_on=FAKE_GPU, cache=False)


def test_trained_on_this_machines_kind_is_the_default():
    first = modadd.train(TINY, seed=2)
    again = modadd.train(TINY, seed=2, trained_on="cpu")
    assert again.from_cache and again.meta["cache_key"] == first.meta["cache_key"]


def test_nanda2023_does_not_train_on_the_cpu_silently(monkeypatch):
    monkeypatch.setattr(train_module, "TrainLoop", _no_training)
    with pytest.raises(train_module.SlowOnCPU) as err:
        modadd.train("nanda2023", seed=0)
    message = str(err.value)
    assert "\n" not in message
    for part in ("'nanda2023'", "43 minutes", "NTKBENCH_DEVICE=cuda", "NTKBENCH_ALLOW_SLOW_CPU=1"):
        assert part in message
    assert train_module.cpu_minutes(modadd.preset("nanda2023")) == pytest.approx(43.0)
    assert train_module.slow_on_cpu(modadd.preset("nanda2023"))
    assert not train_module.slow_on_cpu(modadd.preset("nanda2023_p29"))


def test_cached_nanda2023_loads_without_permission(monkeypatch):
    config = modadd.preset("nanda2023")
    model = config.build_model()

    def stored(config, seed, store, device, **options):
        return {
            "checkpoints": {0: loop.cpu_state(model)},
            "log": {"epoch": [0], "train_loss": [4.7]},
            "seconds": 0.0,
        }

    with monkeypatch.context() as fake:
        fake.setattr(train_module, "_train", stored)
        modadd.train("nanda2023", seed=0)
    monkeypatch.setattr(train_module, "_train", _no_training)
    run = modadd.train("nanda2023", seed=0)
    assert run.from_cache and run.preset == "nanda2023"


def test_slow_config_trains_on_the_cpu_only_when_allowed(monkeypatch):
    monkeypatch.setattr(train_module, "SLOW_CPU_MIN_P", 5)
    with pytest.raises(train_module.SlowOnCPU, match="p=5"):
        modadd.train(TINY_TF, seed=0)
    assert not modadd.train(TINY_TF, seed=0, allow_slow_cpu=True).from_cache
    assert modadd.train(TINY_TF, seed=0).from_cache  # cached: loads without permission
    monkeypatch.setenv(train_module.SLOW_CPU_ENV, "1")
    assert not modadd.train(TINY_TF, seed=1).from_cache


def test_run_trained_with_other_library_versions_loads_by_its_kind(tmp_path, monkeypatch):
    """The GPU machine's torch build (``+cu…``) is not this one's; loading needs no training,
    so such a run loads, and its meta keeps the versions it was trained with."""
    gpu_versions = {**runs.versions(), "torch": "2.11.0+cu128"}
    with monkeypatch.context() as fake:
        fake.setattr(loop, "device_kind", lambda device: FAKE_GPU)
        fake.setattr(runs, "versions", lambda: gpu_versions)
        trained = modadd.train(TINY, seed=3)
    monkeypatch.setattr(train_module, "_train", _no_training)
    run = modadd.train(TINY, seed=3, trained_on=FAKE_GPU)
    assert run.from_cache and run.meta["versions"]["torch"] == "2.11.0+cu128"
    assert run.meta["cache_key"] == trained.meta["cache_key"]
    _assert_same_checkpoints(run, trained)
    with pytest.raises(runs.RunNotCached):  # the default, this machine's kind, does not train
        modadd.train(TINY, seed=4, trained_on=FAKE_GPU)
