"""The trajectory machinery: a metric mapped over a run's checkpoints, cached per checkpoint."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from testbeds import modadd, runs
from testbeds.runs import Run
from testbeds.trajectory import (
    COLUMNS,
    first_crossing,
    map_checkpoints,
    metric_series,
    plot_trajectory,
    trajectory_dir,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_config():
    return modadd.Config(p=5, width=8, epochs=6, checkpoints=(0, 2, 4, 6), train_fraction=0.6)


@pytest.fixture
def run(tiny_config):
    return modadd.train(tiny_config, seed=0)


def norm_metric(model, step):
    return {"norm": float(model.layer1.weight.detach().norm()), "step_twice": 2.0 * step}


def test_frame_is_tidy_and_matches_direct_evaluation(run):
    frame = map_checkpoints(run, norm_metric, name="norms", progress=False)
    assert tuple(frame.columns) == COLUMNS
    assert len(frame) == 2 * len(run.steps)
    assert set(frame["testbed"]) == {"modadd"} and set(frame["seed"]) == {0}
    assert frame["preset"].iloc[0].startswith("custom-")
    for step in run.steps:
        expected = norm_metric(run.model_at(step), step)
        got = frame[frame["step"] == step].set_index("metric")["value"]
        assert got["norm"] == pytest.approx(expected["norm"], rel=1e-12)
        assert got["step_twice"] == 2.0 * step
    assert metric_series(frame, "norm").index.tolist() == run.steps


def test_second_call_reads_the_cache(run):
    calls = []

    def metric(model, step):
        calls.append(step)
        return float(step)

    first = map_checkpoints(run, metric, name="counted", progress=False)
    assert calls == run.steps
    second = map_checkpoints(run, metric, name="counted", progress=False)
    assert calls == run.steps  # nothing recomputed
    pd.testing.assert_frame_equal(first, second)
    # a new version recomputes; so does cache=False
    map_checkpoints(run, metric, name="counted", version="2", progress=False)
    assert len(calls) == 2 * len(run.steps)
    map_checkpoints(run, metric, name="counted", cache=False, progress=False)
    assert len(calls) == 3 * len(run.steps)


def test_interrupted_mapping_resumes_from_finished_checkpoints(run):
    calls, fail_at = [], {4}

    def metric(model, step):
        if step in fail_at:
            raise KeyboardInterrupt
        calls.append(step)
        return float(step)

    with pytest.raises(KeyboardInterrupt):
        map_checkpoints(run, metric, name="resumable", progress=False)
    assert calls == [0, 2]
    fail_at.clear()
    frame = map_checkpoints(run, metric, name="resumable", progress=False)
    assert calls == [0, 2, 4, 6]  # 0 and 2 came from the cache
    assert frame["value"].tolist() == [0.0, 2.0, 4.0, 6.0]


def test_unreadable_checkpoint_file_is_recomputed(run):
    map_checkpoints(run, norm_metric, name="norms", progress=False)
    folder = next(trajectory_dir(run, "norms", "x").parent.glob("norms-*"))
    (folder / "2.json").write_text("{not json")
    with pytest.warns(UserWarning, match="recomputing unreadable"):
        frame = map_checkpoints(run, norm_metric, name="norms", progress=False)
    assert len(frame) == 2 * len(run.steps)


def test_threads_and_step_subsets_give_the_same_values(run):
    serial = map_checkpoints(run, norm_metric, name="norms", cache=False, progress=False)
    threaded = map_checkpoints(run, norm_metric, name="norms", workers=2, progress=False)
    pd.testing.assert_frame_equal(serial, threaded)
    subset = map_checkpoints(run, norm_metric, name="norms", steps=[6, 0], progress=False)
    assert sorted(subset["step"].unique()) == [0, 6]


def test_bad_arguments_raise(run):
    with pytest.raises(ValueError, match="steps must be a non-empty subset"):
        map_checkpoints(run, norm_metric, name="norms", steps=[3], progress=False)
    with pytest.raises(ValueError, match="workers must be a positive int"):
        map_checkpoints(run, norm_metric, name="norms", workers=0, progress=False)
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        map_checkpoints(run, norm_metric, name="", progress=False)
    with pytest.raises(ValueError, match="non-scalar value for 'w'"):
        map_checkpoints(
            run, lambda m, s: {"w": torch.ones(2)}, name="bad", cache=False, progress=False
        )


def test_frame_is_labelled_with_the_runs_preset(run):
    frame = map_checkpoints(run, norm_metric, name="norms", progress=False)
    assert set(frame["preset"]) == {run.preset} and run.preset.startswith("custom-")
    named = Run("modadd", run.config, 0, run.checkpoints, run.log, meta=run.meta, preset="x")
    frame = map_checkpoints(named, norm_metric, name="norms", progress=False, cache=False)
    assert set(frame["preset"]) == {"x"}


def test_plot_has_the_accuracy_on_a_second_axis(run, tmp_path):
    frame = map_checkpoints(run, norm_metric, name="norms", progress=False)
    path = tmp_path / "plot.png"
    fig = plot_trajectory(frame, "norm", runs=[run], path=path)
    assert path.stat().st_size > 1000
    axes = fig.get_axes()
    assert len(axes) == 2 and axes[1].get_ylabel() == "test_acc"
    line = axes[1].get_lines()[0]
    assert list(line.get_xdata()) == run.log["epoch"].tolist()
    with pytest.raises(ValueError, match="not in the frame"):
        plot_trajectory(frame, "missing")
    with pytest.raises(ValueError, match="accuracy column 'nope'"):
        plot_trajectory(frame, "norm", runs=[run], accuracy="nope")


def test_first_crossing():
    log = pd.DataFrame({"epoch": [0, 1, 2, 3], "test_acc": [0.0, 0.05, 0.5, 0.95]})
    assert first_crossing(log, "test_acc", 0.1) == 2
    assert first_crossing(log, "test_acc", 0.9) == 3
    assert math.isnan(first_crossing(log, "test_acc", 0.99))
