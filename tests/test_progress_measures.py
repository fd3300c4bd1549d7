"""Nanda et al. (2023)'s restricted and excluded loss, against a least-squares reference, on the
hand-built transformer, and the circuit-formation phase they delimit."""

from __future__ import annotations

import math
import os
import sys

import pandas as pd
import pytest
import torch

from testbeds import modadd
from testbeds.modadd import Config

sys.path.insert(0, os.path.dirname(__file__))
from test_modadd import TINY_TF  # noqa: E402

CASES = [
    {"p": 7, "key": (1,), "classes": 7, "seed": 0},
    {"p": 11, "key": (2, 5, 3), "classes": 11, "seed": 1},
    {"p": 13, "key": (6, 1), "classes": 4, "seed": 2},
    {"p": 5, "key": (), "classes": 5, "seed": 3},
]


def reference_split(logits: torch.Tensor, p: int, key) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares on explicit columns: restricted = fit on [1, cos, sin at key]; excluded =
    logits minus the fit on [cos, sin at key] alone."""
    a = torch.arange(p).repeat_interleave(p).double()
    b = torch.arange(p).repeat(p).double()
    columns = []
    for k in key:
        angle = 2 * math.pi * k * (a + b) / p
        columns += [torch.cos(angle), torch.sin(angle)]
    constant = torch.ones(p * p, 1, dtype=torch.float64)
    if not columns:  # nothing to exclude
        return constant @ torch.linalg.lstsq(constant, logits).solution, logits
    waves = torch.stack(columns, dim=1)  # (p², 2|K|)
    with_constant = torch.cat([constant, waves], dim=1)
    restricted = with_constant @ torch.linalg.lstsq(with_constant, logits).solution
    excluded = logits - waves @ torch.linalg.lstsq(waves, logits).solution
    return restricted, excluded


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"p{c['p']}-key{c['key']}")
def test_split_matches_least_squares(case):
    p = case["p"]
    generator = torch.Generator().manual_seed(case["seed"])
    logits = torch.randn(p * p, case["classes"], generator=generator, dtype=torch.float64)
    restricted, excluded = modadd.sum_frequency_split(logits, case["key"])
    ref_restricted, ref_excluded = reference_split(logits, p, case["key"])
    torch.testing.assert_close(restricted, ref_restricted, rtol=0, atol=1e-10)
    torch.testing.assert_close(excluded, ref_excluded, rtol=0, atol=1e-10)


def test_split_rejects_bad_frequencies():
    logits = torch.zeros(49, 7)
    with pytest.raises(ValueError, match="key frequencies must lie in 1 … \\(p − 1\\)/2 = 3"):
        modadd.sum_frequency_split(logits, (4,))
    with pytest.raises(ValueError, match="distinct"):
        modadd.sum_frequency_split(logits, (1, 1))


def test_hand_built_transformer_lives_in_its_key_frequencies():
    config = modadd.preset("lin2025_transformer")
    model = modadd.fourier_transformer(config, key=(4, 5, 7))
    measures = modadd.progress_measures(model, config, seed=0)
    assert sorted(measures["key_frequencies"]) == [4, 5, 7]
    full = measures["test_loss"]
    assert full < 0.01
    assert abs(measures["restricted_loss"] - full) < 0.01
    assert measures["excluded_loss"] > 100 * measures["train_loss"]
    assert measures["excluded_loss"] > 0.9 * math.log(config.p)  # no better than chance
    wrong = modadd.progress_measures(model, config, seed=0, key=(1, 2, 3))
    assert wrong["restricted_loss"] > 0.9 * math.log(config.p)
    assert wrong["excluded_loss"] < 0.01


def test_progress_measures_need_the_transformer():
    config = Config(arch="mlp", p=5, width=8)
    with pytest.raises(ValueError, match="defined for the transformer"):
        modadd.progress_measures(config.build_model(), config, seed=0)


def test_progress_curve_uses_the_final_key_at_every_checkpoint():
    run = modadd.train(TINY_TF, seed=0, cache=False)
    curve = modadd.progress_curve(run)
    assert list(curve.columns) == ["epoch", "train_loss", "test_loss", "restricted_loss"] + [
        "excluded_loss"
    ]
    assert curve["epoch"].tolist() == run.steps
    key = tuple(modadd.key_frequencies(run.final_model()).tolist())
    assert curve.attrs["key_frequencies"] == key
    first = modadd.progress_measures(run.model_at(0), TINY_TF, 0, key)
    assert curve.iloc[0]["excluded_loss"] == pytest.approx(first["excluded_loss"])
    explicit = modadd.progress_curve(run, key=(2,))
    assert explicit.attrs["key_frequencies"] == (2,)
    assert explicit["train_loss"].equals(curve["train_loss"])
    logged = run.log.set_index("epoch")["train_loss"]
    assert curve.iloc[-1]["train_loss"] == pytest.approx(logged.loc[run.final_step], rel=1e-5)


def test_circuit_formation_phase_on_a_known_curve():
    curve = pd.DataFrame(
        {
            "epoch": [0, 10, 20, 30, 40, 50],
            "restricted_loss": [5.0, 4.0, 3.0, 1.0, 0.4, 0.1],
            "excluded_loss": [5.0, 1.0, 0.5, 0.8, 2.0, 0.1],  # lowest after the end: not counted
        }
    )
    assert modadd.circuit_formation_phase(curve) == (20, 40)
    assert modadd.circuit_formation_phase(curve.iloc[::-1]) == (20, 40)  # order-free


def test_circuit_formation_phase_errors():
    curve = pd.DataFrame(
        {"epoch": [0, 10], "restricted_loss": [5.0, 0.6], "excluded_loss": [1.0, 2.0]}
    )
    with pytest.raises(ValueError, match="restricted_loss never falls below 10%"):
        modadd.circuit_formation_phase(curve)
    with pytest.raises(ValueError, match="missing \\['excluded_loss'\\]"):
        modadd.circuit_formation_phase(curve.drop(columns="excluded_loss"))
