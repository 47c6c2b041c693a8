"""`python -m tasks.ingest SOURCE_SPEC OUTPUT_DIR`: one ingest without Prefect or MLflow."""

from __future__ import annotations

import argparse
import sys

from data_specs.loader import SpecError
from data_specs.sources import load_source_spec
from tasks.ingest.source import IngestError, ingest_source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.ingest", description=__doc__)
    parser.add_argument("spec")
    parser.add_argument("output")
    parser.add_argument("--progress-s", type=float, default=10.0, help="seconds between progress lines")
    args = parser.parse_args(argv)
    try:
        ingest_source(load_source_spec(args.spec), args.output, progress_s=args.progress_s)
    except (SpecError, IngestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, SpecError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
