"""Runs one img2dataset download in its own process: `python -m tasks.ingest_worker CONFIG.json`.

img2dataset starts its workers with multiprocessing "spawn", which re-imports the caller's
`__main__`; a process of our own makes that safe wherever ingest is called from (pytest, Prefect,
a notebook), and lets the caller stop the whole download by killing one process group.
"""

from __future__ import annotations

import ctypes
import json
import signal
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies.

    Runs at import, so img2dataset's spawned children (which import this module as `__mp_main__`)
    get it too: a killed ingest then leaves no orphan still writing into a shard that the next run
    redoes. Elsewhere than Linux it is a no-op and the caller's process-group kill does the job.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass


_die_with_parent()


def _spark_session(spark: dict) -> object:
    """Create the session before img2dataset looks for one (it would make a local one itself)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(spark.get("master", "local[*]")).appName("vlmpipe-ingest")
    for key, value in (spark.get("config") or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def run(config: dict) -> None:
    import importlib

    # `import img2dataset.main` would give the package's `main` function, not the module
    i2d = importlib.import_module("img2dataset.main")

    reject = bool(config.get("reject_truncated", True))
    original = i2d.Resizer
    if reject:
        from tasks.ingest_checks import StrictResizer

        # img2dataset builds its Resizer inside download(); wrap it there (a subclass would pull
        # img2dataset into every module that imports the check)
        i2d.Resizer = lambda **kwargs: StrictResizer(original(**kwargs), reject_truncated=True)
    if config["download"].get("distributor") == "pyspark":
        _spark_session(config.get("spark") or {})
    i2d.download(**config["download"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tasks.ingest_worker CONFIG.json", file=sys.stderr)
        return 2
    run(json.loads(Path(args[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
