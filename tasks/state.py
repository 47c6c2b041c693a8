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
