"""Stop requests: SIGINT (Ctrl-C) and SIGTERM (a scheduler, `kill`) end a run cleanly.

`install()` (the command line does it) routes both signals here. Outside such a region they interrupt at
once, as KeyboardInterrupt does (`Interrupted`, with the signal's number). Inside `deferred()` (a
training loop, which checks `requested()` at the end of every step) the request waits for the step
in progress to end, so the stage saves a consistent resumable state first and then raises
`Interrupted`. A second signal while one waits interrupts at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, signum: int, message: str = ""):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")


_state = {"requested": None, "deferring": 0}


def requested() -> int | None:
    """The signal that asked for a stop, if one did."""
    return _state["requested"]


def _handle(signum: int, frame: object) -> None:
    first = _state["requested"] is None
    _state["requested"] = signum
    if _state["deferring"] and first:
        return  # the step in progress ends first; check() then stops
    raise Interrupted(signum)


def install() -> None:
    """Route SIGINT and SIGTERM here (main thread only; elsewhere signals cannot be caught)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handle)
        signal.signal(signal.SIGTERM, _handle)


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Our handlers for the duration (a training loop), whatever a library installed meanwhile:
    Prefect's flow engine replaces the SIGTERM handler with one that aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A region a stop request may not cut: the code inside checks `requested()` where it can stop
    cleanly (a training loop, after each optimizer step)."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
