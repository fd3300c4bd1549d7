"""H8′ — policing circuits exist, judged only where the detector has shown power (claims v2,
part 2).

H8 (``test_h8_policing.py``, superseded) asked for a sector with s_P ≤ 0.01, c_PQ ≥ 0.5 and
κ_PQ < 0 at level 3 of the eNTK tree. Random sector labellings meet c ≥ 0.5 (0.91–0.96 on seeds
0–2), and a police circuit of a few neurons inside a 64-neuron sector was never shown to be
detectable.

**H8′ (pre-registered in the claims-v2 part-2 issue; the choices the issue leaves open are
fixed here before the first run).** Instruments in :mod:`hypotheses.police_power`.

* Testbeds ``lin2025_mlp`` and ``doshi2023_mlp`` (final checkpoint), the eNTK tree of
  :mod:`hypotheses.coalitions`, levels 1–7 (2 to 128 sectors of 256 to 4 neurons), per-example
  gradients and Hessian of the training loss as in H8 (κ over H8's 128 curvature examples).
* Coupling criterion: c_PQ ≥ c*_L, the 99th percentile over 100 random labellings at level L of
  the largest coupling between two of their sectors (replaces c_PQ ≥ 0.5). Share s_P ≤ 0.01
  and κ_PQ < 0 as in H8.
* Power: on seed 0 of each testbed (looked at for v1; a power study is not a verdict), a
  police pair of 4, 16 and 64 weights per block is planted 10 times each
  (:func:`hypotheses.police_power.plant`) and the hit rate is counted per level. A level *has
  power* when the hit rate is ≥ 0.8 for at least one of the three sizes.
* Verdict on confirmatory seeds 3, 4, 5 at each level with power: at least one police sector
  on every seed. At a level without power the count is recorded as "no power" (no verdict).
  Control, recorded beside: the count on one random labelling of the same level.

Role: exploratory. The registered coupling criterion has no margin even on a hand-built
network built to pass it: units with independent gradient noise (uncoupled least-squares
problems) and a planted police pair that dominates its sectors. A random labelling that puts a
P weight and its Q partner in different sectors shows the pair's coupling too, so c*_L lands on
the planted pair's own coupling; the hits there are coin flips (recorded below as
``hand_built``/``independent_units``). No hand-built network passes the statistic reliably
(SCIENCE.md rule 6), so H8′ cannot gate.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from torch import nn

from hypotheses import tier
from hypotheses.coalitions import players, training_set, unit_trees
from hypotheses.police_power import (
    Curvature,
    UnitGradients,
    level_labels,
    plant,
    police_pairs,
    police_statistics,
    random_level_labels,
    random_max_coupling,
)
from hypotheses.test_h8_policing import CURVATURE_EXAMPLES, CURVATURE_SEED, H8_SHARE_MAX
from hypotheses.trajectories import plots_dir
from metrics.hierarchy import Tree
from testbeds import modadd
from testbeds.runs import Run
from testbeds.trajectory import map_checkpoints

GATING_CLAIMS = ()  # see tests/test_gate.py
EXPLORATORY_CLAIMS = ("H8′",)

SEEDS = tier.seeds(3, 4, 5)  # confirmatory: v1 was looked at on 0, 1, 2
POWER_SEED = tier.seeds(0)[0]
PRESETS = ("lin2025_mlp", "doshi2023_mlp")
# Pre-registered (claims v2, part 2, "H8′"): see the module docstring.
LEVELS = (1, 2, 3, 4, 5, 6, 7)
WIDTHS = (4, 16, 64)
PLANTINGS = 10
LABELLINGS = 100
QUANTILE = 0.99
POWER_MIN = 0.8
MIN_POLICE = 1
LABELLING_SEED = 13000  # + 100 · seed + level
PLANTING_SEED = 14000  # + 100 · width + planting
CONTROL_SEED = 9500  # + seed: H8's random-label control
NOTE = "no hand-built network passes the coupling criterion with a margin (exploratory)"


@dataclass(frozen=True)
class Detection:
    threshold: float
    candidates: list[tuple[int, int]]
    police: list[tuple[int, int]]

    @property
    def police_sectors(self) -> int:
        return len({p for p, _ in self.police})


def threshold_at(
    stats: UnitGradients, level: int, seed: int, attach: torch.Tensor | None = None
) -> float:
    """c*_L: the ``QUANTILE`` of the largest coupling over ``LABELLINGS`` random labellings at
    ``level`` (planted units following their leaves)."""
    generator = torch.Generator().manual_seed(LABELLING_SEED + 100 * seed + level)
    randoms = random_max_coupling(stats, level, LABELLINGS, generator, attach)
    return float(torch.quantile(randoms, QUANTILE))


def detect(
    stats: UnitGradients, labels: torch.Tensor, curvature: Curvature, threshold: float
) -> Detection:
    """H8′'s detector on one labelling at the coupling threshold ``threshold``."""
    candidates, police = police_pairs(
        stats, labels, curvature, share_max=H8_SHARE_MAX, coupling_min=threshold
    )
    return Detection(threshold, candidates, police)


def network(run: Run):
    """The final model (float64), its training set, units, unit statistics and curvature."""
    model = run.final_model().double()
    loss, x, y = training_set(run)
    x = x.double() if x.is_floating_point() else x
    generator = torch.Generator().manual_seed(CURVATURE_SEED + run.seed)
    examples = torch.randperm(len(x), generator=generator)[:CURVATURE_EXAMPLES]
    stats, curvature = police_statistics(model, loss, x, y, players(model), examples)
    return stats, curvature, examples


def power(run: Run) -> dict[str, float]:
    """Hit rate per (width, level) over the plantings, ``hit/w<W>/L<L>``, and the medians of
    the planted pair's best coupling and of the threshold, ``c/…`` and ``threshold/…``."""
    tree = unit_trees(run, ("entk",))["entk"]

    def metric(model, step):
        stats, curvature, examples = network(run)
        hits, best, thresholds = {}, {}, {}
        for width in WIDTHS:
            for k in range(PLANTINGS):
                generator = torch.Generator().manual_seed(PLANTING_SEED + 100 * width + k)
                planting = plant(stats, tree, width, generator)
                curvature.planted = planting.pair.kappa(examples)
                for level in LEVELS:
                    labels = planting.labels(tree, level)
                    threshold = threshold_at(planting.stats, level, run.seed, planting.attach)
                    found = detect(planting.stats, labels, curvature, threshold)
                    p_sectors, q_sectors = planting.planted_sectors(labels)
                    _, coupling = planting.stats.scores(labels)
                    key = f"w{width}/L{level}"
                    hits.setdefault(key, []).append(
                        any(a in p_sectors and b in q_sectors for a, b in found.police)
                    )
                    best.setdefault(key, []).append(
                        max(float(coupling[a, b]) for a in p_sectors for b in q_sectors)
                    )
                    thresholds.setdefault(key, []).append(found.threshold)
        out = {f"hit/{k}": sum(v) / len(v) for k, v in hits.items()}
        out.update({f"c/{k}": statistics.median(v) for k, v in best.items()})
        out.update({f"threshold/{k}": statistics.median(v) for k, v in thresholds.items()})
        return out

    frame = map_checkpoints(
        run,
        metric,
        name="police-power",
        version={"widths": WIDTHS, "plantings": PLANTINGS, "levels": LEVELS},
        steps=[run.steps[-1]],
    )
    return dict(zip(frame["metric"], frame["value"], strict=True))


def level_power(table: dict[str, float], level: int) -> float:
    return max(table[f"hit/w{width}/L{level}"] for width in WIDTHS)


@pytest.mark.parametrize("preset", PRESETS)
def test_h8p_power_recorded(preset, record):
    """The planted hit rates on seed 0, one record per level (best size), the table beside."""
    config = tier.preset(modadd, preset)
    run = modadd.train(config, POWER_SEED)
    table = power(run)
    out = plots_dir("H8_v2")
    rows = [
        {
            "width": width,
            "level": level,
            "hit_rate": table[f"hit/w{width}/L{level}"],
            "median_planted_coupling": table[f"c/w{width}/L{level}"],
            "median_threshold": table[f"threshold/w{width}/L{level}"],
        }
        for width in WIDTHS
        for level in LEVELS
    ]
    pd.DataFrame(rows).to_csv(out / f"power_{preset}_seed{POWER_SEED}.csv", index=False)
    powered = [level for level in LEVELS if level_power(table, level) >= POWER_MIN]
    record(
        claim="H8′",
        testbed=modadd.TESTBED,
        preset=preset,
        seed=POWER_SEED,
        config=config,
        statistic="levels_with_power",
        value=len(powered),
        threshold=1,
        comparison=">=",
        role="exploratory",
        note="a level has power at a planted hit rate ≥ 0.8; without one, no verdict",
        extra={"levels": powered},
    )
    for level in LEVELS:
        record(
            claim="H8′",
            testbed=modadd.TESTBED,
            preset=preset,
            seed=POWER_SEED,
            config=config,
            statistic=f"planted_hit_rate_level{level}",
            value=level_power(table, level),
            kind="diagnostic",
            role="diagnostic",
            note=f"power: best hit rate over {PLANTINGS} plantings of widths {WIDTHS}",
            extra={
                f"width{w}": {
                    "hit_rate": table[f"hit/w{w}/L{level}"],
                    "coupling": round(table[f"c/w{w}/L{level}"], 4),
                    "threshold": round(table[f"threshold/w{w}/L{level}"], 4),
                }
                for w in WIDTHS
            },
        )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("preset", PRESETS)
def test_h8p_police_sectors(preset, seed, record):
    config = tier.preset(modadd, preset)
    table = power(modadd.train(config, POWER_SEED))
    run = modadd.train(config, seed)
    tree = unit_trees(run, ("entk",))["entk"]
    stats, curvature, _ = network(run)
    U = tree.n_leaves
    rows = []
    for level in LEVELS:
        labels = level_labels(tree, level)
        threshold = threshold_at(stats, level, seed)
        found = detect(stats, labels, curvature, threshold)
        control_labels = random_level_labels(
            U, level, torch.Generator().manual_seed(CONTROL_SEED + seed)
        )
        control = detect(stats, control_labels, curvature, threshold)
        share, coupling = stats.scores(labels)
        off = coupling - torch.eye(len(share))
        has_power = level_power(table, level) >= POWER_MIN
        extra = {
            "threshold": round(found.threshold, 4),
            "max_coupling": round(float(off.max()), 4),
            "min_share": float(f"{float(share.min()):.4g}"),
            "candidates": len(found.candidates),
            "planted_hit_rate": level_power(table, level),
        }
        rows.append({"level": level, "police_sectors": found.police_sectors, **extra})
        common = dict(
            claim="H8′",
            testbed=modadd.TESTBED,
            preset=preset,
            seed=seed,
            config=config,
            statistic=f"police_sectors_level{level}",
            value=found.police_sectors,
            control_value=control.police_sectors,
            extra=extra,
        )
        if has_power:
            record(threshold=MIN_POLICE, comparison=">=", role="exploratory", note=NOTE, **common)
        else:
            record(kind="diagnostic", role="diagnostic", note="no power at this level", **common)
    pd.DataFrame(rows).to_csv(plots_dir("H8_v2") / f"{preset}_seed{seed}.csv", index=False)


# ---- the hand-built network built to pass --------------------------------------------------

HAND_BUILT_SEEDS = tier.seeds(0, 1, 2)
HAND_BUILT_UNITS = 32
HAND_BUILT_WIDTHS = (2, 4, 8)
HAND_BUILT_LEVELS = (1, 2, 3, 4, 5)


class Independent(nn.Module):
    """U linear units, each reading its own d inputs into its own output: f_u = w_u · x_u."""

    def __init__(self, units: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(units, width, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).sum(2)


@dataclass(frozen=True)
class IndependentConfig:
    units: int = HAND_BUILT_UNITS
    inputs_per_unit: int = 4
    examples: int = 600


def independent_units(seed: int, config: IndependentConfig = IndependentConfig()):
    """Least-squares fits of independent noisy linear problems: ḡ = 0, and the gradient noise
    of different units is uncoupled up to sampling."""
    generator = torch.Generator().manual_seed(seed)
    U, d, N = config.units, config.inputs_per_unit, config.examples
    x = torch.randn(N, U, d, generator=generator, dtype=torch.float64)
    w = torch.randn(U, d, generator=generator, dtype=torch.float64)
    y = (x * w).sum(2) + torch.randn(N, U, generator=generator, dtype=torch.float64)
    model = Independent(U, d)
    with torch.no_grad():
        for u in range(U):
            model.weight[u] = torch.linalg.lstsq(x[:, u], y[:, u : u + 1]).solution[:, 0]
    return model, x, y, [{"weight": (0, u)} for u in range(U)]


def half_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((outputs - targets) ** 2).sum(1)


def hand_built_hits(seed: int) -> dict[str, list[float]]:
    """Per (width, level): hit (1/0) and the margin c(planted) − c*_L, one planting each."""
    model, x, y, units = independent_units(seed)
    examples = torch.arange(CURVATURE_EXAMPLES)
    stats, curvature = police_statistics(model, half_squared_error, x, y, units, examples)
    tree = Tree.balanced(HAND_BUILT_UNITS)
    hits, margins = [], []
    for width in HAND_BUILT_WIDTHS:
        planting = plant(stats, tree, width, torch.Generator().manual_seed(seed))
        curvature.planted = planting.pair.kappa(examples)
        for level in HAND_BUILT_LEVELS:
            labels = planting.labels(tree, level)
            threshold = threshold_at(planting.stats, level, seed, planting.attach)
            found = detect(planting.stats, labels, curvature, threshold)
            p_sectors, q_sectors = planting.planted_sectors(labels)
            _, coupling = planting.stats.scores(labels)
            best = max(float(coupling[a, b]) for a in p_sectors for b in q_sectors)
            hits.append(float(any(a in p_sectors and b in q_sectors for a, b in found.police)))
            margins.append(best - found.threshold)
    return {"hits": hits, "margins": margins}


@pytest.mark.parametrize("seed", HAND_BUILT_SEEDS)
def test_h8p_hand_built_recorded(seed, record):
    """The network built to pass: its hit rate and the planted pair's margin over c*_L."""
    out = hand_built_hits(seed)
    common = dict(
        claim="H8′",
        testbed="hand_built",
        preset="independent_units",
        seed=seed,
        config=IndependentConfig(),
        kind="diagnostic",
        role="diagnostic",
        note=f"one planting per width {HAND_BUILT_WIDTHS} and level {HAND_BUILT_LEVELS}",
        extra={"margins": [round(m, 4) for m in out["margins"]], "hits": out["hits"]},
    )
    record(statistic="planted_hit_rate", value=statistics.mean(out["hits"]), **common)
    record(statistic="median_coupling_margin", value=statistics.median(out["margins"]), **common)
