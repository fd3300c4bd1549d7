"""Run an untrusted method in its own process, so that nothing it does reaches the leaderboard.

:func:`run_isolated` starts a fresh interpreter (``spawn``), sends it the method and its own
copy of the problem (``cloudpickle``; a plug-in file's functions travel by value), and waits for
one output array. The parent never shares memory with the worker: in-place edits of the
problem, ``sys.exit``, ``os._exit``, a segfault, an exception swallowed in a loop or a long
native call cannot change another method's score or stop the leaderboard. At the hard time
budget the worker is killed. Every way of not returning an output becomes an
:class:`IsolatedFailure` with a one-line reason, which the runner records as ``failed``.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import sys
import time
from typing import Any

import cloudpickle
import numpy as np

PLUGIN_PREFIX = "ntkbench_plugin_"
STARTUP_SECONDS = 120.0  # a fresh interpreter imports torch and the project before the clock


def isolated(method: Any) -> bool:
    """Whether a registered method runs in its own process: every plug-in and entry-point
    method (``origin`` other than ``"builtin"``); built-in methods are trusted."""
    return method.origin != "builtin"


class IsolatedFailure(Exception):
    """An isolated method returned no output; the message is the one-line reason."""


def _worker(connection, payload: bytes) -> None:
    import torch

    torch.set_num_threads(1)
    try:
        fn, problem = cloudpickle.loads(payload)
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        connection.send(("error", f"could not load the method: {type(error).__name__}: {error}"))
        return
    connection.send(("ready", None))
    try:
        output = fn(problem)
        if isinstance(output, torch.Tensor):
            output = output.detach().cpu().numpy()
        connection.send(("ok", output))
    except SystemExit as error:
        connection.send(("error", f"the method called sys.exit({error.code!r})"))
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        connection.send(("exception", error))


def _by_value(fn: Any) -> None:
    """Pickle a plug-in file's module by value: the worker cannot import it by name
    (``leaderboard.api.load_plugin`` names them ``ntkbench_plugin_<hash>``)."""
    name = getattr(fn, "__module__", "") or ""
    if name.startswith(PLUGIN_PREFIX) and name in sys.modules:
        cloudpickle.register_pickle_by_value(sys.modules[name])


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the worker was killed by {name} before returning an output"
    return f"the worker exited with code {code} before returning an output"


def run_isolated(fn: Any, problem: Any, seconds: float | None) -> Any:
    """``fn(problem)`` in a fresh process with a hard budget of ``seconds`` (None: no limit).

    Returns the output (a numpy array when the method returned a tensor); raises
    :class:`IsolatedFailure` with a one-line reason otherwise, and re-raises an exception the
    method raised (so ``NotApplicable`` keeps its meaning) when it can be sent back.
    """
    _by_value(fn)
    payload = cloudpickle.dumps((fn, problem))
    context = mp.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    worker = context.Process(target=_worker, args=(send, payload), daemon=True)
    worker.start()
    send.close()
    try:
        if not receive.poll(STARTUP_SECONDS):
            raise IsolatedFailure(f"the worker did not start within {STARTUP_SECONDS:g} s")
        kind, value = _receive(receive, worker)
        if kind == "error":
            raise IsolatedFailure(value)
        clock = time.monotonic()
        if not receive.poll(seconds):
            raise IsolatedFailure(
                f"exceeded its hard time budget of {seconds:g} s (the worker was killed after "
                f"{time.monotonic() - clock:.1f} s)"
            )
        kind, value = _receive(receive, worker)
        if kind == "ok":
            return value if not isinstance(value, np.ndarray) else value.copy()
        if kind == "exception":
            raise value
        raise IsolatedFailure(value)
    finally:
        if worker.is_alive():
            worker.kill()
        worker.join(timeout=10)
        receive.close()


def _receive(receive, worker) -> tuple[str, Any]:
    try:
        return receive.recv()
    except (EOFError, OSError):
        worker.join(timeout=10)
        raise IsolatedFailure(_exit_reason(worker.exitcode)) from None
    except Exception as error:  # an exception object that cannot be rebuilt here
        raise IsolatedFailure(f"{type(error).__name__}: {error}") from None
