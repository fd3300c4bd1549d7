"""The leaderboard's files: ``leaderboard.csv``, ``leaderboard.md``, ``claims.md`` and a
self-contained ``report.html`` whose plots are embedded PNGs.

Plots:

* ``heatmap`` — method × task mean scores (missing cells grey), chance per task in the labels;
* ``spectrum`` — the trace-eNTK eigenspectrum of ``lin2025_mlp`` (seed 0, end of training)
  with its largest cliffs marked and the cliff boundaries of claim H1 (1, 1 + F, 1 + 2F);
* ``overlap_vs_epoch`` — the normalised overlap of that kernel's second cliff with the sum and
  difference families at every checkpoint, with test accuracy on a second axis;
* every PNG the claims wrote to ``results/plots/``.
"""

from __future__ import annotations

import base64
import functools
import html
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from metrics.entk import entk  # noqa: E402
from metrics.spectra import (  # noqa: E402
    eigh_sorted,
    normalized_overlap,
    orthonormal_basis,
    spectral_cliffs,
)
from testbeds import modadd  # noqa: E402
from testbeds.runs import Run  # noqa: E402
from testbeds.trajectory import map_checkpoints  # noqa: E402

SPECTRUM_PRESET = "lin2025_mlp"
SPECTRUM_SEED = 0
SPECTRUM_TOP = 200  # eigenvalues shown


def heatmap_figure(parts: dict[str, pd.DataFrame]):
    """The method × task heatmap of mean scores as a matplotlib figure (constrained layout:
    tick labels, title and the colour bar's label fit inside it whatever the table's size)."""
    mean = parts["mean"]
    width = max(5.0, 2.8 + 1.3 * mean.shape[1])
    height = max(3.2, 1.6 + 0.45 * mean.shape[0])
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    masked = np.ma.masked_invalid(mean.to_numpy(dtype=float))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    image = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            value = mean.iat[i, j]
            label = "–" if np.isnan(value) else f"{value:.2f}"
            color = "black" if np.isnan(value) or value > 0.6 else "white"
            ax.text(j, i, label, ha="center", va="center", fontsize=8, color=color)
    ax.set_yticks(range(mean.shape[0]), mean.index)
    labels = [f"{t}\n(chance {parts['chance'][t]:.3f})" for t in mean.columns]
    ax.set_xticks(range(mean.shape[1]), labels, rotation=30, ha="right", fontsize=7)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("score (mean over seeds)", fontsize=8)
    ax.set_title("leaderboard: method × task")
    return fig


def heatmap(parts: dict[str, pd.DataFrame], path: Path) -> Path:
    """Method × task heatmap of mean scores (:func:`heatmap_figure`), saved with a tight
    bounding box so no label is cut off."""
    fig = heatmap_figure(parts)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)
    return Path(path)


def _mlp_kernel(model, config: modadd.Config | None = None) -> np.ndarray:
    inputs = modadd.probe_inputs(config or modadd.preset(SPECTRUM_PRESET))
    return entk(model, inputs, output="trace")


def top_eigenvalues(model, step: int, *, config: modadd.Config) -> dict[str, float]:
    """The leading ``SPECTRUM_TOP`` eigenvalues of the trace eNTK (over ``config``'s probe
    inputs) of one checkpoint, named ``eigenvalue_0000`` …"""
    values, _ = eigh_sorted(_mlp_kernel(model, config))
    return {f"eigenvalue_{i:04d}": float(v) for i, v in enumerate(values[:SPECTRUM_TOP])}


def spectrum_values(run: Run | None = None, progress: bool = True) -> torch.Tensor:
    """:func:`top_eigenvalues` at the end of ``run`` (default ``lin2025_mlp`` seed 0),
    decreasing, float64; cached per checkpoint like :func:`overlap_values`."""
    run = run or modadd.train(modadd.preset(SPECTRUM_PRESET), SPECTRUM_SEED)
    frame = map_checkpoints(
        run,
        functools.partial(top_eigenvalues, config=run.config),
        name="report_top_eigenvalues",
        steps=[run.steps[-1]],
        progress=progress,
    )
    return torch.tensor(frame.sort_values("metric")["value"].to_numpy(), dtype=torch.float64)


def spectrum_plot(path: Path) -> Path:
    """Trace-eNTK spectrum of the trained ``lin2025_mlp`` (seed 0) with its cliffs."""
    config = modadd.preset(SPECTRUM_PRESET)
    values = spectrum_values(progress=False)
    top = values.clamp_min(1e-30).numpy()
    ratios = spectral_cliffs(values).numpy()
    largest = np.argsort(ratios)[::-1][:3] + 1  # cliff after eigenvalue index i → position i+1
    F = 2 * (config.p - 1)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.semilogy(np.arange(len(top)), top, ".", ms=3, color="C0")
    for n, boundary in enumerate((1, 1 + F, 1 + 2 * F)):
        ax.axvline(
            boundary - 0.5, color="C3", ls="--", lw=0.8, label="H1 cliffs" if n == 0 else None
        )
    for n, pos in enumerate(largest):
        ax.axvline(
            pos - 0.5, color="C2", lw=0.8, alpha=0.7, label="3 largest ratios" if n == 0 else None
        )
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"trace eNTK spectrum, {SPECTRUM_PRESET} seed {SPECTRUM_SEED} (F = {F})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def second_cliff_overlaps(model, step: int, *, config: modadd.Config) -> dict[str, float]:
    """Normalised overlap of the trace eNTK's second cliff (eigenvectors 1 + F … 2F, F = 2(p − 1))
    with the sum and difference Fourier families, for one checkpoint of a ``config`` run."""
    F = 2 * (config.p - 1)
    _, vectors = eigh_sorted(_mlp_kernel(model, config))
    second = vectors[:, 1 + F : 1 + 2 * F]
    return {
        family: float(
            normalized_overlap(
                second, orthonormal_basis(modadd.fourier_family(config.p, family), center=True)
            )
        )
        for family in ("sum", "difference")
    }


def overlap_values(run: Run | None = None, progress: bool = True) -> pd.DataFrame:
    """:func:`second_cliff_overlaps` at every checkpoint of ``run`` (default ``lin2025_mlp``
    seed 0), one row per epoch (columns ``epoch``, ``sum``, ``difference``). Each checkpoint's
    values are cached (:func:`testbeds.trajectory.map_checkpoints`, keyed by this module's
    source and the run), so a second report computes nothing."""
    run = run or modadd.train(modadd.preset(SPECTRUM_PRESET), SPECTRUM_SEED)
    frame = map_checkpoints(
        run,
        functools.partial(second_cliff_overlaps, config=run.config),
        name="report_second_cliff_overlap",
        progress=progress,
    )
    wide = frame.pivot(index="step", columns="metric", values="value").reset_index()
    return wide.rename(columns={"step": "epoch"})[["epoch", "sum", "difference"]]


def overlap_curve(path: Path, progress: bool = True) -> Path:
    """Second-cliff overlap with the sum / difference families at every checkpoint of
    ``lin2025_mlp`` seed 0 (:func:`overlap_values`, cached), with the test accuracy."""
    run = modadd.train(modadd.preset(SPECTRUM_PRESET), SPECTRUM_SEED)
    curve = overlap_values(run, progress=progress)
    bases = ("sum", "difference")
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for family in bases:
        ax.plot(curve["epoch"], curve[family], "o-", ms=3, label=f"2nd cliff ∩ {family}")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("normalised overlap")
    twin = ax.twinx()
    log = run.log
    twin.plot(log["epoch"], log["test_acc"], color="0.4", lw=1, label="test accuracy")
    twin.set_ylabel("test accuracy")
    twin.set_ylim(0, 1.02)
    lines = ax.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    ax.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=8, loc="center right")
    ax.set_title(f"{SPECTRUM_PRESET} seed {SPECTRUM_SEED}: Fourier families in the 2nd cliff")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _embed(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    name = html.escape(Path(path).stem)
    image = f'<img alt="{name}" src="data:image/png;base64,{data}">'
    return f"<figure>{image}<figcaption>{name}</figcaption></figure>"


def write_html(
    path: Path,
    *,
    leaderboard: pd.DataFrame,
    claims: pd.DataFrame,
    images: dict[str, Path],
    notes: list[str],
) -> Path:
    """A single HTML file: the leaderboard, the claims, every image inlined as base64 PNG."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        "<h1>ntkbench report</h1>",
        f"<p>{html.escape(when)}</p>",
        *(f"<p>{html.escape(n)}</p>" for n in notes),
        "<h2>Leaderboard</h2>",
        leaderboard.to_html(index=False, na_rep="–", escape=True),
        "<h2>Claims</h2>",
        claims.to_html(index=False, na_rep="–", escape=True) if len(claims) else "<p>(none)</p>",
        "<h2>Plots</h2>",
        *(_embed(p) for p in images.values()),
    ]
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
        "img{max-width:100%}figure{margin:1em 0}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>ntkbench report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)
