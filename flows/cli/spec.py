"""`vlmpipe spec validate | schema | preview`: check spec files, write their JSON Schemas, and show
what a stage's mixture really gives before a GPU hour is spent."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flows.cli.common import DEMO_PIPELINE, PACKAGE_SPECS, add_home_option


def validate_one(file: str, check_files: bool = True) -> str:
    """One spec file fully checked (a pipeline with every file it names); returns the ok line.
    `check_files=False` skips the presence of data and weight files (a spec for another machine)."""
    from data_specs.loader import SpecError, parse_spec, read_yaml
    from data_specs.pipelines import PipelineSpec, detect_kind, load_pipeline, missing_data_files
    from data_specs.sources import SourceSpec, check_source_files
    from data_specs.stages import StageSpec, check_stage_files

    data = read_yaml(file)
    kind = detect_kind(data)
    detail = ""
    if kind == "pipeline":
        parse_spec(PipelineSpec, data, file)
        rp = load_pipeline(file, check_files=check_files)
        detail = f": {len(rp.sources)} source(s), {len(rp.stages)} stage(s)"
        if not check_files:
            missing = missing_data_files(rp)
            if missing:
                detail += f"; {len(missing)} data file(s) not on this machine, not checked:"
                detail += "".join(f"\n  missing  {line}" for line in missing)
    elif kind == "stage":
        stage = parse_spec(StageSpec, data, file)
        if check_files:
            check_stage_files(stage, file)
    else:
        source = parse_spec(SourceSpec, data, file)
        try:
            check_source_files(source, file)
        except SpecError as exc:  # fine for a spec kept for another machine; a pipeline refuses it
            detail = f"; note: {exc.message} on this machine"
    head, _, rest = detail.partition("\n")
    return f"ok  {file}  ({kind}{head})" + (f"\n{rest}" if rest else "")


def cmd_validate(args: argparse.Namespace) -> int:
    """Check every file given and report every bad one; exit 2 if any is bad."""
    from data_specs.loader import SpecError

    bad = 0
    for file in args.files:
        try:
            print(validate_one(file, check_files=not args.skip_files))
        except SpecError as exc:
            print(f"vlmpipe: error: {exc}", file=sys.stderr)
            bad += 1
    return 2 if bad else 0


def cmd_schema(args: argparse.Namespace) -> int:
    from data_specs.schema import write_schemas

    for path in write_schemas(Path(args.out)):
        print(path)
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from tasks.data.preview import format_preview, preview_ingested

    result: dict[str, Any] = preview_ingested(
        args.stage_spec,
        args.pipeline or DEMO_PIPELINE,
        home=args.home,
        samples=args.samples,
        show=args.show,
    )
    print(json.dumps(result, indent=2) if args.json else format_preview(result))
    return 0


def add_parsers(sub: Any) -> None:
    spec = sub.add_parser("spec", help="validate, preview and describe spec files")
    spec_sub = spec.add_subparsers(dest="spec_command", required=True, metavar="SUBCOMMAND")
    p = spec_sub.add_parser("validate", help="check spec files (pipeline, stage or source); exit 2 if bad")
    p.add_argument("files", nargs="+")
    p.add_argument(
        "--skip-files",
        action="store_true",
        help="check everything but the presence of data and weight files (a spec meant for another machine)",
    )
    p.set_defaults(func=cmd_validate)
    p = spec_sub.add_parser("schema", help="write JSON Schemas of the spec files (for editors)")
    p.add_argument("--out", default=str(PACKAGE_SPECS / "schema"))
    p.set_defaults(func=cmd_schema)
    p = spec_sub.add_parser("preview", help="realized mixture shares, packing efficiency, rendered samples")
    p.add_argument("stage_spec")
    p.add_argument("--pipeline", help="pipeline spec that ingests the stage's sources (default: the demo's)")
    p.add_argument("--samples", type=int, default=5000, help="samples to draw (default 5000)")
    p.add_argument("--show", type=int, default=3, help="rendered samples to print")
    p.add_argument("--json", action="store_true")
    add_home_option(p)
    p.set_defaults(func=cmd_preview, environment=True)
