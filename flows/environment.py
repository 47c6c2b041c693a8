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
    # MLflow prints "View run ... at" for every run that ends on a tracking server: the summary says where
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


VERBOSE_ENV = "VLMPIPE_VERBOSE"


def console_without_tracebacks() -> None:
    """Prefect's console handler prints a failed flow run's traceback once per nested flow; the CLI
    prints one line naming a log file instead. Prefect's engine lines (a flow run created, started,
    finished in a state) stay off the console too unless `--verbose` ($VLMPIPE_VERBOSE=1). Records that carry a traceback still reach Prefect's
    API (the UI shows them) and every other handler; the console shows them only with VLMPIPE_DEBUG=1.
    On a terminal, a stage's per-step lines give way to its progress bar (tasks/train/progress.py)
    on the console too. Call after Prefect is imported (it sets its handlers up on import)."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    from tasks.train.progress import STEP_LINE
    from tasks.train.progress import enabled as progress_bar_shown

    debug = bool(os.environ.get("VLMPIPE_DEBUG"))
    verbose = debug or bool(os.environ.get(VERBOSE_ENV))
    import prefect

    prefect_package = str(Path(prefect.__file__).parent)

    def no_traceback(record: logging.LogRecord) -> bool:
        return debug or (record.exc_info is None and not record.exc_text)

    def no_engine_chatter(record: logging.LogRecord) -> bool:
        # Prefect's own lines (flow run created, beginning, finished in state ..., temporary server)
        # come from Prefect's files; ours from our flows and tasks. Warnings and errors always show.
        if verbose or record.levelno >= logging.ERROR:
            return True
        if record.name.startswith("bitsandbytes"):  # optional CPU kernels it did not find
            return False
        return record.levelno >= logging.WARNING or not record.pathname.startswith(prefect_package)

    def no_step_line(record: logging.LogRecord) -> bool:
        return not STEP_LINE.match(str(record.getMessage()))

    if not verbose:  # MLflow's own info lines (system metrics monitor started, model version waits)
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", ()):
            if not isinstance(handler, PrefectConsoleHandler) or getattr(handler, "_vlmpipe_quiet", False):
                continue
            handler._vlmpipe_quiet = True  # type: ignore[attr-defined]
            handler.addFilter(no_traceback)
            handler.addFilter(no_engine_chatter)
            if progress_bar_shown(getattr(handler, "stream", None)):
                handler.addFilter(no_step_line)
