"""Metrics along training: evaluate a metric at every checkpoint of a :class:`Run`.

Claims about *how* a network learns (kernel rank climbs, the spectrum diagnoses grokking) need a
statistic at every checkpoint of a training run. :func:`map_checkpoints` evaluates a metric on
each checkpoint's model, caches every checkpoint's values on disk as soon as they exist, and
returns a tidy frame with one row per (step, metric)::

    >>> import torch
    >>> from testbeds import modadd
    >>> from testbeds.trajectory import map_checkpoints, plot_trajectory
    >>> from metrics import entk, effective_rank
    >>> run = modadd.train(modadd.preset("lin2025_mlp"), seed=0)
    >>> x = modadd.probe_inputs(run.config)
    >>> def erank(model, step):
    ...     return {"erank": effective_rank(torch.linalg.eigvalsh(entk(model, x).double()))}
    >>> frame = map_checkpoints(run, erank, name="erank")   # columns: testbed, preset, seed,
    >>> fig = plot_trajectory(frame, "erank", runs=[run])    # step, metric, value

Cache. Values live in ``$NTKBENCH_CACHE/trajectories/<testbed>/<run key>/<name>-<key>/``, one
JSON file per checkpoint, written atomically. The key (:func:`metric_key`) hashes the metric's
``name``, its ``version``, its qualified name and the source of the module that defines it
together with every project module that module imports, transitively
(:func:`testbeds.sources.source_hash`): editing the metric, a helper it calls or anything in
``metrics/`` it imports recomputes it, and nothing else does. Inputs that are not code (a
closure's arguments, a probe set, a number of examples) must go into ``name`` or ``version``;
a ``functools.partial``'s bound arguments are hashed. The run key already covers the testbed's
config, seed and training code. A computation that is
interrupted keeps every finished checkpoint; an unreadable file is recomputed. While one
process maps a (run, metric) pair, others asking for the same pair wait for it and then read
its files, so pytest-xdist workers never compute the same checkpoint twice.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from testbeds.runs import Run, RunStore, cache_dir, config_hash
from testbeds.sources import source_hash

COLUMNS = ("testbed", "preset", "seed", "step", "metric", "value")
TRAJECTORY_FORMAT = 1

Metric = Callable[[nn.Module, int], Mapping[str, float] | float]


def _bound(fn: Any) -> Any:
    """The qualified name of a callable, with the arguments a ``functools.partial`` binds."""
    if isinstance(fn, functools.partial):
        return [_bound(fn.func), repr(fn.args), repr(sorted(fn.keywords.items()))]
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def metric_key(metric: Metric, name: str, version: str | Mapping[str, Any] = "") -> str:
    """A metric's cache identity: the hash of its name, its version, its qualified name (with
    a partial's bound arguments) and :func:`testbeds.sources.source_hash` of the module that
    defines it (that module's source and every project module it imports, transitively).

    Raises ValueError for a metric whose source file cannot be found (one typed at an
    interactive prompt): define it in a file, or call :func:`map_checkpoints` with
    ``cache=False``.
    """
    try:
        code = source_hash(metric)
    except ValueError as err:
        raise ValueError(
            f"cannot key the cache of metric {name!r}: {err}; or pass cache=False"
        ) from err
    payload = json.dumps(
        {"name": name, "version": version, "callable": _bound(metric), "code": code},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def trajectory_dir(run: Run, name: str, key: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cache_dir() / "trajectories" / run.testbed / run.meta["cache_key"] / f"{safe}-{key}"


def _as_values(out: Mapping[str, float] | float, name: str, step: int) -> dict[str, float]:
    values = dict(out) if isinstance(out, Mapping) else {name: out}
    clean = {}
    for metric, value in values.items():
        try:
            clean[str(metric)] = float(value)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"metric {name!r} returned a non-scalar value for {metric!r} at step {step}: "
                f"{type(value).__name__}; a metric returns a float or a mapping name → float"
            ) from err
    return clean


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> dict[str, float] | None:
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
        if payload.get("format") != TRAJECTORY_FORMAT:
            raise ValueError("unexpected format")
        return {k: float(v) for k, v in payload["values"].items()}
    except Exception as err:  # an unreadable file is recomputed, never a crash
        warnings.warn(f"recomputing unreadable trajectory file {path} ({err})", stacklevel=3)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None


def _check_steps(run: Run, steps: Iterable[int] | None) -> list[int]:
    if steps is None:
        return run.steps
    chosen = sorted({int(s) for s in steps})
    missing = [s for s in chosen if s not in run.checkpoints]
    if missing or not chosen:
        raise ValueError(
            f"steps must be a non-empty subset of the run's checkpoints {run.steps}; "
            f"not checkpoints: {missing}"
        )
    return chosen


def map_checkpoints(
    run: Run,
    metric: Metric,
    *,
    name: str,
    version: str | Mapping[str, Any] = "",
    steps: Iterable[int] | None = None,
    preset: str | None = None,
    cache: bool = True,
    workers: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate ``metric(model, step)`` at checkpoints of ``run`` and return a tidy frame.

    Args:
        metric: called with each checkpoint's model (eval mode, a fresh copy) and its step;
            returns a float (recorded under ``name``) or a mapping metric name → float.
        name: the metric's name: labels its values and its cache folder.
        version: the inputs other than code that the values depend on (hashed into the cache
            key with the source of the metric's module and its project imports).
        steps: the checkpoints to evaluate (default: all of them).
        preset: the label in the frame's ``preset`` column (default ``run.preset``).
        cache: read and write the per-checkpoint cache.
        workers: threads evaluating checkpoints concurrently. Useful when the metric's time goes
            to torch / LAPACK kernels (which release the GIL) running on one thread each.
        progress: show a tqdm bar.

    Returns:
        DataFrame with columns ``testbed, preset, seed, step, metric, value``, sorted by
        metric then step.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got name={name!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got workers={workers!r}")
    chosen = _check_steps(run, steps)
    label = preset if preset is not None else run.preset or f"custom-{config_hash(run.config)}"
    folder = trajectory_dir(run, name, metric_key(metric, name, version)) if cache else None

    def compute(step: int) -> dict[str, float]:
        values = _as_values(metric(run.model_at(step), step), name, step)
        if cache:
            _write_json(folder / f"{step}.json", {"format": TRAJECTORY_FORMAT, "values": values})
        return values

    results: dict[int, dict[str, float]] = {}
    lock = RunStore(folder, "map").locked() if cache else contextlib.nullcontext()
    if cache:
        folder.mkdir(parents=True, exist_ok=True)
    with lock:
        if cache:
            for step in chosen:
                values = _read_json(folder / f"{step}.json")
                if values is not None:
                    results[step] = values
        todo = [s for s in chosen if s not in results]
        bar = tqdm(
            total=len(chosen),
            initial=len(results),
            desc=f"{name} {run.testbed} {label} seed {run.seed}",
            disable=not progress or not todo,
            leave=False,
        )
        with bar:
            if workers == 1:
                for step in todo:
                    results[step] = compute(step)
                    bar.update()
            else:
                with ThreadPoolExecutor(workers) as pool:
                    for step, values in zip(todo, pool.map(compute, todo), strict=True):
                        results[step] = values
                        bar.update()

    rows = [
        (run.testbed, label, run.seed, step, metric_name, value)
        for step in chosen
        for metric_name, value in results[step].items()
    ]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.sort_values(["metric", "step"], kind="stable").reset_index(drop=True)


def _log_axis(log: pd.DataFrame) -> str:
    for column in ("step", "epoch"):
        if column in log:
            return column
    raise ValueError(f"a run log needs a 'step' or 'epoch' column; it has {list(log.columns)}")


def plot_trajectory(
    frame: pd.DataFrame,
    metrics: str | Sequence[str],
    *,
    runs: Sequence[Run] = (),
    accuracy: str | None = "test_acc",
    ax: Any = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    logx: bool = False,
    logy: bool = False,
    xlabel: str = "step",
    ylabel: str | None = None,
):
    """Plot metrics of a :func:`map_checkpoints` frame against step, one line per (metric,
    seed), with the runs' ``accuracy`` log column on a second axis (dashed, same colour per
    seed). ``accuracy=None`` or no ``runs`` draws no second axis. Saves to ``path`` when given
    and returns the figure."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = sorted(set(names) - set(frame["metric"]))
    if unknown:
        raise ValueError(
            f"metrics {unknown} are not in the frame; it has {sorted(set(frame['metric']))}"
        )
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
    else:
        fig = ax.figure
    seeds = sorted(frame["seed"].unique())
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "-.", ":", (0, (5, 1))]
    for j, metric in enumerate(names):
        for i, seed in enumerate(seeds):
            rows = frame[(frame["metric"] == metric) & (frame["seed"] == seed)]
            label = metric if len(seeds) == 1 else f"{metric} (seed {seed})"
            ax.plot(
                rows["step"],
                rows["value"],
                marker="o",
                markersize=2.5,
                linestyle=styles[j % len(styles)],
                color=colours[(i + j * len(seeds)) % len(colours)],
                label=label,
            )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or (names[0] if len(names) == 1 else "value"))
    if logx:
        ax.set_xscale("symlog", linthresh=1)
    if logy:
        ax.set_yscale("log")
    handles, labels = ax.get_legend_handles_labels()
    if accuracy is not None and runs:
        twin = ax.twinx()
        for run in sorted(runs, key=lambda r: r.seed):
            if accuracy not in run.log:
                raise ValueError(
                    f"accuracy column {accuracy!r} is not in the log of {run.testbed} seed "
                    f"{run.seed}; columns: {list(run.log.columns)}"
                )
            log = run.log.dropna(subset=[accuracy])
            colour = colours[seeds.index(run.seed) % len(colours)] if run.seed in seeds else None
            twin.plot(
                log[_log_axis(run.log)],
                log[accuracy],
                linestyle="--",
                linewidth=1,
                alpha=0.7,
                color=colour,
                label=f"{accuracy} (seed {run.seed})" if len(runs) > 1 else accuracy,
            )
        twin.set_ylabel(accuracy)
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if len(handles) <= 12:
        ax.legend(handles, labels, fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def first_crossing(log: pd.DataFrame, column: str, level: float) -> float:
    """The first step (or epoch) at which ``log[column] ≥ level``; NaN if never."""
    axis = _log_axis(log)
    hit = log.loc[log[column] >= level, axis]
    return float(hit.min()) if len(hit) else math.nan


def metric_series(frame: pd.DataFrame, metric: str) -> pd.Series:
    """One metric of a single-run frame as a Series indexed by step."""
    rows = frame[frame["metric"] == metric]
    if rows.empty:
        raise ValueError(
            f"metric {metric!r} is not in the frame; it has {sorted(set(frame.metric))}"
        )
    if rows["seed"].nunique() > 1:
        raise ValueError("metric_series needs a frame of one run; filter it by seed first")
    return rows.set_index("step")["value"].sort_index()
