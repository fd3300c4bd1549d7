"""H3b′ — memorising circuits die in the gradient noise, with censored half-lives (claims v2,
part 2).

H3b (``test_h3_memorisation_noise.py``, superseded) compares how fast the memorising circuit's
weight norm halves when training continues on minibatches of 32 and on the full batch. On
seeds 0–2 its checkpoint (the first that fits every training label) came before the network
generalised (seed 2: test accuracy 0.131), and both arms of seed 2 ran out of the 2000-step
budget, so the recorded ratio was exactly 1.00 — a ratio of two censored times read as a value.

**H3b′ (exploratory; pre-registered in the claims-v2 part-2 issue).**

* Testbed ``doshi2023_mlp``; confirmatory seeds 3, 4, 5 (seeds 0–2 were looked at for v1).
* Checkpoint: the first checkpoint (every 5 epochs) whose logged training accuracy is 1.0
  (every label fitted, corrupted ones included) **and** whose test accuracy is ≥ 0.90 (both
  circuits present). A seed without such a checkpoint is undecided.
* From it, H3b's continuation (fresh AdamW with the preset's learning rate, betas and weight
  decay; minibatches of 32, and the full batch) for a budget of 6000 optimizer steps. t½ = the
  first step at which the memorising circuit's weight norm is ≤ half its starting value; not
  reached within the budget, it is censored ("> 6000").
* Per seed, the ratio t½(full) / t½(minibatch) (readings fixed before any H3b′ value was seen;
  the most literal reading of the registration, which names only one undecided case): both
  halve — the ratio, decided; only the full-batch arm censored — the lower bound
  6000 / t½(minibatch) is the seed's value, decided, and judged against 2 like a ratio; only
  the minibatch arm censored — the ratio is < t½(full) / 6000 ≤ 1, decided (fail); both
  censored — undecided. A circuit with no neurons (zero norm at the checkpoint) has no
  half-life: the seed is undecided.
* Pass: ratio ≥ 2 on every decided confirmatory seed and at least 2 decided seeds. The count of
  decided seeds is its own check, recorded with ``seed = -1`` (over all confirmatory seeds).
  Undecided seeds are recorded as diagnostics (no verdict; value "–"), their reason in
  ``extra``.
* Control, recorded beside each seed: the same ratio for the generalising circuit.

Role: exploratory. No hand-built network is known on which noise provably shortens the
memorising circuit's half-life by 2× or more, so the statistic has no planted positive
(SCIENCE.md rule 6) and cannot gate.

Plots: ``results/h3b_v2/seed<seed>.png``; trajectories as CSV beside them.
"""

from __future__ import annotations

import math

from hypotheses import tier
from hypotheses.test_h3_memorisation_noise import (
    PRESET,
    final_values,
    h3b_trajectories,
    half_life,
    plot_h3b,
)
from leaderboard.records import results_dir
from testbeds import modadd

GATING_CLAIMS = ()  # see tests/test_gate.py
EXPLORATORY_CLAIMS = ("H3b′",)

SEEDS = tier.seeds(3, 4, 5)  # confirmatory: v1 was looked at on 0, 1, 2
# Pre-registered (claims v2, part 2, "H3b′").
BUDGET = 6000
TEST_ACC_MIN = 0.90
RATIO_MIN = 2.0
MIN_DECIDED = 2
NOTE = "no hand-built network with a known noise-driven half-life exists (exploratory)"
STATISTIC = "half_life_ratio_full_over_minibatch_memorising"


def both_circuits_checkpoint(run) -> int | None:
    """The first checkpoint epoch with every training label fitted and test accuracy ≥ 0.90,
    or None."""
    log = run.log.set_index("epoch")
    for epoch in run.config.checkpoint_epochs:
        if epoch in log.index:
            row = log.loc[epoch]
            if row["train_acc"] == 1.0 and row["test_acc"] >= TEST_ACC_MIN:
                return epoch
    return None


def censored_ratio(full: tuple[int, bool], minibatch: tuple[int, bool], budget: int) -> dict:
    """The half-life ratio t½(full) / t½(minibatch) of two (step, reached) pairs under the
    budget (module docstring): ``value`` (NaN when undecided), ``bound`` ("exact", "lower",
    "upper" or "none"), ``decided`` and ``passed`` (None when undecided)."""
    (t_full, full_hit), (t_mb, mb_hit) = full, minibatch
    if (full_hit and t_full <= 0) or (mb_hit and t_mb <= 0):  # a zero norm has no half-life
        return dict(value=math.nan, bound="none", decided=False, passed=None)
    if full_hit and mb_hit:
        ratio = t_full / t_mb
        return dict(value=ratio, bound="exact", decided=True, passed=ratio >= RATIO_MIN)
    if mb_hit:  # full batch censored: the ratio exceeds budget / t½(minibatch)
        bound = budget / t_mb
        return dict(value=bound, bound="lower", decided=True, passed=bound >= RATIO_MIN)
    if full_hit:  # minibatch censored: the ratio is below t½(full) / budget ≤ 1
        return dict(value=t_full / budget, bound="upper", decided=True, passed=False)
    return dict(value=math.nan, bound="none", decided=False, passed=None)


def seed_outcome(seed: int) -> dict:
    """Everything H3b′ records for one confirmatory seed."""
    config = tier.preset(modadd, PRESET)
    run = modadd.train(config, seed)
    epoch = both_circuits_checkpoint(run)
    if epoch is None:
        return dict(
            config=config, value=math.nan, bound="none", decided=False, passed=None,
            extra={"reason": f"no checkpoint fits every label with test accuracy ≥ {TEST_ACC_MIN}"},
        )  # fmt: skip
    arms = h3b_trajectories(run.model_at(epoch), config, seed, steps=BUDGET)
    out = results_dir() / "h3b_v2"
    out.mkdir(parents=True, exist_ok=True)
    for arm, frame in arms.items():
        frame.to_csv(out / f"seed{seed}_{arm}.csv", index=False)
    plot_h3b(arms, seed, out / f"seed{seed}.png")
    t = {
        (arm, c): half_life(frame[f"norm_{c}"], frame.step, BUDGET)
        for arm, frame in arms.items()
        for c in ("mem", "gen")
    }
    mem = censored_ratio(t["full", "mem"], t["minibatch", "mem"], BUDGET)
    gen = censored_ratio(t["full", "gen"], t["minibatch", "gen"], BUDGET)
    log = run.log.set_index("epoch").loc[epoch]
    extra = {
        "checkpoint_epoch": epoch,
        "checkpoint_test_acc": float(log["test_acc"]),
        "budget": BUDGET,
        "bound": mem["bound"],
        **{f"half_life_{c}_{arm}": (v[0] if v[1] else f"> {BUDGET}") for (arm, c), v in t.items()},
        "control_ratio_generalising": gen["value"],
        "control_bound_generalising": gen["bound"],
        **final_values(arms),
    }
    if not mem["decided"]:
        censored = not t["full", "mem"][1] and not t["minibatch", "mem"][1]
        extra["reason"] = "both arms censored" if censored else "the circuit has no neurons"
    return dict(config=config, control=gen["value"], extra=extra, **mem)


def test_h3b_v2_noise_kills_memorising_circuit(record):
    """One check over the confirmatory seeds (its verdict counts the decided ones)."""
    decided = 0
    for s in SEEDS:
        outcome = seed_outcome(s)
        common = dict(
            claim="H3b′", testbed="modadd", preset=PRESET, seed=s, config=outcome["config"],
            statistic=STATISTIC, role="exploratory", note=NOTE, chance=1.0,
            extra=outcome["extra"],
        )  # fmt: skip
        control = outcome.get("control")
        if outcome["decided"]:
            decided += 1
            record(
                value=outcome["value"], threshold=RATIO_MIN, comparison=">=",
                control_value=control, **common,
            )  # fmt: skip
        else:
            record(kind="diagnostic", value=math.nan, control_value=control, **common)
    record(
        claim="H3b′", testbed="modadd", preset=PRESET, seed=-1, config=tier.preset(modadd, PRESET),
        statistic="decided_confirmatory_seeds", value=decided, threshold=MIN_DECIDED,
        comparison=">=", role="exploratory", note=NOTE, extra={"seeds": list(SEEDS)},
    )  # fmt: skip
    record.assert_passed()
