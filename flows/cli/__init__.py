"""The `vlmpipe` command: validate and preview specs, ingest a source, run a pipeline, run the demo.

One module per command group (`spec.py`, `ingest.py`, `run.py`), each adding its parser and
importing what its commands need only when they run, so `vlmpipe --help` and `vlmpipe spec
validate` load neither Prefect nor torch.

Exit status: 0 success, 2 usage or spec error (one line on stderr naming file and field),
1 a run that failed (its traceback is in the Prefect and MLflow records; VLMPIPE_DEBUG=1 prints it).
"""

from __future__ import annotations

import argparse
import os
import sys

from flows.cli import ingest, run, spec


def print_error(message: str) -> None:
    print(f"vlmpipe: error: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmpipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    spec.add_parsers(sub)
    run.add_parsers(sub)
    ingest.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if getattr(args, "environment", False):  # commands that may start Prefect, MLflow or the hub
        from flows.environment import configure_environment
        from tasks.state import vlmpipe_home

        configure_environment(vlmpipe_home(getattr(args, "home", None)))
    from data_specs.loader import SpecError

    try:
        return int(args.func(args) or 0)
    except SpecError as exc:
        print_error(str(exc))
        return 2
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130
    except Exception as exc:  # one line for people; the full record is in Prefect/MLflow
        if os.environ.get("VLMPIPE_DEBUG"):
            raise
        print_error(f"{type(exc).__name__}: {exc}")
        return 1
