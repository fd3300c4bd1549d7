"""The tiers of a claims run (hypotheses.tier): the quick tier's seeds, smoke-sized presets and
"smoke" records, which never give a verdict and never share a stored result or a results folder
with the default tier."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import testbeds
from hypotheses import claim_cache, plan, tier
from leaderboard import graph
from leaderboard.records import claims_frame, read
from testbeds import lm, modadd, tms

ROOT = Path(__file__).resolve().parent.parent


def test_tier_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(tier.TIER_ENV, raising=False)
    assert tier.current() == "default" and tier.seeds(3, 4, 5) == (3, 4, 5)
    monkeypatch.setenv(tier.TIER_ENV, "quick")
    assert tier.quick() and tier.seeds(3, 4, 5) == (3,)
    monkeypatch.setenv(tier.TIER_ENV, "quik")
    with pytest.raises(ValueError, match=r"NTKBENCH_TIER must be one of \['default', 'quick'"):
        tier.current()
    with pytest.raises(ValueError, match="tier must be one of"):
        with tier.using("fast"):
            pass


def test_using_restores_the_tier(monkeypatch):
    monkeypatch.setenv(tier.TIER_ENV, "large")
    with tier.using("quick"):
        assert tier.current() == "quick"
    assert tier.current() == "large"
    monkeypatch.delenv(tier.TIER_ENV)
    with tier.using("quick"):
        pass
    assert tier.current() == "default"


@pytest.mark.parametrize("name", testbeds.names())
def test_every_preset_has_a_smaller_smoke_variant(name):
    bed = testbeds.get(name)
    for preset, config in bed.presets.items():
        small = tier.smoke(config)
        assert type(small) is type(config) and small != config, preset
        assert tier.preset_name(name, small) == f"{preset} (quick)"
        assert tier.preset_name(name, config) == preset
        if isinstance(config, modadd.Config):
            assert small.p == tier.MODADD_P and small.epochs <= config.epochs
            assert small.width <= config.width
            assert all(c <= small.epochs for c in small.checkpoint_epochs)
        elif isinstance(config, lm.Config):
            assert small.steps == max(10, config.steps // tier.LM_STEP_FRACTION)
        elif isinstance(config, lm.SFTConfig):
            assert small.max_steps < config.max_steps and small.rl == tier.smoke(config.rl)
        elif isinstance(config, tms.Config):
            assert small.steps <= tier.TMS_STEPS
            assert small.n_points <= tier.TMS_POINTS or config.data == "fresh"
    with pytest.raises(TypeError, match="no smoke size"):
        tier.smoke(object())


def test_preset_reads_the_tier(monkeypatch):
    monkeypatch.delenv(tier.TIER_ENV, raising=False)
    assert tier.preset(modadd, "lin2025_mlp") == modadd.preset("lin2025_mlp")
    monkeypatch.setenv(tier.TIER_ENV, "quick")
    small = tier.preset("modadd", "lin2025_mlp", epochs=7)  # with checkpoints of its length
    smoke = tier.smoke(modadd.preset("lin2025_mlp"))
    assert small == smoke.replace(epochs=7, checkpoints=(0, 1, 2, 3, 4, 6, 7))
    rl = tier.preset(lm, "lm_rl", replicate=2)
    sft = tier.preset(lm, "lm_sft", rl=rl)
    assert sft.rl.replicate == 2 and sft.rl.steps == rl.steps < lm.preset("lm_rl").steps


def test_quick_graph_is_every_claim_on_one_seed_without_the_leaderboard(monkeypatch):
    monkeypatch.delenv(tier.TIER_ENV, raising=False)
    jobs = graph.build("quick")
    assert tier.current() == "default"  # build leaves the environment as it was
    default = graph.build("default")
    claims = [j for j in jobs if j.kind == "claim"]
    assert {j.target for j in claims} == {j.target for j in default if j.kind == "claim"}
    assert all(j.name.endswith("(quick)") and j.options["tier"] == "quick" for j in claims)
    assert not [j for j in jobs if j.kind == "task"]
    train = [j.target for j in jobs if j.kind == "train"]
    assert {r.seed for r in train} == {0, 3}  # the first seed of each registered tuple
    assert all(not isinstance(r.config, str) for r in train)  # resolved under the tier
    small = {r.key for r in train}
    assert not small & {j.target.key for j in default if j.kind == "train"}
    modadd_runs = [r.config for r in train if r.testbed == "modadd"]
    assert modadd_runs and all(c.p == tier.MODADD_P for c in modadd_runs)
    h2 = next(j for j in jobs if j.name == "claim h2_replicated_rl (quick)")
    assert len(h2.needs) == 4  # 1 seed × (pretrain, continue, 1 RL and 1 SFT replicate)
    # the claim modules are back under the default tier for whoever imports them next
    assert len(plan.runs(ROOT / "hypotheses" / "test_h2_replicated_rl.py")) == 24


def test_stored_results_are_kept_per_tier(monkeypatch):
    path = ROOT / "hypotheses" / "test_h1_fourier_circuits.py"
    monkeypatch.delenv(tier.TIER_ENV, raising=False)
    default = claim_cache.item_key("x::y", path)
    with tier.using("quick"):
        assert claim_cache.item_key("x::y", path) != default


CLAIM = """
from hypotheses import tier
from testbeds import modadd

SEEDS = tier.seeds(4, 5)


def test_one_check(record):
    config = tier.preset(modadd, "lin2025_mlp", p=5, width=8, epochs=5)
    for seed in SEEDS:
        record(claim="Q1", testbed="modadd", preset="lin2025_mlp", seed=seed, config=config,
               statistic="width", value=config.width, threshold=1000.0, comparison=">=",
               role="diagnostic" if seed == 5 else "gating", note="")
    record.assert_passed()
"""


def test_quick_records_are_smoke_and_never_fail(tmp_path):
    """Under the quick tier a criterion that is missed is recorded as smoke: the check passes,
    its records go to results/quick/ beside the run, and no verdict is given."""
    module = tmp_path / "test_quick_claim.py"
    module.write_text(CLAIM)
    (tmp_path / "conftest.py").write_text("from hypotheses.conftest import *  # noqa: F403\n")
    env = {
        "NTKBENCH_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
        "PATH": "/usr/bin:/bin",
        "NTKBENCH_THREADS": "1",
    }

    def session(**extra) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pytest", str(module), "-q", "-p", "no:cacheprovider"],
            cwd=tmp_path,
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=False,
        )

    done = session()
    assert done.returncode == 1, done.stdout  # the default tier judges: width 8 < 1000
    assert (tmp_path / "results" / "records.jsonl").exists()
    done = session(NTKBENCH_TIER="quick")
    assert done.returncode == 0, done.stdout
    records = read(tmp_path / "results" / "quick" / "records.jsonl")
    assert len(records) == 1 and records["seed"].tolist() == [4]
    row = records.iloc[0]
    assert row["role"] == "smoke" and row["preset"] == "lin2025_mlp (quick)"
    assert row["extra"]["tier"] == "quick" and row["extra"]["registered_role"] == "gating"
    assert row["value"] == 8 and not row["passed"]
    assert claims_frame(records)["verdict"].tolist() == ["smoke"]
    default = read(tmp_path / "results" / "records.jsonl")
    assert set(default["role"]) == {"gating", "diagnostic"}  # untouched by the quick session
    verdicts = claims_frame(pd.concat([default, records]))
    assert sorted(verdicts["verdict"]) == ["FAIL", "FAIL", "smoke"]


def test_cli_tier_and_environment_must_agree(monkeypatch, capsys, tmp_path):
    from leaderboard.cli import main

    monkeypatch.setenv("NTKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NTKBENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv(tier.TIER_ENV, "quick")
    with pytest.raises(SystemExit):
        main(["run", "--tier", "default", "--dry-run"])
    assert "contradicts NTKBENCH_TIER=quick" in capsys.readouterr().err
    assert main(["run", "--dry-run", "--claims", "test_h1d_transformer.py"]) == 0
    out = capsys.readouterr().out
    assert "claim h1d_transformer (quick)" in out and "nanda2023_p29 (quick) seed 0" in out


def test_claim_modules_reload_when_the_tier_changes(monkeypatch):
    monkeypatch.delenv(tier.TIER_ENV, raising=False)
    path = ROOT / "hypotheses" / "test_h3b_censored_half_lives.py"
    assert {r.seed for r in plan.runs(path)} == {3, 4, 5}
    with tier.using("quick"):
        assert {r.seed for r in plan.runs(path)} == {3}
    assert {r.seed for r in plan.runs(path)} == {3, 4, 5}
    module = importlib.import_module("hypotheses.test_h3b_censored_half_lives")
    assert module.SEEDS == (3, 4, 5)


def test_quick_job_names_never_collide_with_the_default_ones():
    """Durations and logs are kept by job name: the tiers must not share one."""
    quick = {j.name for j in graph.build("quick")}
    assert not quick & {j.name for j in graph.build("default")}


def test_claim_modules_read_seeds_and_presets_through_the_tier():
    """A claim that names a seed tuple or a preset directly would run at full size in the quick
    tier; claim modules (and the helpers they share) use ``tier.seeds`` and ``tier.preset``."""
    import re

    helpers = [ROOT / "hypotheses" / f"{h}.py" for h in plan.SEED_HELPERS]
    offenders = []
    for path in [*plan.claim_modules(), *helpers]:
        if "pytestmark = pytest.mark.large" in path.read_text():
            continue  # the large tier has no quick variant
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*\w*(SEEDS|REPLICATES)\s*=\s*\(", line) or re.search(
                r"\b(modadd|lm|tms)\.preset\(|testbeds\.get\([^)]*\)\.preset\(", line
            ):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, offenders
