"""The job graph of ``ntkbench run``: training runs, shared per-run computations, claim modules
and leaderboard tasks, run on a local process pool or on a SLURM cluster (submitit).

Jobs and what they leave behind:

* ``train`` — one training run (:class:`hypotheses.plan.RunRequest`), in the run cache, after
  the runs it starts from (a pretraining run before its RL run, the RL run before its SFT);
* ``trajectory`` — the per-checkpoint frame several claims share
  (:class:`hypotheses.plan.TrajectoryRequest`), in the trajectory cache;
* ``claim`` — one claim module, run by pytest in its own process with
  ``NTKBENCH_CLAIM_JOB=1``: every finished check is stored in the claim cache
  (:mod:`hypotheses.claim_cache`) and nothing is appended to ``records.jsonl``; a module that
  reads another's stored computations runs after it (:data:`hypotheses.plan.AFTER`);
* ``task`` — one leaderboard task over every method and seed, its scores in the score cache
  (``records.jsonl``, appended under a lock).

A job starts when the jobs it needs have finished. Every job first looks in its cache, so a
second ``ntkbench run`` computes nothing, and one interrupted keeps everything finished. Then
``pytest hypotheses/`` only replays and judges, and ``ntkbench leaderboard`` only reads scores.
A failed job is reported and the others go on; the jobs that need it still run (a claim trains
what it lacks itself).

Executors: :class:`LocalExecutor` (a process pool; each job gets ``cores // jobs`` threads) and
:class:`SlurmExecutor` (submitit ``AutoExecutor``, one job array per level of the graph; the
cache directory must be on a filesystem every node sees). Each job's output goes to
``$NTKBENCH_CACHE/graph/<run id>/logs/``; durations are kept in
``$NTKBENCH_CACHE/graph/durations.json`` and the longest jobs start first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from leaderboard import job_notes
from testbeds.runs import cache_dir

TIERS = ("quick", "default", "large")
KINDS = ("train", "trajectory", "claim", "task")
# the pytest marker expression of each tier's claim checks
TIER_MARKERS = {"quick": "not large", "default": "not large", "large": "large"}
# a first guess of a job's seconds when it has never run (longest first needs a number)
GUESS = {"train": 60.0, "trajectory": 120.0, "claim": 300.0, "task": 60.0}
ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DURATIONS = Path(__file__).with_name("reference_durations.json")


@dataclass(frozen=True)
class Job:
    """One node of the graph: ``kind`` (:data:`KINDS`), a unique ``name``, the ``target``
    it computes (a request object, a claim module path, a task name) and the names of the
    jobs it ``needs``."""

    kind: str
    name: str
    target: Any
    needs: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got kind={self.kind!r}")


@dataclass
class Outcome:
    """What a job did: ``status`` ``"computed"``, ``"cached"``, ``"skipped"`` (a run this
    machine may not train: a p = 113 run on the CPU, or one asked for by another device kind)
    or ``"failed"`` (``message`` says why), its seconds, its log file, and the runs a claim job
    had to train itself."""

    name: str
    kind: str
    status: str
    seconds: float
    message: str = ""
    log: str = ""
    trained_inside: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- building


def importable() -> None:
    """Make the repository's ``hypotheses`` package importable here and in every process a job
    starts (it is not installed: it lives in the checkout beside ``leaderboard``)."""
    root = str(ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, *paths]))


def build(
    tier: str = "default",
    *,
    claims: Sequence[str | Path] | None = None,
    leaderboard: bool = True,
    select: str = "",
    seeds: int = 3,
) -> list[Job]:
    """The graph of a tier: every run and trajectory the claim modules read, the claim
    modules, and (``leaderboard=True``, default tier) the leaderboard tasks over ``seeds``
    seeds. ``claims`` restricts it to some claim modules (paths or file names); ``select`` adds
    a ``-k`` expression to the claim jobs (only the checks it selects run).

    The quick tier is every claim of the default tier on one seed and smoke-sized presets
    (:mod:`hypotheses.tier`), without the leaderboard: its train jobs hold the smoke-sized
    configs and its claim jobs run under ``NTKBENCH_TIER=quick``."""
    importable()
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {list(TIERS)}, got tier={tier!r}")
    from hypotheses.tier import using

    with using(tier):
        return _build(tier, claims, leaderboard, select, seeds)


def _build(tier, claims, leaderboard, select, seeds) -> list[Job]:
    from hypotheses import plan

    modules = plan.claim_modules()
    if claims is not None:
        wanted = {Path(c).name for c in claims}
        unknown = wanted - {m.name for m in modules}
        if unknown:
            raise ValueError(
                f"claims must name claim modules in hypotheses/ "
                f"({', '.join(m.name for m in modules)}), got {sorted(unknown)}"
            )
        modules = [m for m in modules if m.name in wanted]
    large = [m for m in modules if "pytestmark = pytest.mark.large" in m.read_text()]
    modules = large if tier == "large" else [m for m in modules if m not in large]
    jobs: dict[str, Job] = {}

    def train_job(request) -> str:
        name = f"train {request.label}"
        if name not in jobs:
            # the config itself, not a preset name: a worker may run under another tier
            resolved = dataclasses.replace(request, config=request.resolved())
            needs = tuple(train_job(r) for r in request.upstream())
            jobs[name] = Job("train", name, resolved, needs)
        return name

    present = {m.name for m in modules}
    for module in modules:
        needs = [train_job(r) for r in plan.runs(module)]
        for request in plan.trajectories(module):
            name = request.label
            run = dataclasses.replace(request.run, config=request.run.resolved())
            target = dataclasses.replace(request, run=run)
            jobs.setdefault(name, Job("trajectory", name, target, (train_job(request.run),)))
            needs.append(name)
        name = claim_name(module, tier)
        needs += [claim_name(Path(m), tier) for m in plan.after(module) if m in present]
        options = {"marker": TIER_MARKERS[tier], "select": select, "tier": tier}
        jobs[name] = Job("claim", name, str(module), tuple(dict.fromkeys(needs)), options)
    if leaderboard and tier == "default":
        from leaderboard import api
        from leaderboard.cli import _load

        _load([])
        for task in api.TASKS.values():
            needs = [train_job(plan.RunRequest(task.testbed, task.config, s)) for s in range(seeds)]
            name = f"task {task.name}"
            jobs[name] = Job("task", name, task.name, tuple(needs), {"seeds": seeds})
    return list(jobs.values())


def claim_name(module: Path, tier: str) -> str:
    """The job name of a claim module."""
    return f"claim {module.stem.removeprefix('test_')}" + (" (quick)" if tier == "quick" else "")


def levels(jobs: Sequence[Job]) -> list[list[Job]]:
    """The jobs in dependency levels: a job's level is one more than its deepest need."""
    by_name = {j.name: j for j in jobs}
    depth: dict[str, int] = {}

    def level(job: Job, seen: tuple[str, ...] = ()) -> int:
        if job.name in depth:
            return depth[job.name]
        if job.name in seen:
            raise ValueError(f"the graph has a cycle through {job.name!r}")
        needs = [by_name[n] for n in job.needs if n in by_name]
        depth[job.name] = 1 + max((level(n, (*seen, job.name)) for n in needs), default=-1)
        return depth[job.name]

    for job in jobs:
        level(job)
    out: list[list[Job]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for job in jobs:
        out[depth[job.name]].append(job)
    return out


# ---------------------------------------------------------------------------- one job


def graph_dir() -> Path:
    return cache_dir() / "graph"


def _worker_setup(threads: int) -> None:
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)
    torch.set_flush_denormal(True)
    os.environ["NTKBENCH_THREADS"] = str(threads)


def execute(job: Job, log_dir: str, threads: int = 1) -> Outcome:
    """Run one job (in whichever process or cluster node the executor chose) on ``threads``
    threads and say how it went; never raises for a failure of the job itself. A leaderboard
    task's score keys do not depend on the thread count (``leaderboard.runner.set_up``), so
    tasks run on the same threads as every other job and never oversubscribe the cores."""
    _worker_setup(threads)
    importable()
    log = Path(log_dir) / f"{_slug(job.name)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        if job.kind == "claim":  # pytest's own output goes to the log
            status, message, inside = _run_claim(job, log, threads)
        else:  # progress bars and prints of in-process jobs go to the log, not the terminal
            with (
                log.open("w", encoding="utf-8") as handle,
                contextlib.redirect_stdout(handle),
                contextlib.redirect_stderr(handle),
            ):
                status, message, inside = _RUNNERS[job.kind](job, log, threads)
    except BaseException as error:  # noqa: BLE001 - a job's failure is its outcome
        if isinstance(error, KeyboardInterrupt):
            raise
        text = "".join(traceback.format_exception(error))
        with log.open("a", encoding="utf-8") as handle:
            handle.write(text)
        status, message, inside = "failed", f"{type(error).__name__}: {error}", []
    return Outcome(
        job.name, job.kind, status, time.perf_counter() - started, message, str(log), inside
    )


def _run_train(job: Job, log: Path, threads: int):
    from testbeds.modadd import SlowOnCPU
    from testbeds.runs import RunNotCached

    try:
        run = job.target.train()
    except (SlowOnCPU, RunNotCached) as why:  # not here: the claims that read it skip
        print(f"{job.name}: skipped: {why}")
        return "skipped", str(why), []
    print(f"{job.name}: {'cached' if run.from_cache else 'trained'}")
    return ("cached" if run.from_cache else "computed"), "", []


def _run_trajectory(job: Job, log: Path, threads: int):
    from hypotheses.trajectories import trajectory
    from testbeds.modadd import SlowOnCPU
    from testbeds.runs import RunNotCached

    try:
        run = job.target.run.train()
    except (SlowOnCPU, RunNotCached) as why:  # not here: the claims that read it skip
        print(f"{job.name}: skipped: {why}")
        return "skipped", str(why), []
    before = _trajectory_files(run, job.target.preset)
    trajectory(run, job.target.preset)
    after = _trajectory_files(run, job.target.preset)
    print(f"{job.name}: {after - before} checkpoint values computed")
    return ("computed" if after > before else "cached"), "", []


def _trajectory_files(run, preset: str) -> int:
    folder = cache_dir() / "trajectories" / run.testbed / run.meta["cache_key"]
    return sum(1 for _ in folder.rglob("*.json")) if folder.is_dir() else 0


def _run_claim(job: Job, log: Path, threads: int):
    from hypotheses.tier import using

    with using(job.options.get("tier", "default")):
        return _run_claim_module(job, log, threads)


def _run_claim_module(job: Job, log: Path, threads: int):
    from hypotheses import claim_cache

    module = Path(job.target)
    marker, select = job.options.get("marker", ""), job.options.get("select", "")
    if not select and claim_cache.module_complete(module, marker):
        log.write_text(f"{job.name}: every check stored\n")
        return "cached", "", []
    command = [sys.executable, "-m", "pytest", str(module), "-p", "no:cacheprovider", "-q"]
    command += ["-m", marker] if marker else []
    command += ["-k", select] if select else []
    importable()
    notes = log.with_suffix(".trained")
    notes.unlink(missing_ok=True)
    env = {**os.environ, claim_cache.JOB_ENV: "1", "NTKBENCH_THREADS": str(threads)}
    env[job_notes.NOTES_ENV] = str(notes)
    with log.open("w", encoding="utf-8") as handle:
        code = subprocess.run(
            command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False
        ).returncode
    text = log.read_text(encoding="utf-8", errors="replace")
    noted = notes.read_text(encoding="utf-8") if notes.exists() else ""
    kinds = ("stored", "replayed", "skipped", "crashed", "trained")
    found: dict[str, list[str]] = {kind: [] for kind in kinds}
    for line in noted.splitlines():
        kind, _, text = line.removeprefix(job_notes.PREFIX).strip().partition(": ")
        if kind in found:
            found[kind].append(text)
    inside = sorted(set(found["trained"]))
    # exit 1: some criteria not met (stored results) or a crash (noted); 5: nothing selected
    if code not in (0, 1, 5) or found["crashed"]:
        tail = " | ".join(text.strip().splitlines()[-3:])
        crashed = f"{len(found['crashed'])} checks crashed; " if found["crashed"] else ""
        return "failed", f"{crashed}pytest exited {code}: {tail}", inside
    skipped = f"{len(found['skipped'])} checks skipped" if found["skipped"] else ""
    if found["stored"] or not (found["replayed"] or found["skipped"]):
        return "computed", skipped, inside
    # nothing computed: every check was replayed from its stored result, or skipped
    return ("cached" if found["replayed"] else "skipped"), skipped, inside


def _run_task(job: Job, log: Path, threads: int):
    from leaderboard import api
    from leaderboard.cli import _load, cached_scores
    from leaderboard.runner import evaluate

    _load([])
    task = api.TASKS[job.target]
    methods = list(api.METHODS.values())
    seeds = list(range(job.options.get("seeds", 3)))
    total = len(methods) * len(seeds)
    if len(cached_scores([task], methods, seeds)) == total:
        print(f"{job.name}: every score cached")
        return "cached", "", []
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S-graph")
    records = evaluate([task], methods, seeds, run_id=run_id, progress=False)
    failed = [r for r in records if r.status == "failed"]
    print(
        f"{job.name}: {len(records)} evaluations, {len(failed)} failed\n"
        + "".join(f"FAILED {r.method} seed {r.seed}: {r.error}\n" for r in failed)
    )
    if failed:
        return "failed", f"{len(failed)} of {len(records)} evaluations failed", []
    return "computed", "", []


_RUNNERS: dict[str, Callable[[Job, Path, int], tuple[str, str, list[str]]]] = {
    "train": _run_train,
    "trajectory": _run_trajectory,
    "claim": _run_claim,
    "task": _run_task,
}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")[:120]


# ---------------------------------------------------------------------------- durations


def _durations_path() -> Path:
    return graph_dir() / "durations.json"


def load_durations() -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads(_durations_path().read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def save_durations(outcomes: Iterable[Outcome]) -> None:
    """Remember how long each computed job took (cached ones say nothing about cost)."""
    known = load_durations()
    known.update({o.name: o.seconds for o in outcomes if o.status == "computed"})
    path = _durations_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
    os.replace(tmp, path)


def claim_seconds() -> dict[str, float]:
    """Each claim job's seconds in the newest ``pytest hypotheses/`` session that recorded its
    module (sum over its checks of the longest record time), from ``records.jsonl``: the cost
    of a claim job that has not run as a job yet."""
    from leaderboard.records import read, records_path

    if not records_path().exists():
        return {}
    try:
        records = read()
    except Exception:  # noqa: BLE001 - an estimate only
        return {}
    if records.empty or "source" not in records or "seconds" not in records:
        return {}
    claims = records[records["source"].fillna("").str.startswith("hypotheses/test_")]
    out = {}
    for source, rows in claims.groupby("source"):
        newest = rows[rows["run_id"] == rows.sort_values("started_at")["run_id"].iloc[-1]]
        per_check = newest.groupby(["preset", "seed"])["seconds"].max()
        out[f"claim {Path(source).stem.removeprefix('test_')}"] = float(per_check.sum())
    return out


def reference_durations() -> dict[str, float]:
    """Seconds each job of the default tier took in the cold run measured on the 2-core
    reference machine (``docs/performance.md``), shipped with the package: a first run's
    estimates for the jobs that neither this cache nor ``records.jsonl`` has timed yet, so
    that even a fresh clone starts its longest chains first."""
    try:
        data = json.loads(REFERENCE_DURATIONS.read_text(encoding="utf-8"))
        return {str(k): float(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError):
        return {}


def known_durations() -> dict[str, float]:
    """The best estimate of each job's seconds: this cache's own timings, else the claim's
    newest pytest session, else the reference run's (:func:`reference_durations`)."""
    return {**reference_durations(), **claim_seconds(), **load_durations()}


def cost(job: Job, durations: dict[str, float]) -> float:
    return durations.get(job.name, GUESS[job.kind])


def priorities(graph: Sequence[Job], durations: dict[str, float]) -> dict[str, float]:
    """Each job's cost plus the costliest chain of jobs waiting on it (its critical path):
    ready jobs start in decreasing order of it, so the long chains begin first."""
    by_name = {j.name: j for j in graph}
    after: dict[str, list[str]] = {j.name: [] for j in graph}
    for job in graph:
        for need in job.needs:
            if need in after:
                after[need].append(job.name)
    out: dict[str, float] = {}
    for level in reversed(levels(graph)):
        for job in level:
            tail = max((out[n] for n in after[job.name]), default=0.0)
            out[job.name] = cost(by_name[job.name], durations) + tail
    return out


# ---------------------------------------------------------------------------- executors


class LocalExecutor:
    """A pool of ``jobs`` worker processes on this machine (``spawn``ed, so each starts
    clean); each job gets ``max(1, cores // jobs)`` threads."""

    name = "local"

    def __init__(self, jobs: int | None = None):
        cores = os.cpu_count() or 1
        self.jobs = max(1, jobs or cores)
        self.threads = max(1, cores // self.jobs)

    def run(self, graph: Sequence[Job], log_dir: Path, report: Callable[[Outcome], None]):
        durations = known_durations()
        rank = priorities(graph, durations)
        by_name = {j.name: j for j in graph}
        waiting = {j.name: {n for n in j.needs if n in by_name} for j in graph}
        outcomes: list[Outcome] = []
        running: dict[Future, Job] = {}
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=context)

        def finish(job: Job, outcome: Outcome) -> None:
            outcomes.append(outcome)
            report(outcome)
            for needs in waiting.values():
                needs.discard(job.name)

        def submit_ready() -> None:
            ready = [by_name[n] for n, needs in waiting.items() if not needs]
            for job in sorted(ready, key=lambda j: -rank[j.name]):
                if len(running) >= self.jobs:
                    break
                del waiting[job.name]
                args = (job, str(log_dir), self.threads)
                running[pool.submit(execute, *args)] = job

        try:
            while waiting or running:
                try:
                    submit_ready()
                    finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for future in finished:
                        job = running.pop(future)
                        finish(job, future.result())
                except BrokenProcessPool as error:  # a worker died (memory, a crash)
                    why = f"a worker process died ({error}); the job did not finish"
                    for job in running.values():
                        finish(job, Outcome(job.name, job.kind, "failed", 0.0, why))
                    running.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=context)
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            save_durations(outcomes)
        pool.shutdown()
        return outcomes


@dataclass
class SlurmOptions:
    """What each SLURM job asks for (``--slurm-config`` JSON file keys, or command-line
    flags): ``partition``, ``time_min`` (per job), ``cpus_per_task``, ``gpus_per_node``,
    ``mem_gb``, ``array_parallelism`` (jobs of one array at once) and ``extra`` (further
    ``sbatch`` options, e.g. ``{"account": "…"}``)."""

    partition: str | None = None
    time_min: int = 120
    cpus_per_task: int = 2
    gpus_per_node: int = 0
    mem_gb: float | None = None
    array_parallelism: int = 64
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> SlurmOptions:
        data = json.loads(Path(path).read_text())
        allowed = set(cls.__dataclass_fields__)
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(
                f"{path}: unknown SLURM option(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


def slurm_missing() -> str | None:
    """Why ``--executor slurm`` cannot run here, or None."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed (pip install submitit)"
    if shutil.which("sbatch") is None:
        return "SLURM's sbatch is not on PATH: this machine is not a SLURM submit host"
    return None


class SlurmExecutor:
    """One submitit job array per level of the graph on a SLURM cluster. ``cluster="local"``
    uses submitit's local executor instead (the same code path without SLURM)."""

    name = "slurm"

    def __init__(self, options: SlurmOptions | None = None, cluster: str = "slurm"):
        self.options = options or SlurmOptions()
        self.cluster = cluster
        if cluster == "slurm":
            problem = slurm_missing()
            if problem:
                raise RuntimeError(f"--executor slurm: {problem}")

    def _executor(self, folder: Path):
        import submitit

        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=self.cluster)
        o = self.options
        params: dict[str, Any] = {"timeout_min": o.time_min, "cpus_per_task": o.cpus_per_task}
        if self.cluster == "slurm":
            params["slurm_array_parallelism"] = o.array_parallelism
            if o.partition:
                params["slurm_partition"] = o.partition
            if o.gpus_per_node:
                params["gpus_per_node"] = o.gpus_per_node
            if o.mem_gb:
                params["mem_gb"] = o.mem_gb
            if o.extra:
                params["slurm_additional_parameters"] = dict(o.extra)
        executor.update_parameters(**params)
        return executor

    def run(self, graph: Sequence[Job], log_dir: Path, report: Callable[[Outcome], None]):
        executor = self._executor(log_dir / "submitit")
        threads = max(1, self.options.cpus_per_task)
        outcomes: list[Outcome] = []
        durations = known_durations()
        rank = priorities(graph, durations)
        try:
            for level in levels(graph):
                level = sorted(level, key=lambda j: -rank[j.name])
                handles = executor.map_array(
                    execute, level, [str(log_dir)] * len(level), [threads] * len(level)
                )
                pending = dict(zip(handles, level, strict=True))
                self._pending = pending
                while pending:
                    for handle in [h for h in pending if h.done()]:
                        job = pending.pop(handle)
                        try:
                            outcome = handle.result()
                        except Exception as error:  # noqa: BLE001 - the SLURM job died
                            outcome = Outcome(
                                job.name,
                                job.kind,
                                "failed",
                                0.0,
                                f"{type(error).__name__}: {error}",
                            )
                        outcomes.append(outcome)
                        report(outcome)
                    if pending:
                        time.sleep(1.0)
        except KeyboardInterrupt:  # cancel what was submitted, so a rerun does not race it
            for handle in getattr(self, "_pending", {}):
                try:
                    handle.cancel(check=False)
                except Exception:  # noqa: BLE001, S110 - best effort on the way out
                    pass
            raise
        finally:
            save_durations(outcomes)
        return outcomes


# ---------------------------------------------------------------------------- one run


def run_graph(
    graph: Sequence[Job],
    executor: LocalExecutor | SlurmExecutor,
    *,
    run_id: str | None = None,
    stream=None,
    bar: bool | None = None,
) -> tuple[str, list[Outcome]]:
    """Run every job; one line per finished job on ``stream`` (stderr) and, on a terminal,
    an overall progress bar. Returns (run id, outcomes)."""
    from tqdm.auto import tqdm

    stream = stream or sys.stderr
    run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%S-") + os.urandom(3).hex()
    log_dir = graph_dir() / run_id / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    bar = stream.isatty() if bar is None else bar
    progress = tqdm(total=len(graph), unit="job", disable=not bar, file=stream, leave=False)
    count = [0]

    def report(outcome: Outcome) -> None:
        count[0] += 1
        line = (
            f"[{count[0]}/{len(graph)}] {outcome.status:8} {outcome.name} ({outcome.seconds:.1f} s)"
        )
        if outcome.status == "failed":
            line += f": {outcome.message} (log: {outcome.log})"
        elif outcome.status == "skipped":
            line += f": {outcome.message}"
        for run in outcome.trained_inside:
            line += f"\n    trained inside the claim job, not in the plan: {run}"
        progress.write(line, file=stream) if bar else print(line, file=stream, flush=True)
        progress.update(1)

    try:
        outcomes = executor.run(graph, log_dir, report)
    finally:
        progress.close()
    (graph_dir() / run_id / "outcomes.json").write_text(
        json.dumps([o.__dict__ for o in outcomes], indent=1)
    )
    return run_id, outcomes
