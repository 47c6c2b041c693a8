"""Runs one img2dataset download in its own process: `python -m tasks.ingest.worker CONFIG.json`.
img2dataset's "spawn" workers re-import the caller's `__main__`; a process of our own makes that
safe wherever ingest is called from (pytest, Prefect, a notebook) and can be killed as one group.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path


def _exit_with_parent(poll_s: float = 0.5) -> None:
    """Exit when the parent process dies (this process is then re-parented).

    Runs at import, so img2dataset's spawned children (which import this module as `__mp_main__`)
    get it too: a killed ingest then leaves no orphan still writing into a shard that the next run
    redoes. Linux's PR_SET_PDEATHSIG would be simpler but fires when the parent *thread* ends, and
    multiprocessing.Pool starts replacement workers from a helper thread that ends in terminate():
    the signal then kills an idle worker holding the task queue's lock and terminate() deadlocks.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


_exit_with_parent()


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

    from tasks.ingest.checks import StrictResizer
    from tasks.ingest.fetch import FetchPolicy, PolicyDownloader

    # every URL of every download process goes through the source's fetch policy
    policy = FetchPolicy.from_config(config.get("fetch") or {})
    original_downloader = i2d.Downloader
    i2d.Downloader = lambda **kwargs: PolicyDownloader(original_downloader(**kwargs), policy)
    reject = bool(config.get("reject_truncated", True))
    original = i2d.Resizer
    # img2dataset builds its Resizer inside download(); wrap it there (a subclass would pull
    # img2dataset into every module that imports the checks)
    i2d.Resizer = lambda **kwargs: StrictResizer(
        original(**kwargs), reject_truncated=reject, max_image_area=kwargs.get("max_image_area")
    )
    if config["download"].get("distributor") == "pyspark":
        _spark_session(config.get("spark") or {})
    i2d.download(**config["download"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tasks.ingest.worker CONFIG.json", file=sys.stderr)
        return 2
    run(json.loads(Path(args[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
