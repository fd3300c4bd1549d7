"""The job graph of ``ntkbench run`` (leaderboard.graph, hypotheses.plan): what it contains, its
order, the local process pool and submitit's executor giving the same stored results, failures
reported without stopping the rest, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hypotheses import claim_cache, plan
from leaderboard import graph
from leaderboard.wandb_log import log_graph
from testbeds import modadd

ROOT = Path(__file__).resolve().parent.parent
TINY = modadd.preset("lin2025_mlp").replace(p=7, width=16, epochs=20, checkpoints=(0, 10, 20))

CLAIM = """
from hypotheses.plan import RunRequest
from testbeds import modadd

CONFIG = modadd.preset("lin2025_mlp").replace(p=7, width=16, epochs=20, checkpoints=(0, 10, 20))


def test_uses_three_runs(record):
    runs = [RunRequest("modadd", CONFIG, s).train() for s in (0, 1, 2)]
    value = sum(float(r.log["train_loss"].iloc[-1]) for r in runs)
    record(claim="G1", testbed="modadd", preset="tiny", seed=0, config=CONFIG,
           statistic="loss_sum", value=value, threshold=100.0, comparison="<=")
    record.assert_passed()
"""


def test_plan_names_every_claim_module():
    """A new claim module must say which runs it reads (hypotheses/plan.py)."""
    modules = {m.name for m in plan.claim_modules()}
    assert modules and modules <= set(plan.RUNS), sorted(modules - set(plan.RUNS))


def test_default_and_large_tiers():
    jobs = graph.build("default")
    names = {j.name for j in jobs}
    claims = {j.target for j in jobs if j.kind == "claim"}
    large = {str(m) for m in plan.claim_modules() if "large" in m.name}
    assert claims == {str(m) for m in plan.claim_modules()} - large
    assert all(n in names for j in jobs for n in j.needs)
    assert {j.kind for j in jobs} == set(graph.KINDS)
    keys = [j.target.key for j in jobs if j.kind == "train"]
    assert len(keys) == len(set(keys))  # every run trains once, whoever reads it
    h2 = next(j for j in jobs if j.name == "claim h2_replicated_rl")
    assert len(h2.needs) == 24  # 3 seeds × (pretrain, continue, 3 RL, 3 SFT)
    assert [j.name for j in graph.build("large")][-1] == "claim large_p113"
    assert not [j for j in graph.build("large") if j.kind == "task"]


def test_a_claim_that_reads_anothers_stored_computations_runs_after_it():
    """T2 reads the spectra and alignments T1 stores: its job needs T1's, unless T1 is not in
    the graph (then T2 computes them itself)."""
    jobs = {j.name: j for j in graph.build("default")}
    assert "claim t1_tms_cliffs" in jobs["claim t2_tms_eigenspaces"].needs
    assert not any(n.startswith("claim") for n in jobs["claim t1_tms_cliffs"].needs)
    alone = graph.build(claims=["test_t2_tms_eigenspaces.py"], leaderboard=False)
    assert not any(n.startswith("claim") for j in alone for n in j.needs)
    quick = {j.name: j for j in graph.build("quick")}
    assert "claim t1_tms_cliffs (quick)" in quick["claim t2_tms_eigenspaces (quick)"].needs


def test_a_run_trains_after_the_runs_it_starts_from():
    """Pretraining before RL and continued pretraining, RL before SFT (SFT reads the RL run's
    probe KL): otherwise two workers, or two SLURM array tasks, train one run side by side."""
    for tier_name in ("default", "quick"):
        jobs = {j.name: j for j in graph.build(tier_name)}
        staged = [j for j in jobs.values() if j.kind == "train" and j.target.stage]
        assert {j.target.stage for j in staged} == {"train_rl", "train_sft", "train_continue"}
        for job in staged:
            (need,) = job.needs
            upstream = jobs[need].target
            config = job.target.config
            if job.target.stage == "train_sft":
                assert upstream.stage == "train_rl" and upstream.config == config.rl
            else:
                base = config.base if job.target.stage == "train_rl" else config.rl.base
                assert upstream.stage == "" and upstream.config == base
            assert upstream.seed == job.target.seed
        levels = graph.levels(list(jobs.values()))
        depth = {j.name: i for i, level in enumerate(levels) for j in level}
        sft = [j for j in staged if j.target.stage == "train_sft"]
        assert sft and all(depth[j.name] == 2 for j in sft)


def test_bad_arguments_name_the_allowed_values():
    with pytest.raises(ValueError, match="tier must be one of"):
        graph.build("quickest")
    with pytest.raises(ValueError, match="test_h1_fourier_circuits.py"):
        graph.build(claims=["test_h99.py"])


def test_levels_and_priorities_follow_the_needs():
    jobs = [
        graph.Job("train", "a", None),
        graph.Job("train", "b", None),
        graph.Job("claim", "c", None, ("a",)),
        graph.Job("claim", "d", None, ("c", "b")),
    ]
    assert [[j.name for j in level] for level in graph.levels(jobs)] == [["a", "b"], ["c"], ["d"]]
    rank = graph.priorities(jobs, {"a": 1.0, "b": 50.0, "c": 10.0, "d": 100.0})
    assert rank == {"a": 111.0, "b": 150.0, "c": 110.0, "d": 100.0}
    with pytest.raises(ValueError, match="cycle"):
        graph.levels([graph.Job("train", "x", None, ("y",)), graph.Job("train", "y", None, ("x",))])


def tiny_graph(folder: Path) -> list[graph.Job]:
    module = folder / "test_tiny_claim.py"
    runs = [plan.RunRequest("modadd", TINY, s) for s in (0, 1)]
    trains = [graph.Job("train", f"train {r.label}", r) for r in runs]
    broken = graph.Job("train", "train broken", plan.RunRequest("no_such_testbed", "x", 0))
    claim = graph.Job("claim", "claim tiny", str(module), tuple(j.name for j in trains))
    return [*trains, broken, claim]


@pytest.fixture
def claim_folder(tmp_path, monkeypatch):
    folder = tmp_path / "claims"
    folder.mkdir()
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "conftest.py").write_text('pytest_plugins = ["hypotheses.conftest"]\n')
    (folder / "test_tiny_claim.py").write_text(CLAIM)
    monkeypatch.setenv("NTKBENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv(claim_cache.RECOMPUTE_ENV, raising=False)
    return folder


def stored(folder: Path, nodeid: str = "test_tiny_claim.py::test_uses_three_runs") -> list[dict]:
    found = claim_cache.load(nodeid, folder / "test_tiny_claim.py")
    assert found is not None
    return [
        {k: v for k, v in r.items() if k not in ("run_id", "started_at", "seconds")}
        for r in found[0].records
    ]


def run_in(cache: Path, monkeypatch, jobs, executor):
    monkeypatch.setenv("NTKBENCH_CACHE", str(cache))
    lines = []
    run_id, outcomes = graph.run_graph(jobs, executor, stream=_Lines(lines), bar=False)
    return {o.name: o for o in outcomes}, lines, run_id


class _Lines:
    def __init__(self, out):
        self.out = out

    def write(self, text):
        self.out.extend(line for line in text.splitlines() if line.strip())

    def flush(self):
        pass

    def isatty(self):
        return False


@pytest.mark.slow
def test_local_and_submitit_executors_store_the_same_results(claim_folder, tmp_path, monkeypatch):
    jobs = tiny_graph(claim_folder)
    outcomes, lines, run_id = run_in(tmp_path / "a", monkeypatch, jobs, graph.LocalExecutor(2))
    assert {n: o.status for n, o in outcomes.items()} == {
        jobs[0].name: "computed",
        jobs[1].name: "computed",
        "train broken": "failed",
        "claim tiny": "computed",
    }
    assert "no_such_testbed" in outcomes["train broken"].message  # reported; the rest ran
    # seed 2 is not in the graph: the claim job trained it and says so
    assert len(outcomes["claim tiny"].trained_inside) == 1
    assert "seed 2" in outcomes["claim tiny"].trained_inside[0]
    assert sum("failed" in line for line in lines) == 1
    assert sum("trained inside the claim job" in line for line in lines) == 1
    assert not (tmp_path / "results" / "records.jsonl").exists()  # judged later, not here
    local = stored(claim_folder)
    durations = json.loads((tmp_path / "a" / "graph" / "durations.json").read_text())
    assert set(durations) == {jobs[0].name, jobs[1].name, "claim tiny"}
    saved = json.loads((tmp_path / "a" / "graph" / run_id / "outcomes.json").read_text())
    assert len(saved) == 4

    again, _, _ = run_in(tmp_path / "a", monkeypatch, jobs, graph.LocalExecutor(2))
    assert {n: o.status for n, o in again.items() if n != "train broken"} == dict.fromkeys(
        (jobs[0].name, jobs[1].name, "claim tiny"), "cached"
    )

    submitit = graph.SlurmExecutor(graph.SlurmOptions(cpus_per_task=1), cluster="local")
    other, _, _ = run_in(tmp_path / "b", monkeypatch, jobs, submitit)
    assert other["claim tiny"].status == "computed"
    assert stored(claim_folder) == local  # same records from submitit's executor


def test_slurm_executor_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(RuntimeError, match="sbatch is not on PATH"):
        graph.SlurmExecutor()
    assert "sbatch" in graph.slurm_missing()


def test_slurm_options_file(tmp_path):
    path = tmp_path / "slurm.json"
    path.write_text(json.dumps({"partition": "gpu", "gpus_per_node": 1, "time_min": 30}))
    options = graph.SlurmOptions.from_file(path, time_min=45)
    assert (options.partition, options.gpus_per_node, options.time_min) == ("gpu", 1, 45)
    path.write_text(json.dumps({"partitoin": "gpu"}))
    with pytest.raises(ValueError, match="partitoin.*allowed"):
        graph.SlurmOptions.from_file(path)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    from leaderboard.cli import main

    try:
        code = main(list(args))
    except SystemExit as stop:  # argparse errors
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_dry_run_and_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NTKBENCH_RESULTS", str(tmp_path / "r"))
    monkeypatch.setenv("NTKBENCH_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    code, out, err = cli(capsys, "run", "--dry-run")
    assert code == 0, err
    assert "118 jobs: 81 train, 12 trajectory, 16 claim, 9 task" in out
    assert "2 claim      claim h6_cka_cca (needs 12)" in out
    code, _, err = cli(capsys, "run", "--jobs", "0")
    assert code == 2 and "--jobs must be ≥ 1, got 0" in err
    code, _, err = cli(capsys, "run", "--seeds", "0")
    assert code == 2 and "--seeds must be ≥ 1, got 0" in err
    code, _, err = cli(capsys, "run", "--tier", "quickest")
    assert code == 2 and "invalid choice: 'quickest'" in err
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _, err = cli(capsys, "run", "--executor", "slurm")
    assert code == 2 and "sbatch is not on PATH" in err


def test_wandb_group_has_one_run_per_job_kind(tmp_path):
    outcomes = [
        graph.Outcome("train a", "train", "computed", 1.0).__dict__,
        graph.Outcome("claim b", "claim", "failed", 2.0, "boom").__dict__,
    ]
    dirs, error = log_graph(
        mode="offline",
        run_id="r1",
        outcomes=outcomes,
        config={"tier": "default"},
        directory=tmp_path,
    )
    assert error is None and len(dirs) == 2
    assert log_graph(mode="disabled", run_id="r1", outcomes=outcomes, config={}) == ([], None)


def test_a_first_run_is_scheduled_by_the_reference_timings(tmp_path, monkeypatch):
    """Before this machine has timed anything, the default tier's jobs are ranked by the
    shipped reference run's seconds (a config change that renames most jobs must refresh
    leaderboard/reference_durations.json); this cache's own timings take precedence."""
    monkeypatch.setenv("NTKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NTKBENCH_RESULTS", str(tmp_path / "results"))
    jobs = graph.build("default")
    reference = graph.reference_durations()
    known = [j.name for j in jobs if j.name in reference]
    assert len(known) >= 0.9 * len(jobs), sorted({j.name for j in jobs} - set(reference))
    assert graph.known_durations() == reference  # nothing timed here yet
    sft = next(n for n in known if n.startswith("train lm sft"))
    graph.save_durations([graph.Outcome(sft, "train", "computed", 1.0, "", "", [])])
    assert graph.known_durations()[sft] == 1.0
