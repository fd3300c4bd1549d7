"""Records: one JSON object per line in ``results/records.jsonl``, the local source of truth.

Every claim check, every value recorded beside a claim and every leaderboard score is a
:class:`Record`. Its ``kind`` says which of the three it is:

* ``"claim"`` — a claim check: a value, its pre-registered ``threshold`` and ``comparison``,
  and the verdict ``passed``; ``role`` says whether it gates (:data:`ROLES`);
* ``"diagnostic"`` — a value recorded beside a claim with no criterion or verdict of its own
  (``threshold``, ``comparison`` and ``passed`` are empty; ``role`` is never ``"gating"``);
* ``"score"`` — a leaderboard score of ``method`` on ``task`` in [0, 1], next to its
  ``chance`` level (no threshold or verdict either).

Provenance: config hash, seed, git commit, package versions, start time, duration, and the
code the value came from — ``code_hash`` (the source hash of ``source``, the claim module, and
every project module it imports, :func:`testbeds.sources.source_hash`), and for scores the
score cache's ``cache_key``, the ``task_version`` and the ``method_hash``. Appends take an
exclusive file lock, so pytest-xdist workers can write to the same file.

Lines written before these fields existed still load (:func:`upgrade`).

The file lives in ``$NTKBENCH_RESULTS`` (default ``./results``).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

RESULTS_ENV = "NTKBENCH_RESULTS"
COMPARISONS = (">=", "<=")
KINDS = ("claim", "diagnostic", "score")
STATUSES = ("ok", "failed", "n/a")
# What a claim record is for (SCIENCE.md rules 6, 10, 12):
# * "gating"      — the current instrument on its confirmatory seeds; decides the verdict and
#                   ``make run``'s exit status;
# * "superseded"  — an earlier version of the instrument, still computed and recorded with its
#                   verdict; ``note`` says why it was replaced;
# * "exploratory" — no hand-built network passes the statistic yet, so it cannot gate;
# * "diagnostic"  — recorded beside a claim and never gating (seeds spent on diagnosing an
#                   instrument, robustness variants, second architectures);
# * "smoke"       — computed by the quick tier (``hypotheses.tier``): smoke-sized runs on one seed
#                   that show the code runs; never a verdict.
ROLES = ("gating", "superseded", "exploratory", "diagnostic", "smoke")
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
    """One measured value: a claim check, a diagnostic beside a claim, or a leaderboard score
    (``kind``; module docstring)."""

    claim: str  # e.g. "H1a"; "" for a score
    testbed: str
    preset: str
    seed: int
    statistic: str  # what was measured, e.g. "second_cliff_overlap_sum"
    value: float
    threshold: float | None = None  # claim checks only: the pre-registered threshold
    comparison: str = ""  # claim checks only: ">=" or "<="
    passed: bool | None = None  # claim checks only: value comparison threshold
    control_value: float | None = None
    chance: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""
    git_sha: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    started_at: str = ""
    seconds: float = 0.0
    run_id: str = ""  # one id per `pytest hypotheses/` session or leaderboard invocation
    method: str = ""  # scores only
    task: str = ""  # scores only
    status: str = "ok"  # "ok", "failed" (error holds the message) or "n/a" (not applicable)
    error: str = ""
    role: str = "gating"  # one of ROLES (claim checks and diagnostics)
    note: str = ""  # why a record does not gate (superseded / exploratory / diagnostic)
    kind: str = ""  # one of KINDS; left empty, "score" when a method is named, else "claim"
    source: str = ""  # the file whose code produced the value (a claim module), repo-relative
    code_hash: str = ""  # testbeds.sources.source_hash of ``source`` and what it imports
    cache_key: str = ""  # scores: the key of the score cache
    task_version: str = ""  # scores: the task's version
    method_hash: str = ""  # scores: the source hash of the method

    def __post_init__(self) -> None:
        if not self.kind:
            self.kind = "score" if self.method else "claim"
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got kind={self.kind!r}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got status={self.status!r}")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got role={self.role!r}")
        if self.kind == "score":
            if not self.method or self.claim:
                raise ValueError(
                    "a score names its method and no claim, "
                    f"got method={self.method!r}, claim={self.claim!r}"
                )
            return
        if self.method:
            raise ValueError(f"a {self.kind} record names no method, got method={self.method!r}")
        if self.kind == "claim":
            if self.comparison not in COMPARISONS:
                raise ValueError(
                    f"comparison must be one of {COMPARISONS}, got {self.comparison!r}"
                )
            if self.threshold is None or not isinstance(self.passed, bool):
                raise ValueError(
                    "a claim check needs a threshold and a verdict, "
                    f"got threshold={self.threshold!r}, passed={self.passed!r}"
                )
        else:
            if self.threshold is not None or self.comparison or self.passed is not None:
                raise ValueError(
                    "a diagnostic has no criterion or verdict of its own, got "
                    f"threshold={self.threshold!r}, comparison={self.comparison!r}, "
                    f"passed={self.passed!r}"
                )
            if self.role == "gating":
                raise ValueError(
                    "a diagnostic cannot gate: give it role 'diagnostic' (or 'superseded', "
                    "'exploratory')"
                )

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


RECORDED_SUFFIX = " (recorded)"  # how older lines named a diagnostic claim, e.g. "H7 (recorded)"
PROMOTED = ("cache_key", "task_version")  # provenance older score lines kept in ``extra``


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def upgrade(row: dict[str, Any]) -> dict[str, Any]:
    """One line of the file as the current schema sees it (a new dict; current lines come back
    unchanged). Lines written before ``kind`` existed get one: a named method makes a score,
    a claim named ``"<claim> (recorded)"`` a diagnostic of ``<claim>``, anything else a claim
    check. Diagnostics and scores lose the threshold and verdict older lines put there (a
    score's threshold was its chance level, which ``chance`` holds); ``cache_key`` and
    ``task_version`` are copied from ``extra`` into their fields."""
    row = dict(row)
    extra = row.get("extra")
    row["extra"] = extra = extra if isinstance(extra, dict) else {}
    if _missing(row.get("kind")) or not row.get("kind"):
        claim = row.get("claim") or ""
        if row.get("method"):
            row["kind"] = "score"
        elif claim.endswith(RECORDED_SUFFIX):
            row["kind"] = "diagnostic"
            row["claim"] = claim.removesuffix(RECORDED_SUFFIX)
            row["role"] = "diagnostic"
        else:
            row["kind"] = "claim"
        if row["kind"] != "claim":
            row.update(threshold=None, comparison="", passed=None)
    for name in PROMOTED:
        if not row.get(name) and name in extra:
            row[name] = str(extra[name])
    for name in ("source", "code_hash", "cache_key", "task_version", "method_hash"):
        if _missing(row.get(name)):
            row[name] = ""
    return row


def from_row(row: dict[str, Any]) -> Record:
    """A :class:`Record` from one line of the file (or a row of :func:`read`; pandas turns
    missing numbers into NaN), older lines upgraded."""
    row = upgrade(row)
    names = {f.name for f in fields(Record)}
    # a missing value takes the field's default (pandas fills absent columns with NaN)
    clean = {k: v for k, v in row.items() if k in names and not _missing(v)}
    for name in ("claim", "testbed", "preset", "statistic"):
        clean.setdefault(name, "")
    clean["value"] = math.nan if _missing(clean.get("value")) else float(clean["value"])
    for name in ("threshold", "chance", "control_value"):
        clean[name] = None if _missing(clean.get(name)) else float(clean[name])
    clean["passed"] = None if _missing(clean.get("passed")) else bool(clean["passed"])
    clean["seed"] = int(clean["seed"])
    return Record(**clean)


def append(record: Record, path: Path | None = None) -> Path:
    """Append one record (one line) under an exclusive lock; returns the file written.

    The line always starts on a line of its own: if the file does not end with a newline (a
    writer was killed mid-line), a newline is written first, so the torn fragment stays a line
    of its own that :func:`read` skips, and this record survives whole."""
    path = Path(path) if path is not None else records_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (record.to_json() + "\n").encode("utf-8")
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            size = handle.seek(0, os.SEEK_END)
            if size:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    line = b"\n" + line
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return path


def read_rows(path: Path | None = None) -> tuple[list[dict[str, Any]], int]:
    """(every whole record of the file as a dict, upgraded to the current schema; the number of
    non-empty lines skipped because they are not a JSON object — a torn write leaves one)."""
    path = Path(path) if path is not None else records_path()
    rows: list[dict[str, Any]] = []
    skipped = 0
    if not path.exists():
        return rows, skipped
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(row, dict):
            rows.append(upgrade(row))
        else:
            skipped += 1
    return rows, skipped


def read(path: Path | None = None) -> pd.DataFrame:
    """All records as a DataFrame (empty if there are none), older lines upgraded to the
    current schema (:func:`upgrade`). Lines that are not whole records (a torn write) are
    skipped with a warning that counts them; the count is also in ``frame.attrs["skipped"]``."""
    path = Path(path) if path is not None else records_path()
    rows, skipped = read_rows(path)
    if skipped:
        warnings.warn(
            f"{path}: skipped {skipped} line{'s' * (skipped != 1)} that "
            f"{'are' if skipped != 1 else 'is'} not a whole record (torn write?)",
            stacklevel=2,
        )
    frame = pd.DataFrame(rows)
    frame.attrs["skipped"] = skipped
    return frame


def kinds(records: pd.DataFrame) -> pd.Series:
    """Each record's kind, also for frames built from older lines without :func:`upgrade`."""
    if "kind" in records:
        known = records["kind"].fillna("")
    else:
        known = pd.Series("", index=records.index)
    method = records["method"].fillna("") if "method" in records else known.map(lambda _: "")
    inferred = method.map(lambda m: "score" if m else "claim")
    return known.where(known != "", inferred)


def claim_records(records: pd.DataFrame) -> pd.DataFrame:
    """The claim checks and the diagnostics beside them (every record but the scores)."""
    if records.empty:
        return records
    return records[kinds(records) != "score"]


def with_roles(records: pd.DataFrame) -> pd.DataFrame:
    """Records with ``kind``, ``role`` and ``note`` filled in (records written before roles
    existed gated)."""
    records = records.copy()
    records["kind"] = kinds(records)
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


def checks(group: pd.DataFrame) -> pd.DataFrame:
    """The claim checks among records (diagnostics and scores have no verdict)."""
    return group[kinds(group) == "claim"]


def criterion(group: pd.DataFrame) -> str:
    """``">= 0.9"`` for records of one statistic (the newest record's), "–" for diagnostics."""
    judged = checks(group)
    if judged.empty:
        return "–"
    last = judged.sort_values("started_at").iloc[-1] if "started_at" in judged else judged.iloc[-1]
    return f"{last['comparison']} {float(last['threshold']):.4g}"


def verdict(group: pd.DataFrame) -> str:
    """ "pass" when every claim check among the records passed, "FAIL" when one did not, "–"
    when there is none (diagnostics only), "smoke" for the quick tier's records."""
    judged = checks(group)
    if judged.empty:
        return "–"
    if "role" in judged and (judged["role"] == "smoke").all():
        return "smoke"
    return "pass" if judged["passed"].map(lambda v: v is True or v == 1.0).all() else "FAIL"


def claims_frame(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (claim, preset, statistic, role) of the newest claim records: every seed's
    value, the control values, chance, the criterion and the verdict over seeds (pass only if
    every seed passes). Only "gating" rows decide a claim; the others say what they are in
    ``role`` and why in ``note``. Diagnostics have no criterion or verdict ("–")."""
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
                "control per seed": _fmt(group.get("control_value", [None] * len(group))),
                "chance": _fmt(chance.iloc[:1]) if len(chance) else "–",
                "criterion": criterion(group),
                "verdict": verdict(group),
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
