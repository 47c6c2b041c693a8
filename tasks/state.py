"""The state folder: where everything a run writes lives, and the one place that decides it.

`--home DIR`, else `$VLMPIPE_HOME`, else `./.vlmpipe` of the working directory. Inside:
`data/<source>/` (ingested shards and manifests), `runs/<pipeline>/<run>/` (stages, checkpoints,
summaries), `mlflow/` (the SQLite store and its artifacts) and `prefect/` (Prefect's home).
"""

from __future__ import annotations

import os
from pathlib import Path


def vlmpipe_home(explicit: str | Path | None = None) -> Path:
    return Path(explicit or os.environ.get("VLMPIPE_HOME") or Path.cwd() / ".vlmpipe").resolve()


def source_dir(name: str, home: str | Path | None = None) -> Path:
    """Where source `name` is ingested: <home>/data/<name>."""
    return vlmpipe_home(home) / "data" / name


class RunError(RuntimeError):
    """A run folder that cannot be used as asked; `str()` is one line for the user."""


class RunFolder:
    """`<home>/runs/<pipeline>/<name>/`, owned by this process while `lock` is held: a second process
    (same state folder, same run) is refused with one line instead of writing over the first.

    The lock is an advisory flock on `.lock` in the folder, released by the kernel when the process
    ends, however it ends (a SIGKILL leaves no stale lock)."""

    def __init__(self, path: Path, name: str, handle) -> None:  # noqa: ANN001 (an open file)
        self.path, self.name, self._handle = path, name, handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _lock(path: Path, what: str):  # noqa: ANN202 (an open file)
    import fcntl

    handle = open(path / ".lock", "a+")  # noqa: SIM115 (held open for the run's life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise RunError(f"{path}: {what} is in use by {owner}; wait for it to end") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    handle.flush()
    return handle


def runs_of(home: str | Path | None, pipeline: str) -> list[str]:
    folder = vlmpipe_home(home) / "runs" / pipeline
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def claim_run(
    home: str | Path | None,
    pipeline: str,
    name: str | None,
    *,
    resume: bool = False,
    stamp: str | None = None,
) -> RunFolder:
    """A new run folder (`name`, or `<pipeline>-<stamp>` made unique with -2, -3, ... when two runs
    start in the same second), or with `resume` the existing run `name` ("last": the newest).
    A new run never reuses a folder; resuming never starts one."""
    import time

    base = vlmpipe_home(home) / "runs" / pipeline
    base.mkdir(parents=True, exist_ok=True)
    if resume:
        known = runs_of(home, pipeline)
        if name == "last":
            if not known:
                raise RunError(f"{base}: no run of {pipeline} to resume")
            name = max(known, key=lambda n: (base / n).stat().st_mtime)
        if name is None or name not in known:
            listed = ", ".join(known[-5:]) or "none"
            raise RunError(f"{base}: no run {name!r} to resume (runs there: {listed})")
        path = base / name
        return RunFolder(path, name, _lock(path, f"run {name}"))
    if name is not None:
        candidates = [name]
    else:
        first = f"{pipeline}-{stamp or time.strftime('%Y%m%d-%H%M%S')}"
        candidates = [first] + [f"{first}-{i}" for i in range(2, 100)]
    for candidate in candidates:
        path = base / candidate
        try:
            path.mkdir()  # atomic: of two runs started at once, one gets each name
        except FileExistsError:
            if name is not None:
                raise RunError(
                    f"{path}: run {name} exists; continue it with --resume {name}, or pick another --run-name"
                ) from None
            continue
        return RunFolder(path, candidate, _lock(path, f"run {candidate}"))
    raise RunError(f"{base}: 99 runs started in the same second; pass --run-name")


class _Held:
    def __init__(self, handle) -> None:  # noqa: ANN001 (an open file)
        self._handle = handle

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def hold_folder(path: str | Path, what: str) -> _Held:
    """Own `path` (created if missing) for a `with` block: a second process asking for it meanwhile
    gets RunError naming the owner. The same flock as a run folder's, on the folder's own `.lock`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return _Held(_lock(path, what))
