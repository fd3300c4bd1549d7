"""Scoring tasks of the modular-addition testbed (``testbeds.modadd``).

All directions live on the p² inputs in canonical order (row a·p + b). Budgets follow the
conventions of claim H1 (``hypotheses/test_h1_fourier_circuits.py``):

* ``modadd_mlp.sum_family`` / ``modadd_mlp.difference_family`` (``lin2025_mlp``): k = F =
  2(p − 1) directions, one eNTK cliff's width; score = normalised overlap with the mean-centred
  Fourier family of a + b (resp. a − b), i.e. the fraction of the (p − 1)-dimensional family
  inside the method's span. Chance F/p².
* ``modadd_mlp.neuron_frequency`` (``lin2025_mlp``): a partition of the 512 hidden neurons
  into at most k clusters, k = the number of distinct dominant frequencies among neurons with a
  clear one (≥ 50% of their Fourier power); score = ARI against the dominant frequency on those
  neurons, clipped at 0.
* ``modadd_transformer.key_sum_modes`` (``lin2025_transformer``, the paper's network): k =
  2|K| + 1 directions, K the network's key frequencies; score = overlap with the sum family
  restricted to K, divided by 2|K| (H1d's statistic). Chance (2|K| + 1)/p². The network's
  outputs, which the problem's loss and a method's readouts see, are its first p logits (its
  unembedding's "=" row is never read; ``testbeds.modadd.ModAddTransformer``).

Problems carry the four cyclic graphs of the input torus (``graphs[f]`` is the Laplacian of the
cycles along which f stays constant, so its null space is the functions of f) and name the
task's family as ``target``: domain knowledge about the inputs that graph-smoothness methods
use, not knowledge of the trained network.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor, nn

import testbeds
from leaderboard.api import Problem, Task, register_task
from leaderboard.scoring import partition_score, subspace_score
from metrics.spectra import orthonormal_basis
from testbeds import modadd

MLP_PRESET = "lin2025_mlp"
TRANSFORMER_PRESET = "lin2025_transformer"
# graph name → step (da, db) along which that quantity stays constant
GRAPH_STEPS = {"a": (0, 1), "b": (1, 0), "sum": (1, -1), "difference": (1, 1)}


@lru_cache(maxsize=2)
def torus_graphs(p: int) -> dict[str, Tensor]:
    """Cycle-graph Laplacians (p², p²) float64 on the input torus; ``graphs[f]`` connects each
    input to its neighbours along the direction that keeps f fixed (module docstring)."""
    a, b = modadd.pairs(p)
    graphs = {}
    for name, (da, db) in GRAPH_STEPS.items():
        shift = torch.zeros(p * p, p * p, dtype=torch.float64)
        shift[torch.arange(p * p), ((a + da) % p) * p + (b + db) % p] = 1.0
        graphs[name] = 2 * torch.eye(p * p, dtype=torch.float64) - shift - shift.T
    return graphs


@lru_cache(maxsize=4)
def family_basis(p: int, family: str) -> Tensor:
    return orthonormal_basis(modadd.fourier_family(p, family), center=True)


BED = testbeds.get("modadd")


def _model(config: modadd.Config, seed: int) -> nn.Module:
    """The trained network (from the run cache)."""
    return BED.train(config, seed).final_model().eval()


def _problem(config, model, seed: int, task: str, *, k: int, kind: str, over: str, **fields):
    """The Problem of a modular-addition task on a loaded model, from the testbed contract."""
    probe = BED.probe(BED.train(config, seed))
    units = BED.units(model) if over == "units" else None
    return Problem(
        model=model,
        inputs=probe.inputs,
        k=k,
        kind=kind,
        over=over,
        rows=len(units) if over == "units" else len(probe.inputs),
        targets=probe.targets,
        loss=probe.loss,
        graphs=torus_graphs(config.p),
        seed=seed,
        task=task,
        activations=BED.activations,
        units=units,
        **fields,
    )


def _family_task(family: str) -> Task:
    name = f"modadd_mlp.{family}_family"
    config = modadd.preset(MLP_PRESET)

    def setup(seed: int):
        problem = _problem(
            config,
            _model(config, seed),
            seed,
            name,
            k=2 * (config.p - 1),
            kind="directions",
            over="inputs",
            target=family,
        )
        return problem, family_basis(config.p, family)

    def score(directions: Tensor, basis: Tensor, problem: Problem):
        value, chance = subspace_score(directions, basis, problem.k)
        return value, chance, {"family_dim": basis.shape[1]}

    return Task(
        name=name,
        testbed=modadd.TESTBED,
        preset=MLP_PRESET,
        kind="directions",
        over="inputs",
        description=f"Fourier {family} family in k = 2(p−1) directions over the p² inputs",
        config=config,
        setup=setup,
        score=score,
    )


def _neuron_task() -> Task:
    name = "modadd_mlp.neuron_frequency"
    config = modadd.preset(MLP_PRESET)

    def setup(seed: int):
        model = _model(config, seed)
        truth = modadd.neuron_frequencies(model)
        k = int(torch.unique(truth.dominant[truth.clear]).numel())
        problem = _problem(config, model, seed, name, k=k, kind="partition", over="units")
        return problem, truth

    def score(labels: Tensor, truth: modadd.NeuronFrequencies, problem: Problem):
        value, chance, raw = partition_score(
            labels, truth.dominant, truth.clear, problem.k, seed=problem.seed
        )
        return value, chance, {"ari": raw, "clear_neurons": int(truth.clear.sum())}

    return Task(
        name=name,
        testbed=modadd.TESTBED,
        preset=MLP_PRESET,
        kind="partition",
        over="units",
        description="hidden neurons → dominant frequency (ARI on clear neurons, clipped at 0)",
        config=config,
        setup=setup,
        score=score,
    )


def _key_sum_task() -> Task:
    name = "modadd_transformer.key_sum_modes"
    config = modadd.preset(TRANSFORMER_PRESET)

    def setup(seed: int):
        model = _model(config, seed)
        keys = modadd.key_frequencies(model)
        family = modadd.restrict_to_frequencies(modadd.fourier_family(config.p, "sum"), keys)
        problem = _problem(
            config,
            model,
            seed,
            name,
            k=2 * len(keys) + 1,
            kind="directions",
            over="inputs",
            target="sum",
        )
        return problem, orthonormal_basis(family, center=True)

    def score(directions: Tensor, basis: Tensor, problem: Problem):
        value, chance = subspace_score(directions, basis, problem.k)
        return value, chance, {"key_frequencies": basis.shape[1] // 2}

    return Task(
        name=name,
        testbed=modadd.TESTBED,
        preset=TRANSFORMER_PRESET,
        kind="directions",
        over="inputs",
        description="sum modes of the key frequencies K in k = 2|K|+1 directions",
        config=config,
        setup=setup,
        score=score,
    )


for _task in (_family_task("sum"), _family_task("difference"), _neuron_task(), _key_sum_task()):
    register_task(_task)
