"""The testbed contract: registry, one Probe type, units, activations, ground truth, devices."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch.func import functional_call, grad, vmap

import testbeds
from metrics.entk import entk
from testbeds import lm, modadd, tms
from testbeds.contract import GroundTruth, Probe
from testbeds.loop import generator, resolve_device

sys.path.insert(0, os.path.dirname(__file__))
from test_lm import TINY as LM_TINY  # noqa: E402
from test_modadd import TINY as MA_TINY  # noqa: E402
from test_modadd import TINY_TF  # noqa: E402
from test_tms import TINY as TMS_TINY  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NTKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NTKBENCH_DEVICE", raising=False)


CASES = {
    "modadd_mlp": ("modadd", MA_TINY.replace(loss="cross_entropy")),
    "modadd_transformer": ("modadd", TINY_TF),
    "tms": ("tms", TMS_TINY),
    "lm": ("lm", LM_TINY),
}


def test_registry_lists_every_testbed_and_suggests_names():
    assert testbeds.names() == ("lm", "modadd", "tms")
    for name in testbeds.names():
        bed = testbeds.get(name)
        assert bed.name == name and bed.presets and bed.summary
    with pytest.raises(ValueError, match=r"did you mean 'modadd'"):
        testbeds.get("modad")
    with pytest.raises(ValueError, match=r"did you mean 'lin2025_mlp'"):
        testbeds.get("modadd").preset("lin2025_mlpp")


def test_entry_point_and_runtime_registration(monkeypatch):
    class EntryPoint:
        name, value = "tms_copy", "testbeds.tms.spec:testbed"

    monkeypatch.setattr(testbeds, "entry_points", lambda group: [EntryPoint()])
    assert "tms_copy" in testbeds.names()
    with pytest.raises(ValueError, match="must be a testbeds.Testbed named 'tms_copy'"):
        testbeds.get("tms_copy")  # the object found is named "tms"
    with pytest.raises(ValueError, match="must be a testbeds.Testbed"):
        testbeds.register(object())


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_knows_its_preset_and_contract_reads_it(case):
    name, config = CASES[case]
    bed = testbeds.get(name)
    run = bed.train(config, seed=1)
    assert run.testbed == name and run.preset.startswith("custom-") and run.device == "cpu"
    assert testbeds.of(run) is bed
    probe = bed.probe(run)
    assert isinstance(probe, Probe) and len(probe.targets) == len(probe.loss_inputs)
    model = run.final_model()
    with torch.no_grad():
        losses = probe.per_example_loss(model)
    assert losses.shape == (len(probe.targets),) and torch.isfinite(losses).all()
    train = bed.training_set(run)
    assert len(train.train_rows) == len(train.targets) if train.train_rows is not None else True
    units = bed.units(model)
    assert units and all(isinstance(u, dict) for u in units)
    acts = bed.activations(model, probe.inputs)
    assert acts.shape[0] == len(probe.inputs) and acts.dim() == 2
    truth = bed.ground_truth(run)
    assert isinstance(truth, GroundTruth)
    for labels in truth.input_labels.values():
        assert labels.shape == (len(probe.inputs),)


def test_preset_names_are_recorded_on_runs():
    config = modadd.preset("lin2025_mlp", epochs=3)
    assert modadd.testbed.preset_name(modadd.preset("lin2025_mlp")) == "lin2025_mlp"
    assert modadd.testbed.resolve("lin2025_mlp") == (modadd.preset("lin2025_mlp"), "lin2025_mlp")
    assert modadd.train(config, 0, cache=False).preset.startswith("custom-")
    run = tms.testbed.train("elhage2022", seed=0, cache=False)
    assert run.preset == "elhage2022"
    with pytest.raises(ValueError, match="testbeds.tms.Config or a preset name"):
        tms.train(MA_TINY)
    with pytest.raises(ValueError, match="this stage needs a RLConfig"):
        lm.train_rl("lm_pretrain")


def test_modadd_units_and_activations_are_the_hidden_neurons():
    model = modadd.train(MA_TINY, 0).final_model()
    x = modadd.probe_inputs(MA_TINY)
    acts = modadd.testbed.activations(model, x)
    assert acts.shape == (len(x), MA_TINY.width)
    assert torch.allclose(model.layer2(acts) / model.width, model(x))
    assert len(modadd.testbed.units(model)) == MA_TINY.width
    truth = modadd.testbed.ground_truth(modadd.train(MA_TINY, 0))
    assert truth.unit_labels["frequency"].shape == (MA_TINY.width,)
    assert torch.equal(truth.input_labels["sum"], modadd.labels(MA_TINY.p))


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_model_gram_matches_per_example_gradients_float64(case):
    """The eNTK of ``probe.loss_model`` is ⟨∇ℓ_i, ∇ℓ_j⟩, against brute-force vmap(grad)."""
    name, config = CASES[case]
    bed = testbeds.get(name)
    run = bed.train(config, seed=0)
    model = run.final_model().double()
    probe = bed.probe(run)
    rows = torch.arange(min(12, len(probe.targets)))
    probe = probe.subset(rows)
    if probe.loss_inputs.is_floating_point():
        probe = Probe(
            inputs=probe.inputs.double(),
            targets=probe.targets.double() if probe.targets.is_floating_point() else probe.targets,
            loss=probe.loss,
            readout=probe.readout,
            loss_inputs=probe.loss_inputs.double(),
        )
    gram = entk(probe.loss_model(model), probe.rows, output="sum")
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(theta, x, y):
        out = functional_call(model, theta, (x[None],))
        return probe.loss(out, y[None])[0]

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, probe.loss_inputs, probe.targets)
    G = torch.cat([g.reshape(len(rows), -1) for g in grads.values()], dim=1)
    torch.testing.assert_close(gram, G @ G.T, rtol=1e-9, atol=1e-9)


def test_generators_are_derived_by_purpose():
    a = torch.rand(5, generator=generator(0, "init"))
    assert torch.equal(a, torch.rand(5, generator=generator(0, "init")))
    assert not torch.equal(a, torch.rand(5, generator=generator(0, "batches")))
    assert not torch.equal(a, torch.rand(5, generator=generator(1, "init")))
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        generator(-1, "init")


def test_device_choice_is_validated(monkeypatch):
    assert resolve_device().type == "cpu"
    monkeypatch.setenv("NTKBENCH_DEVICE", "tpu")
    with pytest.raises(
        ValueError, match=r"NTKBENCH_DEVICE must be one of \('cpu', 'cuda', 'auto'\)"
    ):
        resolve_device()
    monkeypatch.setenv("NTKBENCH_DEVICE", "auto")
    assert resolve_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            resolve_device("cuda")


def test_device_kind_is_part_of_the_run_key(monkeypatch):
    cpu = modadd.train(MA_TINY, 0)
    monkeypatch.setattr("testbeds.loop.device_kind", lambda device: "cuda:imaginary")
    other = modadd.train(MA_TINY, 0)
    assert other.meta["cache_key"] != cpu.meta["cache_key"] and not other.from_cache


def test_command_line(capsys):
    from testbeds.__main__ import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "lm_rl" in out and "lin2025_mlp" in out and "elhage2022" in out
    assert main(["modadd", "lin2025_mlpp"]) == 2
    assert "did you mean 'lin2025_mlp'" in capsys.readouterr().err
    assert main(["nope", "x"]) == 2


@pytest.mark.gpu
def test_cuda_training_and_kernels_match_cpu():
    """The same tiny run on the GPU: cached apart, within float32 rounding of the CPU run."""
    cpu = modadd.train(MA_TINY, 0, device="cpu")
    gpu = modadd.train(MA_TINY, 0, device="cuda")
    assert gpu.device.startswith("cuda:") and gpu.meta["cache_key"] != cpu.meta["cache_key"]
    for name, value in cpu.checkpoints[cpu.final_step].items():
        torch.testing.assert_close(
            gpu.checkpoints[gpu.final_step][name], value, rtol=1e-3, atol=1e-4
        )
    x = modadd.probe_inputs(MA_TINY)
    K_cpu = entk(cpu.final_model().double(), x.double())
    K_gpu = entk(cpu.final_model("cuda"), x.cuda()).double().cpu()
    assert (K_gpu - K_cpu).norm() / K_cpu.norm() < 1e-5


@pytest.mark.gpu
def test_claim_kernels_on_cuda_match_cpu(monkeypatch):
    """H1's kernels formed on the GPU come back to the CPU within float32 rounding."""
    from hypotheses.test_h1_fourier_circuits import mlp_layer_kernels

    model = modadd.train(MA_TINY, 0).final_model()
    cpu = mlp_layer_kernels(model)
    monkeypatch.setenv("NTKBENCH_DEVICE", "cuda")
    gpu = mlp_layer_kernels(model)
    for name, K in cpu.items():
        assert gpu[name].device.type == "cpu"
        assert (gpu[name].double() - K.double()).norm() / K.double().norm() < 1e-5
