"""A tiny leaderboard task with a known answer and no training, shared by the leaderboard,
isolation and plug-in tests: N = 24 random inputs in R⁵, a seeded 5-6-3 tanh network, and the
first three coordinate directions as the truth."""

from __future__ import annotations

import torch
from torch import nn

import testbeds
from leaderboard.api import Problem, Task
from leaderboard.scoring import partition_score, subspace_score
from metrics.spectra import orthonormal_basis

N, D = 24, 5


def tiny_problem(seed: int, kind: str = "directions", task: str = "tiny", shift: float = 0.0):
    """The seeded problem: the same seed gives the same inputs and weights."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(D, 6), nn.Tanh(), nn.Linear(6, 3))
    inputs = torch.randn(N, D, generator=generator) + shift
    for p in model.parameters():
        nn.init.normal_(p, 0.0, 0.5, generator=generator)
    return Problem(
        model=model,
        inputs=inputs,
        k=3,
        kind=kind,
        over="inputs",
        rows=N,
        targets=torch.zeros(N, dtype=torch.long),
        loss=lambda z, y: nn.functional.cross_entropy(z, y, reduction="none"),
        seed=seed,
        task=task,
    )


def tiny_basis() -> torch.Tensor:
    return orthonormal_basis(torch.eye(N, dtype=torch.float64)[:, :3])


def tiny_task(kind: str = "directions", setup=None, name: str | None = None) -> Task:
    """The task (``tiny_<kind>`` unless named); ``setup`` replaces the default problem."""
    name = name or f"tiny_{kind}"
    basis = tiny_basis()

    def default_setup(seed):
        return tiny_problem(seed, kind, task=name), basis

    def score(output, truth, problem):
        if kind == "directions":
            value, chance = subspace_score(output, truth, problem.k)
            return value, chance, {}
        labels = torch.arange(N) % 3
        value, chance, raw = partition_score(output, labels, torch.ones(N, dtype=bool), 3)
        return value, chance, {"ari": raw}

    return Task(
        name=name,
        testbed="modadd",
        preset="lin2025_mlp",
        kind=kind,
        over="inputs",
        description="tiny",
        config=testbeds.get("modadd").preset("lin2025_mlp"),
        setup=setup or default_setup,
        score=score,
    )
