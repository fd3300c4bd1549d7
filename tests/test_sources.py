"""Cache keys from source: the import closure of a module and the hash of its source."""

from __future__ import annotations

import functools
import json
import linecache
import os
import shutil
import subprocess
import sys

import pytest

import testbeds.trajectory
from leaderboard import claim_code
from testbeds.sources import ROOT, module_dependencies, source_hash


def test_closure_of_a_known_module():
    deps = module_dependencies("testbeds.loop")
    assert deps == tuple(sorted(deps))
    # itself, its package's init, and what they import
    assert set(deps) == {
        "testbeds",
        "testbeds.contract",
        "testbeds.loop",
        "testbeds.runs",
        "testbeds.sources",
    }
    modadd = set(module_dependencies("testbeds.modadd.train"))
    # importing a submodule runs its packages' inits: the testbed package and what it imports
    assert {"testbeds.modadd", "testbeds.modadd.models", "testbeds.modadd.spec"} <= modadd
    # nothing it does not import: other testbeds, claims, the leaderboard
    assert not any(d.startswith(("testbeds.tms", "testbeds.lm", "hypotheses")) for d in modadd)
    assert not any(d.startswith(("leaderboard", "testbeds.trajectory")) for d in modadd)


def test_closure_is_transitive_and_counts_submodule_imports():
    deps = set(module_dependencies("testbeds.trajectory"))
    assert {"testbeds.trajectory", "testbeds.runs", "testbeds"} <= deps
    claim = set(module_dependencies("hypotheses.trajectories"))
    assert {"metrics.entk", "metrics", "testbeds.trajectory", "hypotheses"} <= claim
    # `from testbeds import lm` imports the package testbeds.lm, and with it what its
    # __init__.py imports
    h4 = set(module_dependencies("hypotheses.test_h4_kernel_rank"))
    assert {"testbeds.lm", "testbeds.lm.train", "hypotheses.trajectories"} <= h4
    assert deps <= claim <= h4


def test_imports_inside_functions_relative_and_from_package(tmp_path, monkeypatch):
    package = tmp_path / "metrics"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from . import b\n    return b\n")
    (package / "b.py").write_text("from .c import x\n")
    (package / "c.py").write_text("x = 1\n")
    (package / "d.py").write_text("import json\n")
    monkeypatch.setattr("testbeds.sources.ROOT", tmp_path)
    assert module_dependencies("metrics.a") == ("metrics", "metrics.a", "metrics.b", "metrics.c")
    assert module_dependencies(str(package / "b.py")) == ("metrics", "metrics.b", "metrics.c")
    assert module_dependencies("metrics.d") == ("metrics", "metrics.d")


def test_file_paths_and_files_outside_the_project(tmp_path):
    test_file = ROOT / "hypotheses" / "test_h5_grokking_spectrum.py"
    by_path = module_dependencies(test_file)
    assert "hypotheses.test_h5_grokking_spectrum" in by_path
    assert "testbeds.trajectory" in by_path
    plugin = tmp_path / "plugin.py"
    plugin.write_text("import numpy\nfrom leaderboard import register_method\n")
    deps = module_dependencies(plugin)
    assert deps[0] == str(plugin.resolve())
    assert {"leaderboard", "leaderboard.api"} <= set(deps[1:])
    with pytest.raises(ValueError, match="not a module"):
        module_dependencies("testbeds.no_such_module")
    with pytest.raises(ValueError, match="not a module"):
        module_dependencies("numpy")
    with pytest.raises(ValueError, match="no such source file"):
        module_dependencies(tmp_path / "missing.py")


def test_hash_is_stable_and_accepts_every_kind_of_target(tmp_path):
    fn = testbeds.trajectory.map_checkpoints
    first = source_hash("testbeds.trajectory")
    assert len(first) == 16 and int(first, 16) >= 0
    assert source_hash("testbeds.trajectory") == first
    assert source_hash(testbeds.trajectory) == first
    assert source_hash(fn) == first
    assert source_hash(functools.partial(fn, name="x")) == first
    assert source_hash(ROOT / "testbeds" / "trajectory.py") == first
    assert source_hash("testbeds.runs") != first
    # a union: order and repetition do not matter
    both = source_hash("metrics.entk", "testbeds.runs")
    assert both == source_hash("testbeds.runs", "metrics.entk", "testbeds.runs")
    assert both not in (source_hash("metrics.entk"), source_hash("testbeds.runs"))
    # a plug-in file: its own text and its project imports
    plugin = tmp_path / "plugin.py"
    plugin.write_text("from leaderboard import register_method\n")
    before = source_hash(plugin)
    plugin.write_text("from leaderboard import register_method\n# edited\n")
    os.utime(plugin, ns=(1, 1))  # a different stamp even on a coarse clock
    assert source_hash(plugin) != before
    with pytest.raises(TypeError):
        source_hash(3)
    with pytest.raises(ValueError):
        source_hash()


def test_claim_hash_covers_testbeds_that_no_import_names(tmp_path):
    """A claim that reaches a testbed only through ``testbeds.get(name)`` still depends on
    that testbed's code: its records' hash covers every registered testbed package."""
    claim = tmp_path / "test_x_claim.py"
    claim.write_text("import testbeds\n\nbed = testbeds.get('tms')\n", encoding="utf-8")
    packages = claim_code.testbed_packages()
    assert {"testbeds.lm", "testbeds.modadd", "testbeds.tms"} <= set(packages)
    assert "testbeds.tms.train" not in module_dependencies(claim)  # invisible to its imports
    assert claim_code.claim_source_hash(claim) == source_hash(claim, *packages)
    assert claim_code.claim_source_hash(claim) != source_hash(claim)


def test_hash_of_a_callable_from_a_plugin_file(tmp_path):
    plugin = tmp_path / "my_metric.py"
    plugin.write_text("import metrics.spectra\n\ndef metric(model, step):\n    return 0.0\n")
    namespace: dict = {}
    code = compile(plugin.read_text(), str(plugin), "exec")
    exec(code, namespace)  # noqa: S102 - a function whose module is not importable
    fn = namespace["metric"]
    assert source_hash(fn) == source_hash(plugin)
    assert source_hash(fn) != source_hash("metrics.spectra")


def test_hash_of_a_notebook_callable_covers_its_text_and_the_project():
    filename = "<notebook-cell-1>"
    text = "def metric(model, step):\n    return 1.0\n"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    try:
        namespace: dict = {"__name__": "__main__"}
        exec(compile(text, filename, "exec"), namespace)  # noqa: S102
        fn = namespace["metric"]
        with pytest.MonkeyPatch.context() as patch:
            patch.delitem(sys.modules["__main__"].__dict__, "__file__", raising=False)
            key = source_hash(fn)
            assert key == source_hash(fn)
            edited = "def metric(model, step):\n    return 2.0\n"
            linecache.cache[filename] = (len(edited), None, edited.splitlines(True), filename)
            assert source_hash(fn) != key
            # a callable without any source text
            no_source = eval("lambda model, step: 0.0", {"__name__": "__main__"})  # noqa: S307
            with pytest.raises(ValueError, match="cannot find the source"):
                source_hash(no_source)
    finally:
        linecache.cache.pop(filename, None)


# The required check: in a copy of the project, a cached value is recomputed after an edit to
# a helper it imports, and a cached value that does not import the helper is read back.
DEPENDENT = """
from metrics.spectra import effective_rank
import torch

def metric(model, step):
    with open(COUNTS, "a") as handle:
        handle.write("dependent\\n")
    return effective_rank(torch.linalg.svdvals(model.weight.detach().double()) ** 2)

def method(problem):
    return metric(problem, 0)
"""

UNRELATED = """
def metric(model, step):
    with open(COUNTS, "a") as handle:
        handle.write("unrelated\\n")
    return float(model.weight.abs().sum())

def method(problem):
    return metric(problem, 0)
"""

SCRIPT = """
import dataclasses, json, sys
import pandas as pd
import torch
import testbeds
from leaderboard.api import Method
from testbeds.runs import Run
from testbeds.trajectory import map_checkpoints
import dependent, unrelated

assert testbeds.__file__.startswith(sys.argv[1]), testbeds.__file__

@dataclasses.dataclass(frozen=True)
class TinyConfig:
    width: int = 3

class TinyRun(Run):
    def model_at(self, step, device="cpu"):
        model = torch.nn.Linear(4, self.config.width)
        model.load_state_dict(self.checkpoints[step])
        return model.eval()

weights = {}
for step in (0, 5):
    torch.manual_seed(step)
    weights[step] = torch.nn.Linear(4, 3).state_dict()
run = TinyRun("tiny", TinyConfig(), 0, weights, pd.DataFrame({"step": [0, 5]}),
              meta={"cache_key": "tiny-run"})
out = {}
for module in (dependent, unrelated):
    name = module.__name__
    frame = map_checkpoints(run, module.metric, name=name, preset="tiny", progress=False)
    out[name] = frame["value"].tolist()
    out[name + "_method"] = Method(name, module.method, "test").code_hash()
print(json.dumps(out))
"""


def test_editing_a_helper_recomputes_what_depends_on_it_and_nothing_else(tmp_path):
    copy = tmp_path / "project"
    for package in ("testbeds", "metrics", "leaderboard"):
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__py*"))
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    counts = tmp_path / "counts.txt"
    for name, text in (("dependent", DEPENDENT), ("unrelated", UNRELATED)):
        (plugins / f"{name}.py").write_text(f"COUNTS = {str(counts)!r}\n{text}")
    (tmp_path / "script.py").write_text(SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(copy), str(plugins)]),
        "NTKBENCH_CACHE": str(tmp_path / "cache"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }

    def run() -> tuple[dict, list[str]]:
        done = subprocess.run(
            [sys.executable, str(tmp_path / "script.py"), str(copy)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1]), counts.read_text().split()

    first, calls = run()
    assert calls.count("dependent") == 2 and calls.count("unrelated") == 2  # two checkpoints
    again, calls = run()  # a second process reads both from the cache
    assert again == first and len(calls) == 4
    helper = copy / "metrics" / "spectra.py"
    helper.write_text(helper.read_text() + "\n# an edit to a helper\n")
    edited, calls = run()
    assert calls.count("dependent") == 4  # recomputed
    assert calls.count("unrelated") == 2  # read from the cache
    assert edited["dependent"] == first["dependent"]  # the edit changes no number
    assert edited["dependent_method"] != first["dependent_method"]
    assert edited["unrelated_method"] == first["unrelated_method"]


def test_leaderboard_key_covers_method_task_testbed_and_versions(monkeypatch):
    from leaderboard import runner
    from leaderboard.api import METHODS, TASKS, load_builtins

    load_builtins()
    task = TASKS["modadd_mlp.sum_family"]
    method = METHODS["entk_trace"]
    assert runner.testbed_code(task) == source_hash("testbeds.modadd")
    assert method.code_hash() == source_hash("leaderboard.methods")
    assert "leaderboard.methods" not in module_dependencies("leaderboard.tasks.modadd")
    key = runner.cache_key(method, task, 0)
    assert key == runner.cache_key(method, task, 0)
    assert key != runner.cache_key(method, task, 1)
    assert key != runner.cache_key(METHODS["random"], task, 0)
    assert key != runner.cache_key(method, TASKS["modadd_mlp.difference_family"], 0)
    monkeypatch.setattr(runner, "versions", lambda: {"torch": "0.0"})
    assert key != runner.cache_key(method, task, 0)
