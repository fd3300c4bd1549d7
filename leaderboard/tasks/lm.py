"""Scoring tasks of the small-language-model testbed (``testbeds.lm``).

``lm_prompts.<factor>`` for the two planted latent factors of the synthetic language: on the
256 probe prompts (8 tokens each, 32 per (topic, style) combination) of the pretrained
``lm_pretrain`` model, read out as next-token log-probabilities at the last position, a method
returns k directions over the prompts (k = the factor's number of values: 4 topics, 2 styles)
or a partition of them. Score: the prompts are clustered into k groups by k-means on the rows
of the directions (a partition is scored through its indicators, which k-means recovers
exactly) and compared with the prompts' latent factor by the adjusted Rand index (clipped at
0); chance is the mean clipped ARI of random partitions into k groups.

Per-example loss: the next-token negative log-likelihood of each prompt's true 9th token.
Hidden activations: the final normalised residual stream at the last position (N, d_model).
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from torch import Tensor

import testbeds
from leaderboard.api import Problem, Task, register_task
from leaderboard.scoring import partition_chance
from testbeds import lm
from testbeds.lm.train import PROBE_PROMPT_LEN

PRESET = "lm_pretrain"
FACTORS = {"topic": 4, "style": 2}
KMEANS_RESTARTS = 10
BED = testbeds.get("lm")


def nll(outputs: Tensor, targets: Tensor) -> Tensor:
    """−log p(target) from last-position log-probabilities (n, V) → (n,)."""
    return -outputs.gather(1, targets[:, None].long())[:, 0]


def cluster_rows(directions: Tensor, k: int, seed: int) -> np.ndarray:
    """k-means labels (N,) of the rows of ``directions`` (N, j); one cluster when j = 0 or
    every row is the same."""
    X = directions.double().numpy()
    if X.shape[1] == 0 or np.allclose(X, X[:1]):
        return np.zeros(len(X), dtype=int)
    return KMeans(k, n_init=KMEANS_RESTARTS, random_state=seed).fit_predict(X)


def _task(factor: str) -> Task:
    name = f"lm_prompts.{factor}"
    config = lm.preset(PRESET)
    k = FACTORS[factor]

    def setup(seed: int):
        model = lm.LastTokenLogProbs(BED.train(config, seed).final_model()).eval()
        probe = lm.probe_prompts(config.language, PROBE_PROMPT_LEN + 1)
        inputs, targets = probe.tokens[:, :-1], probe.tokens[:, -1]
        truth = getattr(probe, factor)
        problem = Problem(
            model=model,
            inputs=inputs,
            k=k,
            kind="directions",
            over="inputs",
            rows=len(inputs),
            targets=targets,
            loss=nll,
            activations=BED.activations,
            seed=seed,
            task=name,
        )
        return problem, truth

    def score(directions: Tensor, truth: Tensor, problem: Problem):
        labels = cluster_rows(directions, k, problem.seed)
        raw = float(adjusted_rand_score(truth.numpy(), labels))
        chance = partition_chance(truth.numpy(), k, problem.seed)
        return max(raw, 0.0), chance, {"raw_ari": raw}

    return Task(
        name=name,
        testbed=lm.TESTBED,
        preset=PRESET,
        kind="directions",
        over="inputs",
        description=f"the {factor} of the 256 LM probe prompts, by k-means on k = {k} directions",
        config=config,
        setup=setup,
        score=score,
    )


for _factor in FACTORS:
    register_task(_task(_factor))
