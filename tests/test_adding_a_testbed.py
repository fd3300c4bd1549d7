"""docs/adding-a-testbed.md runs as written: its package, found through an entry point, trains,
caches, resumes and is read through the contract like a built-in testbed."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import testbeds

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding-a-testbed.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def parity(tmp_path, monkeypatch):
    monkeypatch.setenv("NTKBENCH_CACHE", str(tmp_path / "cache"))
    package = tmp_path / "site" / "parity"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(blocks("python")[0])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry = re.search(r'^(\w+) = "([\w.]+:\w+)"$', blocks("toml")[0], flags=re.M)
    assert entry, "the page's entry-point line"

    class EntryPoint:
        name, value = entry.group(1), entry.group(2)

    monkeypatch.setattr(testbeds, "entry_points", lambda group: [EntryPoint()])
    yield package
    sys.modules.pop("parity", None)


def test_worked_example_runs_as_written(parity, capsys):
    namespace: dict = {}
    exec(compile(blocks("python")[1], str(DOC), "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    init, trained = map(float, re.findall(r"(\d\.\d{3})", out))
    assert trained > init  # training aligns the kernel with the labels
    from testbeds.__main__ import main

    assert main(["list"]) == 0
    assert "barak2022_n8_k2" in capsys.readouterr().out
    again = testbeds.get("parity").train("barak2022_n8_k2", seed=0)
    assert again.from_cache and again.meta["code_hash"] == namespace["run"].meta["code_hash"]


def test_editing_the_package_retrains(parity):
    bed = testbeds.get("parity")
    first = bed.train(bed.preset("barak2022_n8_k2", steps=20, checkpoints=(0, 20)), seed=0)
    with (parity / "__init__.py").open("a") as handle:
        handle.write("\n# an edit\n")
    again = bed.train(bed.preset("barak2022_n8_k2", steps=20, checkpoints=(0, 20)), seed=0)
    assert not again.from_cache and again.meta["code_hash"] != first.meta["code_hash"]
