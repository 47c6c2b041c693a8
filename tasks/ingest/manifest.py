"""The manifest: a source's identity (every shard with its sample count, size and sha256) and the
outcome of every URL, counted per img2dataset status, per error message and per reason.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from data_specs.sources import SourceSpec
from tasks.ingest.prepare import read_json
from tasks.ingest.read import MANIFEST
from tasks.ingest.report import reason_of
from tasks.ingest.validate import ShardReport, shard_files

MANIFEST_FORMAT = "vlmpipe-ingest-manifest/1"


def throughput(
    reports: list[ShardReport], downloaded: set[int], rounds: list[dict], output_dir: Path
) -> dict:
    """Rates of the downloads this call made (the last manifest's when it downloaded nothing)."""
    if not rounds:
        return {
            k: v
            for k, v in ((read_json(output_dir / MANIFEST) or {}).get("throughput") or {}).items()
            if k != "wall_s"
        }
    seconds = sum(r["seconds"] for r in rounds)
    fresh = [r for r in reports if r.shard_id in downloaded]
    urls, images = sum(r.urls for r in fresh), sum(r.samples for r in fresh)
    return {
        "download_s": round(seconds, 2),
        "urls_downloaded": urls,
        "images_downloaded": images,
        "urls_per_s": round(urls / seconds, 2),
        "images_per_s": round(images / seconds, 2),
    }


def build_manifest(
    spec: SourceSpec,
    reports: list[ShardReport],
    skipped: dict[str, int],
    *,
    fp: str,
    throughput: dict,
    rounds: list[dict],
) -> dict:
    """The data's identity: every shard with its size and sha256, and every URL's outcome counted."""
    by_status: dict[str, Counter] = {"failed_to_download": Counter(), "failed_to_resize": Counter()}
    splits: Counter = Counter()
    for r in reports:
        for status, msgs in r.errors.items():
            by_status.setdefault(status, Counter()).update(msgs)
        splits.update(r.splits)
    errors: Counter = Counter()
    for counter in by_status.values():
        errors.update(counter)
    reasons: Counter = Counter()
    for message, n in errors.items():
        reasons[reason_of(message)] += n
    urls = sum(r.urls for r in reports)
    success = sum(r.samples for r in reports)
    shards = [
        {
            "path": f"shards/{shard_files(Path(), r.shard_id)['tar'].name}",
            "meta": f"shards/{shard_files(Path(), r.shard_id)['meta'].name}",
            "urls": r.urls,
            "samples": r.samples,
            "bytes": r.tar_bytes,
            "sha256": r.sha256,
            "splits": r.splits,
        }
        for r in reports
    ]
    # the data's identity: changes exactly when a shard's bytes change
    digest = hashlib.sha256(json.dumps([(s["path"], s["sha256"]) for s in shards]).encode()).hexdigest()[:16]
    return {
        "format": MANIFEST_FORMAT,
        "source": spec.name,
        "kind": spec.kind,
        "fingerprint": fp,
        "digest": digest,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shards": shards,
        "totals": {
            "urls": urls,
            "success": success,
            "failed_to_download": sum(r.failed_to_download for r in reports),
            "failed_to_resize": sum(r.failed_to_resize for r in reports),
            "success_rate": round(success / urls, 6) if urls else 0.0,
            "bytes": sum(r.tar_bytes for r in reports),
            "skipped_rows": sum(skipped.values()),
        },
        "errors": dict(errors.most_common()),
        "reasons": dict(reasons.most_common()),
        "errors_by_status": {k: dict(v.most_common()) for k, v in by_status.items()},
        "skipped_rows": dict(skipped),
        "splits": dict(sorted(splits.items())),
        "throughput": throughput,
        "rounds": rounds,
        "spec": spec.model_dump(mode="json"),
    }
