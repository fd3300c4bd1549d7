"""Stored claim results (hypotheses.claim_cache, wired in hypotheses/conftest.py): a finished
check is replayed, not recomputed, with the same records, outcome and files; neither a
crash nor a skip is stored; --recompute and an edit of the module recompute; a job session
appends no records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hypotheses import claim_cache

ROOT = Path(__file__).resolve().parent.parent

FAKE_CLAIM = """
import os
from pathlib import Path

import pytest

from leaderboard.records import results_dir
from testbeds import modadd

COUNTS = Path(os.environ["FAKE_COUNTS"])
CONFIG = modadd.preset("lin2025_mlp")


def bump(name):
    file = COUNTS / name
    count = int(file.read_text()) + 1 if file.exists() else 1
    file.write_text(str(count))


def check(record, value):
    record(claim="F1", testbed="modadd", preset="lin2025_mlp", seed=0, config=CONFIG,
           statistic="s", value=value, threshold=0.5, comparison=">=")
    record(claim="F1", testbed="modadd", preset="lin2025_mlp", seed=0, config=CONFIG,
           statistic="d", value=value / 2, kind="diagnostic", role="diagnostic", note="beside")
    record.assert_passed()


def test_pass(record):
    bump("pass")
    (results_dir() / "fake").mkdir(parents=True, exist_ok=True)
    (results_dir() / "fake" / "plot.txt").write_text("drawn")
    check(record, 0.9)


def test_fail(record):
    bump("fail")
    check(record, 0.1)


@pytest.mark.skippy
def test_skip():
    bump("skip")
    pytest.skip("no such device here")


@pytest.mark.crashy
def test_crash():
    bump("crash")
    raise RuntimeError("boom")
"""


@pytest.fixture
def claims(tmp_path):
    """A claim folder governed by hypotheses/conftest.py, with its own cache and results."""
    folder = tmp_path / "claims"
    folder.mkdir()
    markers = "markers =\n    crashy: crashes\n    skippy: skips\n"
    (folder / "pytest.ini").write_text("[pytest]\n" + markers)
    (folder / "conftest.py").write_text('pytest_plugins = ["hypotheses.conftest"]\n')
    (folder / "test_fake_claim.py").write_text(FAKE_CLAIM)
    (tmp_path / "counts").mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NTKBENCH_CACHE": str(tmp_path / "cache"),
        "NTKBENCH_RESULTS": str(tmp_path / "results"),
        "FAKE_COUNTS": str(tmp_path / "counts"),
        "WANDB_MODE": "disabled",
    }
    for name in (claim_cache.RECOMPUTE_ENV, claim_cache.JOB_ENV, "NTKBENCH_THREADS"):
        env.pop(name, None)
    return folder, env


def session(folder: Path, env: dict, *args: str, **extra_env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(folder), "-p", "no:cacheprovider", "-q", *args],
        cwd=folder,
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.stdout + done.stderr


def counts(env: dict) -> dict[str, int]:
    return {f.name: int(f.read_text()) for f in Path(env["FAKE_COUNTS"]).iterdir()}


def records(env: dict) -> list[dict]:
    path = Path(env["NTKBENCH_RESULTS"]) / "records.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_finished_checks_replay_and_crashes_rerun(claims):
    folder, env = claims
    first = session(folder, env)
    assert "2 failed, 1 passed, 1 skipped" in first
    assert counts(env) == {"pass": 1, "fail": 1, "skip": 1, "crash": 1}
    plot = Path(env["NTKBENCH_RESULTS"]) / "fake" / "plot.txt"
    plot.unlink()

    second = session(folder, env, "-rA")
    assert "2 failed, 1 passed, 1 skipped" in second
    # the crash and the skip ran again; the finished checks did not
    assert counts(env) == {"pass": 1, "fail": 1, "skip": 2, "crash": 2}
    assert "no such device here" in second and "RuntimeError: boom" in second
    assert "criteria not met" in second and "replayed: computed in run" in second
    assert plot.read_text() == "drawn"  # the file the check wrote is restored

    rows = records(env)
    assert len(rows) == 8
    computed, replayed = rows[:4], rows[4:]
    assert len({r["run_id"] for r in computed}) == 1 and len({r["run_id"] for r in replayed}) == 1
    assert computed[0]["run_id"] != replayed[0]["run_id"]
    for before, after in zip(computed, replayed, strict=True):
        assert after["extra"]["computed"]["run_id"] == before["run_id"]
        for field in ("claim", "statistic", "value", "passed", "threshold", "kind", "code_hash"):
            assert after[field] == before[field]
    assert [r["passed"] for r in replayed if r["kind"] == "claim"] == [True, False]


def test_recompute_and_edits_recompute(claims):
    folder, env = claims
    session(folder, env)
    session(folder, env, "--recompute")
    assert counts(env)["pass"] == 2
    session(folder, env, **{claim_cache.RECOMPUTE_ENV: "1"})
    assert counts(env)["pass"] == 3
    session(folder, env)
    assert counts(env)["pass"] == 3
    module = folder / "test_fake_claim.py"
    module.write_text(module.read_text() + "\n# edited\n")
    session(folder, env)
    assert counts(env)["pass"] == 4


def test_job_sessions_store_without_records_and_mark_complete(claims, monkeypatch):
    folder, env = claims
    module = folder / "test_fake_claim.py"
    session(folder, env, "-m", "not crashy and not skippy", **{claim_cache.JOB_ENV: "1"})
    assert not (Path(env["NTKBENCH_RESULTS"]) / "records.jsonl").exists()
    monkeypatch.setenv("NTKBENCH_CACHE", env["NTKBENCH_CACHE"])
    assert claim_cache.module_complete(module, "not crashy and not skippy")
    assert not claim_cache.module_complete(module, "")  # never ran unselected
    judged = session(folder, env, "-m", "not crashy and not skippy")
    assert "1 failed, 1 passed" in judged
    assert counts(env) == {"pass": 1, "fail": 1}
    assert len(records(env)) == 4  # appended once, by the judging session


MODULE_Z = """
import pytest

from testbeds import modadd


@pytest.fixture(scope="module")
def shared():
    yield 1


def test_z_runs_every_time(shared):
    pytest.skip("never stored")


def test_z_stored(shared, record):
    record(claim="Z1", testbed="modadd", preset="lin2025_mlp", seed=0,
           config=modadd.preset("lin2025_mlp"), statistic="s", value=1.0, threshold=0.5,
           comparison=">=")
"""


def test_a_replayed_last_check_tears_down_its_module(claims):
    """A check that ran sets up module fixtures; when the module's last check is replayed,
    they are torn down before the next module's checks run."""
    folder, env = claims
    (folder / "test_fake_claim.py").unlink()
    (folder / "test_fake_z.py").write_text(MODULE_Z)
    after = "import pytest\n\n\ndef test_after():\n    pytest.skip('runs every time')\n"
    (folder / "test_fake_zz.py").write_text(after)
    for _ in range(2):
        out = session(folder, env)
        assert "1 passed, 2 skipped" in out and "error" not in out.lower(), out


def test_stored_checks_are_not_keyed_by_the_job_graph_or_the_report():
    """Editing the job graph, the command line, the leaderboard runner or the report
    generator must not recompute every claim: the code that stores checks imports none of
    them (it hears from a claim job through leaderboard.job_notes)."""
    from testbeds.sources import module_dependencies

    here = Path(__file__).resolve().parents[1] / "hypotheses"
    storing = set(module_dependencies(here / "conftest.py")) | set(
        module_dependencies(here / "claim_cache.py")
    )
    assert "leaderboard.job_notes" in storing and "leaderboard.records" in storing
    for module in ("graph", "cli", "runner", "generate", "report", "table", "wandb_log"):
        assert f"leaderboard.{module}" not in storing, module
