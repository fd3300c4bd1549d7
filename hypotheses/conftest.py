"""Shared machinery of the claim checks: cached testbed runs and result records.

* ``record`` (fixture) writes a :class:`leaderboard.Record` for a statistic, filling in the
  provenance (config hash, git commit, versions, start time, duration, session id, and the
  requesting claim module with its code hash).
* Trained runs come from the testbeds' disk cache, so xdist workers share them and a second
  ``pytest hypotheses/`` trains nothing.
* At the start of a session the results folder and the run cache must be writable
  (:func:`leaderboard.folders.check_folders`); otherwise it stops with a one-line error.
* At the end of a session the claims table of the newest records is written to
  ``results/claims.md`` and printed.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

from leaderboard.folders import check_folders
from leaderboard.records import (
    Record,
    append,
    claims_table,
    compare,
    read,
    records_path,
    results_dir,
)
from testbeds.loop import device_kind, resolve_device
from testbeds.runs import config_hash, git_sha, versions
from testbeds.sources import source_hash

RUN_ID_KEY = "ntkbench_run_id"
ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        # fail now, in one line, rather than when the first claim saves after minutes of work
        problem = check_folders()
        if problem:
            raise pytest.UsageError(problem)
        config._ntkbench_run_id = (
            datetime.now(UTC).strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
        )
        workers = 1
    else:
        config._ntkbench_run_id = workerinput[RUN_ID_KEY]
        workers = int(workerinput.get("workercount", 1))
    # share the cores between xdist workers instead of oversubscribing them (torch's own
    # threads and the BLAS/OpenMP pools numpy and scipy use, e.g. in the Lanczos solver)
    threads = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)
    threadpool_limits(threads)


def pytest_configure_node(node):
    node.workerinput[RUN_ID_KEY] = node.config._ntkbench_run_id


class Recorder:
    """Writes Records for one check and asserts them.

    ``record(claim=..., testbed=..., config=..., preset=..., seed=..., statistic=...,
    value=..., threshold=..., comparison=..., control_value=..., chance=..., extra=...)``
    appends a claim check (provenance filled in) and returns it; ``record.assert_passed()``
    fails the test, naming every *gating* statistic that missed its criterion. A record written
    with ``role="superseded"``, ``"exploratory"`` or ``"diagnostic"`` (and a ``note`` saying
    why; ``leaderboard.records.ROLES``) is kept with its own verdict but never fails the test.
    ``record(kind="diagnostic", role="diagnostic", ...)`` without ``threshold`` and
    ``comparison`` records a value that has no criterion of its own.

    Every record's ``extra`` holds ``device``, the device kind the check computed on
    (``$NTKBENCH_DEVICE``; ``"cpu"`` or ``"cuda:<GPU name>"``).

    ``source`` is the file of the claim module that asks (the ``record`` fixture passes the
    requesting test's file): every record names it and carries its ``code_hash``, the source
    hash of that module and every project module it imports.
    """

    def __init__(self, run_id: str, source: str | Path | None = None):
        self.run_id = run_id
        self.started = datetime.now(UTC).isoformat(timespec="seconds")
        self.clock = time.perf_counter()
        self.records: list[Record] = []
        self.source = "" if source is None else _relative(Path(source))
        self.code_hash = "" if source is None else source_hash(Path(source))

    def __call__(
        self, *, config, value, threshold=None, comparison="", kind="claim", **fields
    ) -> Record:
        value = float(value)
        if kind == "claim":
            criterion = dict(
                threshold=float(threshold),
                comparison=comparison,
                passed=compare(value, comparison, threshold),
            )
        else:
            criterion = dict(threshold=threshold, comparison=comparison, passed=None)
        # where the statistic was computed (``$NTKBENCH_DEVICE``), unless the check says
        extra = {"device": device_kind(resolve_device()), **(fields.pop("extra", None) or {})}
        rec = Record(
            value=value,
            kind=kind,
            extra=extra,
            **criterion,
            config_hash=config_hash(config),
            git_sha=git_sha(),
            versions=versions(),
            started_at=self.started,
            seconds=time.perf_counter() - self.clock,
            run_id=self.run_id,
            source=self.source,
            code_hash=self.code_hash,
            **fields,
        )
        append(rec)
        self.records.append(rec)
        return rec

    def assert_passed(self, context: object = "") -> None:
        failed = [
            (r.claim, r.statistic, r.seed, round(r.value, 4))
            for r in self.records
            if r.kind == "claim" and r.role == "gating" and not r.passed
        ]
        assert not failed, f"criteria not met: {failed} {context}".rstrip()


def _relative(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it."""
    path = path.resolve()
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return path.as_posix()


@pytest.fixture
def record(request) -> Recorder:
    return Recorder(request.config._ntkbench_run_id, request.path)


def pytest_sessionfinish(session, exitstatus):
    if getattr(session.config, "workerinput", None) is not None or not records_path().exists():
        return
    records = read()
    if "run_id" in records:
        records = records[records["run_id"] == session.config._ntkbench_run_id]
    if records.empty:
        return
    table = claims_table(records)
    out = results_dir() / "claims.md"
    out.write_text(table + "\n")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\nClaims of this session ({records_path()}):\n{table}")
