"""Run methods on tasks, isolating failures, and record every (method, task, seed) result.

For each task and seed the problem is built once, on one thread (:func:`set_up`; training
comes from the testbed's run cache), and every method gets its own copy of the model. A method
that raises, exceeds its time budget, or returns the wrong shape, NaN or Inf is recorded as
``failed`` with the message; a method that raises :class:`leaderboard.api.NotApplicable` is
recorded as ``n/a``; every other method still runs. Results are appended to ``records.jsonl``
(one locked append per record).

Scores are cached by their inputs: a record whose ``cache_key`` matches and whose status
is ``ok`` or ``n/a`` is reused instead of recomputed, unless ``force``. The key hashes the
method's name and :func:`testbeds.sources.source_hash` (the module or plug-in file defining it
and every project module that imports, transitively), the task's name, version and source hash,
the source hash of the testbed package, the config, the seed and the library versions
(:func:`testbeds.runs.versions`): editing a method, a task, a testbed or a helper in
``metrics/`` that one of them imports recomputes the scores that depend on it, and no others.
Reused records are returned, not appended again, so the file never double-counts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor, nn
from tqdm.auto import tqdm

from leaderboard.api import DEFAULT_TIMEOUT, Method, NotApplicable, Problem, Task
from leaderboard.isolation import isolated, run_isolated
from leaderboard.records import Record, append, from_row, read, records_path
from leaderboard.scoring import indicator_directions
from testbeds.loop import device_kind, resolve_device
from testbeds.runs import config_hash, git_sha, versions
from testbeds.sources import source_hash

BUILTIN_TIMEOUT = 3600.0  # seconds per (built-in method, task, seed), in process


class MethodTimeout(Exception):
    """A method ran past its time budget."""


class OutputError(ValueError):
    """A method's output does not fit the problem."""


def _call(method: Method, problem: Problem, seconds: float | None):
    """method.fn(problem) with a wall-clock budget (SIGALRM; enforced in the main thread)."""
    usable = (
        seconds is not None
        and hasattr(signal, "SIGALRM")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        return method.fn(problem)

    def expire(signum, frame):
        raise MethodTimeout(f"exceeded its time budget of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return method.fn(problem)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_output(output, problem: Problem) -> Tensor:
    """Validate a method's output and convert it to what the task scores: float64 directions
    (rows, j ≤ k) for a directions task (a partition becomes cluster indicators), int64 labels
    (rows,) for a partition task. Raises OutputError naming what was expected."""
    if isinstance(output, np.ndarray):
        output = torch.from_numpy(np.ascontiguousarray(output))
    if not isinstance(output, Tensor):
        raise OutputError(f"output must be a tensor or numpy array, got {type(output).__name__}")
    output = output.detach().cpu()
    rows, k = problem.rows, problem.k
    expected = (
        f"float directions of shape ({rows}, {k}) or integer labels of shape ({rows},) "
        f"with at most {k} clusters"
    )
    if output.is_floating_point() and output.dim() == 2:
        if tuple(output.shape) != (rows, k):
            raise OutputError(f"wrong shape {tuple(output.shape)}; expected {expected}")
        if not torch.isfinite(output).all():
            raise OutputError("directions contain NaN or Inf")
        if problem.kind == "partition":
            raise OutputError(f"this task scores a partition; expected labels of shape ({rows},)")
        return output.double()
    if not output.is_floating_point() and not output.is_complex() and output.dim() == 1:
        if len(output) != rows:
            raise OutputError(f"wrong shape {tuple(output.shape)}; expected {expected}")
        clusters = int(torch.unique(output).numel())
        if clusters > k:
            raise OutputError(f"{clusters} clusters exceed the budget k={k}")
        labels = output.long()
        return labels if problem.kind == "partition" else indicator_directions(labels)
    raise OutputError(f"wrong output {output.dtype} {tuple(output.shape)}; expected {expected}")


def testbed_code(task: Task) -> str:
    """:func:`testbeds.sources.source_hash` of the testbed package of the task's config (its
    ``__init__.py`` and everything that imports: models, training, ground truth)."""
    module = sys.modules[type(task.config).__module__]
    package = module.__package__ or module.__name__
    try:
        return source_hash(package)
    except ValueError:  # a testbed outside the project: the file defining its config
        return source_hash(type(task.config))


def _update(digest, value: Any) -> None:
    """Feed ``value`` to ``digest``: tensors and arrays by dtype, shape and bytes; modules by
    their state; containers and dataclasses item by item; callables are code, hashed apart."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().contiguous()
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    elif isinstance(value, np.ndarray):
        digest.update(f"A{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, nn.Module):
        _update(digest, value.state_dict())
    elif isinstance(value, dict):
        digest.update(b"{")
        for k in sorted(value, key=str):
            _update(digest, str(k))
            _update(digest, value[k])
        digest.update(b"}")
    elif isinstance(value, list | tuple):
        digest.update(b"[")
        for item in value:
            _update(digest, item)
        digest.update(b"]")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _update(digest, {f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    elif callable(value):
        digest.update(b"callable")
    else:
        digest.update(repr(value).encode())


def fingerprint(problem: Problem, truth: Any) -> str:
    """Hash of what a method is given and what it is scored against: the problem's model
    weights, inputs, targets, graphs, units, budget and seed, and the task's ground truth. A
    score cached under one problem is never reused for another."""
    digest = hashlib.sha256()
    _update(digest, {f.name: getattr(problem, f.name) for f in dataclasses.fields(problem)})
    _update(digest, truth)
    return digest.hexdigest()[:16]


def set_up(task: Task, seed: int) -> tuple[Problem, Any]:
    """``task.setup(seed)`` on one thread. A multi-threaded reduction can change the last bits
    of a float ground truth (an orthonormal basis, say), and with them the problem's
    :func:`fingerprint`; on one thread the fingerprint, hence every score's cache key, is the
    same whatever thread count the caller runs with."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            return task.setup(seed)
    finally:
        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=64)
def _fingerprint_of(task: Task, seed: int) -> str:
    problem, truth = set_up(task, seed)
    return fingerprint(problem, truth)


def _key(
    method: str, method_code: str, task: Task, codes: tuple[str, str], seed: int, lib, problem: str
) -> str:
    parts = {
        "problem": problem,
        "method": method,
        "method_code": method_code,
        "task": task.name,
        "task_code": codes[0],
        "testbed_code": codes[1],
        "config": config_hash(task.config),
        "seed": seed,
        "versions": lib,
        "device": device_kind(resolve_device()),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def cache_key(method: Method, task: Task, seed: int, problem: str | None = None) -> str:
    """Hash of everything a score depends on (module docstring); ``problem`` is the
    :func:`fingerprint` of the task's problem and truth for ``seed`` (set up when not given)."""
    codes = (task.code_hash(), testbed_code(task))
    problem = problem if problem is not None else _fingerprint_of(task, seed)
    return _key(method.name, method.code_hash(), task, codes, seed, versions(), problem)


def _cached(path: Path) -> dict[str, dict]:
    records = read(path)
    if records.empty or "extra" not in records or "status" not in records:
        return {}
    out = {}
    for row in records.sort_values("started_at").to_dict("records"):
        key = row.get("cache_key")
        if key and row.get("status") in ("ok", "n/a"):
            out[key] = row
    return out


def _as_record(row: dict) -> Record:
    """A record read back from the file (pandas turns missing numbers into NaN)."""
    return from_row(row)


def _message(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()


def evaluate(
    tasks: Sequence[Task],
    methods: Sequence[Method],
    seeds: Sequence[int],
    *,
    run_id: str,
    force: bool = False,
    timeout: float | None = DEFAULT_TIMEOUT,
    builtin_timeout: float | None = BUILTIN_TIMEOUT,
    path: Path | None = None,
    progress: bool = True,
) -> list[Record]:
    """Score every method on every task and seed; returns one Record per combination.

    Plug-in methods run in their own process (:mod:`leaderboard.isolation`) with the hard
    limit ``timeout``; built-in methods run in process with ``builtin_timeout``. A method's own
    ``timeout`` overrides either."""
    path = Path(path) if path is not None else records_path()
    cached = {} if force else _cached(path)
    provenance = {"git_sha": git_sha(), "versions": versions(), "run_id": run_id}
    results: list[Record] = []
    bar = tqdm(
        total=len(tasks) * len(seeds) * len(methods),
        desc="leaderboard",
        disable=not progress,
    )
    lib = versions()
    method_codes = {m.name: m.code_hash() for m in methods}
    for task in tasks:
        codes = (task.code_hash(), testbed_code(task))
        for seed in seeds:
            bar.set_postfix_str(f"{task.name} seed {seed}: building the problem")
            try:
                problem, truth = set_up(task, seed)
                setup_error, printed = None, fingerprint(problem, truth)
            except Exception as error:  # noqa: BLE001 - recorded for every method
                problem, truth, printed = None, None, "setup failed"
                setup_error = f"task setup failed: {_message(error)}"
            keys = {
                m.name: _key(m.name, method_codes[m.name], task, codes, seed, lib, printed)
                for m in methods
            }
            pending = [m for m in methods if setup_error or keys[m.name] not in cached]
            for m in methods:
                if m not in pending:
                    results.append(_as_record(cached[keys[m.name]]))
                    bar.update()
            if not pending:
                continue
            for method in pending:
                bar.set_postfix_str(f"{task.name} seed {seed}: {method.name}")
                started = datetime.now(UTC).isoformat(timespec="seconds")
                clock = time.perf_counter()
                value, chance, extra, status, message = math.nan, None, {}, "ok", ""
                if setup_error is not None:
                    status, message = "failed", setup_error
                else:
                    try:
                        mine = problem.on(resolve_device())  # its own copy of the model
                        default = timeout if isolated(method) else builtin_timeout
                        budget = method.timeout if method.timeout is not None else default
                        if isolated(method):
                            output = run_isolated(method.fn, mine, budget)
                        else:
                            output = _call(method, mine, budget)
                        output = output.cpu() if isinstance(output, Tensor) else output
                        output = check_output(output, problem)
                        value, chance, extra = task.score(output, truth, problem)
                        if not 0.0 <= value <= 1.0 + 1e-9:
                            raise OutputError(f"task score {value} outside [0, 1]")
                    except NotApplicable as reason:
                        status, message, value = "n/a", str(reason), math.nan
                    except Exception as error:  # noqa: BLE001 - isolation is the point
                        status, message, value = "failed", _message(error), math.nan
                record = Record(
                    claim="",
                    testbed=task.testbed,
                    preset=task.preset,
                    seed=seed,
                    statistic=task.name,
                    value=float(value),
                    chance=chance,
                    kind="score",
                    cache_key=keys[method.name],
                    task_version=str(task.version),
                    method_hash=method.code_hash(),
                    extra={
                        **extra,
                        "k": None if problem is None else problem.k,
                        "method_source": method.source,
                        "method_origin": method.origin,
                    },
                    config_hash=config_hash(task.config),
                    started_at=started,
                    seconds=time.perf_counter() - clock,
                    method=method.name,
                    task=task.name,
                    status=status,
                    error=message,
                    **provenance,
                )
                append(record, path)
                results.append(record)
                bar.update()
    bar.close()
    return results
