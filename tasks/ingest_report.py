"""What an ingest tells the outside: a small JSON summary (`vlmpipe ingest --json`), MLflow metrics
and dataset input, and the rows of a Prefect table artifact, all read off the manifest.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

STATUSES = ("success", "failed_to_download", "failed_to_resize")


def reason_slug(message: str) -> str:
    """An error message as a metric-name part: 'HTTP Error 404: Not Found' -> 'http_error_404_not_found'."""
    return re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:80] or "unknown"


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
    out.update(urls=totals["urls"], success_rate=totals["success_rate"], bytes=totals["bytes"],
               shards=len(manifest["shards"]), skipped_rows=totals["skipped_rows"])
    for key in ("images_per_s", "urls_per_s", "download_s", "wall_s"):
        if manifest["throughput"].get(key) is not None:
            out[key] = manifest["throughput"][key]
    by_reason: Counter = Counter()
    for message, n in manifest["errors"].items():
        by_reason[reason_slug(message)] += n
    for slug, n in by_reason.items():
        out[f"failures.{slug}"] = n
        out[f"failure_rate.{slug}"] = n / urls
    for split, n in manifest["splits"].items():
        out[f"split.{split}"] = n
    return out


def table_rows(manifest: dict) -> list[dict[str, Any]]:
    """One row per outcome and reason, largest first: what a person checks after a download."""
    urls = max(manifest["totals"]["urls"], 1)
    rows = [{"status": "success", "reason": "", "count": manifest["totals"]["success"],
             "share": round(manifest["totals"]["success"] / urls, 4)}]
    for status, messages in manifest["errors_by_status"].items():
        for message, n in messages.items():
            rows.append({"status": status, "reason": message, "count": n, "share": round(n / urls, 4)})
    return rows


def log_to_mlflow(tracker: Any, manifest: dict, manifest_path: Path) -> None:
    """Metrics, the manifest as artifact and as the run's dataset input, the outcome table."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    tracker.log_params(manifest["spec"], prefix="source.")
    tracker.log_metrics(metrics(manifest))
    tracker.log_artifact(manifest_path, "ingest")
    tracker.log_table(table_rows(manifest), "ingest/outcomes.json")
    tracker.set_tags({"vlmpipe.source": manifest["source"], "vlmpipe.manifest_fingerprint": manifest["fingerprint"]})
    # the manifest lists every shard's sha256: its own digest names exactly this data
    import hashlib

    digest = hashlib.sha256(manifest_path.read_bytes()).hexdigest()[:16]
    dataset = MetaDataset(LocalArtifactDatasetSource(str(manifest_path.resolve())), name=manifest["source"],
                          digest=digest)
    entity = dataset._to_mlflow_entity()  # the public log_input needs the fluent active run
    tracker.client.log_inputs(tracker.run_id, [DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, "train")])])
