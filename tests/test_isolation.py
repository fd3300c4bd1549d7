"""Plug-in methods run in their own process: whatever one does, every other score is unchanged
and the leaderboard goes on (leaderboard/isolation.py)."""

from __future__ import annotations

import dataclasses
import math
import sys
import textwrap

import pytest

from leaderboard.api import METHODS, load_builtins, load_plugin
from leaderboard.isolation import isolated
from leaderboard.runner import evaluate
from tests.tiny import tiny_basis, tiny_problem, tiny_task

PLUGIN = textwrap.dedent(
    """
    import ctypes
    import os
    import sys
    import time

    import numpy as np
    import torch

    from leaderboard import register_method


    @register_method("mutates_everything", source="test")
    def mutates_everything(problem):
        problem.inputs.sub_(problem.inputs.mean(0))       # centred in place
        with torch.no_grad():
            for p in problem.model.parameters():
                p.zero_()
        return torch.eye(problem.rows, problem.k, dtype=torch.float64)


    @register_method("calls_sys_exit", source="test")
    def calls_sys_exit(problem):
        sys.exit(3)


    @register_method("calls_os_exit", source="test")
    def calls_os_exit(problem):
        os._exit(5)


    @register_method("segfaults", source="test")
    def segfaults(problem):
        ctypes.string_at(0)


    @register_method("swallows_the_timeout", source="test")
    def swallows_the_timeout(problem):
        while True:
            try:
                time.sleep(0.05)
            except Exception:
                pass


    @register_method("long_native_call", source="test")
    def long_native_call(problem):
        a = np.random.default_rng(0).standard_normal((1500, 1500))
        for _ in range(1000):
            a = np.linalg.qr(a)[0]
        return a[: problem.rows, : problem.k]
    """
)
BAD = {
    "calls_sys_exit": "the method called sys.exit(3)",
    "calls_os_exit": "the worker exited with code 5",
    "segfaults": "killed by SIGSEGV",
    "swallows_the_timeout": "hard time budget of 3 s",
    "long_native_call": "hard time budget of 3 s",
}
TRUSTED = ["entk_trace", "activation_pca", "random"]
SHIFT = 0.0  # added to the tiny problem's inputs


def setup(seed: int):
    problem = tiny_problem(seed, task="tiny_isolated", shift=SHIFT)
    problem = dataclasses.replace(problem, activations=lambda model, x: model[1](model[0](x)))
    return problem, tiny_basis()


TASK = tiny_task(name="tiny_isolated", setup=setup)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    monkeypatch.setenv("NTKBENCH_RESULTS", str(tmp_path / "results"))
    load_builtins()
    saved = dict(METHODS)
    path = tmp_path / "hostile.py"
    path.write_text(PLUGIN)
    yield load_plugin(path)
    METHODS.clear()
    METHODS.update(saved)


def test_hostile_plugin_cannot_reach_other_scores(plugin, tmp_path):
    assert set(plugin) == {"mutates_everything", *BAD}
    assert all(isolated(METHODS[name]) for name in plugin)
    assert not any(isolated(METHODS[name]) for name in TRUSTED)
    clean = evaluate(
        [TASK],
        [METHODS[n] for n in TRUSTED],
        [0],
        run_id="clean",
        path=tmp_path / "a.jsonl",
        progress=False,
    )
    names = ["mutates_everything", *BAD, *TRUSTED]  # the hostile ones first
    mixed = evaluate(
        [TASK],
        [METHODS[n] for n in names],
        [0],
        run_id="mixed",
        timeout=3.0,
        path=tmp_path / "b.jsonl",
        progress=False,
    )
    by = {r.method: r for r in mixed}
    assert by["mutates_everything"].status == "ok"
    assert by["mutates_everything"].value == pytest.approx(1.0)
    for name, reason in BAD.items():
        assert by[name].status == "failed" and reason in by[name].error, by[name].error
        assert "\n" not in by[name].error and math.isnan(by[name].value)
    for record in clean:
        assert by[record.method].status == "ok"
        assert by[record.method].value == record.value  # identical, not merely close


def test_cached_scores_are_keyed_by_the_problem(tmp_path, monkeypatch):
    """A score is reused only for the same problem and truth (weights, inputs, targets …)."""
    monkeypatch.setenv("NTKBENCH_RESULTS", str(tmp_path / "results"))
    load_builtins()
    methods = [METHODS["entk_trace"]]
    first = evaluate([TASK], methods, [0], run_id="a", progress=False)
    again = evaluate([TASK], methods, [0], run_id="b", progress=False)
    assert again[0].run_id == "a" and again[0].value == first[0].value  # read from the cache

    # the same code, task and seed, but other inputs (as after an in-place edit had been
    # cached): the score must not be reused
    monkeypatch.setattr(sys.modules[__name__], "SHIFT", 1.0)
    third = evaluate([TASK], methods, [0], run_id="c", progress=False)
    assert third[0].run_id == "c" and third[0].cache_key != first[0].cache_key
    assert third[0].value != first[0].value
