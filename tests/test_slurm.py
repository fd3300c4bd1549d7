"""``ntkbench run --executor slurm`` on a real single-node SLURM cluster: `.ci/slurm-up` brings
one up on this machine (Debian's slurm-wlm and munge, as root), a small graph (two
``lin2025_mlp`` seeds and H1a on them) runs as SLURM job arrays, and the stored claim records
must equal the local executor's. Where the cluster cannot start (not root, no package
registry), the test skips with the script's reason; tests/test_graph.py runs the same
comparison against submitit's local executor everywhere."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hypotheses import claim_cache, plan
from leaderboard import graph

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "hypotheses" / "test_h1_fourier_circuits.py"
SELECT = "h1a and not 2"  # H1a on seeds 0 and 1
NODES = [
    f"hypotheses/test_h1_fourier_circuits.py::test_h1a_second_cliff_is_sum_and_difference[{s}]"
    for s in (0, 1)
]


@pytest.fixture(scope="module")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.skip("needs root: .ci/slurm-up installs slurm-wlm and starts munged and slurmd")
    up = subprocess.run(
        [str(ROOT / ".ci" / "slurm-up")], capture_output=True, text=True, timeout=1200
    )
    if up.returncode != 0:
        reason = " | ".join((up.stdout + up.stderr).strip().splitlines()[-3:])
        pytest.skip(f"a single-node SLURM cluster could not start here: {reason}")
    yield
    if "already running" not in up.stdout:
        subprocess.run([str(ROOT / ".ci" / "slurm-down")], check=False, timeout=60)


def small_graph() -> list[graph.Job]:
    runs = [plan.RunRequest("modadd", "lin2025_mlp", s) for s in (0, 1)]
    trains = [graph.Job("train", f"train {r.label}", r) for r in runs]
    claim = graph.Job(
        "claim", "claim h1a", str(MODULE), tuple(j.name for j in trains), {"select": SELECT}
    )
    return [*trains, claim]


def stored_records() -> list[dict]:
    out = []
    for nodeid in NODES:
        found = claim_cache.load(nodeid, MODULE)
        assert found is not None, nodeid
        assert found[0].outcome in ("passed", "failed")
        out += [
            {k: v for k, v in r.items() if k not in ("run_id", "started_at", "seconds")}
            for r in found[0].records
        ]
    return out


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_job_arrays_give_the_local_records(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("NTKBENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv(claim_cache.RECOMPUTE_ENV, raising=False)
    results = {}
    for name, executor in (
        ("local", graph.LocalExecutor(2)),
        ("slurm", graph.SlurmExecutor(graph.SlurmOptions(cpus_per_task=1, time_min=20))),
    ):
        monkeypatch.setenv("NTKBENCH_CACHE", str(tmp_path / name))
        _, outcomes = graph.run_graph(small_graph(), executor, bar=False)
        assert [o.status for o in outcomes] == ["computed"] * 3, outcomes
        results[name] = stored_records()
        logs = list((tmp_path / name / "graph").rglob("*.log"))
        assert logs
    assert len(results["slurm"]) == len(results["local"]) >= 4
    assert results["slurm"] == results["local"]
    submitted = list((tmp_path / "slurm" / "graph").rglob("submitit/*"))
    assert submitted  # the jobs went through sbatch (their submitit folders)
