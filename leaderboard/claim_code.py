"""The code a claim's records depend on, for their ``code_hash``.

A claim module may reach a testbed through ``testbeds.get(name)``, which no import names, so
its import closure alone would miss a change to that testbed's code. The records of a claim,
its stored checks (:mod:`hypotheses.claim_cache`) and the check that the generated results
tables are current (``ntkbench report --check``) all hash the module together with every
registered testbed's package.
"""

from __future__ import annotations

from pathlib import Path

from testbeds.sources import source_hash


def testbed_packages() -> list[str]:
    """The package of every registered testbed (``testbeds.lm``, …)."""
    import testbeds

    return sorted({type(testbeds.get(n)).__module__.rsplit(".", 1)[0] for n in testbeds.names()})


def claim_source_hash(path: str | Path) -> str:
    """:func:`testbeds.sources.source_hash` of a claim module and every registered testbed's
    package (module docstring)."""
    return source_hash(Path(path), *testbed_packages())
