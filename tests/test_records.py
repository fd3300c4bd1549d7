"""Records: kinds (claim check, diagnostic, score), roles (only gating claim checks decide a
verdict or fail a check), typed provenance, and older lines of the file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from hypotheses.conftest import Recorder
from leaderboard.records import (
    ROLES,
    SUPERSEDED_V1,
    Record,
    claims_frame,
    from_row,
    read,
    records_path,
    upgrade,
)
from testbeds.tms import Config as TMSConfig

CONFIG = TMSConfig()
COMMON = dict(claim="X1", testbed="t", preset="p", statistic="s", threshold=0.5, comparison=">=")


@pytest.fixture(autouse=True)
def _results(tmp_path, monkeypatch):
    monkeypatch.setenv("NTKBENCH_RESULTS", str(tmp_path))


def test_a_record_rejects_an_unknown_role():
    with pytest.raises(ValueError, match="role must be one of"):
        Record(seed=0, value=1.0, passed=True, role="confirmed", **COMMON)
    assert Record(seed=0, value=1.0, passed=True, **COMMON).role == "gating"


def test_only_gating_records_fail_a_check():
    record = Recorder("run")
    record(config=CONFIG, seed=0, value=0.1, role="superseded", note=SUPERSEDED_V1, **COMMON)
    record(config=CONFIG, seed=1, value=0.1, role="diagnostic", note="spent seed", **COMMON)
    record.assert_passed()  # nothing gating failed
    record(config=CONFIG, seed=3, value=0.1, **COMMON)
    with pytest.raises(AssertionError, match="criteria not met"):
        record.assert_passed()
    assert records_path().exists() and len(read()) == 3


def test_claims_frame_judges_each_role_apart_and_puts_gating_first():
    record = Recorder("run")
    for seed in (0, 1, 2):
        record(config=CONFIG, seed=seed, value=0.1, role="diagnostic", note="spent", **COMMON)
    for seed in (3, 4, 5):
        record(config=CONFIG, seed=seed, value=0.9, **COMMON)
    frame = claims_frame(read())
    assert frame["role"].tolist() == ["gating", "diagnostic"]
    assert frame["verdict"].tolist() == ["pass", "FAIL"]
    assert frame["seeds"].tolist() == ["3, 4, 5", "0, 1, 2"]
    assert frame["note"].tolist() == ["", "spent"]


def test_records_written_before_roles_existed_count_as_gating():
    old = pd.DataFrame(
        [
            dict(seed=0, value=0.9, passed=True, control_value=None, chance=None, **COMMON)
            | dict(started_at="t", method="")
        ]
    )
    frame = claims_frame(old)
    assert frame["role"].tolist() == ["gating"] and frame["verdict"].tolist() == ["pass"]
    assert set(frame["role"]) <= set(ROLES)


# -- kinds and typed provenance ------------------------------------------------------------------
def test_kind_is_inferred_and_checked():
    assert Record(seed=0, value=1.0, passed=True, **COMMON).kind == "claim"
    score = Record(
        claim="",
        testbed="t",
        preset="p",
        seed=0,
        statistic="task",
        value=0.5,
        method="m",
        task="task",
        chance=0.1,
    )
    assert score.kind == "score" and score.threshold is None and score.passed is None
    with pytest.raises(ValueError, match="kind must be one of"):
        Record(seed=0, value=1.0, passed=True, kind="verdict", **COMMON)
    with pytest.raises(ValueError, match="needs a threshold and a verdict"):
        Record(
            claim="X1", testbed="t", preset="p", seed=0, statistic="s", value=1.0, comparison=">="
        )
    with pytest.raises(ValueError, match="names its method"):
        Record(claim="X1", testbed="t", preset="p", seed=0, statistic="s", value=1.0, kind="score")


def test_a_diagnostic_has_no_criterion_and_never_gates():
    base = dict(claim="X1", testbed="t", preset="p", seed=0, statistic="s", value=0.3)
    diagnostic = Record(kind="diagnostic", role="diagnostic", **base)
    assert (diagnostic.threshold, diagnostic.comparison, diagnostic.passed) == (None, "", None)
    with pytest.raises(ValueError, match="no criterion or verdict"):
        Record(kind="diagnostic", role="diagnostic", threshold=0.5, comparison=">=", **base)
    with pytest.raises(ValueError, match="cannot gate"):
        Record(kind="diagnostic", **base)

    record = Recorder("run")
    record(config=CONFIG, kind="diagnostic", role="diagnostic", note="beside X1", **base)
    record.assert_passed()  # a diagnostic has no verdict to fail
    for seed in (0, 1):
        record(config=CONFIG, seed=seed, value=0.9, **COMMON)
    frame = claims_frame(read())
    row = frame[frame["statistic"] == "s"].set_index("role")
    assert row.at["diagnostic", "verdict"] == "–" and row.at["diagnostic", "criterion"] == "–"
    assert row.at["gating", "verdict"] == "pass" and row.at["gating", "criterion"] == ">= 0.5"


def test_the_recorder_names_the_claim_module_and_its_code_hash(tmp_path):
    module = tmp_path / "test_x1_claim.py"
    module.write_text('"""X1."""\nimport metrics.spectra\n', encoding="utf-8")
    first = Recorder("run", module)(config=CONFIG, seed=0, value=0.9, **COMMON)
    assert first.source == module.resolve().as_posix() and len(first.code_hash) == 16
    module.write_text('"""X1, edited."""\nimport metrics.spectra\n', encoding="utf-8")
    second = Recorder("run", module)(config=CONFIG, seed=0, value=0.9, **COMMON)
    assert second.code_hash != first.code_hash
    written = read()
    assert written["code_hash"].tolist() == [first.code_hash, second.code_hash]
    # a claim module inside the repository is named relative to it
    inside = Recorder("run", Path("hypotheses/test_h1_fourier_circuits.py"))
    assert inside.source == "hypotheses/test_h1_fourier_circuits.py"


OLD_LINES = [
    # a claim check, a diagnostic named with the old " (recorded)" suffix, a leaderboard score
    # whose threshold held its chance level and whose provenance sat in extra
    dict(
        claim="H7",
        testbed="modadd",
        preset="m",
        seed=0,
        statistic="rho",
        value=0.7,
        threshold=0.8,
        comparison=">=",
        passed=False,
        role="gating",
        method="",
        started_at="2026-01-01T00:00:00",
    ),
    dict(
        claim="H7 (recorded)",
        testbed="modadd",
        preset="t",
        seed=0,
        statistic="rho",
        value=0.4,
        threshold=0.8,
        comparison=">=",
        passed=False,
        role="gating",
        method="",
        started_at="2026-01-01T00:00:00",
    ),
    dict(
        claim="",
        testbed="modadd",
        preset="m",
        seed=0,
        statistic="task",
        value=0.5,
        threshold=0.1,
        comparison=">=",
        passed=True,
        chance=0.1,
        method="pca",
        task="task",
        extra={"cache_key": "abc", "task_version": "2", "k": 4},
        started_at="2026-01-01T00:00:00",
    ),
]


def test_older_lines_load_with_a_kind_and_their_provenance_promoted():
    records_path().write_text("\n".join(json.dumps(r) for r in OLD_LINES) + "\n")
    frame = read().set_index("preset", drop=False)
    assert frame["kind"].tolist() == ["claim", "diagnostic", "score"]
    diagnostic = frame.loc["t"]
    assert diagnostic["claim"] == "H7" and diagnostic["role"] == "diagnostic"
    assert pd.isna(diagnostic["threshold"]) and diagnostic["comparison"] == ""
    score = frame[frame["kind"] == "score"].iloc[0]
    assert (score["cache_key"], score["task_version"]) == ("abc", "2")
    assert pd.isna(score["threshold"]) and score["passed"] is None and score["chance"] == 0.1
    assert (frame["code_hash"] == "").all()  # unknown for older lines, not invented

    rebuilt = [from_row(row) for row in frame.to_dict("records")]
    assert [r.kind for r in rebuilt] == ["claim", "diagnostic", "score"]
    assert rebuilt[0].passed is False and rebuilt[1].threshold is None
    assert from_row(json.loads(rebuilt[2].to_json())) == rebuilt[2]  # round trip

    claims = claims_frame(read())
    assert claims["claim"].tolist() == ["H7", "H7"]  # the score is not a claim
    assert claims.set_index("preset")["verdict"].to_dict() == {"m": "FAIL", "t": "–"}
    assert upgrade(OLD_LINES[1])["claim"] == "H7" and OLD_LINES[1]["claim"] == "H7 (recorded)"


def _line(seed: int) -> Record:
    return Record(seed=seed, value=0.1 * seed, passed=True, **COMMON)


def test_a_torn_last_line_costs_only_the_torn_fragment(tmp_path):
    from leaderboard.records import append

    path = tmp_path / "records.jsonl"
    for seed in range(3):
        append(_line(seed), path)
    whole = path.read_bytes()
    last = whole.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(whole[: last + 25])  # a writer killed 25 bytes into the third record
    append(_line(7), path)
    append(_line(8), path)
    with pytest.warns(UserWarning, match="skipped 1 line that is not a whole record"):
        frame = read(path)
    assert sorted(frame["seed"]) == [0, 1, 7, 8]
    assert frame.attrs["skipped"] == 1
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") == 5  # the fragment kept on its own line


def test_an_intact_file_reads_without_a_warning(tmp_path, recwarn):
    from leaderboard.records import append

    path = tmp_path / "records.jsonl"
    append(_line(0), path)
    frame = read(path)
    assert frame.attrs["skipped"] == 0 and len(frame) == 1
    assert not [w for w in recwarn if "skipped" in str(w.message)]


def test_criteria_print_rounded():
    common = {**COMMON, "threshold": 0.199762, "comparison": "<="}
    rows = [Record(seed=0, value=0.1, passed=True, **common)]
    frame = claims_frame(pd.DataFrame([json.loads(r.to_json()) for r in rows]))
    assert frame["criterion"].tolist() == ["<= 0.1998"]
