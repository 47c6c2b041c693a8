"""Ingest one source: URL list -> img2dataset -> validated webdataset shards -> manifest.json.

Resume: img2dataset's "incremental" mode skips every shard that has its `_stats.json` (written
last, after the tar is closed); a killed run leaves at most tars without stats, which it redoes.
On top of that each finished shard is validated (tests/ingest), a bad one is deleted and redone
in the next round, and the manifest (shards with sha256, counts per outcome and error) is written
atomically last. Output folder: input/ (img2dataset's input), shards/, manifest.json, ingest.log.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from data_specs.sources import SourceSpec
from tasks import ingest_convert as convert
from tasks.ingest_validate import (
    ShardInvalid,
    ShardReport,
    ValidationCache,
    check_shard,
    remove_shard,
    shard_files,
)

Log = Callable[[str], None]
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "vlmpipe-ingest-manifest/1"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# img2dataset's own columns; a source column of the same name is saved under a source_ prefix
_RESERVED = {"key", "caption", "url", "width", "height", "original_width", "original_height", "status",
             "error_message", "exif", "md5", "sha256", "sha512"}
# fields that decide what lands in the shards; changing one of them starts the shards afresh
_SHARD_SHAPING = ("kind", "shapes_world", "url_list", "input_format", "url_col", "caption_col",
                  "save_additional_columns", "image_size", "resize_mode", "resize_only_if_bigger",
                  "upscale_interpolation", "downscale_interpolation", "encode_format", "encode_quality",
                  "skip_reencode", "extract_exif", "compute_hash", "number_sample_per_shard", "min_image_size",
                  "max_image_area", "max_aspect_ratio", "reject_truncated", "user_agent_token",
                  "disallowed_header_directives")


class IngestError(RuntimeError):
    """An ingest that cannot give trustworthy shards; `str()` is one line for the user."""


class LowSuccessRate(IngestError):
    """Too many URLs were lost (below min_success_rate); the manifest is written. Not retried."""


@dataclass
class PreparedInput:
    folder: Path  # img2dataset's url_list: a folder of parquet files
    files: list[tuple[str, int]]  # (file name, rows) in img2dataset's (sorted) order
    extra_columns: list[str]
    has_caption: bool
    skipped: dict[str, int]

    def shard_sizes(self, per_shard: int) -> list[int]:
        """URLs per shard id, numbered as img2dataset numbers them across files."""
        sizes: list[int] = []
        for _, rows in self.files:
            sizes += [min(per_shard, rows - i * per_shard) for i in range(math.ceil(rows / per_shard))]
        return sizes


def fingerprint(spec: SourceSpec) -> str:
    """Digest of what shapes the shards: the shard-shaping spec fields and the URL list files."""
    data = spec.model_dump(mode="json", include=set(_SHARD_SHAPING))
    if spec.url_list is not None and spec.url_list.exists():
        files = convert.input_files(spec.url_list, spec.kind, spec.input_format)
        data["files"] = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader (or a crash) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---- preparing img2dataset's input ---------------------------------------------------------------


@contextlib.contextmanager
def prepared_input(spec: SourceSpec, output_dir: Path, fp: str, log: Log) -> Iterator[PreparedInput]:
    """img2dataset's input for `spec`; for shapes world the loopback server stays up inside."""
    folder = output_dir / "input"
    if spec.kind == "shapes_world":
        from tasks import shapes_world as sw

        cfg = spec.shapes_world
        assert cfg is not None
        scenes = sw.generate_scenes(cfg.num_train, cfg.num_heldout, cfg.seed, cfg.canvas_size, cfg.max_shapes)
        with sw.ShapesWorldServer(scenes) as server:
            # the URLs carry this run's port, so the list is rewritten on every run (the rows,
            # and so the shards, stay the same)
            folder.mkdir(parents=True, exist_ok=True)
            src = sw.write_url_list(scenes, folder / "shapes_world.src", server.base_url)
            table = pq.read_table(src)
            # img2dataset reserves `key` for its own sample key; ours travels as source_key
            table = table.rename_columns(["source_key" if c == "key" else c for c in table.column_names])
            pq.write_table(table, folder / "00000.parquet")
            src.unlink()
            log(f"[ingest {spec.name}] {len(scenes)} shapes-world scenes served at {server.base_url}")
            yield PreparedInput(folder, [("00000.parquet", table.num_rows)], ["source_key", "split", "annotations"],
                                True, {})
        return
    yield _convert_url_list(spec, folder, fp, log)


def _convert_url_list(spec: SourceSpec, folder: Path, fp: str, log: Log) -> PreparedInput:
    assert spec.url_list is not None
    extra_src = list(spec.save_additional_columns)
    extra = [c if c not in _RESERVED else f"source_{c}" for c in extra_src]
    has_caption = spec.caption_col is not None
    done = _read_json(folder / "prepared.json")
    if done and done.get("fingerprint") == fp:
        return PreparedInput(folder, [tuple(f) for f in done["files"]], extra, has_caption, done["skipped"])
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    files, skipped = [], Counter()
    columns = ["url"] + (["caption"] if has_caption else []) + extra
    for i, path in enumerate(convert.input_files(spec.url_list, spec.kind, spec.input_format)):
        rows = convert.source_rows(spec.kind, path, spec.input_format, spec.url_col, spec.caption_col, extra_src)
        if extra != extra_src:
            rows = ({**r, **{n: r.get(o) for o, n in zip(extra_src, extra)}} for r in rows)
        name = f"{i:05d}.parquet"
        try:
            result = convert.write_rows(rows, folder / name, columns)
        except (ValueError, OSError) as exc:
            raise IngestError(f"{spec.name}: cannot read URL list {path}: {exc}") from None
        files.append((name, result.rows))
        skipped.update(result.skipped)
        log(f"[ingest {spec.name}] converted {path.name}: {result.rows} URLs"
            + (f", left out {dict(result.skipped)}" if result.skipped else ""))
    _write_json(folder / "prepared.json", {"fingerprint": fp, "files": files, "skipped": dict(skipped)})
    return PreparedInput(folder, files, extra, has_caption, dict(skipped))


# ---- running img2dataset ---------------------------------------------------------------------------


def worker_config(spec: SourceSpec, prepared: PreparedInput, shards_dir: Path) -> dict:
    download = {
        "url_list": str(prepared.folder),
        "input_format": "parquet",
        "url_col": "url",
        "caption_col": "caption" if prepared.has_caption else None,
        "save_additional_columns": prepared.extra_columns or None,
        "output_folder": str(shards_dir),
        "output_format": "webdataset",
        # "overwrite" is broken in img2dataset 1.47; we clear the folder ourselves when needed
        "incremental_mode": "incremental",
        "enable_wandb": False,
        **spec.img2dataset_options(),
    }
    return {"download": download, "reject_truncated": spec.reject_truncated,
            "spark": spec.spark.model_dump() if spec.spark else None}


def _progress(shards_dir: Path, sizes: list[int], since: float) -> tuple[int, int, int, float]:
    done = urls = ok = 0
    first = math.inf
    for shard_id in range(len(sizes)):
        stats = _read_json(shard_files(shards_dir, shard_id)["stats"])
        if stats:
            done += 1
            if stats.get("end_time", 0) >= since:
                urls += stats["count"]
                ok += stats["successes"]
                first = min(first, stats.get("start_time", since))
    return done, urls, ok, (time.time() - min(first, time.time())) or 1.0


def run_img2dataset(config: dict, output_dir: Path, name: str, sizes: list[int], *, log: Log,
                    progress_s: float = 10.0, stall_s: float = 3600.0) -> int:
    """Run the worker process to the end (or until no shard finishes for `stall_s`); its exit code."""
    cfg_path = output_dir / "worker_config.json"
    _write_json(cfg_path, config)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("WANDB_MODE", "disabled")
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home at import otherwise
    shards_dir = Path(config["download"]["output_folder"])
    started = time.time()
    with open(output_dir / "ingest.log", "ab") as logfile:
        logfile.write(f"\n==== {datetime.now(timezone.utc).isoformat()} img2dataset run\n".encode())
        logfile.flush()
        # own process group: one killpg stops img2dataset's pool and logger processes too
        proc = subprocess.Popen([sys.executable, "-m", "tasks.ingest_worker", str(cfg_path)], cwd=output_dir,
                                stdout=logfile, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        (output_dir / "worker.pid").write_text(str(proc.pid))
        last_line, last_change = "", time.time()
        try:
            while True:
                try:
                    return proc.wait(timeout=progress_s)
                except subprocess.TimeoutExpired:
                    pass
                done, urls, ok, span = _progress(shards_dir, sizes, started)
                line = f"[ingest {name}] shards {done}/{len(sizes)}" + (
                    f"; this run {urls} URLs, {ok / urls:.1%} success, {urls / span:.0f} URLs/s" if urls else "")
                if line != last_line:
                    log(line)
                    last_line, last_change = line, time.time()
                elif time.time() - last_change > stall_s:
                    log(f"[ingest {name}] no shard finished for {stall_s:.0f} s: stopping this round")
                    return -1
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _log_tail(output_dir: Path, lines: int = 3) -> str:
    try:
        text = (output_dir / "ingest.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


# ---- the whole ingest ------------------------------------------------------------------------------


def _reset_if_changed(output_dir: Path, fp: str, log: Log, name: str) -> None:
    state = _read_json(output_dir / "state.json")
    shards_dir = output_dir / "shards"
    if (state or {}).get("fingerprint") != fp and shards_dir.exists():
        log(f"[ingest {name}] the URL list or a shard-shaping setting changed: starting the shards afresh")
        shutil.rmtree(shards_dir)
        for stale in ("validated.json", MANIFEST):
            (output_dir / stale).unlink(missing_ok=True)
    _write_json(output_dir / "state.json", {"fingerprint": fp})


def _validate_all(spec: SourceSpec, shards_dir: Path, sizes: list[int], cache: ValidationCache,
                  log: Log) -> tuple[dict[int, ShardReport], list[int]]:
    reports, missing = {}, []
    for shard_id, n in enumerate(sizes):
        if not shard_files(shards_dir, shard_id)["stats"].exists():
            missing.append(shard_id)
            continue
        report = cache.get(shards_dir, shard_id, n)
        if report is None:
            try:
                report = check_shard(shards_dir, shard_id, n, spec.encode_format, spec.caption_col is not None,
                                     spec.validate_decode)
            except ShardInvalid as exc:
                log(f"[ingest {spec.name}] shard {shard_id:05d} is invalid ({exc}): removing it to redo it")
                remove_shard(shards_dir, shard_id)
                cache.drop(shard_id)
                missing.append(shard_id)
                continue
            cache.put(shards_dir, report)
        reports[shard_id] = report
    cache.save()
    return reports, missing


def ingest_source(spec: SourceSpec, output_dir: str | Path, *, log: Log = print, max_rounds: int = 3,
                  progress_s: float = 10.0, stall_s: float = 3600.0) -> dict:
    """Download, validate and describe one source; returns the manifest (also in output_dir).

    Raises IngestError (one line) when shards stay missing or invalid after `max_rounds` download
    rounds, or when the success rate is below the spec's min_success_rate (the manifest is
    written first, so the losses can be inspected).
    """
    started = time.time()
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    shards_dir = output_dir / "shards"
    if spec.distributor == "pyspark" and importlib.util.find_spec("pyspark") is None:
        raise IngestError(f"{spec.name}: distributor pyspark needs pyspark (pip install pyspark) on this machine")
    fp = fingerprint(spec)
    _reset_if_changed(output_dir, fp, log, spec.name)
    cache = ValidationCache(output_dir / "validated.json")
    rounds: list[dict] = []
    downloaded: set[int] = set()
    with prepared_input(spec, output_dir, fp, log) as prepared:
        sizes = prepared.shard_sizes(spec.number_sample_per_shard)
        if not sizes:
            raise IngestError(f"{spec.name}: the URL list has no usable URLs")
        reports, missing = _validate_all(spec, shards_dir, sizes, cache, log)
        for round_no in range(1, max_rounds + 1):
            if not missing:
                break
            log(f"[ingest {spec.name}] round {round_no}: downloading {len(missing)} of {len(sizes)} shards")
            downloaded.update(missing)
            t0 = time.time()
            code = run_img2dataset(worker_config(spec, prepared, shards_dir), output_dir, spec.name, sizes,
                                   log=log, progress_s=progress_s, stall_s=stall_s)
            reports, missing_after = _validate_all(spec, shards_dir, sizes, cache, log)
            rounds.append({"round": round_no, "shards": len(missing), "exit_code": code,
                           "seconds": round(time.time() - t0, 2), "still_missing": len(missing_after)})
            if code != 0 and len(missing_after) >= len(missing):
                # a crash that finished nothing will crash again: say why instead of retrying
                raise IngestError(f"{spec.name}: img2dataset exited with {code} without finishing a shard; "
                                  f"log {output_dir / 'ingest.log'}: {_log_tail(output_dir)}")
            missing = missing_after
        if missing:
            raise IngestError(f"{spec.name}: {len(missing)} shard(s) still missing or invalid after {max_rounds} "
                              f"rounds (first: {missing[0]:05d}); log {output_dir / 'ingest.log'}: "
                              f"{_log_tail(output_dir)}")
    ordered = [reports[i] for i in range(len(sizes))]
    throughput = _throughput(ordered, downloaded, rounds, output_dir)
    manifest = build_manifest(spec, ordered, prepared.skipped, fp=fp,
                              throughput={**throughput, "wall_s": round(time.time() - started, 2)}, rounds=rounds)
    _write_json(output_dir / MANIFEST, manifest)
    if "parquet" in spec.output_format:
        from tasks.ingest_outputs import write_parquet_output

        write_parquet_output(output_dir, manifest, spec.encode_format, log=log)
    totals = manifest["totals"]
    log(f"[ingest {spec.name}] {totals['success']} of {totals['urls']} images ({totals['success_rate']:.1%}) in "
        f"{len(sizes)} shards, {totals['bytes'] / 1e6:.1f} MB; manifest {output_dir / MANIFEST}")
    check_success_rate(spec, manifest, output_dir)
    return manifest


def _throughput(reports: list[ShardReport], downloaded: set[int], rounds: list[dict], output_dir: Path) -> dict:
    """Rates of the downloads this call made (the last manifest's when it downloaded nothing)."""
    if not rounds:
        return {k: v for k, v in ((_read_json(output_dir / MANIFEST) or {}).get("throughput") or {}).items()
                if k != "wall_s"}
    seconds = sum(r["seconds"] for r in rounds)
    fresh = [r for r in reports if r.shard_id in downloaded]
    urls, images = sum(r.urls for r in fresh), sum(r.samples for r in fresh)
    return {"download_s": round(seconds, 2), "urls_downloaded": urls, "images_downloaded": images,
            "urls_per_s": round(urls / seconds, 2), "images_per_s": round(images / seconds, 2)}


def build_manifest(spec: SourceSpec, reports: list[ShardReport], skipped: dict[str, int], *, fp: str,
                   throughput: dict, rounds: list[dict]) -> dict:
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
    urls = sum(r.urls for r in reports)
    success = sum(r.samples for r in reports)
    return {
        "format": MANIFEST_FORMAT,
        "source": spec.name,
        "kind": spec.kind,
        "fingerprint": fp,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shards": [
            {"path": f"shards/{shard_files(Path(), r.shard_id)['tar'].name}",
             "meta": f"shards/{shard_files(Path(), r.shard_id)['meta'].name}",
             "urls": r.urls, "samples": r.samples, "bytes": r.tar_bytes, "sha256": r.sha256, "splits": r.splits}
            for r in reports
        ],
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
        "errors_by_status": {k: dict(v.most_common()) for k, v in by_status.items()},
        "skipped_rows": dict(skipped),
        "splits": dict(sorted(splits.items())),
        "throughput": throughput,
        "rounds": rounds,
        "spec": spec.model_dump(mode="json"),
    }


def check_success_rate(spec: SourceSpec, manifest: dict, output_dir: Path) -> None:
    totals = manifest["totals"]
    if totals["success_rate"] >= spec.min_success_rate:
        return
    top = ", ".join(f"{msg!r} x{n}" for msg, n in list(manifest["errors"].items())[:3])
    raise LowSuccessRate(f"{spec.name}: success rate {totals['success_rate']:.1%} ({totals['success']} of "
                      f"{totals['urls']} URLs) is below min_success_rate {spec.min_success_rate:.0%}; "
                      f"most common failures: {top}; see {output_dir / MANIFEST}")


# ---- reading back, and a plain command line (no Prefect) -----------------------------------------

from tasks.ingest_read import load_manifest, read_records  # noqa: E402 (re-exported API)

__all__ = ["IngestError", "LowSuccessRate", "ingest_source", "load_manifest", "read_records"]


def main(argv: list[str] | None = None) -> int:
    """`python -m tasks.ingest SOURCE_SPEC OUTPUT_DIR`: one ingest without Prefect or MLflow."""
    import argparse

    from data_specs.loader import SpecError
    from data_specs.sources import load_source_spec

    parser = argparse.ArgumentParser(prog="python -m tasks.ingest", description=main.__doc__)
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
