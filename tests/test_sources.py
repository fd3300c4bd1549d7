"""Cache keys from source: the import closure of a module and the hash of its source."""

from __future__ import annotations

import functools
import os

import pytest

import testbeds.trajectory
from testbeds.sources import ROOT, module_dependencies, source_hash


def test_closure_of_a_known_module():
    deps = module_dependencies("testbeds.modadd.train")
    assert deps == tuple(sorted(deps))
    # itself, its packages' inits, what it imports (absolute and relative)
    assert {"testbeds", "testbeds.modadd", "testbeds.modadd.train", "testbeds.runs"} <= set(deps)
    assert "testbeds.modadd.models" in deps
    # nothing it does not import: other testbeds, metrics, claims, the leaderboard
    assert not any(
        d.startswith(("testbeds.tms", "testbeds.lm", "metrics", "hypotheses")) for d in deps
    )
    assert not any(d.startswith("leaderboard") for d in deps)


def test_closure_is_transitive_and_counts_submodule_imports():
    deps = set(module_dependencies("testbeds.trajectory"))
    assert {"testbeds.trajectory", "testbeds.runs", "testbeds"} <= deps
    claim = set(module_dependencies("hypotheses.trajectories"))
    assert {"metrics.entk", "metrics", "testbeds.trajectory", "hypotheses"} <= claim
    # `from testbeds import modadd` imports the package testbeds.modadd, and with it what its
    # __init__.py imports
    assert {"testbeds.modadd", "testbeds.modadd.train"} <= claim
    assert deps <= claim


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


def test_hash_of_a_callable_from_a_plugin_file(tmp_path):
    plugin = tmp_path / "my_metric.py"
    plugin.write_text("import metrics.spectra\n\ndef metric(model, step):\n    return 0.0\n")
    namespace: dict = {}
    code = compile(plugin.read_text(), str(plugin), "exec")
    exec(code, namespace)  # noqa: S102 - a function whose module is not importable
    fn = namespace["metric"]
    assert source_hash(fn) == source_hash(plugin)
    assert source_hash(fn) != source_hash("metrics.spectra")
