"""Checks that the folders a command writes to can be written, before any work starts.

A results folder or run cache that cannot be written would otherwise fail only when the first
value is saved, after minutes of training or scoring. :func:`unwritable` creates the folder if
needed and writes (and removes) a probe file in it, so it tests what the command will do rather
than the permission bits (``os.access`` says yes to root for a read-only folder).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from leaderboard.records import RESULTS_ENV, results_dir
from testbeds.runs import CACHE_ENV, cache_dir


def unwritable(folder: Path, what: str) -> str | None:
    """None when ``folder`` exists or can be created and a file can be written in it; else a
    one-line message naming ``what`` and the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        return f"cannot write to the {what} {folder} ({reason})"
    return None


def check_folders(results: bool = True, cache: bool = True) -> str | None:
    """The first problem with the results folder (``$NTKBENCH_RESULTS``) or the run cache
    (``$NTKBENCH_CACHE``), as a one-line message naming the folder and the variable that
    moves it; None when both can be written."""
    folders = []
    if results:
        folders.append((results_dir(), "results folder", RESULTS_ENV))
    if cache:
        folders.append((cache_dir(), "cache folder", CACHE_ENV))
    for folder, what, env in folders:
        problem = unwritable(folder, what)
        if problem:
            return f"{problem}; set {env} to a writable folder"
    return None
