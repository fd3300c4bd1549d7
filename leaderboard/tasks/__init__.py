"""Built-in scoring tasks, one module per testbed; importing this package registers them."""

from leaderboard.tasks import modadd, tms

__all__ = ["modadd", "tms"]
