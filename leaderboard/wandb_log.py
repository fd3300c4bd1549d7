"""Copies of a leaderboard invocation in Weights & Biases (offline by default).

One W&B run per invocation, grouped by suite version: the leaderboard and claims tables as
``wandb.Table`` (numbers stay numbers, :func:`table_frame`), each task's per-method mean score
in the run summary, the config (methods, tasks, testbeds, seeds, git commit), the plots as
``wandb.Image`` and the records file as an artifact. ``mode="offline"`` needs no account or
network: the run lands in ``./wandb`` (or ``$WANDB_DIR``) and
``wandb sync wandb/offline-run-*`` uploads it later.

W&B is optional to the results: :func:`log_run` never raises. It returns None on success or a
message saying what failed, and the caller reports it; local files are written before W&B is
called.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

MODES = ("offline", "online", "disabled")
PROJECT = "ntkbench"
INIT_TIMEOUT = 60.0  # seconds W&B may take to start its service


def table_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with one type per column, as a ``wandb.Table`` needs: numeric and boolean
    columns stay numbers (an object column holding only numbers becomes numeric); any other
    column becomes text, missing values as ""."""
    out = frame.reset_index(drop=True).copy()
    for column in out.columns:
        values = out[column]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        present = values.dropna()
        if len(present) and all(isinstance(v, bool) for v in present):
            out[column] = pd.Series(
                [None if _missing(v) else bool(v) for v in values], dtype=object
            )
        elif len(present) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in present
        ):
            out[column] = pd.to_numeric(values)
        else:
            out[column] = ["" if _missing(v) else str(v) for v in values]
    return out


def _missing(value) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def log_run(
    *,
    mode: str,
    version: str,
    config: dict,
    leaderboard: pd.DataFrame,
    claims: pd.DataFrame,
    summary: dict[str, float],
    images: dict[str, Path],
    records: Path,
    directory: Path | None = None,
) -> tuple[str | None, str | None]:
    """Log one leaderboard invocation; returns (run directory or None, error message or None).

    ``mode="disabled"`` does nothing and returns (None, None).
    """
    if mode not in MODES:
        raise ValueError(f"wandb mode must be one of {MODES}, got mode={mode!r}")
    if mode == "disabled":
        return None, None
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return None, "W&B is only called from the aggregating process, not from xdist workers"
    try:
        import wandb

        directory = Path(directory or os.environ.get("WANDB_DIR", "."))
        directory.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=PROJECT,
            group=f"ntkbench-{version}",
            job_type="leaderboard",
            mode=mode,
            dir=str(directory),
            config=config,
            settings=wandb.Settings(init_timeout=INIT_TIMEOUT, silent=True),
        )
        try:
            run.log(
                {
                    "leaderboard": wandb.Table(dataframe=leaderboard.reset_index()),
                    "claims": wandb.Table(dataframe=table_frame(claims)),
                    **{f"plots/{name}": wandb.Image(str(path)) for name, path in images.items()},
                }
            )
            for key, value in summary.items():
                if value is not None and not math.isnan(value):
                    run.summary[key] = value
            if records.exists():
                artifact = wandb.Artifact("records", type="results")
                artifact.add_file(str(records))
                run.log_artifact(artifact)
            run_dir = str(Path(run.dir).parent)
        finally:
            run.finish()
        return run_dir, None
    except Exception as error:  # noqa: BLE001 - W&B must never fail the benchmark
        return (
            None,
            f"W&B logging failed ({type(error).__name__}: {error}); local results are complete",
        )


def log_graph(
    *, mode: str, run_id: str, outcomes: list[dict], config: dict, directory: Path | None = None
) -> tuple[list[str], str | None]:
    """Log one ``ntkbench run``: one W&B group (``graph-<run id>``) holding one run per job kind
    (train, trajectory, claim, task), each with its jobs' table (name, status, seconds) and
    counts in the summary. Returns (run directories, error message or None); never raises.
    """
    if mode not in MODES:
        raise ValueError(f"wandb mode must be one of {MODES}, got mode={mode!r}")
    if mode == "disabled" or not outcomes:
        return [], None
    frame = pd.DataFrame(outcomes)
    dirs: list[str] = []
    try:
        import wandb

        directory = Path(directory or os.environ.get("WANDB_DIR", "."))
        directory.mkdir(parents=True, exist_ok=True)
        for kind, jobs in frame.groupby("kind", sort=True):
            run = wandb.init(
                project=PROJECT,
                group=f"graph-{run_id}",
                job_type=str(kind),
                name=f"{run_id}-{kind}",
                mode=mode,
                dir=str(directory),
                config={**config, "kind": kind},
                settings=wandb.Settings(init_timeout=INIT_TIMEOUT, silent=True),
                reinit="create_new",
            )
            try:
                columns = ["name", "status", "seconds", "message"]
                run.log({"jobs": wandb.Table(dataframe=table_frame(jobs[columns]))})
                for status, count in jobs["status"].value_counts().items():
                    run.summary[f"jobs_{status}"] = int(count)
                run.summary["seconds"] = float(jobs["seconds"].sum())
                dirs.append(str(Path(run.dir).parent))
            finally:
                run.finish()
        return dirs, None
    except Exception as error:  # noqa: BLE001 - W&B must never fail the run
        return dirs, (
            f"W&B logging failed ({type(error).__name__}: {error}); local results are complete"
        )
