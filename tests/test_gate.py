"""The suite-wide gate (SCIENCE.md rules 6–8): every gating claim statistic in ``hypotheses/``
has a test that runs the claim's own statistic end to end, in its registered regime, on a
hand-built network that must pass (``@pytest.mark.gate(claim, "positive")``) and on a named
negative control that must fail (``@pytest.mark.gate(claim, "control")``).

Each claim module declares what it gates in ``GATING_CLAIMS``; a claim whose statistic no
hand-built network passes yet is declared in ``EXPLORATORY_CLAIMS`` and records with role
"exploratory" instead of gating; a replaced instrument is declared in ``SUPERSEDED_CLAIMS``.
This file checks those declarations against the gate tests, so a new gating claim without a
planted positive and a control turns ``make test`` red.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("positive", "control")

# Gating claims of the trajectory, fine-tuning and coalition programme whose instruments are being
# replaced by noise-floor-checked versions (claims v2, part 2); until then they gate without a
# hand-built network. Every entry must still be a declared gating claim.
AWAITING_GATE = {
    "H5": "no hand-built grokking trajectory yet",
    "H6": "no hand-built trajectory yet",
}


def claim_modules() -> dict[str, object]:
    return {
        path.stem: importlib.import_module(f"hypotheses.{path.stem}")
        for path in sorted((ROOT / "hypotheses").glob("test_*.py"))
    }


def declared(attribute: str) -> dict[str, str]:
    """claim → module stem for one declaration across every claim module."""
    out = {}
    for name, module in claim_modules().items():
        for claim in getattr(module, attribute, ()):
            out[claim] = name
    return out


def gate_markers() -> set[tuple[str, str]]:
    """(claim, kind) of every ``pytest.mark.gate(claim, kind)`` in tests/, read from source."""
    found = set()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "gate"
                and len(node.args) == 2
                and all(isinstance(a, ast.Constant) for a in node.args)
            ):
                found.add((node.args[0].value, node.args[1].value))
    return found


def test_every_claim_module_declares_what_it_gates():
    missing = [name for name, m in claim_modules().items() if not hasattr(m, "GATING_CLAIMS")]
    assert not missing, f"claim modules without GATING_CLAIMS: {missing}"
    roles = ("GATING_CLAIMS", "EXPLORATORY_CLAIMS", "SUPERSEDED_CLAIMS")
    seen: dict[str, str] = {}
    for attribute in roles:
        for claim in declared(attribute):
            assert claim not in seen, f"{claim} is declared in both {seen[claim]} and {attribute}"
            seen[claim] = attribute


def test_gate_markers_name_declared_claims_and_known_kinds():
    gating = declared("GATING_CLAIMS")
    for claim, kind in gate_markers():
        assert kind in KINDS, f"gate kind must be one of {KINDS}, got {kind!r} for {claim}"
        assert claim in gating, f"gate test for {claim!r}, which no claim module gates"


def test_every_gating_claim_has_a_planted_positive_and_a_control():
    markers = gate_markers()
    gating = declared("GATING_CLAIMS")
    missing = [
        f"{claim} ({module}): {kind}"
        for claim, module in sorted(gating.items())
        if claim not in AWAITING_GATE
        for kind in KINDS
        if (claim, kind) not in markers
    ]
    assert not missing, "gating claims without a gate test:\n" + "\n".join(missing)


def test_awaiting_list_holds_only_gating_claims_without_a_gate():
    gating, markers = declared("GATING_CLAIMS"), gate_markers()
    stale = [c for c in AWAITING_GATE if c not in gating or (c, "positive") in markers]
    assert not stale, f"AWAITING_GATE entries that are not gating or already gated: {stale}"


def test_the_gate_marker_is_registered(pytestconfig):
    assert any(line.startswith("gate(") for line in pytestconfig.getini("markers"))
