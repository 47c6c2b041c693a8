"""What several command groups share: where the packaged specs are, and the `--home` option."""

from __future__ import annotations

import argparse
from pathlib import Path

PACKAGE_SPECS = Path(__file__).resolve().parents[2] / "data_specs"
DEMO_PIPELINE = PACKAGE_SPECS / "pipelines" / "shapes_demo.yaml"


def add_home_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", help="state folder (default ./.vlmpipe or $VLMPIPE_HOME)")
