"""Prefect's local API for one command, in a session of its own.

Prefect's own ephemeral server is a child in the caller's process group, so a terminal's Ctrl-C
killed it together with vlmpipe: the stop itself was clean, but Prefect's client then retried the
dead server for minutes and the flow runs ended as crashed. Here the same server (Prefect's app,
ephemeral mode: no UI, no background services) runs in a new session on a socket bound before it
starts (no port race), with the kernel's parent-death signal set, so that:
- Ctrl-C reaches vlmpipe alone; vlmpipe records the stop through a live API, then stops the server;
- a SIGKILL of vlmpipe still takes the server down (SIGTERM from the kernel), nothing is left over;
- two commands on one state folder start their servers one after the other (Prefect migrates its
  SQLite schema at start-up, which two servers at once would race on).
Nothing starts when PREFECT_API_URL already names a server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1


class LocalApiError(RuntimeError):
    """The local API did not come up; `str()` names the log that says why."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: a SIGKILLed vlmpipe may then leave the server behind
        pass


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # noqa: S310 (loopback)
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def local_prefect_api(home: Path, timeout_s: float | None = None) -> Iterator[str]:
    """Start Prefect's API on a loopback port for the `with` block and yield its URL (PREFECT_API_URL
    is set meanwhile); with PREFECT_API_URL already set, yield that and start nothing."""
    given = os.environ.get("PREFECT_API_URL")
    if given:
        yield given
        return
    import fcntl

    timeout_s = timeout_s or float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 180))
    prefect_home = Path(os.environ.get("PREFECT_HOME") or home / "prefect")
    prefect_home.mkdir(parents=True, exist_ok=True)
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"prefect-api-{os.getpid()}.log"
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",  # Prefect's own ephemeral mode: no services, no UI
        "PREFECT__SERVER_FINAL": "1",
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "prefect.server.api.server:create_app",
        "--fd",
        str(listener.fileno()),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]
    process = None
    with open(prefect_home / ".start.lock", "a") as start_lock, open(log_path, "ab") as log:
        fcntl.flock(start_lock, fcntl.LOCK_EX)  # held until this server answers: one migration at a time
        try:
            process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(listener.fileno(),),
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (setsid + prctl, no locks taken)
            )
            deadline = time.monotonic() + timeout_s
            while not _healthy(url):
                if process.poll() is not None:
                    raise LocalApiError(
                        f"Prefect's local API exited with status {process.returncode} at start-up; see {log_path}"
                    )
                if time.monotonic() > deadline:
                    raise LocalApiError(
                        f"Prefect's local API did not answer within {timeout_s:g} s; see {log_path}"
                    )
                time.sleep(0.2)
        except BaseException:
            _stop(process)
            listener.close()
            raise
        finally:
            fcntl.flock(start_lock, fcntl.LOCK_UN)
    listener.close()  # the server holds its own copy
    os.environ["PREFECT_API_URL"] = url
    os.environ["VLMPIPE_LOCAL_PREFECT_API"] = "1"  # flows/placement.py: not a server of the user's
    try:
        yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        os.environ.pop("VLMPIPE_LOCAL_PREFECT_API", None)
        _flush_prefect_clients()
        _stop(process)
        with contextlib.suppress(OSError):
            if log_path.stat().st_size == 0:
                log_path.unlink()


def _flush_prefect_clients() -> None:
    """Send the logs and events Prefect still queues while the API is there to take them (left
    to Prefect's exit hook, they would go to a server already stopped)."""
    if "prefect" not in sys.modules:
        return
    with contextlib.suppress(Exception):  # a record lost at exit must not fail a finished command
        from prefect.logging.handlers import APILogHandler

        APILogHandler.flush()
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10)


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
