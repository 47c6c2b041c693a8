"""`vlmpipe servers up | down | status | env`: a Prefect server, a process worker per work pool and an
MLflow tracking server on loopback, for one machine (flows/servers.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from flows.cli.common import add_home_option


def cmd_servers(args: argparse.Namespace) -> int:
    from flows import servers
    from tasks.state import vlmpipe_home

    home = vlmpipe_home(args.home)
    try:
        if args.action == "up":
            state = servers.up(
                home,
                prefect_port=args.prefect_port,
                mlflow_port=args.mlflow_port,
                gpu_limit=args.gpu_limit or None,
                timeout_s=args.timeout,
            )
            print(f"state and logs    {servers.folder_of(home)}")
            print('point a shell at them:  eval "$(vlmpipe servers env' + _home_flag(args) + ')"')
            print(f"Prefect UI        {state['prefect']['ui']}")
            print(f"MLflow UI         {state['mlflow']['url']}")
            return 0
        if args.action == "down":
            servers.down(home, grace_s=args.grace)
            return 0
        if args.action == "env":
            found = servers.endpoints(home)
            if found is None:
                print(f"vlmpipe: error: no servers answering on {home}; start them with `vlmpipe servers up`")
                return 1
            for key, value in found.items():
                print(f"export {key}={value}")
            return 0
        report = servers.status(home)
        if args.json:
            print(json.dumps(report, indent=2))
        elif not report["services"]:
            print(f"no servers started on {home}")
        else:
            for name, s in report["services"].items():
                state = "up" if s["answering"] else ("running, not answering" if s["running"] else "down")
                print(f"{name:<16}{state:<24}pid {s['pid']:<8}{s['url'] or ''}")
        return 0 if report["healthy"] else 1
    except servers.ServersError as exc:
        print(f"vlmpipe: error: {exc}")
        return 1


def _home_flag(args: argparse.Namespace) -> str:
    return f" --home {args.home}" if args.home else ""


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "servers",
        help="start, stop or check a Prefect server, its workers and an MLflow server on this machine",
    )
    p.add_argument("action", choices=["up", "down", "status", "env"])
    add_home_option(p)
    p.add_argument("--prefect-port", type=int, default=4200, help="up: Prefect's port (0: a free one)")
    p.add_argument("--mlflow-port", type=int, default=5000, help="up: MLflow's port (0: a free one)")
    p.add_argument(
        "--gpu-limit", type=int, default=1, help="up: flow runs at once on the gpu pool (0: no limit)"
    )
    p.add_argument("--timeout", type=float, default=180, help="up: seconds to wait for each to answer")
    p.add_argument("--grace", type=float, default=30, help="down: seconds before a worker is stopped harder")
    p.add_argument("--json", action="store_true", help="status: as JSON")
    p.set_defaults(func=cmd_servers, environment=True)
