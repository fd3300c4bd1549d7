"""Built-in scoring tasks, one module per testbed; importing this package registers them."""

from leaderboard.tasks import lm, modadd, tms

__all__ = ["lm", "modadd", "tms"]
