"""The package loads where the optional heavy dependencies are missing (a bare GPU machine has
no curvlinops or wandb): they are imported where they are used, never at module load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("curvlinops", "wandb", "backpack", "shapiq")

BLOCK_AND_IMPORT = f"""
import importlib.abc, sys

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {OPTIONAL!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)")
        return None

sys.meta_path.insert(0, Missing())
import metrics, testbeds, leaderboard
from testbeds import lm, modadd, tms
import hypotheses.test_h1_fourier_circuits, hypotheses.test_t1_tms_cliffs
print("loaded")
"""


def test_metrics_testbeds_and_leaderboard_load_without_optional_packages():
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_AND_IMPORT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-2000:]


def test_curvature_still_imports_curvlinops_when_used():
    from metrics.curvature import _linear_operators

    hessian_class, ggn_class = _linear_operators()
    assert hessian_class.__name__ == "HessianLinearOperator"
    assert ggn_class.__name__ == "GGNLinearOperator"
