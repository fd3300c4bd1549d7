"""Results of claims and methods: records (the local source of truth) and their tables."""

from leaderboard.records import Record, append, claims_table, latest, read, records_path

__all__ = ["Record", "append", "read", "latest", "claims_table", "records_path"]
