"""Settings Prefect and MLflow read when they are imported: `configure_environment` sets them for a
state folder, so it runs before the first Prefect or MLflow import of a command.

Prefect runs on its local API (an ephemeral server on a SQLite file under <home>/prefect) unless
PREFECT_API_URL points at a server; MLflow on <home>/mlflow/mlflow.db unless MLFLOW_TRACKING_URI is set.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure_environment(home: Path) -> None:
    os.environ["VLMPIPE_HOME"] = str(home)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    # the ephemeral server needs 15-30 s to start on 2 cores; Prefect's default gives up at 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
