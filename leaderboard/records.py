"""Records: one JSON object per line in ``results/records.jsonl``, the local source of truth.

Every claim check and every leaderboard score is a :class:`Record` carrying its value, the
pre-registered threshold and comparison, the control value, and provenance (config hash,
seed, git commit, package versions, start time, duration). Appends take an exclusive file
lock, so pytest-xdist workers can write to the same file.

The file lives in ``$NTKBENCH_RESULTS`` (default ``./results``).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

RESULTS_ENV = "NTKBENCH_RESULTS"
COMPARISONS = (">=", "<=")
STATUSES = ("ok", "failed", "n/a")
# What a claim record is for (SCIENCE.md rules 6, 10, 12):
# * "gating"      — the current instrument on its confirmatory seeds; decides the verdict and
#                   ``make run``'s exit status;
# * "superseded"  — an earlier version of the instrument, still computed and recorded with its
#                   verdict; ``note`` says why it was replaced;
# * "exploratory" — no hand-built network passes the statistic yet, so it cannot gate;
# * "diagnostic"  — recorded beside a claim and never gating (seeds spent on diagnosing an
#                   instrument, robustness variants, second architectures).
ROLES = ("gating", "superseded", "exploratory", "diagnostic")
SUPERSEDED_V1 = "v1 — instrument fails its planted positive (see README)"


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV, "results"))


def records_path() -> Path:
    return results_dir() / "records.jsonl"


def compare(value: float, comparison: str, threshold: float) -> bool:
    """``value comparison threshold``; NaN never passes."""
    if comparison not in COMPARISONS:
        raise ValueError(f"comparison must be one of {COMPARISONS}, got comparison={comparison!r}")
    if value is None or math.isnan(value):
        return False
    return value >= threshold if comparison == ">=" else value <= threshold


@dataclass
class Record:
    """One measured statistic against its pre-registered criterion."""

    claim: str  # e.g. "H1a"
    testbed: str
    preset: str
    seed: int
    statistic: str  # what was measured, e.g. "second_cliff_overlap_sum"
    value: float
    threshold: float
    comparison: str  # ">=" or "<="
    passed: bool
    control_value: float | None = None
    chance: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    git_sha: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    started_at: str = ""
    seconds: float = 0.0
    run_id: str = ""  # one id per `pytest hypotheses/` session or leaderboard invocation
    # leaderboard scores only: claim is "", threshold is the chance level, passed = reached it
    method: str = ""
    task: str = ""
    status: str = "ok"  # "ok", "failed" (error holds the message) or "n/a" (not applicable)
    error: str = ""
    role: str = "gating"  # one of ROLES (claim records)
    note: str = ""  # why a record does not gate (superseded / exploratory / diagnostic)

    def __post_init__(self) -> None:
        if self.comparison not in COMPARISONS:
            raise ValueError(f"comparison must be one of {COMPARISONS}, got {self.comparison!r}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got status={self.status!r}")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got role={self.role!r}")

    def to_json(self) -> str:
        def clean(v: Any) -> Any:
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [clean(x) for x in v]
            return v

        return json.dumps(clean(asdict(self)), sort_keys=True)


def append(record: Record, path: Path | None = None) -> Path:
    """Append one record (one line) under an exclusive lock; returns the file written."""
    path = Path(path) if path is not None else records_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = record.to_json() + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return path


def read(path: Path | None = None) -> pd.DataFrame:
    """All records as a DataFrame (empty if there are none); malformed lines are skipped."""
    path = Path(path) if path is not None else records_path()
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return pd.DataFrame(rows)


def claim_records(records: pd.DataFrame) -> pd.DataFrame:
    """Only the claim records (leaderboard scores carry a method name)."""
    if records.empty or "method" not in records:
        return records
    return records[records["method"].fillna("") == ""]


def with_roles(records: pd.DataFrame) -> pd.DataFrame:
    """Records with ``role`` and ``note`` filled in (records written before roles existed
    gated)."""
    records = records.copy()
    records["role"] = records["role"].fillna("gating") if "role" in records else "gating"
    records["note"] = records["note"].fillna("") if "note" in records else ""
    return records


def latest(records: pd.DataFrame) -> pd.DataFrame:
    """For each (claim, testbed, preset, statistic, role, seed) the record of the newest run."""
    if records.empty:
        return records
    keys = ["claim", "testbed", "preset", "statistic", "role", "seed"]
    return with_roles(records).sort_values("started_at").groupby(keys, as_index=False).tail(1)


def _fmt(values) -> str:
    return ", ".join("–" if v is None or pd.isna(v) else f"{v:.3f}" for v in values)


def claims_frame(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (claim, preset, statistic, role) of the newest claim records: every seed's
    value, the control values, chance, the criterion and the verdict over seeds (pass only if
    every seed passes). Only "gating" rows decide a claim; the others say what they are in
    ``role`` and why in ``note``."""
    columns = ["claim", "preset", "statistic", "role", "seeds", "value per seed"]
    columns += ["control per seed", "chance", "criterion", "verdict", "note"]
    recent = latest(claim_records(records))
    if recent.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    keys = ["claim", "preset", "statistic", "role"]
    for (claim, preset, statistic, role), group in recent.groupby(keys):
        group = group.sort_values("seed")
        chance = group["chance"].dropna() if "chance" in group else pd.Series(dtype=float)
        rows.append(
            {
                "claim": claim,
                "preset": preset,
                "statistic": statistic,
                "role": role,
                "seeds": ", ".join(str(int(s)) for s in group["seed"]),
                "value per seed": _fmt(group["value"]),
                "control per seed": _fmt(group["control_value"]),
                "chance": _fmt(chance.iloc[:1]) if len(chance) else "–",
                "criterion": f"{group['comparison'].iloc[0]} {group['threshold'].iloc[0]:g}",
                "verdict": "pass" if group["passed"].all() else "FAIL",
                "note": "; ".join(sorted(set(group["note"]) - {""})),
            }
        )
    frame = pd.DataFrame(rows, columns=columns)
    frame["_role"] = frame["role"].map(ROLES.index)  # gating rows first within a claim
    frame = frame.sort_values(["claim", "preset", "_role"], kind="stable")
    return frame.drop(columns="_role").reset_index(drop=True)


def markdown(frame: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table (no extra dependency)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([header, rule, *body])


def claims_table(records: pd.DataFrame) -> str:
    """Markdown table of :func:`claims_frame`."""
    frame = claims_frame(records)
    if frame.empty:
        return "(no records)"
    return markdown(frame.drop(columns=["seeds"]))
