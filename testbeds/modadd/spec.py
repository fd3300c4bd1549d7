"""The modular-addition testbed as a :class:`testbeds.contract.Testbed`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metrics.entk import hidden_units
from testbeds.contract import GroundTruth, Probe, Testbed
from testbeds.modadd.config import PRESETS, Config
from testbeds.modadd.ground_truth import (
    GENERALISING_IPR,
    fourier_families,
    gromov_solution,
    key_frequencies,
    memorisation_solution,
    neuron_frequencies,
)
from testbeds.modadd.hand_built import fourier_transformer
from testbeds.modadd.models import ModAddMLP, ModAddTransformer
from testbeds.modadd.train import (
    TESTBED,
    corrupted_labels,
    labels,
    pairs,
    per_example_loss,
    probe_inputs,
    split,
    train,
)
from testbeds.runs import Run


class ModAdd(Testbed):
    name = TESTBED
    summary = "(a + b) mod p on all p² pairs: Gromov's quadratic MLP, one-layer transformers"
    config_type = Config
    presets = PRESETS
    hand_built = {
        "gromov_solution": gromov_solution,
        "memorisation_solution": memorisation_solution,
        "fourier_transformer": fourier_transformer,
    }

    def train(self, config: Config | str, seed: int = 0, **options: Any) -> Run:
        return train(config, seed, **options)

    def probe(self, run: Run) -> Probe:
        """All p² pairs in canonical order (row a·p + b) with their true sums; training rows
        are the run's training split."""
        config = run.config
        a, b = pairs(config.p)
        return Probe(
            inputs=probe_inputs(config),
            targets=labels(config.p),
            loss=per_example_loss(config),
            train_rows=split(config, run.seed)[0],
            names={"a": a, "b": b},
        )

    def training_set(self, run: Run) -> Probe:
        """The training split with the labels trained on (corrupted ones included)."""
        config = run.config
        rows = split(config, run.seed)[0]
        return Probe(
            inputs=probe_inputs(config)[rows],
            targets=corrupted_labels(config, run.seed)[0][rows],
            loss=per_example_loss(config),
            train_rows=torch.arange(len(rows)),
        )

    def units(self, model: nn.Module) -> list[dict]:
        """The MLP's hidden neurons; for the transformer, its attention heads (each head's
        W_Q, W_K, W_V rows and W_O columns) followed by its d_mlp MLP neurons."""
        if isinstance(model, ModAddMLP):
            return hidden_units(model, "layer1", "layer2")
        if not isinstance(model, ModAddTransformer):
            raise ValueError(
                f"model must be a ModAddMLP or ModAddTransformer, got {type(model).__name__}"
            )
        return model.heads() + hidden_units(model, "mlp_in", "mlp_out")

    def activations(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """Neuron activations: the MLP's hidden layer (N, width), or the transformer's MLP
        neurons at "=" (N, d_mlp; the last d_mlp of its units)."""
        if isinstance(model, ModAddTransformer):
            return model.neuron_activations(inputs)
        return model.hidden(inputs)

    def ground_truth(self, run: Run, model: nn.Module | None = None) -> GroundTruth:
        """Labels ``a``, ``b``, ``sum``, ``difference`` of the p² inputs; the mean-centred
        Fourier families of each as directions; each neuron's dominant frequency (``-1`` where
        no frequency holds most of its power) and whether it generalises; the key frequencies
        and the accuracy on the training and test splits."""
        model = run.final_model() if model is None else model
        config = run.config
        a, b = pairs(config.p)
        neurons = neuron_frequencies(model)
        with torch.no_grad():
            x = probe_inputs(config)
            x = x.to(next(model.parameters()).dtype) if x.is_floating_point() else x
            predicted = model(x).argmax(-1)
        train_rows, test_rows = split(config, run.seed)
        y = labels(config.p)
        return GroundTruth(
            input_labels={
                "a": a,
                "b": b,
                "sum": (a + b) % config.p,
                "difference": (a - b) % config.p,
            },
            input_directions={
                f"{name}_family": family for name, family in fourier_families(config.p).items()
            },
            unit_labels={
                "frequency": torch.where(neurons.clear, neurons.dominant, -1),
                "generalising": (neurons.ipr >= GENERALISING_IPR).long(),
            },
            values={
                "key_frequencies": key_frequencies(model),
                "train_accuracy": (predicted[train_rows] == y[train_rows]).double().mean().item(),
                "test_accuracy": (predicted[test_rows] == y[test_rows]).double().mean().item(),
            },
        )


testbed = ModAdd()
__all__ = ["ModAdd", "testbed"]
