"""How a claim job of ``ntkbench run`` hears from the pytest session it starts.

The job names a file in :data:`NOTES_ENV`; the session appends one line per event to it (a
check stored, replayed, skipped or crashed, a run trained inline), each beginning with
:data:`PREFIX`. A module of its own, importing nothing from the project: the claims' stored
checks are keyed by the code that stores them (``hypotheses/conftest.py`` and what it imports),
and this is all that code needs from the job graph.
"""

from __future__ import annotations

import os

PREFIX = "ntkbench-graph:"  # a claim job's notes: stored, skipped, crashed, trained
NOTES_ENV = "NTKBENCH_JOB_NOTES"  # the file a claim job's session writes its notes to


def note(kind: str, text: str) -> None:
    """Append ``kind: text`` to the job's notes file; nothing outside a claim job."""
    notes = os.environ.get(NOTES_ENV, "").strip()
    if notes:  # pytest captures stdout; the job reads this file
        with open(notes, "a", encoding="utf-8") as handle:
            handle.write(f"{PREFIX} {kind}: {text}\n")
