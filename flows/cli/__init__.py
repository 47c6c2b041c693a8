"""The `vlmpipe` command: validate and preview specs, ingest a source, run a pipeline, run the demo,
evaluate a checkpoint, ask a trained model (chat, generate) and export it.

One module per command group (`spec.py`, `ingest.py`, `run.py`), each adding its parser and
importing what its commands need only when they run, so `vlmpipe --help` and `vlmpipe spec
validate` load neither Prefect nor torch.

Exit status: 0 success, 2 usage or spec error (one line on stderr naming file and field),
1 a run that failed (one line naming <home>/logs/<file> with the traceback, which the Prefect and
MLflow records also keep; VLMPIPE_DEBUG=1 prints it).
"""

from __future__ import annotations

import argparse
import os
import sys

from flows.cli import ask, evaluate, ingest, run, servers, spec


def print_error(message: str) -> None:
    print(f"vlmpipe: error: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmpipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    spec.add_parsers(sub)
    run.add_parsers(sub)
    ingest.add_parsers(sub)
    servers.add_parsers(sub)
    evaluate.add_parsers(sub)
    ask.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if getattr(args, "environment", False):  # commands that may start Prefect, MLflow or the hub
        from flows.environment import configure_environment
        from tasks.state import vlmpipe_home

        configure_environment(vlmpipe_home(getattr(args, "home", None)))
    from data_specs.loader import SpecError
    from tasks import stopping
    from tasks.state import RunError

    stopping.install()  # SIGINT / SIGTERM: a training step ends, its state is saved, runs end KILLED
    try:
        return int(args.func(args) or 0)
    except (SpecError, RunError) as exc:
        print_error(str(exc))
        return 2
    except BaseException as exc:  # one line for people; the full record is in Prefect/MLflow
        signum = stopping.requested()
        if signum is not None or isinstance(exc, KeyboardInterrupt):
            # whatever broke while stopping (e.g. Prefect's server, hit by the terminal's Ctrl-C too)
            # is a consequence of the stop, not its cause
            code = 128 + (signum or 2)
            detail = str(exc) if isinstance(exc, stopping.Interrupted) else "interrupted"
            print_error(f"{detail}; continue with `vlmpipe run SPEC --resume RUN` (exit {code})")
            return code
        if isinstance(exc, SystemExit):
            raise
        if os.environ.get("VLMPIPE_DEBUG"):
            raise
        log = _write_traceback(args, exc)
        where = f" (traceback: {log})" if log else ""
        if isinstance(exc, OSError) and exc.filename:
            print_error(f"{exc.filename}: {exc.strerror or exc}{where}")
        else:
            print_error(f"{type(exc).__name__}: {' '.join(str(exc).split())}{where}")
        return 1


def _write_traceback(args: argparse.Namespace, exc: BaseException) -> str | None:
    """The full traceback of a failed command, in <home>/logs/ (the terminal gets one line)."""
    import time
    import traceback

    if not getattr(args, "environment", False):
        return None
    try:
        from tasks.state import vlmpipe_home

        folder = vlmpipe_home(getattr(args, "home", None)) / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.command}-{os.getpid()}.log"
        path.write_text("".join(traceback.format_exception(exc)))
        return str(path)
    except OSError:  # a full or read-only disk: the one line is all there is
        return None
