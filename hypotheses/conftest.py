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
* Under the quick tier (``NTKBENCH_TIER=quick``, :mod:`hypotheses.tier`) every record has role
  ``"smoke"`` and the preset name ``"<preset> (quick)"``, and records go to ``results/quick/``
  unless ``NTKBENCH_RESULTS`` is set: a smoke run never mixes with the verdicts.
* A check that has finished once is replayed, not recomputed, while its code, the device kind
  and the library versions are unchanged (:mod:`hypotheses.claim_cache`); ``--recompute`` or
  ``NTKBENCH_RECOMPUTE=1`` recomputes. ``NTKBENCH_THREADS`` sets the threads of each session
  (``ntkbench run`` sets it for its jobs).
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

from hypotheses import claim_cache, tier
from leaderboard.claim_code import claim_source_hash
from leaderboard.folders import check_folders
from leaderboard.job_notes import note
from leaderboard.records import (
    RESULTS_ENV,
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

RUN_ID_KEY = "ntkbench_run_id"
THREADS_ENV = "NTKBENCH_THREADS"
RECORDER = pytest.StashKey()
PHASES = pytest.StashKey()
STARTED = pytest.StashKey()


def pytest_addoption(parser):
    parser.addoption(
        "--recompute",
        action="store_true",
        help="recompute every claim check instead of replaying stored results "
        "(also NTKBENCH_RECOMPUTE=1)",
    )


ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    workerinput = getattr(config, "workerinput", None)
    try:
        quick = tier.quick()
    except ValueError as err:
        raise pytest.UsageError(str(err)) from None
    if quick and not os.environ.get(RESULTS_ENV, "").strip():
        os.environ[RESULTS_ENV] = tier.QUICK_RESULTS
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
    if os.environ.get(THREADS_ENV, "").strip():
        threads = max(1, int(os.environ[THREADS_ENV]))
    if claim_cache.job_mode():
        _report_inline_training()
    config._ntkbench_replay = not (
        config.getoption("recompute", False) or claim_cache.recompute_requested()
    )
    torch.set_num_threads(threads)
    threadpool_limits(threads)


def _note(kind: str, text: str) -> None:
    """In an ``ntkbench run`` claim job, tell the job (through the file it names) about a
    check that was stored, replayed, skipped or crashed, or a run the job trained itself."""
    note(kind, text)


def _report_inline_training() -> None:
    """In an ``ntkbench run`` claim job, note which runs the job had to train itself
    (the plan, :mod:`hypotheses.plan`, did not name them), in the file ``ntkbench run`` names."""
    from testbeds.runs import RunStore

    save = RunStore.save
    if getattr(save, "_ntkbench_reports", False):
        return

    def reporting_save(self, payload):
        meta = payload.get("meta", {})
        stage = f" {meta['stage']}" if meta.get("stage") else ""
        _note(
            "trained",
            f"{meta.get('testbed', '?')}{stage} config {meta.get('config_hash', '?')} "
            f"seed {meta.get('seed', '?')}",
        )
        return save(self, payload)

    reporting_save._ntkbench_reports = True
    RunStore.save = reporting_save


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
    Under the quick tier every record is written with role ``"smoke"`` (:mod:`hypotheses.tier`).
    ``record(kind="diagnostic", role="diagnostic", ...)`` without ``threshold`` and
    ``comparison`` records a value that has no criterion of its own.

    Every record's ``extra`` holds ``device``, the device kind the check computed on
    (``$NTKBENCH_DEVICE``; ``"cpu"`` or ``"cuda:<GPU name>"``).

    ``source`` is the file of the claim module that asks (the ``record`` fixture passes the
    requesting test's file): every record names it and carries its ``code_hash``, the source
    hash of that module, every project module it imports and every registered testbed's
    package (:func:`leaderboard.claim_code.claim_source_hash`).
    """

    def __init__(self, run_id: str, source: str | Path | None = None, sink: bool = True):
        self.run_id = run_id
        self.sink = sink  # append to records.jsonl (False in an ``ntkbench run`` job)
        self.started = datetime.now(UTC).isoformat(timespec="seconds")
        self.clock = time.perf_counter()
        self.records: list[Record] = []
        self.source = "" if source is None else _relative(Path(source))
        self.code_hash = "" if source is None else claim_source_hash(Path(source))

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
        if tier.quick():  # a smoke run: never a verdict, never confused with a preset's run
            extra.update(tier="quick", registered_role=fields.get("role", "gating"))
            fields.update(role="smoke", note=tier.SMOKE_NOTE)
            if fields.get("preset"):
                fields["preset"] = f"{fields['preset']} (quick)"
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
        if self.sink:
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
    recorder = Recorder(
        request.config._ntkbench_run_id, request.path, sink=not claim_cache.job_mode()
    )
    request.node.stash[RECORDER] = recorder
    return recorder


# ---- stored claim results (hypotheses.claim_cache) -------------------------------------------


def _report(item, when, outcome, longrepr=None, duration=0.0):
    return pytest.TestReport(
        item.nodeid,
        item.location,
        {name: 1 for name in item.keywords},
        outcome,
        longrepr,
        when,
        sections=(),
        duration=duration,
        user_properties=[],
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Replay a stored check instead of running it (:mod:`hypotheses.claim_cache`)."""
    if not item.config._ntkbench_replay or not _is_claim(item):
        return None
    found = claim_cache.load(item.nodeid, item.path)
    if found is None:
        return None
    stored, entry = found
    started = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        records = claim_cache.replayed_records(stored, item.config._ntkbench_run_id, started)
    except (TypeError, ValueError, KeyError) as err:  # a result stored by other code: rerun
        warnings.warn(f"stored result of {item.nodeid} unreadable ({err}); rerun", stacklevel=1)
        return None
    if not claim_cache.job_mode():
        for rec in records:
            append(rec)
    claim_cache.restore_files(stored, entry)
    if claim_cache.job_mode():
        _note("replayed", item.nodeid)
    outcome, message = stored.outcome, stored.message
    if outcome == "failed":
        # judge again: the stored values against the module's (unchanged) thresholds
        failed = [
            (r.claim, r.statistic, r.seed, round(r.value, 4))
            for r in records
            if r.kind == "claim" and r.role == "gating" and not r.passed
        ]
        if failed and not message:
            message = f"criteria not met: {failed}"
        message += f"\n(replayed: computed in run {stored.run_id}; --recompute recomputes)"
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    ihook.pytest_runtest_logreport(report=_report(item, "setup", "passed"))
    call = message if outcome == "failed" else None
    ihook.pytest_runtest_logreport(report=_report(item, "call", outcome, call, 0.0))
    # tear down what the next check does not share (module fixtures of a check that ran), as
    # pytest's own teardown step would (its hook also runs plugins that expect a set-up item)
    item.session._setupstate.teardown_exact(nextitem)
    ihook.pytest_runtest_logreport(report=_report(item, "teardown", "passed"))
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _is_claim(item) -> bool:
    """A claim check: a test in a ``test_*.py`` module this conftest governs."""
    return item.path.name.startswith("test_")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if not _is_claim(item):
        return report
    phases = item.stash.setdefault(PHASES, {})
    if call.when == "setup":
        item.stash[STARTED] = (time.time_ns(), time.perf_counter())
    # a skip depends on this machine (a GPU, copied runs), not on the code: never stored
    cacheable = report.passed
    message = ""
    if report.failed and call.when == "call" and call.excinfo is not None:
        cacheable = call.excinfo.errisinstance(AssertionError)
        message = call.excinfo.exconly()
    phases[call.when] = (report.outcome, cacheable, message)
    if claim_cache.job_mode() and (report.skipped or (report.failed and not cacheable)):
        _note("skipped" if report.skipped else "crashed", item.nodeid)
    if call.when == "teardown" or (call.when == "setup" and not report.passed):
        _store(item, phases)
    return report


def _store(item, phases) -> None:
    """Store a check that passed, or failed a criterion in its call (module docstring of
    :mod:`hypotheses.claim_cache`)."""
    if "call" not in phases or not all(cacheable for _, cacheable, _ in phases.values()):
        return
    outcome, _, message = phases["call"]
    recorder = item.stash.get(RECORDER, None)
    start_ns, clock = item.stash.get(STARTED, (time.time_ns(), time.perf_counter()))
    stored = claim_cache.Stored(
        nodeid=item.nodeid,
        outcome=outcome,
        message=message,
        records=[dataclasses.asdict(r) for r in (recorder.records if recorder else [])],
        files=[],
        run_id=item.config._ntkbench_run_id,
        started_at=recorder.started if recorder else "",
        seconds=time.perf_counter() - clock,
    )
    try:
        claim_cache.store(stored, item.path, claim_cache.written_since(start_ns))
    except OSError as err:  # never lose the session over the cache
        warnings.warn(f"could not store the result of {item.nodeid}: {err}", stacklevel=1)
        if claim_cache.job_mode():
            _note("crashed", f"{item.nodeid} (not stored: {err})")
        return
    if claim_cache.job_mode():
        _note("stored", item.nodeid)


def _selection(config) -> str | None:
    """The selection a whole-module session ran with (its ``-m`` expression), or None when it
    ran only some checks of a module (node ids, ``-k``, ``--deselect``, ``--lf``)."""
    opt = config.option
    if opt.keyword or getattr(opt, "deselect", None) or getattr(opt, "lf", False):
        return None
    if any("::" in str(arg) for arg in config.args):
        return None
    return opt.markexpr or ""


def _mark_complete(session) -> None:
    """Leave each module's completeness marker when every check of it has a stored result."""
    selection = _selection(session.config)
    if selection is None:
        return
    modules: dict[Path, list[str]] = {}
    for item in session.items:
        if _is_claim(item):
            modules.setdefault(item.path, []).append(item.nodeid)
    for path, nodeids in modules.items():
        if all(claim_cache.load(nodeid, path) is not None for nodeid in nodeids):
            try:
                claim_cache.write_complete(path, nodeids, selection)
            except OSError:
                pass


def pytest_sessionfinish(session, exitstatus):
    if getattr(session.config, "workerinput", None) is None:
        _mark_complete(session)
    if getattr(session.config, "workerinput", None) is not None or not records_path().exists():
        return
    if claim_cache.job_mode():
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
