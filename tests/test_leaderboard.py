"""The leaderboard: registry and plug-ins, failure isolation, scores and chance levels, the
aggregation (mean, rank, Borda) on a hand-made table, xdist-safe records, caching, W&B."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.decomposition import PCA
from torch import nn

from leaderboard import api, cli
from leaderboard.api import METHODS, NotApplicable, Problem, register_method
from leaderboard.records import Record, append, read
from leaderboard.runner import OutputError, check_output, evaluate, fingerprint
from leaderboard.scoring import indicator_directions, partition_score, subspace_score
from leaderboard.table import aggregate, leaderboard_display, leaderboard_markdown
from leaderboard.wandb_log import log_run
from metrics.entk import entk
from metrics.spectra import eigh_sorted, orthonormal_basis, subspace_overlap
from tests.tiny import N, tiny_problem, tiny_task

ROOT = Path(__file__).resolve().parents[1]
api.load_builtins()


@pytest.fixture
def registry():
    """Restore the method registry after a test that registers methods."""
    saved = dict(METHODS)
    yield METHODS
    METHODS.clear()
    METHODS.update(saved)


pytestmark = pytest.mark.usefixtures("results")  # tests/conftest.py


# -- registry and plug-ins ---------------------------------------------------------------------
def test_builtin_methods_and_tasks_are_registered():
    assert set(METHODS) >= {
        "entk_trace",
        "entk_layerwise",
        "entk_laplacian",
        "qdg",
        "activation_pca",
        "random",
        "gauss_newton_top",
        "grad_cov_top",
        "whitened_entk",
    }
    assert all(m.source for m in METHODS.values())
    assert {t.testbed for t in api.TASKS.values()} == {"lm", "modadd", "tms"}


def test_register_rejects_duplicates_and_bad_names(registry):
    with pytest.raises(ValueError, match="already registered"):
        register_method("random", source="x")(lambda p: None)
    with pytest.raises(ValueError, match="identifier"):
        register_method("not a name", source="x")
    with pytest.raises(ValueError, match="timeout"):
        register_method("ok_name", source="x", timeout=0)


def test_resolve_names_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown methods \['nope'\]; valid methods: \["):
        api.resolve(["random", "nope"], METHODS, "methods")
    assert api.resolve(None, METHODS, "methods") == list(METHODS)


def test_plugin_file_registers_methods(registry, tmp_path):
    plugin = tmp_path / "plug.py"
    plugin.write_text(
        "from leaderboard import register_method\n"
        "@register_method('plugged', source='test')\n"
        "def plugged(problem):\n    return None\n"
    )
    assert api.load_plugin(plugin) == ["plugged"]
    assert METHODS["plugged"].origin == f"plugin:{plugin}"
    with pytest.raises(ValueError, match="existing .py file"):
        api.load_plugin(tmp_path / "missing.py")


def test_entry_point_group_is_loaded(registry, tmp_path, monkeypatch):
    (tmp_path / "ep_plugin.py").write_text(
        "import torch\n"
        "def directions(problem):\n"
        "    return torch.ones(problem.rows, problem.k, dtype=torch.float64)\n"
        "def broken(problem):\n    return None\n"
    )
    info = tmp_path / "ep_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[ntkbench.methods]\nep_ones = ep_plugin:directions\nep_missing = ep_plugin:nowhere\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    status = api.load_entry_points()
    assert status["ep_ones"] == ""
    assert "AttributeError" in status["ep_missing"]  # reported, not raised
    assert METHODS["ep_ones"].origin == "entry-point:ep_ones"


# -- outputs and failure isolation --------------------------------------------------------------
def test_check_output_shapes_and_conversions():
    problem = tiny_problem(0)
    assert check_output(np.zeros((N, 3)), problem).dtype == torch.float64
    with pytest.raises(OutputError, match=r"wrong shape \(24, 2\)"):
        check_output(torch.zeros(N, 2), problem)
    with pytest.raises(OutputError, match="NaN or Inf"):
        check_output(torch.full((N, 3), math.nan), problem)
    with pytest.raises(OutputError, match="exceed the budget"):
        check_output(torch.arange(N), problem)
    labels = torch.arange(N) % 2
    assert torch.equal(check_output(labels, problem), indicator_directions(labels))
    partition = tiny_problem(0, "partition")
    with pytest.raises(OutputError, match="scores a partition"):
        check_output(torch.zeros(N, 3), partition)
    with pytest.raises(OutputError, match="tensor or numpy"):
        check_output([1, 2], problem)


def test_failures_are_isolated_and_recorded(registry, results):
    @register_method("raises", source="test")
    def raises(problem):
        raise RuntimeError("boom")

    @register_method("sleeps", source="test", timeout=0.3)
    def sleeps(problem):
        time.sleep(5)

    @register_method("bad_shape", source="test")
    def bad_shape(problem):
        return torch.zeros(problem.rows + 1, problem.k)

    @register_method("nan", source="test")
    def nan(problem):
        return torch.full((problem.rows, problem.k), math.nan)

    @register_method("declines", source="test")
    def declines(problem):
        raise NotApplicable("not for this task")

    @register_method("mutates", source="test")
    def mutates(problem):
        with torch.no_grad():
            for p in problem.model.parameters():
                p.zero_()
        return torch.eye(problem.rows, problem.k, dtype=torch.float64)

    names = ["raises", "sleeps", "bad_shape", "nan", "declines", "mutates", "entk_trace", "random"]
    records = evaluate([tiny_task()], [METHODS[n] for n in names], [0], run_id="t", progress=False)
    by = {r.method: r for r in records}
    assert by["sleeps"].seconds < 4  # the 0.3 s budget cut the 5 s sleep
    assert by["raises"].status == "failed" and by["raises"].error == "RuntimeError: boom"
    assert by["sleeps"].status == "failed" and "time budget of 0.3 s" in by["sleeps"].error
    assert by["bad_shape"].status == "failed" and "wrong shape" in by["bad_shape"].error
    assert by["nan"].status == "failed" and "NaN" in by["nan"].error
    assert by["declines"].status == "n/a"
    assert by["mutates"].status == "ok" and by["mutates"].value == pytest.approx(1.0)
    # each method gets its own copy of the model: entk_trace after `mutates` sees the original
    assert by["entk_trace"].status == "ok" and by["entk_trace"].value > 0
    assert all(math.isnan(by[n].value) for n in ("raises", "sleeps", "bad_shape", "nan"))
    stored = read()
    assert len(stored) == len(names) and set(stored["status"]) == {"ok", "failed", "n/a"}


def test_task_setup_failure_fails_its_methods_only(results):
    def setup(seed):
        raise FileNotFoundError("no run")

    records = evaluate(
        [tiny_task(setup=setup), tiny_task()],
        [METHODS["random"]],
        [0],
        run_id="t",
        progress=False,
    )
    assert records[0].status == "failed" and "task setup failed" in records[0].error
    assert records[1].status == "ok"


def test_scores_are_cached_and_force_recomputes(results):
    task, methods = tiny_task(), [METHODS["random"], METHODS["entk_trace"]]
    first = evaluate([task], methods, [0, 1], run_id="a", progress=False)
    again = evaluate([task], methods, [0, 1], run_id="b", progress=False)
    assert [r.value for r in again] == [r.value for r in first]  # same config and seed
    assert len(read()) == 4  # reused, not appended again
    evaluate([task], methods, [0, 1], run_id="c", force=True, progress=False)
    assert len(read()) == 8
    board = aggregate(read())
    assert (board["seeds"] == 2).all().all()  # newest per (method, task, seed), no double count


def test_score_keys_do_not_depend_on_the_callers_thread_count(results):
    """A ground truth whose last bits follow the thread count (here: the count itself) gets
    the same cache key from a 1-thread graph worker and a 2-thread ``ntkbench leaderboard``."""
    from leaderboard.runner import cache_key, set_up

    seen = []

    def setup(seed):
        seen.append(torch.get_num_threads())
        return tiny_problem(seed, "directions", task="tiny_threads"), torch.tensor(
            [float(torch.get_num_threads())]
        )

    task, before = tiny_task(setup=setup, name="tiny_threads"), torch.get_num_threads()
    keys = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            problem, truth = set_up(task, 0)
            keys.append(cache_key(METHODS["random"], task, 0, fingerprint(problem, truth)))
            assert torch.get_num_threads() == threads  # the caller's count is restored
        finally:
            torch.set_num_threads(before)
    assert seen == [1, 1] and keys[0] == keys[1]


# -- scores, chance levels, methods against references --------------------------------------
def test_subspace_score_chance_matches_random_subspaces():
    n, k, m = 60, 6, 4
    basis = orthonormal_basis(torch.randn(n, m, dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    draws = [
        subspace_score(torch.randn(n, k, generator=generator, dtype=torch.float64), basis, k)[0]
        for _ in range(2000)
    ]
    chance = subspace_score(basis, basis, k)[1]
    assert chance == pytest.approx(k / n)
    # mean of 2000 draws of a [0, 1] score: standard error < 0.01
    assert np.mean(draws) == pytest.approx(chance, abs=0.01)
    # fewer directions than the budget are normalised by the budget
    assert subspace_score(basis[:, :1], basis, k)[0] == pytest.approx(1 / m)


def test_partition_score_perfect_and_chance():
    truth = torch.arange(90) % 3
    mask = torch.ones(90, dtype=bool)
    perfect, chance, raw = partition_score((truth + 1) % 3, truth, mask, 3)
    assert perfect == pytest.approx(1.0) and raw == pytest.approx(1.0)
    assert 0 <= chance < 0.05


def test_activation_pca_spans_sklearn_components():
    problem = tiny_problem(1)
    problem = dataclasses.replace(problem, activations=lambda m, x: torch.tanh(m[0](x)))
    directions = METHODS["activation_pca"].fn(problem)
    acts = torch.tanh(problem.model[0](problem.inputs)).detach().double().numpy()
    scores = torch.from_numpy(PCA(n_components=3).fit_transform(acts))
    U, V = orthonormal_basis(directions), orthonormal_basis(scores)
    assert subspace_overlap(U, V) == pytest.approx(3.0, abs=1e-8)


def test_entk_layerwise_returns_the_sharpest_layer():
    problem = tiny_problem(2)
    layers = entk(problem.model, problem.inputs, output="trace", by_layer=True)
    ratios, tops = {}, {}
    for name, K in layers.items():
        values, vectors = eigh_sorted(K)
        ratios[name] = values[2] / values[3]
        tops[name] = vectors[:, :3]
    best = max(ratios, key=ratios.get)
    directions = METHODS["entk_layerwise"].fn(problem)
    assert subspace_overlap(orthonormal_basis(directions), tops[best]) == pytest.approx(3.0)


def test_entk_laplacian_planted_positive_and_init_control():
    """On Gromov's hand-built solution the rotation isolates each family exactly; on the
    untrained network it stays below twice chance (measured 0.044–0.050, chance 0.067)."""
    from leaderboard.tasks.modadd import family_basis, torus_graphs
    from testbeds import modadd

    p, config = 29, modadd.preset("lin2025_mlp")
    untrained = config.build_model()
    untrained.reset_parameters(torch.Generator().manual_seed(0))
    for model, low, high in (
        (modadd.gromov_solution(p, 512), 0.99, 1.0),
        (untrained, 0, 2 * 56 / 29**2),
    ):
        for family in ("sum", "difference"):
            problem = Problem(
                model=model,
                inputs=modadd.probe_inputs(config),
                k=2 * (p - 1),
                kind="directions",
                over="inputs",
                rows=p * p,
                targets=modadd.labels(p),
                loss=modadd.per_example_loss(config),
                graphs=torus_graphs(p),
                target=family,
            )
            directions = METHODS["entk_laplacian"].fn(problem)
            score, _ = subspace_score(directions, family_basis(p, family), problem.k)
            assert low <= score <= high, (family, score)


def test_parameter_space_methods_match_dense_references():
    """gauss_newton_top, grad_cov_top and whitened_entk against float64 brute force: the full
    Jacobian from jacrev, per-example gradients from it, dense eigendecompositions; the data
    images J v span the same subspace (flattened rows) or their SVD does (rows = inputs)."""
    from torch.func import functional_call, jacrev

    base = tiny_problem(0)
    C = 3
    targets = torch.randint(0, C, (N,), generator=torch.Generator().manual_seed(1))
    net = base.model.double()
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    theta = torch.cat([p.detach().flatten() for p in net.parameters()])

    def outputs(flat):
        pieces = [
            t.reshape(s)
            for t, s in zip(flat.split([s.numel() for s in shapes]), shapes, strict=True)
        ]
        return functional_call(net, dict(zip(names, pieces, strict=True)), (base.inputs.double(),))

    J = jacrev(outputs)(theta)  # (N, C, P)
    z = outputs(theta).detach()
    prob = z.softmax(-1)
    residual = prob - nn.functional.one_hot(targets, C).double()
    G = torch.einsum("nc,ncp->np", residual, J)  # per-example CE gradients
    Hz = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]
    GN = torch.einsum("nap,nab,nbq->pq", J, Hz, J) / N
    Gc = G - G.mean(0)
    S = Gc.T / N**0.5
    J_flat = J.permute(1, 0, 2).reshape(C * N, -1)  # channel-major rows c·N + x
    A = J_flat @ S
    k = 3
    references = {
        "gauss_newton_top": J_flat @ eigh_sorted(GN)[1][:, :k],
        "grad_cov_top": J_flat @ eigh_sorted(S @ S.T)[1][:, :k],
        "whitened_entk": A @ eigh_sorted(A.T @ A)[1][:, :k],
    }
    for over in ("flattened", "inputs"):
        problem = dataclasses.replace(
            base,
            model=base.model.float(),
            targets=targets,
            k=k,
            over=over,
            rows=C * N if over == "flattened" else N,
        )
        for name, images in references.items():
            out = METHODS[name].fn(problem)
            assert out.shape == (problem.rows, k)
            if over == "flattened":
                expected = orthonormal_basis(images)
            else:
                blocks = images.reshape(C, N, k).permute(1, 2, 0).reshape(N, -1)
                expected = torch.linalg.svd(blocks, full_matrices=False)[0][:, :k]
            overlap = subspace_overlap(orthonormal_basis(out), expected)
            assert overlap == pytest.approx(k, abs=1e-6), (name, over, overlap)
    with pytest.raises(NotApplicable):
        METHODS["grad_cov_top"].fn(dataclasses.replace(base, kind="partition"))


def test_torus_graph_null_spaces_are_the_families():
    from leaderboard.tasks.modadd import torus_graphs
    from testbeds import modadd

    p = 7
    for name, L in torus_graphs(p).items():
        values, vectors = torch.linalg.eigh(L)
        null = vectors[:, values < 1e-9]
        family = orthonormal_basis(modadd.fourier_family(p, name), center=True)
        assert null.shape[1] == p  # the functions of the family's variable, constant included
        assert subspace_overlap(null, family) == pytest.approx(p - 1)


# -- aggregation on a hand-made table -----------------------------------------------------------
def make_record(method, task, seed, value, status="ok", started="2026-01-01T00:00:00"):
    return Record(
        claim="",
        testbed="modadd",
        preset="p",
        seed=seed,
        statistic=task,
        value=value,
        threshold=0.1,
        comparison=">=",
        passed=True,
        chance=0.1 if task == "t1" else 0.2,
        method=method,
        task=task,
        status=status,
        started_at=started,
    )


def test_mean_rank_and_borda_on_a_hand_made_table():
    nan = math.nan
    records = [
        # t1: A 0.9, B and C tie at 0.5, D failed
        *(make_record("A", "t1", s, v) for s, v in ((0, 0.8), (1, 1.0))),
        *(make_record("B", "t1", s, 0.5) for s in (0, 1)),
        *(make_record("C", "t1", s, v) for s, v in ((0, 0.4), (1, 0.6))),
        *(make_record("D", "t1", s, nan, "failed") for s in (0, 1)),
        # t2: A not applicable, B 0.8 (an older, cached score), C 0.2; an older duplicate of C
        # must be ignored
        *(make_record("A", "t2", s, nan, "n/a") for s in (0, 1)),
        *(make_record("B", "t2", s, 0.8, started="2025-06-01T00:00:00") for s in (0, 1)),
        make_record("C", "t2", 0, 0.9, started="2025-01-01T00:00:00"),
        *(make_record("C", "t2", s, 0.2) for s in (0, 1)),
    ]
    parts = aggregate(records)
    summary = parts["summary"]
    assert list(parts["mean"].columns) == ["t1", "t2"]  # given order, not record age
    assert parts["mean"].at["A", "t1"] == pytest.approx(0.9)
    assert parts["std"].at["A", "t1"] == pytest.approx(0.1)
    assert parts["mean"].at["C", "t2"] == pytest.approx(0.2)  # the newer records win
    assert math.isnan(parts["mean"].at["A", "t2"]) and math.isnan(parts["mean"].at["D", "t1"])
    assert summary.loc["A", "Borda"] == 2.0  # beats B and C on t1, nothing on t2
    assert summary.loc["B", "Borda"] == 1.5  # ties C on t1 (½), beats C on t2
    assert summary.loc["C", "Borda"] == 0.5
    assert summary.loc["D", "Borda"] == 0.0
    assert list(summary.index) == ["A", "B", "C", "D"]
    assert list(summary["Borda rank"]) == [1, 2, 3, 4]
    assert summary.loc["B", "mean rank"] == pytest.approx((2.5 + 1) / 2)
    assert summary.loc["A", "mean score"] == pytest.approx(0.9)
    assert summary.loc["B", "mean score"] == pytest.approx(0.65)
    assert summary.loc["A", "tasks"] == 1
    assert parts["chance"]["t1"] == pytest.approx(0.1)
    display = leaderboard_display(records).set_index("method")
    assert display.at["D", "t1"] == "failed"  # never zero
    assert display.at["A", "t2"] == "–"
    assert display.at["A", "t1"] == "0.900 ± 0.100"
    assert display.at["(chance)", "t2"] == "0.200"
    assert "| A | 0.900 ± 0.100 | – |" in leaderboard_markdown(records)


# -- records under concurrent writers -------------------------------------------------------------
def _append_many(path: str, worker: int, count: int) -> None:
    for i in range(count):
        append(make_record(f"m{worker}", "t", i, i / count), Path(path))


def test_concurrent_appends_keep_every_line(tmp_path):
    path = tmp_path / "records.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(path), w, 100)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    lines = path.read_text().splitlines()
    assert len(lines) == 400
    assert all(json.loads(line)["task"] == "t" for line in lines)
    assert (aggregate(read(path))["seeds"]["t"] == 100).all()


# -- W&B and the command line ---------------------------------------------------------------------
@pytest.fixture
def aggregator(monkeypatch):
    """Act as the aggregating process even when the test runs in an xdist worker."""
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)


def test_wandb_is_never_called_from_xdist_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    run_dir, error = log_run(
        mode="offline",
        version="test",
        config={},
        leaderboard=pd.DataFrame(),
        claims=pd.DataFrame(),
        summary={},
        images={},
        records=tmp_path / "none.jsonl",
        directory=tmp_path,
    )
    assert run_dir is None and "not from xdist workers" in error
    assert not (tmp_path / "wandb").exists()


def test_offline_wandb_run_writes_a_readable_table(tmp_path, monkeypatch, aggregator):
    monkeypatch.delenv("WANDB_MODE")
    table = pd.DataFrame({"method": ["a", "b"], "score": [0.5, 0.25]}).set_index("method")
    records = tmp_path / "records.jsonl"
    records.write_text("{}\n")
    run_dir, error = log_run(
        mode="offline",
        version="test",
        config={"seeds": [0]},
        leaderboard=table,
        claims=pd.DataFrame({"claim": ["H1a"], "verdict": ["pass"]}),
        summary={"t/a": 0.5},
        images={},
        records=records,
        directory=tmp_path,
    )
    assert error is None, error
    stored = list(Path(run_dir).glob("files/media/table/leaderboard_*.table.json"))
    assert len(stored) == 1
    content = json.loads(stored[0].read_text())
    assert content["columns"] == ["method", "score"]
    assert content["data"] == [["a", 0.5], ["b", 0.25]]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Adding a method", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_is_the_shipped_plugin():
    assert readme_example() == (ROOT / "leaderboard" / "examples" / "my_method.py").read_text()


def test_cli_runs_the_readme_plugin_and_survives_a_wandb_failure(
    registry, tmp_path, results, monkeypatch, capsys, aggregator
):
    plugin = tmp_path / "my_method.py"
    plugin.write_text(readme_example())
    import wandb

    def refuse(*args, **kwargs):
        raise RuntimeError("no disk")

    monkeypatch.setattr(wandb, "init", refuse)
    argv = ["leaderboard", "--plugin", str(plugin), "--methods", "input_gram"]
    argv += ["--tasks", "modadd_mlp.sum_family", "--seeds", "1", "--no-plots", "--quiet"]
    assert cli.main(argv + ["--wandb", "offline"]) == 0
    captured = capsys.readouterr()
    assert "W&B logging failed (RuntimeError: no disk)" in captured.err
    run = "leaderboard-input_gram-modadd_mlp.sum_family-1-seeds"  # a subset: its own files
    board = (results / f"{run}.md").read_text()
    assert "| input_gram |" in board and "| random |" in board and "| activation_pca |" in board
    assert (results / f"{run}.csv").exists()
    assert not (results / "leaderboard.md").exists() and not (results / "report.html").exists()
    html = (results / f"{run}.html").read_text()
    assert "data:image/png;base64," in html and "input_gram" in html


def test_cli_rejects_unknown_names(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["leaderboard", "--methods", "nope", "--wandb", "disabled"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown methods ['nope']" in err and "entk_trace" in err
    with pytest.raises(SystemExit):
        cli.main(["leaderboard", "--testbeds", "mnist"])
    assert "valid testbeds: ['lm', 'modadd', 'tms']" in capsys.readouterr().err


def test_cli_list_shows_everything(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "lin2025_mlp",
        "nanda2023_p29",
        "elhage2022",
        "lm_rl",
        "qdg",
        "tms_features.m40_s0.9",
    ):
        assert name in out
    assert "test_h1_fourier_circuits.py" in out


def test_lm_prompt_tasks_score_partitions_by_kmeans():
    from leaderboard.tasks import lm as lm_tasks
    from testbeds import lm

    api.load_builtins()
    task = api.TASKS["lm_prompts.topic"]
    assert (task.kind, task.over, task.testbed) == ("directions", "inputs", "lm")
    probe = lm.probe_prompts(lm.Language(), 9)
    # the prefix of the 9-token probe prompts is the 8-token probe set the claims use
    assert torch.equal(probe.tokens[:, :8], lm.probe_prompts(lm.Language()).tokens)
    model = lm.LastTokenLogProbs(lm.TinyLM(48, 24, 8, 2, 1, 8))
    problem = Problem(
        model,
        probe.tokens[:, :8],
        4,
        "directions",
        "inputs",
        256,
        probe.tokens[:, 8],
        lm_tasks.nll,
        seed=0,
        task=task.name,
    )
    exact = indicator_directions(probe.topic)
    score, chance, extra = task.score(exact, probe.topic, problem)
    assert score == 1.0 and abs(chance) < 0.02 and extra["raw_ari"] == 1.0
    noise = torch.randn(256, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert task.score(noise, probe.topic, problem)[0] < 0.05
    assert task.score(torch.zeros(256, 0, dtype=torch.float64), probe.topic, problem)[0] == 0.0
    style = api.TASKS["lm_prompts.style"]
    assert style.score(indicator_directions(probe.style), probe.style, problem)[0] == 1.0
    logp = model(probe.tokens[:, :8])
    assert torch.allclose(
        lm_tasks.nll(logp, probe.tokens[:, 8]), -logp[torch.arange(256), probe.tokens[:, 8]]
    )
    assert lm_tasks.BED.activations(model, probe.tokens[:, :8]).shape == (256, 8)


def test_gauss_newton_method_is_not_applicable_when_the_loss_is_linear_in_outputs():
    from leaderboard.tasks import lm as lm_tasks
    from testbeds import lm

    api.load_builtins()
    model = lm.LastTokenLogProbs(lm.TinyLM(10, 6, 8, 2, 1, 8))
    model.model.reset_parameters(torch.Generator().manual_seed(0))
    tokens = torch.randint(0, 10, (12, 5), generator=torch.Generator().manual_seed(0))
    problem = Problem(
        model,
        tokens[:, :4],
        2,
        "directions",
        "inputs",
        12,
        tokens[:, 4],
        lm_tasks.nll,
        seed=0,
        task="t",
    )
    with pytest.raises(NotApplicable, match="linear in the model's outputs"):
        METHODS["gauss_newton_top"].fn(problem)
