"""``ntkbench report``: results tables generated from the records into README/docs copies.

A small synthetic records file (two claims from a temporary claim module, a diagnostic, a
superseded check, leaderboard scores) and temporary copies of a README and a docs page with
prose around generated blocks. Generating fills the blocks, keeps the prose, and is idempotent;
``--check`` passes on fresh output and fails, naming the file and the claims, once the claim
module (or a module it depends on) changes.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from leaderboard import cli, generate
from leaderboard.claim_code import claim_source_hash
from leaderboard.generate import SpecError, find_blocks
from leaderboard.records import Record, append, read

SHA = "0123456789abcdef0123456789abcdef01234567"

README = """# Project

Intro prose that stays.

<!-- ntkbench:begin claims-summary table=summary -->
| a hand-written table | to be replaced |
|---|---|
<!-- ntkbench:end claims-summary -->

Closing prose, also kept.
"""

PAGE = """# X1 and X2

Prose before.

<!-- ntkbench:begin x table=claims claims=X1,X2 -->
<!-- ntkbench:end x -->

Between the tables.

- a list item with a table inside it:

  <!-- ntkbench:begin x1-seeds table=seeds claim=X1 statistic=overlap rows=seed
    column=overlap=value "column=init=control_value|.2f" "column=r=extra.shape.r"
    "column=β 0.3=extra.beta_0.3" "column=control check=control_init_overlap:value"
    column=verdict=verdict -->
  <!-- ntkbench:end x1-seeds -->

Prose after.
"""

BOARD = """# Leaderboard

<!-- ntkbench:begin board table=leaderboard -->
<!-- ntkbench:end board -->
"""


def claim_module(tmp_path: Path, text: str = "first") -> Path:
    path = tmp_path / "hypotheses_copy" / "test_x_claims.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f'"""X claims ({text})."""\n\nimport metrics.spectra\n', encoding="utf-8")
    return path


def write_records(path: Path, module: Path) -> None:
    provenance = dict(
        git_sha=SHA, source=module.as_posix(), code_hash=claim_source_hash(module), config_hash="c"
    )
    common = dict(testbed="t", preset="p", started_at="2026-01-01T00:00:00", **provenance)
    for seed, value in ((0, 0.95), (1, 0.75)):
        append(
            Record(
                claim="X1",
                seed=seed,
                statistic="overlap",
                value=value,
                threshold=0.9,
                comparison=">=",
                passed=value >= 0.9,
                control_value=0.05 + seed / 100,
                chance=0.01,
                extra={"shape": {"r": 3 + seed}, "beta_0.3": 0.5},
                **common,
            ),
            path,
        )
        append(
            Record(
                claim="X1",
                seed=seed,
                statistic="control_init_overlap",
                value=0.05 + seed / 100,
                threshold=0.2,
                comparison="<=",
                passed=True,
                **common,
            ),
            path,
        )
        append(
            Record(
                claim="X1",
                seed=seed,
                statistic="test_accuracy",
                value=0.99,
                kind="diagnostic",
                role="diagnostic",
                note="robustness",
                **common,
            ),
            path,
        )
        append(
            Record(
                claim="X2",
                seed=seed,
                statistic="count_distance",
                value=float(seed),
                threshold=2.0,
                comparison="<=",
                passed=True,
                role="superseded",
                note="v1",
                **common,
            ),
            path,
        )
    for method, values in (("good", (0.9, 0.8)), ("random", (0.1, 0.1))):
        for seed, value in enumerate(values):
            append(
                Record(
                    claim="",
                    testbed="t",
                    preset="p",
                    seed=seed,
                    statistic="task_a",
                    value=value,
                    chance=0.1,
                    method=method,
                    task="task_a",
                    cache_key=f"{method}-{seed}",
                    git_sha=SHA,
                    started_at="2026-01-01T00:00:00",
                ),
                path,
            )


@pytest.fixture
def tree(tmp_path):
    """A repository copy: README.md, docs/claims/x.md, docs/leaderboard.md, records, module."""
    root = tmp_path / "repo"
    (root / "docs" / "claims").mkdir(parents=True)
    (root / "README.md").write_text(README, encoding="utf-8")
    (root / "docs" / "claims" / "x.md").write_text(PAGE, encoding="utf-8")
    (root / "docs" / "leaderboard.md").write_text(BOARD, encoding="utf-8")
    module = claim_module(tmp_path)
    records = tmp_path / "records.jsonl"
    write_records(records, module)
    return root, records, module


def fake_keys(method: str, task: str, seed: int) -> str:
    return f"{method}-{seed}"


def outside_blocks(text: str) -> str:
    return re.sub(r"<!-- ntkbench:begin .*?<!-- ntkbench:end \S+ -->", "", text, flags=re.S)


def run(argv, capsys) -> tuple[int, str]:
    status = cli.main(argv)
    return status, capsys.readouterr().out


def test_report_fills_the_blocks_keeps_the_prose_and_is_idempotent(tree, capsys):
    root, records, module = tree
    before = {p: p.read_text(encoding="utf-8") for p in root.rglob("*.md")}
    status, out = run(["report", "--root", str(root), "--records", str(records)], capsys)
    assert status == 0 and "README.md: regenerated claims-summary" in out
    after = {p: p.read_text(encoding="utf-8") for p in root.rglob("*.md")}
    for path, text in after.items():
        assert outside_blocks(text) == outside_blocks(before[path])  # prose untouched

    readme = after[root / "README.md"]
    assert "a hand-written table" not in readme
    summary = find_blocks(readme.splitlines())[0]
    rows = [line for line in summary.body if line.startswith("| [X")]
    # X1 links to its page; it fails on seed 1 (0.75 < 0.9); X2 is superseded and passes
    assert rows[0].startswith("| [X1](docs/claims/x.md) | gating | 0, 1 | `p` | overlap |")
    assert (
        "0.950, 0.750" in rows[0] and "0.050, 0.060" in rows[0] and "**FAIL (seed 1)**" in rows[0]
    )
    assert (
        rows[1].startswith("| [X2](docs/claims/x.md) | superseded |") and "| pass | v1 |" in rows[1]
    )
    assert "test_accuracy" not in readme  # diagnostics are on the claim's page, not the summary
    assert re.search(r"\*Generated by `ntkbench report` on \d{4}-\d\d-\d\d from 6 records", readme)
    assert "commit `0123456`" in readme
    provenance = summary.provenance
    assert provenance["commits"] == ["0123456"]
    assert {e["claim"]: e["code_hash"] for e in provenance["claims"]} == {
        "X1": [claim_source_hash(module)],
        "X2": [claim_source_hash(module)],
    }

    page = after[root / "docs" / "claims" / "x.md"]
    x, seeds = find_blocks(page.splitlines())
    table = "\n".join(x.body)
    assert "| X1 | `p` | diagnostic | test_accuracy | 0, 1 | 0.990, 0.990 |" in table
    assert "| – | – | robustness |" in table  # a diagnostic has no criterion or verdict
    assert "| X2 | `p` | superseded | count_distance | 0, 1 | 0, 1 |" in table  # counts
    assert (
        seeds.body[0]
        == "  | preset | seed | overlap | init | r | β 0.3 | control check | verdict |"
    )
    assert seeds.body[2] == "  | `p` | 0 | 0.950 | 0.05 | 3 | 0.500 | 0.050 | pass |"
    assert seeds.body[3] == "  | `p` | 1 | 0.750 | 0.06 | 4 | 0.500 | 0.060 | FAIL |"

    board = after[root / "docs" / "leaderboard.md"]
    assert "| good | 0.850 ± 0.050 |" in board and "| (chance) | 0.100 |" in board

    # a second run, even on another day, changes nothing
    out = generate.main(root, records, [], check_only=False, strict=False)
    assert out == 0
    assert {p: p.read_text(encoding="utf-8") for p in root.rglob("*.md")} == after
    outcomes = generate.generate(read(records), generate.target_files(root), today="2099-01-01")
    assert all(not o.changed for o in outcomes)
    assert {p: p.read_text(encoding="utf-8") for p in root.rglob("*.md")} == after


def test_check_passes_on_fresh_output_and_names_the_file_once_the_claim_code_changes(
    tree, capsys, monkeypatch, tmp_path
):
    root, records, module = tree
    monkeypatch.setattr(generate, "registry_keys", lambda: fake_keys)
    run(["report", "--root", str(root), "--records", str(records)], capsys)
    status, out = run(["report", "--check", "--root", str(root)], capsys)
    assert status == 0, out
    assert "no generated block is out of date" in out

    claim_module(tmp_path, "edited")  # the claim module changes after its records were made
    status, out = run(["report", "--check", "--root", str(root)], capsys)
    assert status == 1
    assert "README.md: block 'claims-summary': stale [X1, X2]" in out
    assert "docs/claims/x.md: block 'x': stale [X1, X2]" in out
    assert "docs/claims/x.md: block 'x1-seeds': stale [X1]" in out
    assert "test_x_claims.py or a module it imports changed" in out
    assert "docs/leaderboard.md" not in out  # the scores' code did not change
    assert "out of date: README.md, docs/claims/x.md" in out


def test_check_follows_what_the_claim_module_imports(tree, capsys):
    """A change in a dependency (a testbed, a metric, a helper) changes the module's source
    hash; simulated here by a hash function that sees a changed dependency."""
    root, records, module = tree
    generate.main(root, records, [], check_only=False, strict=False)
    files = generate.target_files(root)
    unchanged = generate.check(files, root, keys=fake_keys)
    assert not [f for f in unchanged if f.fails]

    def hash_after_a_metric_changed(path):
        return claim_source_hash(path) + "-metrics.spectra-edited"

    findings = generate.check(files, root, hasher=hash_after_a_metric_changed, keys=fake_keys)
    stale = {(f.path.name, f.block) for f in findings if f.problem == "stale"}
    assert stale == {("README.md", "claims-summary"), ("x.md", "x"), ("x.md", "x1-seeds")}


def test_check_fails_on_changed_scores_and_on_records_without_code_hashes(tree, tmp_path):
    root, records, module = tree
    generate.main(root, records, [], check_only=False, strict=False)
    files = generate.target_files(root)

    def keys_after_an_edit(method, task, seed):
        return f"{method}-{seed}" + ("-edited" if method == "good" else "")

    findings = generate.check(files, root, keys=keys_after_an_edit)
    stale = [f for f in findings if f.problem == "stale"]
    assert [(f.path.name, f.claims) for f in stale] == [("leaderboard.md", ["good/task_a"])]

    # older records carry no code hash: what was made from them cannot be verified
    frame = read(records)
    old = tmp_path / "old.jsonl"
    old.write_text(
        "\n".join(
            json.dumps({k: v for k, v in row.items() if k not in ("code_hash", "source")})
            for row in frame.astype(object).where(frame.notna(), None).to_dict("records")
        )
        + "\n",
        encoding="utf-8",
    )
    generate.generate(read(old), files)
    findings = generate.check(files, root, keys=fake_keys)
    assert {f.problem for f in findings if f.fails} == {"unverifiable"}
    assert all("no code hash" in f.detail for f in findings if f.fails)


def test_a_block_never_generated_fails_the_check_only_when_strict(tree, capsys):
    root, _, _ = tree
    status, out = run(["report", "--check", "--root", str(root)], capsys)
    assert status == 0
    assert "README.md: block 'claims-summary': not generated: no stamp yet" in out
    assert "(4 blocks not generated yet or unchecked)" in out
    status, out = run(["report", "--check", "--strict", "--root", str(root)], capsys)
    assert status == 1 and "out of date: README.md, docs/claims/x.md, docs/leaderboard.md" in out


def test_bad_markers_are_named(tmp_path):
    with pytest.raises(SpecError, match="table must be one of"):
        find_blocks(["<!-- ntkbench:begin x table=pie -->", "<!-- ntkbench:end x -->"])
    with pytest.raises(SpecError, match="never closed"):
        find_blocks(["<!-- ntkbench:begin x table=claims claims=X1 -->"])
    with pytest.raises(SpecError, match="unopened"):
        find_blocks(["<!-- ntkbench:begin x table=claims -->", "<!-- ntkbench:end y -->"])
    with pytest.raises(SpecError, match="key=value"):
        find_blocks(["<!-- ntkbench:begin x table=claims H1a -->", "<!-- ntkbench:end x -->"])
    page = tmp_path / "page.md"
    page.write_text("<!-- ntkbench:begin s table=seeds claim=X1 -->\n<!-- ntkbench:end s -->\n")
    row = dict(claim="X1", testbed="t", preset="p", seed=0, statistic="s", value=1.0)
    row |= dict(threshold=0.5, comparison=">=", passed=True, started_at="t", role="gating")
    with pytest.raises(SpecError, match="needs claim= and statistic="):
        generate.generate(pd.DataFrame([row]), [page])


def test_the_device_option_sets_the_environment_before_the_command(tree, capsys, monkeypatch):
    root, _, _ = tree
    # set through monkeypatch, so that the value the command sets is undone after the test
    monkeypatch.setenv("NTKBENCH_DEVICE", "cpu")
    seen = {}

    def report(args):
        import os

        seen["device"] = os.environ.get("NTKBENCH_DEVICE")
        return 0

    monkeypatch.setattr(cli, "cmd_report", report)
    assert cli.main(["--device", "cuda", "report", "--check", "--root", str(root)]) == 0
    assert seen["device"] == "cuda"
    with pytest.raises(SystemExit):
        cli.main(["--device", "tpu", "report"])


def test_a_summary_row_with_many_lines_points_to_its_page():
    from leaderboard.generate import SUMMARY_MAX_LINES, summary_table

    rows = []
    for preset in ("a", "b", "c"):
        for statistic in ("s1", "s2"):
            for seed in (3, 4, 5):
                rows.append(
                    dict(claim="X9", role="exploratory", preset=preset, statistic=statistic,
                         seed=seed, value=0.5, control_value=None, threshold=0.4,
                         comparison=">=", passed=True, note="", kind="claim")
                )  # fmt: skip
    rows.append(
        dict(claim="X9", role="exploratory", preset="a", statistic="decided", seed=-1, value=2,
             control_value=None, threshold=2, comparison=">=", passed=True, note="",
             kind="claim")
    )  # fmt: skip
    table = summary_table(pd.DataFrame(rows), {"X9": "docs/claims/x9.md"})
    row = next(line for line in table.splitlines() if line.startswith("| [X9]"))
    assert "<br>" not in row and 6 + 1 > SUMMARY_MAX_LINES
    assert "| 3–5 | `a`, `b`, `c` | 3 statistics × 3 presets |" in row
    assert "[per-claim page](docs/claims/x9.md)" in row and "| pass |" in row


def test_a_superseded_claim_shows_only_its_current_role():
    from leaderboard.generate import current

    old = dict(claim="X1", testbed="t", preset="p", statistic="s", seed=0, value=0.1,
               threshold=0.5, comparison=">=", passed=False, kind="claim", role="gating",
               note="", started_at="2026-01-01T00:00:00")  # fmt: skip
    new = {**old, "role": "superseded", "note": "v1", "started_at": "2026-02-01T00:00:00"}
    other = {**old, "seed": 3, "statistic": "s2", "role": "gating", "passed": True}
    frame = current(pd.DataFrame([old, new, other]))
    assert sorted(zip(frame["statistic"], frame["role"], strict=True)) == [
        ("s", "superseded"),
        ("s2", "gating"),
    ]


def test_a_plugins_scores_stay_out_of_the_leaderboard_block(tree, capsys):
    root, records, _ = tree
    append(
        Record(
            claim="", testbed="t", preset="p", seed=0, statistic="task_a", value=0.99,
            chance=0.1, method="my_plugin", task="task_a", cache_key="plugin-0", git_sha=SHA,
            started_at="2026-01-02T00:00:00",
            extra={"method_origin": "plugin:leaderboard/examples/my_method.py"},
        ),
        records,
    )  # fmt: skip
    status, _ = run(["report", "--root", str(root), "--records", str(records)], capsys)
    board = (root / "docs" / "leaderboard.md").read_text(encoding="utf-8")
    assert status == 0 and "| good |" in board and "my_plugin" not in board


def test_small_values_and_uncriterioned_counts_stay_readable():
    assert generate.fmt(2.32e-4) == "2.32e-04" and generate.fmt(-9.1e-11) == "-9.10e-11"
    assert generate.fmt(0.0) == "0.000" and generate.fmt(0.0005) == "0.001"
    diagnostic = pd.DataFrame({"threshold": [None, None]})
    assert generate.values_text([0.0, 3.0], diagnostic) == "0, 3"
    assert generate.values_text([0.5, 3.0], diagnostic) == "0.500, 3.000"
    judged = pd.DataFrame({"threshold": [0.5]})
    assert generate.values_text([1.0, 2.0], judged) == "1.000, 2.000"


def test_the_installed_commands_import_outside_the_checkout(tmp_path):
    """``ntkbench`` is installed without ``hypotheses`` (a folder of the checkout, not a
    package of the distribution): the leaderboard's modules must import from anywhere."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import leaderboard.cli, leaderboard.generate, leaderboard.graph, leaderboard.runner"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_failure_text_follows_the_tables_preset_order_not_the_records():
    """The README names failing presets in the table's order whatever order the records came
    in (a cold graph run appends them in the order its jobs finish)."""
    rows = [
        dict(claim="X", preset=preset, seed=seed, statistic=statistic, passed=False, kind="claim")
        for preset in ("b_preset", "a_preset")
        for seed in (0, 1)
        for statistic in ("s", "control_s")
    ]
    rows.append(
        dict(claim="X", preset="c_preset", seed=0, statistic="s", passed=True, kind="claim")
    )
    frame = pd.DataFrame(rows)
    texts = {
        generate.failures(frame.iloc[order], ["a_preset", "b_preset", "c_preset"])
        for order in (list(range(len(rows))), list(reversed(range(len(rows)))))
    }
    assert texts == {
        "FAIL (`a_preset` seeds 0, 1; `a_preset` control seeds 0, 1; "
        "`b_preset` seeds 0, 1; `b_preset` control seeds 0, 1)"
    }


def test_every_value_is_written_at_full_precision_so_git_diff_shows_what_moved(tree, capsys):
    root, records, _ = tree
    status, out = run(["report", "--root", str(root), "--records", str(records)], capsys)
    path = root / generate.VALUES_FILE
    assert status == 0 and "docs/values.csv: 12 values, 12 new or changed" in out
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(table.columns) == list(generate.VALUE_COLUMNS)
    assert len(table) == 12  # 4 statistics × 2 seeds of the claims, 2 methods × 2 seeds of scores
    assert sorted(table["kind"].unique()) == ["claim", "diagnostic", "score"]
    x1 = table[(table["claim"] == "X1") & (table["statistic"] == "control_init_overlap")]
    # exact text: 0.05 + 1/100 is not 0.06 in binary, and the file says so
    assert (
        list(x1["value"]) == [repr(0.05), repr(0.05 + 1 / 100)] == ["0.05", "0.060000000000000005"]
    )
    assert list(x1["passed"]) == ["True", "True"]
    assert (table.loc[table["kind"] == "diagnostic", "passed"] == "").all()
    good = table[table["method"] == "good"]
    assert list(good["value"]) == ["0.9", "0.8"] and list(good["seed"]) == ["0", "1"]
    assert "2026" not in path.read_text() and SHA not in path.read_text()  # no dates or commits
    first = path.read_text()

    status, out = run(["report", "--root", str(root), "--records", str(records)], capsys)
    assert "12 values, 0 new or changed" in out and path.read_text() == first
    # a newer record of one value, one ulp away: one row changes
    append(
        Record(
            claim="X2", testbed="t", preset="p", seed=1, statistic="count_distance",
            value=math.nextafter(1.0, 2.0), threshold=2.0, comparison="<=", passed=True,
            role="superseded", note="v1", started_at="2026-01-02T00:00:00",
        ),
        records,
    )  # fmt: skip
    status, out = run(["report", "--root", str(root), "--records", str(records)], capsys)
    assert "12 values, 1 new or changed" in out
    changed = set(path.read_text().splitlines()) - set(first.splitlines())
    assert changed == {"claim,X2,superseded,t,p,count_distance,,,1,1.0000000000000002,,True,ok"}
    path.unlink()  # regenerating chosen files leaves the values file alone
    run(["report", "--root", str(root), "--records", str(records), "README.md"], capsys)
    assert not path.exists()
