"""`vlmpipe servers up | down | status | env`: the services a team's pipeline runs against, on one
machine, on loopback ports:

- a Prefect server (API and UI) over `<home>/prefect` (SQLite);
- one Prefect process worker per work pool: `cpu`, and `gpu` with a concurrency limit (one stage at
  a time per GPU machine by default); the pools are created when missing;
- an MLflow tracking server over `<home>/mlflow/mlflow.db` (SQLite), artifacts under
  `<home>/mlflow/artifacts`, served through the tracking server.

Each runs in a session of its own (a terminal's Ctrl-C does not reach it), its output in
`<home>/servers/logs/<name>.log`, its PID and start time in `<home>/servers/servers.json`; `up` waits
until each answers, `down` stops each (a worker with SIGINT, which is what it honours; the servers
with SIGTERM; SIGKILL after a grace period) and checks that no process of its group is left.

The production shape (Postgres for both servers, object storage for artifacts, workers on other
machines) is `infra/compose.yaml`; its settings are documented there and in the README.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
POOLS = {"cpu": None, "gpu": 1}  # pool -> concurrency limit (None: unlimited)
STATE_FILE = "servers.json"


class ServersError(RuntimeError):
    """`str()` is one line for the user."""


def folder_of(home: Path) -> Path:
    return home / "servers"


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat): a PID reused by another
    process has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(entry: dict[str, Any]) -> bool:
    return _start_time(entry["pid"]) == entry.get("started")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 (loopback)
            return response.status == 200
    except OSError:
        return False


def read_state(home: Path) -> dict[str, Any]:
    try:
        return json.loads((folder_of(home) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(home: Path, state: dict[str, Any]) -> None:
    path = folder_of(home) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    import fcntl

    folder = folder_of(home)
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _spawn(name: str, argv: list[str], env: dict[str, str], home: Path) -> dict[str, Any]:
    log_path = folder_of(home) / "logs" / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(  # noqa: S603 (our own interpreter's scripts)
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session and process group: down stops the whole group
        )
    time.sleep(0.05)
    return {"pid": process.pid, "started": _start_time(process.pid), "log": str(log_path), "argv": argv}


def _wait(what: str, ready: Callable[[], bool], entry: dict[str, Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if not _alive(entry):
            raise ServersError(f"{what} exited at start-up; see {entry['log']}")
        if time.monotonic() > deadline:
            raise ServersError(f"{what} did not answer within {timeout_s:g} s; see {entry['log']}")
        time.sleep(0.5)


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "MLFLOW_TRACKING_"))}
    env.update(
        VLMPIPE_HOME=str(home),
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    env.pop("VLMPIPE_LOCAL_PREFECT_API", None)
    return env


def _worker_online(api_url: str, pool: str, name: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(  # noqa: S310 (loopback)
                urllib.request.Request(
                    f"{api_url}/work_pools/{pool}/workers/filter",
                    data=b"{}",
                    headers={"Content-Type": "application/json"},
                ),
                timeout=3,
            ) as response:
                workers = json.loads(response.read())
        except (OSError, ValueError):
            return False
        return any(w.get("name") == name and w.get("status") == "ONLINE" for w in workers)

    return check


def _ensure_pools(api_url: str, gpu_limit: int | None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        for pool, limit in POOLS.items():
            limit = gpu_limit if pool == "gpu" else limit
            try:
                existing = client.read_work_pool(pool)
            except ObjectNotFound:
                client.create_work_pool(
                    WorkPoolCreate(
                        name=pool,
                        type="process",
                        base_job_template=ProcessWorker.get_default_base_job_template(),
                        concurrency_limit=limit,
                        description=f"vlmpipe {pool} pool (process worker on this machine)",
                    )
                )
                continue
            if existing.concurrency_limit != limit:
                client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=limit))


def up(
    home: Path,
    *,
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    gpu_limit: int | None = 1,
    timeout_s: float = 180,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Start what is not running; returns the state (URLs, PIDs, logs)."""
    with _locked(home):
        state = read_state(home)
        running = [n for n, e in _entries(state) if _alive(e)]
        if running:
            if len(running) == len(list(_entries(state))) and status(home)["healthy"]:
                log(f"already up (state {folder_of(home) / STATE_FILE})")
                return state
            raise ServersError(
                f"{', '.join(running)} of a previous `servers up` still running on {home}: "
                "run `vlmpipe servers down` first"
            )
        ports = {}
        for what, port, flag in (
            ("Prefect", prefect_port, "--prefect-port"),
            ("MLflow", mlflow_port, "--mlflow-port"),
        ):
            if port == 0:
                port = _free_port()
            elif not _port_free(port):
                raise ServersError(f"port {port} for {what} is in use: pass {flag} PORT, or 0 for a free one")
            ports[what] = port
        env = _base_env(home)
        state = {"home": str(home), "root": str(ROOT), "workers": {}}

        prefect_url = f"http://127.0.0.1:{ports['Prefect']}"
        state["prefect"] = _spawn(
            "prefect-server",
            [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(ports["Prefect"])],
            # the UI's pages call the API at this address (Prefect's default is port 4200)
            {**env, "PREFECT_UI_API_URL": f"{prefect_url}/api", "PREFECT_UI_URL": prefect_url},
            home,
        ) | {"url": f"{prefect_url}/api", "ui": prefect_url}
        _write_state(home, state)  # written after each start: a killed `up` leaves what `down` needs

        (home / "mlflow" / "artifacts").mkdir(parents=True, exist_ok=True)
        mlflow_url = f"http://127.0.0.1:{ports['MLflow']}"
        state["mlflow"] = _spawn(
            "mlflow-server",
            [
                _bin("mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
                "--artifacts-destination",
                str(home / "mlflow" / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["MLflow"]),
                "--workers",
                "2",
            ],
            env,
            home,
        ) | {"url": mlflow_url}
        _write_state(home, state)

        _wait(
            "the Prefect server", lambda: _answers(f"{prefect_url}/api/health"), state["prefect"], timeout_s
        )
        log(f"Prefect server  {prefect_url}  (API {prefect_url}/api)")
        _ensure_pools(f"{prefect_url}/api", gpu_limit)
        worker_env = {
            **env,
            "PREFECT_API_URL": f"{prefect_url}/api",
            "PREFECT_UI_URL": prefect_url,
            "MLFLOW_TRACKING_URI": mlflow_url,
        }
        host = socket.gethostname()
        for pool in POOLS:
            name = f"{pool}-{host}"
            state["workers"][pool] = _spawn(
                f"worker-{pool}",
                [_bin("prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", name],
                worker_env,
                home,
            ) | {"name": name}
            _write_state(home, state)
        _wait("the MLflow server", lambda: _answers(f"{mlflow_url}/health"), state["mlflow"], timeout_s)
        log(f"MLflow server   {mlflow_url}  (store {home / 'mlflow' / 'mlflow.db'})")
        for pool, entry in state["workers"].items():
            _wait(
                f"the {pool} worker",
                _worker_online(f"{prefect_url}/api", pool, entry["name"]),
                entry,
                timeout_s,
            )
            log(f"worker          pool {pool}{' (concurrency 1)' if POOLS[pool] else ''}  pid {entry['pid']}")
        return state


def _entries(state: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    # workers first: they stop before the server they report to
    for pool, entry in (state.get("workers") or {}).items():
        yield f"worker-{pool}", entry
    for name in ("prefect", "mlflow"):
        if name in state:
            yield name, state[name]


def _stop(name: str, entry: dict[str, Any], grace_s: float) -> str:
    pgid = entry["pid"]  # the session leader: its PID is the group's id
    if not _group_alive(pgid):
        return "not running"
    first = signal.SIGINT if name.startswith("worker") else signal.SIGTERM
    for sig, wait_s in ((first, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while _group_alive(pgid) and time.monotonic() < deadline:
            _reap(entry["pid"])
            time.sleep(0.2)
        if not _group_alive(pgid):
            return "stopped" if sig == first else f"stopped with {signal.Signals(sig).name}"
    raise ServersError(f"{name} (process group {pgid}) did not stop, even with SIGKILL")


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # a child of this process (tests start and stop in one process)


def down(home: Path, *, grace_s: float = 30.0, log: Callable[[str], None] = print) -> None:
    with _locked(home):
        state = read_state(home)
        if not state:
            log(f"nothing to stop on {home}")
            return
        for name, entry in _entries(state):
            log(f"{name:<16}{_stop(name, entry, grace_s)}")
        (folder_of(home) / STATE_FILE).unlink(missing_ok=True)


def status(home: Path) -> dict[str, Any]:
    """Each service: running (its PID is the process started), answering, and its URL."""
    state = read_state(home)
    out: dict[str, Any] = {"home": str(home), "services": {}}
    for name, entry in _entries(state):
        alive = _alive(entry)
        if name == "prefect":
            ok = alive and _answers(f"{entry['url']}/health")
        elif name == "mlflow":
            ok = alive and _answers(f"{entry['url']}/health")
        else:
            pool = name.removeprefix("worker-")
            ok = (
                alive
                and "prefect" in state
                and _worker_online(state["prefect"]["url"], pool, entry["name"])()
            )
        out["services"][name] = {
            "pid": entry["pid"],
            "running": alive,
            "answering": ok,
            "url": entry.get("ui") or entry.get("url"),
            "log": entry["log"],
        }
    out["healthy"] = bool(out["services"]) and all(s["answering"] for s in out["services"].values())
    return out


def endpoints(home: Path) -> dict[str, str] | None:
    """The environment that points a command at these servers, when they are up and answering."""
    state = read_state(home)
    if not state or not status(home)["healthy"]:
        return None
    return {
        "PREFECT_API_URL": state["prefect"]["url"],
        "PREFECT_UI_URL": state["prefect"]["ui"],
        "MLFLOW_TRACKING_URI": state["mlflow"]["url"],
    }
