"""The plug-in path of ``ntkbench leaderboard``: a plug-in is ranked against the cached scores of
the other methods, restricted runs write their own files, progress lines without a terminal,
the W&B mode from the environment, one-line errors for broken plug-ins and unwritable folders,
failed methods ranked after every scored one, numeric W&B claims, the heatmap's labels inside
the figure, and the report's plot values cached per checkpoint."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from leaderboard import api, cli, report
from leaderboard.api import METHODS
from leaderboard.folders import check_folders, unwritable
from leaderboard.records import Record, read
from leaderboard.runner import evaluate
from leaderboard.table import aggregate, leaderboard_display
from leaderboard.wandb_log import log_run, table_frame
from testbeds import modadd
from tests.tiny import tiny_task

api.load_builtins()
PLUGIN = (
    "import torch\n"
    "from leaderboard import register_method\n"
    "@register_method('plugged_eye', source='test')\n"
    "def plugged_eye(problem):\n"
    "    return torch.eye(problem.rows, problem.k, dtype=torch.float64)\n"
)


pytestmark = pytest.mark.usefixtures("results")  # tests/conftest.py


@pytest.fixture
def tiny(monkeypatch):
    """A registered task with a known answer and no training; the method registry restored."""
    saved = dict(METHODS)
    task = tiny_task(name="tiny_plugin_task")
    monkeypatch.setitem(api.TASKS, task.name, task)
    yield task
    METHODS.clear()
    METHODS.update(saved)


def _plugin(tmp_path: Path) -> Path:
    path = tmp_path / "plugged.py"
    path.write_text(PLUGIN)
    return path


# -- the plug-in path ----------------------------------------------------------------------------
def test_a_plugin_is_ranked_against_cached_builtins_without_recomputing_them(
    tiny, tmp_path, results, capsys
):
    evaluate([tiny], [METHODS["entk_trace"]], [0], run_id="cached", progress=False)
    results.mkdir(parents=True, exist_ok=True)
    for full in ("leaderboard.md", "leaderboard.csv", "report.html"):
        (results / full).write_text("the full run's table\n")
    argv = ["leaderboard", "--plugin", str(_plugin(tmp_path)), "--tasks", tiny.name]
    assert cli.main(argv + ["--seeds", "1", "--no-plots"]) == 0
    for full in ("leaderboard.md", "leaderboard.csv", "report.html"):  # never overwritten
        assert (results / full).read_text() == "the full run's table\n"
    board = (results / "leaderboard-plugged_eye-tiny_plugin_task-1-seeds.md").read_text()
    assert "| plugged_eye |" in board and "| random |" in board
    assert "| entk_trace |" in board  # the cached built-in, compared with
    assert (results / "leaderboard-plugged_eye-tiny_plugin_task-1-seeds.csv").exists()
    assert (results / "leaderboard-plugged_eye-tiny_plugin_task-1-seeds.html").exists()
    stored = read()
    assert (stored["method"] == "entk_trace").sum() == 1  # read from the cache, not rerun
    assert "qdg" not in set(stored["method"])  # uncached built-ins are not computed
    assert "qdg" not in board
    assert "compared with the cached scores of entk_trace" in capsys.readouterr().err


def test_compare_names_the_methods_and_computes_them_where_not_cached(tiny, tmp_path, results):
    evaluate([tiny], [METHODS["entk_trace"]], [0], run_id="cached", progress=False)
    argv = ["leaderboard", "--plugin", str(_plugin(tmp_path)), "--tasks", tiny.name]
    argv += ["--seeds", "1", "--no-plots", "--compare", "qdg", "--name", "mine vs qdg"]
    cli.main(argv)
    board = (results / "leaderboard-mine_vs_qdg.md").read_text()
    assert "| qdg |" in board and "| plugged_eye |" in board
    assert "entk_trace" not in board  # only what --compare names
    assert "qdg" in set(read()["method"])


def test_the_full_default_run_is_the_only_one_writing_leaderboard_md():
    args = cli.parser().parse_args(["leaderboard"])
    assert cli.run_name(args, []) is None
    args = cli.parser().parse_args(["leaderboard", "--methods", "qdg", "--testbeds", "tms"])
    assert cli.run_name(args, []) == "qdg-tms"
    args = cli.parser().parse_args(["leaderboard", "--seeds", "1"])
    assert cli.run_name(args, []) == "1-seeds"
    args = cli.parser().parse_args(["leaderboard", "--plugin", "x.py"])
    assert cli.run_name(args, ["input_gram"]) == "input_gram"


def test_progress_lines_when_stderr_is_not_a_terminal(tiny, capsys):
    argv = ["leaderboard", "--tasks", tiny.name, "--methods", "random", "--seeds", "2"]
    cli.main(argv + ["--no-plots"])
    err = capsys.readouterr().err
    assert "4 evaluations of 2 methods on 1 tasks and 2 seeds: 0 cached, 4 to compute" in err
    lines = re.findall(r"^\[(\d)/4\] (\w+) on tiny_plugin_task seed (\d): (\w+)", err, re.M)
    assert sorted(int(n) for n, *_ in lines) == [1, 2, 3, 4]
    assert {(m, s) for _, m, s, _ in lines} == {
        (m, s) for m in ("random", "activation_pca") for s in "01"
    }
    assert "leaderboard:" not in err  # no progress bar without a terminal
    cli.main(argv + ["--no-plots"])
    err = capsys.readouterr().err
    assert "0 cached" not in err and "4 cached, 0 to compute" in err and "[1/" not in err


# -- W&B -------------------------------------------------------------------------------------------
def test_wandb_mode_comes_from_the_environment_unless_the_flag_is_given(tiny, monkeypatch, capsys):
    modes = []

    def fake_log_run(**kwargs):
        modes.append(kwargs["mode"])
        return None, None

    monkeypatch.setattr(cli, "log_run", fake_log_run)
    argv = ["leaderboard", "--tasks", tiny.name, "--methods", "random", "--seeds", "1"]
    argv += ["--no-plots", "--quiet"]
    monkeypatch.setenv("WANDB_MODE", "online")
    cli.main(argv)
    cli.main(argv + ["--wandb", "disabled"])
    monkeypatch.delenv("WANDB_MODE")
    cli.main(argv)
    assert modes == ["online", "disabled", "offline"]
    assert cli.wandb_mode(None) == "offline"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert cli.wandb_mode(None) == "offline"


def test_the_wandb_claims_table_holds_numbers(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("WANDB_MODE")
    rows = [
        Record(
            "H1a", "modadd", "p", s, "overlap", v, threshold=0.5, comparison=">=", passed=v >= 0.5
        )
        for s, v in ((0, 0.75), (1, 0.25))
    ]
    rows.append(Record("H1b", "modadd", "p", 0, "rank", 3.0, kind="diagnostic", role="diagnostic"))
    frame = pd.DataFrame([r.__dict__ for r in rows])
    claims = cli.numeric_claims(frame)
    assert claims["value"].dtype == float and claims["threshold"].dtype == float
    mixed = table_frame(pd.DataFrame({"a": [1.5, None], "b": ["x", None], "c": [True, None]}))
    assert mixed["a"].dtype == float and list(mixed["b"]) == ["x", ""]
    records = tmp_path / "records.jsonl"
    records.write_text("{}\n")
    run_dir, error = log_run(
        mode="offline",
        version="test",
        config={},
        leaderboard=pd.DataFrame({"score": [0.5]}),
        claims=claims,
        summary={},
        images={},
        records=records,
        directory=tmp_path,
    )
    assert error is None, error
    stored = json.loads(
        next(Path(run_dir).glob("files/media/table/claims_*.table.json")).read_text()
    )
    value = stored["columns"].index("value")
    assert [row[value] for row in stored["data"]] == [0.75, 0.25, 3.0]
    threshold = stored["columns"].index("threshold")
    assert stored["data"][0][threshold] == 0.5


# -- smaller items -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source, error",
    [
        ("def broken(:\n", "SyntaxError"),
        ("raise RuntimeError('no model here')\n", "RuntimeError: no model here"),
        ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    ],
)
def test_list_with_a_broken_plugin_prints_one_line(tmp_path, capsys, source, error):
    plugin = tmp_path / "broken.py"
    plugin.write_text(source)
    saved = dict(METHODS)
    try:
        assert cli.main(["list", "--plugin", str(plugin)]) == 2
    finally:
        METHODS.clear()
        METHODS.update(saved)
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert error in captured.err and "could not load plug-in" in captured.err


def test_a_failed_method_never_shares_a_rank_with_one_that_scored_zero():
    def rec(method, value, status="ok"):
        return Record("", "modadd", "p", 0, "t", value, method=method, task="t", status=status)

    records = [rec("A", 0.5), rec("Z", 0.0), rec("F", math.nan, "failed")]
    summary = aggregate(records)["summary"]
    assert summary.loc["Z", "Borda"] == summary.loc["F", "Borda"] == 0.0
    assert summary.loc["A", "Borda rank"] == 1
    assert summary.loc["Z", "Borda rank"] == 2
    assert summary.loc["F", "Borda rank"] == 3
    display = leaderboard_display(records).set_index("method")
    assert display.at["F", "t"] == "failed" and display.at["F", "Borda rank"] == "3"


@pytest.mark.parametrize("shape", [(2, 1), (3, 3), (12, 12)])
def test_the_heatmap_labels_fit_in_the_figure(shape):
    methods, tasks = shape
    names = [f"modadd_mlp.task_{i}_family" for i in range(tasks)]
    mean = pd.DataFrame(
        np.linspace(0, 1, methods * tasks).reshape(methods, tasks),
        index=[f"method_{i}_name" for i in range(methods)],
        columns=names,
    )
    fig = report.heatmap_figure({"mean": mean, "chance": pd.Series(0.1, index=names)})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    label = fig.axes[-1].yaxis.label
    assert label.get_text() == "score (mean over seeds)"
    for box in [label.get_window_extent(renderer), *(a.get_tightbbox(renderer) for a in fig.axes)]:
        assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1
        assert frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_the_report_plots_values_are_cached_per_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("NTKBENCH_CACHE", str(tmp_path / "cache"))
    config = modadd.Config(p=5, width=8, epochs=6, checkpoints=(0, 2, 4, 6), train_fraction=0.6)
    run = modadd.train(config, 0)
    calls = []
    original = report._mlp_kernel

    def counting(model, config=None):
        calls.append(1)
        return original(model, config)

    monkeypatch.setattr(report, "_mlp_kernel", counting)
    first = report.overlap_values(run, progress=False)
    assert list(first["epoch"]) == [0, 2, 4, 6] and len(calls) == 4
    assert first[["sum", "difference"]].apply(lambda c: c.between(0, 1)).all().all()
    again = report.overlap_values(run, progress=False)
    pd.testing.assert_frame_equal(first, again)
    spectrum = report.spectrum_values(run, progress=False)
    assert len(calls) == 5 and spectrum.dtype == torch.float64
    assert torch.all(spectrum[:-1] >= spectrum[1:])
    assert torch.equal(report.spectrum_values(run, progress=False), spectrum) and len(calls) == 5


# -- folders that cannot be written ---------------------------------------------------------------
def test_unwritable_folders_stop_every_command_with_one_line(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert unwritable(tmp_path / "fine", "results folder") is None
    assert "cannot write to the results folder" in unwritable(blocker / "r", "results folder")
    monkeypatch.setenv("NTKBENCH_RESULTS", str(blocker / "results"))
    assert cli.main(["leaderboard", "--tasks", "modadd_mlp.sum_family", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"results folder {blocker / 'results'}" in err
    assert "NTKBENCH_RESULTS" in err
    assert cli.main(["report"]) == 2
    assert f"results folder {blocker / 'results'}" in capsys.readouterr().err
    monkeypatch.setenv("NTKBENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("NTKBENCH_CACHE", str(blocker / "cache"))
    assert "cache folder" in check_folders() and "NTKBENCH_CACHE" in check_folders()
    assert cli.main(["leaderboard", "--tasks", "modadd_mlp.sum_family", "--seeds", "1"]) == 2
    assert f"cache folder {blocker / 'cache'}" in capsys.readouterr().err


def test_a_claims_session_stops_at_once_when_the_results_folder_cannot_be_written(tmp_path):
    import os
    import subprocess
    import sys

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    env = {**os.environ, "NTKBENCH_RESULTS": str(blocker / "results")}
    env.pop("PYTEST_XDIST_WORKER", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "hypotheses/", "--collect-only", "-q"]
        + ["-p", "no:cacheprovider", "-p", "no:xdist"],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 4, done.stdout + done.stderr
    output = (done.stdout + done.stderr).strip()
    assert output.splitlines() == [
        f"ERROR: cannot write to the results folder {blocker / 'results'} (Not a directory); "
        "set NTKBENCH_RESULTS to a writable folder"
    ]


def test_the_readme_plugin_command_names_real_tasks_and_its_own_files():
    section = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = section.split("## Adding a method", 1)[1]
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    words = command.replace("\\\n", " ").splitlines()[0].split()
    assert words[:3] == [".venv/bin/ntkbench", "leaderboard", "--plugin"]
    args = cli.parser().parse_args(words[1:])
    assert args.plugin == ["leaderboard/examples/my_method.py"] and args.methods is None
    assert set(args.tasks) <= set(api.TASKS)
    name = cli.run_name(args, ["input_gram"])
    assert f"`leaderboard-{name}`" in section and re.search(r"took \d+ s cold", section)
