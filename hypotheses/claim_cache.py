"""Cached claim results: a claim check that has run once is judged again without recomputing.

A claim check (one pytest item in ``hypotheses/``) is a pure function of its code, its
parameters, the device kind and the library versions: the runs it trains are cached under
keys of the same inputs. So once a check has finished, its records and its outcome are stored
under :func:`item_key` (the test's node id, :func:`code_hash`: the source hash of its module
and every project module that module imports, of every registered testbed package and of the
code that stores and replays it; the tier (:mod:`hypotheses.tier`), the device kind,
``$NTKBENCH_TRAINED_ON`` and the library versions). The next session *replays* the check: its
records are appended again, stamped with this session's run id and start time
(``extra["computed"]`` names the run that computed them and how long it took), every criterion
is compared again with the module's threshold, the files the check wrote under the results
folder are restored (unless a newer one is there), and the test passes or fails as it did.
Editing the claim, a helper, a testbed or a metric it imports changes the key, and the check
runs again.

Only finished checks are stored: passed, or failed on an ``AssertionError`` (a criterion not
met). A check that crashed or skipped is not stored and runs again next time (a skip says what
this machine lacks, a GPU or copied runs, which may change without the code changing).
``--recompute`` (or ``NTKBENCH_RECOMPUTE=1``) ignores the stored results and overwrites them.

Files live in ``$NTKBENCH_CACHE/claims/<module>/<key>.json`` (plus ``<key>.files/`` for the
files the check wrote) and are written atomically. When every check of a module that a session
ran is stored, :func:`write_complete` leaves ``complete-<module key>.json`` beside them, which
``ntkbench run`` reads to skip the module's job (:func:`module_complete`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from leaderboard.claim_code import testbed_packages
from leaderboard.records import Record, compare, from_row, results_dir
from testbeds.loop import device_kind, resolve_device
from testbeds.runs import TRAINED_ON_ENV, cache_dir, versions
from testbeds.sources import source_hash

FORMAT = 1
RECOMPUTE_ENV = "NTKBENCH_RECOMPUTE"
JOB_ENV = "NTKBENCH_CLAIM_JOB"  # set by ``ntkbench run``: store results, append no records
# files the session itself writes, never restored from a check
SESSION_FILES = {"records.jsonl", "claims.md"}


def claims_cache() -> Path:
    return cache_dir() / "claims"


def recompute_requested() -> bool:
    return os.environ.get(RECOMPUTE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def job_mode() -> bool:
    return os.environ.get(JOB_ENV, "").strip().lower() not in ("", "0", "false", "no")


def environment() -> dict[str, Any]:
    """What a stored result depends on besides its code: the tier (its seeds and presets),
    device kind, copied-run kind and library versions."""
    from hypotheses import tier

    return {
        "tier": tier.current(),
        "device": device_kind(resolve_device()),
        "trained_on": os.environ.get(TRAINED_ON_ENV, "").strip(),
        "versions": versions(),
    }


def code_hash(path: str | Path) -> str:
    """The code a stored check depends on: its module and every project module it imports,
    every registered testbed package (claims may reach one through ``testbeds.get(name)``,
    which no import names), and the modules that store and replay it."""
    here = Path(__file__).resolve().parent
    return source_hash(
        Path(path),
        *testbed_packages(),
        Path(__file__),
        here / "conftest.py",
        "leaderboard.records",
    )


def _digest(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def module_key(path: str | Path, selection: str = "") -> str:
    """The key of a claim module's results: its code closure, the environment and the
    selection (a ``-m``/``-k`` expression) a job ran it with."""
    return _digest(
        {
            "format": FORMAT,
            "code": code_hash(path),
            "selection": selection,
            **environment(),
        }
    )


def item_key(nodeid: str, path: str | Path) -> str:
    """The key of one check's stored result (module docstring)."""
    return _digest({"format": FORMAT, "nodeid": nodeid, "code": code_hash(path), **environment()})


def _folder(path: str | Path) -> Path:
    return claims_cache() / Path(path).stem


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclasses.dataclass
class Stored:
    """One finished check: its outcome (``passed`` or ``failed``), the message of a failure, its
    records (as dicts), the files it wrote (relative to the results
    folder) and how it was computed."""

    nodeid: str
    outcome: str
    message: str
    records: list[dict[str, Any]]
    files: list[str]
    run_id: str
    started_at: str
    seconds: float

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **dataclasses.asdict(self)}, default=str)


def load(nodeid: str, path: str | Path) -> tuple[Stored, Path] | None:
    """The stored result of a check, or None (absent, unreadable or of another format)."""
    file = _folder(path) / f"{item_key(nodeid, path)}.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.pop("format", None) != FORMAT or data.get("nodeid") != nodeid:
        return None
    try:
        return Stored(**data), file
    except TypeError:
        return None


def store(result: Stored, path: str | Path, written: Iterable[Path]) -> Path:
    """Save a finished check and copies of the files it wrote under the results folder."""
    key = item_key(result.nodeid, path)
    folder = _folder(path)
    root = results_dir()
    files_dir = folder / f"{key}.files"
    shutil.rmtree(files_dir, ignore_errors=True)
    kept = []
    for file in sorted(set(written)):
        try:
            relative = file.relative_to(root)
        except ValueError:
            continue
        target = files_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(file, target)
        except OSError:
            continue
        kept.append(relative.as_posix())
    result.files = kept
    out = folder / f"{key}.json"
    _write_atomic(out, result.to_json())
    return out


def restore_files(result: Stored, entry: Path) -> None:
    """Put the files a stored check wrote back under the results folder, unless a newer file
    is there (another check wrote it since)."""
    files_dir = entry.with_suffix(".files")
    root = results_dir()
    for relative in result.files:
        source = files_dir / relative
        if not source.is_file():
            continue
        target = root / relative
        try:
            if target.stat().st_mtime_ns > source.stat().st_mtime_ns:
                continue
        except FileNotFoundError:
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def replayed_records(result: Stored, run_id: str, started_at: str) -> list[Record]:
    """The stored records as this session's: its run id and start time, every criterion
    compared again, and ``extra["computed"]`` naming the run that computed the value."""
    out = []
    for row in result.records:
        row = dict(row)
        extra = dict(row.get("extra") or {})
        extra["computed"] = {
            "run_id": row.get("run_id", ""),
            "started_at": row.get("started_at", ""),
            "seconds": row.get("seconds", 0.0),
        }
        row.update(extra=extra, run_id=run_id, started_at=started_at)
        if row.get("kind") == "claim" and row.get("threshold") is not None:
            row["passed"] = compare(row["value"], row["comparison"], row["threshold"])
        out.append(from_row(row))
    return out


def written_since(start_ns: int) -> list[Path]:
    """Files under the results folder modified since ``start_ns`` (a ``time.time_ns()``),
    except the session's own files."""
    root = results_dir()
    if not root.is_dir():
        return []
    out = []
    for file in root.rglob("*"):
        if file.name in SESSION_FILES or file.name.startswith("leaderboard") or not file.is_file():
            continue
        try:
            if file.stat().st_mtime_ns >= start_ns:
                out.append(file)
        except OSError:
            continue
    return out


def complete_marker(path: str | Path, selection: str = "") -> Path:
    return _folder(path) / f"complete-{module_key(path, selection)}.json"


def write_complete(path: str | Path, nodeids: list[str], selection: str = "") -> None:
    """Mark a claim module's results (under ``selection``) as all stored."""
    _write_atomic(
        complete_marker(path, selection),
        json.dumps({"nodeids": sorted(nodeids), "written_at": time.time()}),
    )


def module_complete(path: str | Path, selection: str = "") -> bool:
    """Whether every check of the module (under ``selection``) has a stored result for the
    current code and environment."""
    marker = complete_marker(path, selection)
    try:
        nodeids = json.loads(marker.read_text(encoding="utf-8"))["nodeids"]
    except (OSError, ValueError, KeyError):
        return False
    return all(load(nodeid, path) is not None for nodeid in nodeids)
