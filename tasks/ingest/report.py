"""What an ingest tells the outside: a small JSON summary (`vlmpipe ingest --json`), MLflow metrics
and dataset input, and the rows of a Prefect table artifact, all read off the manifest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

STATUSES = ("success", "failed_to_download", "failed_to_resize")


# (pattern in img2dataset's error message, reason); first match wins
_REASONS = (
    (re.compile(r"^blocked: scheme"), "blocked_scheme"),
    (re.compile(r"^blocked: .*(host|address)"), "blocked_host"),
    (re.compile(r"max_download_bytes"), "too_many_bytes"),
    (re.compile(r"HTTP Error (\d{3})"), "http_{0}"),
    (re.compile(r"timed out|timeout", re.I), "timeout"),
    (re.compile(r"X-Robots-Tag"), "disallowed_by_robots"),
    (re.compile(r"truncated image"), "truncated"),
    (re.compile(r"Image decoding error|cannot identify image", re.I), "not_an_image"),
    (re.compile(r"image area too large"), "too_large"),
    (re.compile(r"image too small"), "too_small"),
    (re.compile(r"aspect ratio too large"), "bad_aspect_ratio"),
    (re.compile(r"hash mismatch"), "hash_mismatch"),
    (re.compile(r"redirect", re.I), "redirect_error"),
    (re.compile(r"urlopen error|Connection|Remote end closed|SSL", re.I), "connection_error"),
)


def reason_of(message: str) -> str:
    """img2dataset's error message -> a stable reason name ('HTTP Error 404: Not Found' -> 'http_404';
    a read timeout and a connect timeout -> 'timeout')."""
    for pattern, name in _REASONS:
        m = pattern.search(message)
        if m:
            return name.format(*m.groups())
    return "other"


def summary(manifest: dict, output_dir: str | Path) -> dict[str, Any]:
    """Small JSON: shards, samples and counts per outcome (img2dataset's status names) and per error."""
    totals = manifest["totals"]
    return {
        "source": manifest["source"],
        "output_dir": str(output_dir),
        "manifest": str(Path(output_dir) / "manifest.json"),
        "shards": len(manifest["shards"]),
        "samples": totals["success"],
        "urls": totals["urls"],
        "status": {s: totals[s] for s in STATUSES},
        "errors": manifest["errors"],
        "reasons": manifest["reasons"],
        "errors_by_status": manifest["errors_by_status"],
        "success_rate": totals["success_rate"],
        "splits": manifest["splits"],
        "bytes": totals["bytes"],
        "images_per_s": manifest["throughput"].get("images_per_s"),
    }


def metrics(manifest: dict) -> dict[str, float]:
    """Counts per outcome and per error reason, failure rates by reason, images/s, bytes."""
    totals = manifest["totals"]
    urls = max(totals["urls"], 1)
    out: dict[str, float] = {s: totals[s] for s in STATUSES}
    out.update(
        urls=totals["urls"],
        success_rate=totals["success_rate"],
        bytes=totals["bytes"],
        shards=len(manifest["shards"]),
        skipped_rows=totals["skipped_rows"],
    )
    for key in ("images_per_s", "urls_per_s", "download_s", "wall_s"):
        if manifest["throughput"].get(key) is not None:
            out[key] = manifest["throughput"][key]
    for reason, n in manifest["reasons"].items():
        out[f"failures.{reason}"] = n
        out[f"failure_rate.{reason}"] = n / urls
    for split, n in manifest["splits"].items():
        out[f"split.{split}"] = n
    return out


def table_rows(manifest: dict) -> list[dict[str, Any]]:
    """One row per outcome and reason, largest first: what a person checks after a download."""
    urls = max(manifest["totals"]["urls"], 1)
    rows = [
        {
            "status": "success",
            "reason": "",
            "message": "",
            "count": manifest["totals"]["success"],
            "share": round(manifest["totals"]["success"] / urls, 4),
        }
    ]
    for status, messages in manifest["errors_by_status"].items():
        for message, n in messages.items():
            rows.append(
                {
                    "status": status,
                    "reason": reason_of(message),
                    "message": message,
                    "count": n,
                    "share": round(n / urls, 4),
                }
            )
    return rows


def log_to_mlflow(tracker: Any, manifest: dict, manifest_path: Path) -> None:
    """Metrics, the manifest as artifact and as the run's dataset input, the outcome table."""
    from tasks.tracking import log_dataset_input

    tracker.log_params(manifest["spec"], prefix="source.")
    tracker.log_metrics(metrics(manifest))
    tracker.log_artifact(manifest_path, "ingest")
    tracker.log_table(table_rows(manifest), "ingest/outcomes.json")
    tracker.set_tags(
        {"vlmpipe.source": manifest["source"], "vlmpipe.manifest_fingerprint": manifest["fingerprint"]}
    )
    # the manifest's digest covers every shard's sha256: it names exactly this data
    log_dataset_input(
        tracker, name=manifest["source"], path=manifest_path, digest=manifest["digest"], context="train"
    )
