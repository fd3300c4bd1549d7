"""Scoring tasks of the Toy Models of Superposition testbed (``testbeds.tms``).

``tms_features.<preset>`` for the three Lin 2025 presets: on the fixed dataset (N = 500
inputs, n = 50 features) a method returns k = r directions over the N·n channel-major
(input, output channel) pairs, r the number of represented features (‖W_j‖² ≥ 0.75). Score:
:func:`testbeds.tms.feature_recovery` with ``center=True`` (per-channel means removed on both
sides, so knowing only *which channels* carry features earns nothing) and the budget r; chance
r/(N·n).

Hidden activations in the flattened row space: row (x, c) holds the hidden dimensions'
contributions to channel c's pre-activation, W[:, c] ∘ h(x) (m values).
"""

from __future__ import annotations

from torch import Tensor, nn

import testbeds
from leaderboard.api import Problem, Task, register_task
from testbeds import tms

PRESETS = ("lin2025_tms_m10_s0.3", "lin2025_tms_m10_s0.9", "lin2025_tms_m40_s0.9")
BED = testbeds.get("tms")


def contributions(model: nn.Module, inputs: Tensor) -> Tensor:
    """(N·n, m) channel-major: row c·N + x is W[:, c] ∘ h(x)."""
    W = model.W[0]  # (m, n)
    h = BED.activations(model, inputs)  # (N, m)
    return (W.T[:, None, :] * h[None, :, :]).reshape(-1, W.shape[0])  # (n, N, m) → (n·N, m)


def _task(preset: str) -> Task:
    name = f"tms_features.{preset.removeprefix('lin2025_tms_')}"
    config = tms.preset(preset)
    weights = tms.importances(config)

    def term_loss(outputs: Tensor, targets: Tensor) -> Tensor:
        return (targets - outputs).pow(2) * weights.to(outputs)

    def setup(seed: int):
        run = BED.train(config, seed)
        model = run.final_model().eval()
        inputs = BED.probe(run).inputs
        truth = BED.ground_truth(run, model).values["features"]
        if truth.n_represented == 0:
            raise ValueError(f"{preset} seed {seed} represents no feature; the task is undefined")
        problem = Problem(
            model=model,
            inputs=inputs,
            k=truth.n_represented,
            kind="directions",
            over="flattened",
            rows=inputs.numel(),
            targets=inputs,
            loss=tms.reconstruction_loss(config),
            term_loss=term_loss,
            activations=contributions,
            seed=seed,
            task=name,
        )
        return problem, truth

    def score(directions: Tensor, truth: tms.GroundTruth, problem: Problem):
        value, chance = tms.feature_recovery(directions, truth, center=True, budget=problem.k)
        return value, chance, {"represented": truth.n_represented}

    return Task(
        name=name,
        testbed=tms.TESTBED,
        preset=preset,
        kind="directions",
        over="flattened",
        description=f"represented TMS features of {preset} in k = r directions over (x, c)",
        config=config,
        setup=setup,
        score=score,
    )


for _preset in PRESETS:
    register_task(_task(_preset))
