"""The leaderboard: methods registry, scoring tasks, records, tables, report and W&B logging.

>>> from leaderboard import register_method, Problem
>>> @register_method("my_method", source="me 2026")
... def my_method(problem: Problem):
...     ...
"""

from leaderboard.api import (
    METHODS,
    TASKS,
    Method,
    NotApplicable,
    Problem,
    Task,
    load_builtins,
    load_entry_points,
    load_plugin,
    register_method,
    register_task,
)
from leaderboard.records import Record, append, claims_table, latest, read, records_path

__all__ = [
    # methods and tasks
    "register_method",
    "register_task",
    "Problem",
    "Method",
    "Task",
    "NotApplicable",
    "METHODS",
    "TASKS",
    "load_builtins",
    "load_plugin",
    "load_entry_points",
    # records
    "Record",
    "append",
    "read",
    "latest",
    "claims_table",
    "records_path",
]
