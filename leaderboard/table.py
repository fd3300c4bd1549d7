"""The leaderboard table: methods × tasks, aggregated over seeds, ranked two ways.

From score records (one per method, task and seed; the newest wins when a combination appears
more than once, so nothing is double-counted):

* each cell is the mean over the seeds whose status is ``ok``, with the standard deviation
  (ddof = 0) and the number of seeds; a method with no ``ok`` seed on a task has no value there
  — it is shown as ``failed`` or ``–`` (not applicable / not run), never as zero;
* ``chance`` per task is the mean chance level over its records, shown as its own row;
* ``mean score`` averages a method's cells over the tasks where it has one (``tasks`` says how
  many);
* ``mean rank`` averages its per-task rank (1 = best; ties share the average rank) over the
  same tasks;
* ``Borda`` sums, over tasks, the number of methods it beats on that task (a tie counts ½);
  a method earns nothing on a task where it has no value. ``Borda rank`` orders the totals
  (ties share the best rank); a method with no value on any task ranks after every method that
  has one, so a method that failed never shares a rank with one that scored 0. The table is
  sorted by it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict

import numpy as np
import pandas as pd

from leaderboard.records import Record, markdown

SUMMARY = ["mean score", "tasks", "mean rank", "Borda", "Borda rank"]


def score_frame(records: Iterable[Record] | pd.DataFrame) -> pd.DataFrame:
    """Score records as a DataFrame, newest record per (method, task, seed), in the order
    given (methods and tasks appear in the table in that order)."""
    frame = records if isinstance(records, pd.DataFrame) else pd.DataFrame(map(asdict, records))
    if frame.empty or "method" not in frame:
        return pd.DataFrame(columns=["method", "task", "seed", "value", "chance", "status"])
    frame = frame[frame["method"].fillna("") != ""]
    newest = frame.sort_values("started_at", kind="stable")
    newest = newest.groupby(["method", "task", "seed"], as_index=False).tail(1)
    return newest.sort_index()  # back to the given order, so columns follow the task registry


def aggregate(records: Iterable[Record] | pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Numeric leaderboard pieces: ``mean``, ``std``, ``seeds`` (ok seeds), ``failed`` (failed
    seeds) — each method × task — ``chance`` (task,) and ``summary`` (method × SUMMARY), with
    methods sorted by Borda rank."""
    frame = score_frame(records)
    methods = list(dict.fromkeys(frame["method"]))
    tasks = list(dict.fromkeys(frame["task"]))
    ok = frame[frame["status"] == "ok"]

    def pivot(values: pd.Series | pd.DataFrame, fill=np.nan) -> pd.DataFrame:
        return values.reindex(index=methods, columns=tasks).astype(float).fillna(fill)

    grouped = ok.groupby(["method", "task"])["value"]
    mean = pivot(grouped.mean().unstack("task") if len(ok) else pd.DataFrame())
    std = pivot(grouped.std(ddof=0).unstack("task") if len(ok) else pd.DataFrame())
    seeds = pivot(grouped.count().unstack("task") if len(ok) else pd.DataFrame(), 0).astype(int)
    failed_rows = frame[frame["status"] == "failed"]
    failed = pivot(
        failed_rows.groupby(["method", "task"]).size().unstack("task")
        if len(failed_rows)
        else pd.DataFrame(),
        0,
    ).astype(int)
    chance = frame.groupby("task")["chance"].mean().reindex(tasks).astype(float)

    ranks = mean.rank(axis=0, ascending=False, method="average")
    counts = mean.notna().sum(axis=0)
    borda = (counts - ranks).sum(axis=1)  # points on a task: methods beaten, ties ½
    summary = pd.DataFrame(
        {
            "mean score": mean.mean(axis=1),
            "tasks": mean.notna().sum(axis=1).astype(int),
            "mean rank": ranks.mean(axis=1),
            "Borda": borda,
        },
        index=methods,
    )
    # a method with no value on any task (failed or not applicable everywhere) ranks after every
    # method that has one, even one that scored 0 and beat nobody
    scored = summary["Borda"].where(summary["tasks"] > 0, -np.inf)
    summary["Borda rank"] = scored.rank(ascending=False, method="min").astype(int)
    order = summary.sort_values(["Borda rank", "mean score"], ascending=[True, False]).index
    return {
        "mean": mean.loc[order],
        "std": std.loc[order],
        "seeds": seeds.loc[order],
        "failed": failed.loc[order],
        "chance": chance,
        "summary": summary.loc[order],
    }


def leaderboard_frame(records: Iterable[Record] | pd.DataFrame) -> pd.DataFrame:
    """Flat numeric table for CSV: one row per method (plus a ``chance`` row), per task the
    columns ``<task>``, ``<task> std``, ``<task> seeds``, then the summary columns."""
    parts = aggregate(records)
    columns = {}
    for task in parts["mean"].columns:
        columns[task] = parts["mean"][task]
        columns[f"{task} std"] = parts["std"][task]
        columns[f"{task} seeds"] = parts["seeds"][task]
    table = pd.concat([pd.DataFrame(columns), parts["summary"]], axis=1)
    chance = pd.DataFrame([{task: parts["chance"][task] for task in parts["mean"].columns}])
    chance.index = ["chance"]
    table = pd.concat([table, chance])
    table.index.name = "method"
    return table


def _cell(mean: float, std: float, seeds: int, failed: int, total: int) -> str:
    if np.isnan(mean):
        return "failed" if failed else "–"
    text = f"{mean:.3f} ± {std:.3f}"
    return text if seeds == total else f"{text} ({seeds}/{total} seeds)"


def leaderboard_display(records: Iterable[Record] | pd.DataFrame) -> pd.DataFrame:
    """The leaderboard as text cells: ``mean ± std`` per cell (over seeds), ``failed`` or
    ``–`` where there is no value, a chance row, the summary columns."""
    parts = aggregate(records)
    frame = score_frame(records)
    totals = frame.groupby(["method", "task"]).size()
    rows = []
    for method in parts["mean"].index:
        row = {"method": method}
        for task in parts["mean"].columns:
            row[task] = _cell(
                parts["mean"].at[method, task],
                parts["std"].at[method, task],
                parts["seeds"].at[method, task],
                parts["failed"].at[method, task],
                int(totals.get((method, task), 0)),
            )
        s = parts["summary"].loc[method]
        row["mean score"] = "–" if np.isnan(s["mean score"]) else f"{s['mean score']:.3f}"
        row["tasks"] = str(int(s["tasks"]))
        row["mean rank"] = "–" if np.isnan(s["mean rank"]) else f"{s['mean rank']:.2f}"
        row["Borda"] = f"{s['Borda']:g}"
        row["Borda rank"] = str(int(s["Borda rank"]))
        rows.append(row)
    chance = {"method": "(chance)"}
    chance.update({t: f"{v:.3f}" for t, v in parts["chance"].items()})
    chance.update({c: "" for c in SUMMARY})
    rows.append(chance)
    return pd.DataFrame(rows)


def leaderboard_markdown(records: Iterable[Record] | pd.DataFrame) -> str:
    """:func:`leaderboard_display` as a markdown table."""
    if score_frame(records).empty:
        return "(no results)"
    return markdown(leaderboard_display(records))
