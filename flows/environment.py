"""Settings Prefect and MLflow read when they are imported: `configure_environment` sets them for a
state folder, so it runs before the first Prefect or MLflow import of a command.

Prefect runs on a local API that the command starts (flows/local_api.py, a SQLite file under
<home>/prefect) unless PREFECT_API_URL points at a server; MLflow on <home>/mlflow/mlflow.db unless MLFLOW_TRACKING_URI is set.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure_environment(home: Path) -> None:
    os.environ["VLMPIPE_HOME"] = str(home)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def console_without_tracebacks() -> None:
    """Prefect's console handler prints a failed flow run's traceback once per nested flow; the CLI
    prints one line naming a log file instead. Records that carry a traceback still reach Prefect's
    API (the UI shows them) and every other handler; the console shows them only with VLMPIPE_DEBUG=1.
    Call after Prefect is imported (it sets its handlers up on import)."""
    import logging

    if os.environ.get("VLMPIPE_DEBUG"):
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    def no_traceback(record: logging.LogRecord) -> bool:
        return record.exc_info is None and not record.exc_text

    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, PrefectConsoleHandler) and no_traceback not in handler.filters:
                handler.addFilter(no_traceback)
