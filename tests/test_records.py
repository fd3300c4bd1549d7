"""Claim records carry a role: only gating records decide a verdict or fail a check."""

from __future__ import annotations

import pandas as pd
import pytest

from hypotheses.conftest import Recorder
from leaderboard.records import ROLES, SUPERSEDED_V1, Record, claims_frame, read, records_path
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
