"""Shared set-up of the test suite.

``make test`` runs two pytest-xdist workers on a 2-core machine. Left alone, each worker's
torch and BLAS/LAPACK pools take every core, and the two workers' threads then contend: a
dense 841 × 841 ``eigh`` that takes 0.1 s on one thread can stall for seconds. Each worker
therefore gets its share of the cores, as in ``hypotheses/conftest.py``.
"""

from __future__ import annotations

import os

import pytest
import torch
from threadpoolctl import threadpool_limits


def pytest_configure(config):
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    threads = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)
    threadpool_limits(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch sees none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def results(tmp_path, monkeypatch):
    """Results in a temporary folder and W&B disabled (its files, if any, there too)."""
    monkeypatch.setenv("NTKBENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return tmp_path / "results"
