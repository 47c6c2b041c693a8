"""Ingest one source: URL list -> img2dataset -> validated webdataset shards -> manifest.json.

Output folder: input/ (img2dataset's input), shards/ (tar + parquet + stats per shard),
manifest.json, ingest.log, and state.json / validated.json (what a rerun needs to resume).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from data_specs.sources import SourceSpec
from tasks.ingest.manifest import build_manifest, throughput
from tasks.ingest.prepare import Log, fingerprint, prepared_input, read_json, write_json
from tasks.ingest.read import MANIFEST
from tasks.ingest.run import log_tail, run_img2dataset, worker_config
from tasks.ingest.validate import (
    ShardInvalid,
    ShardReport,
    ValidationCache,
    check_shard,
    remove_shard,
    shard_files,
)


class IngestError(RuntimeError):
    """An ingest that cannot give trustworthy shards; `str()` is one line for the user."""


class LowSuccessRate(IngestError):
    """Too many URLs were lost (below min_success_rate); the manifest is written. Not retried."""


@contextlib.contextmanager
def _exclusive(output_dir: Path, name: str, wait_s: float, log: Log) -> Iterator[None]:
    """One ingest per output folder at a time: two would write the same shards. The second waits up
    to `wait_s` for the first (then finds its shards done and validated), else is refused."""
    with open(output_dir / ".lock", "w") as handle:
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise IngestError(f"{name}: another ingest is writing into {output_dir}") from None
                if not told:
                    log(
                        f"[ingest {name}] another ingest is writing into {output_dir}: waiting up to {wait_s:g} s"
                    )
                    told = True
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        yield


def _reset_if_changed(output_dir: Path, fp: str, log: Log, name: str) -> None:
    state = read_json(output_dir / "state.json")
    shards_dir = output_dir / "shards"
    if (state or {}).get("fingerprint") != fp and (shards_dir.exists() or (output_dir / "input").exists()):
        log(f"[ingest {name}] the URL list or a shard-shaping setting changed: starting the shards afresh")
        for folder in (shards_dir, output_dir / "input", output_dir / "features", output_dir / "parquet"):
            shutil.rmtree(folder, ignore_errors=True)
        for stale in ("validated.json", MANIFEST):
            (output_dir / stale).unlink(missing_ok=True)
    write_json(output_dir / "state.json", {"fingerprint": fp})


class _Validator:
    """Validates finished shards once each (results cached on disk); a bad shard is deleted so that
    img2dataset's incremental mode redoes it."""

    def __init__(self, spec: SourceSpec, shards_dir: Path, sizes: list[int], with_caption: bool, log: Log):
        self.spec, self.shards_dir, self.sizes, self.with_caption, self.log = (
            spec,
            shards_dir,
            sizes,
            with_caption,
            log,
        )
        self.cache = ValidationCache(shards_dir.parent / "validated.json")
        self.reports: dict[int, ShardReport] = {}
        self._saved = time.time()

    def check(self, shard_id: int) -> None:
        if shard_id in self.reports or shard_id >= len(self.sizes):
            return
        n = self.sizes[shard_id]
        report = self.cache.get(self.shards_dir, shard_id, n)
        if report is None:
            try:
                report = check_shard(
                    self.shards_dir,
                    shard_id,
                    n,
                    self.spec.encode_format,
                    self.with_caption,
                    self.spec.validate_decode,
                )
            except ShardInvalid as exc:
                self.log(
                    f"[ingest {self.spec.name}] shard {shard_id:05d} is invalid ({exc}): removing it to redo it"
                )
                remove_shard(self.shards_dir, shard_id)
                self.cache.drop(shard_id)
                return
            self.cache.put(self.shards_dir, report)
            if time.time() - self._saved > 10:  # not after every shard: the file grows with the shards
                self.cache.save()
                self._saved = time.time()
        self.reports[shard_id] = report

    def sweep(self) -> list[int]:
        """Check every shard that has stats; return the ids still missing (to download)."""
        for shard_id in range(len(self.sizes)):
            if shard_id not in self.reports and shard_files(self.shards_dir, shard_id)["stats"].exists():
                self.check(shard_id)
        self.cache.save()
        return [i for i in range(len(self.sizes)) if i not in self.reports]


def ingest_source(
    spec: SourceSpec,
    output_dir: str | Path,
    *,
    log: Log = print,
    max_rounds: int = 3,
    progress_s: float = 10.0,
    stall_s: float = 3600.0,
    wait_s: float = 3600.0,
) -> dict:
    """Download, validate and describe one source; returns the manifest (also in output_dir).

    Resume, after a crash or a kill at any moment: img2dataset's "incremental" mode skips every
    shard that has its `_stats.json`, which it writes last, after closing the tar; a killed run
    leaves at most a tar without stats, which the next run rewrites. img2dataset's processes exit
    with their parent, so no orphan keeps writing. Every finished shard is then validated (while
    the download goes on); a bad one is deleted and downloaded again in the next round. The
    manifest is written atomically, last. A changed URL list or shard-shaping setting starts the
    shards afresh (state.json), so shards of two inputs never mix. A second ingest into the same
    folder (two pipelines started at once) waits up to `wait_s` for the first, then reuses its shards.

    Raises IngestError (one line) when shards stay missing or invalid after `max_rounds` download
    rounds, or when the success rate is below the spec's min_success_rate (the manifest is
    written first, so the losses can be inspected).
    """
    started = time.time()
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    shards_dir = output_dir / "shards"
    if spec.distributor == "pyspark" and importlib.util.find_spec("pyspark") is None:
        raise IngestError(
            f"{spec.name}: distributor pyspark needs pyspark (pip install pyspark) on this machine"
        )
    fp = fingerprint(spec)
    rounds: list[dict] = []
    downloaded: set[int] = set()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_exclusive(output_dir, spec.name, wait_s, log))
        _reset_if_changed(output_dir, fp, log, spec.name)
        try:
            prepared = stack.enter_context(prepared_input(spec, output_dir, fp, log))
        except (ValueError, OSError) as exc:
            raise IngestError(f"{spec.name}: {exc}") from None
        sizes = prepared.shard_sizes(spec.number_sample_per_shard)
        if not sizes:
            raise IngestError(f"{spec.name}: the URL list has no usable URLs")
        validator = _Validator(spec, shards_dir, sizes, prepared.has_caption, log)
        missing = validator.sweep()
        for round_no in range(1, max_rounds + 1):
            if not missing:
                break
            log(f"[ingest {spec.name}] round {round_no}: downloading {len(missing)} of {len(sizes)} shards")
            downloaded.update(missing)
            t0 = time.time()
            code = run_img2dataset(
                worker_config(spec, prepared, shards_dir),
                output_dir,
                spec.name,
                len(sizes),
                log=log,
                on_shard=validator.check,
                progress_s=progress_s,
                stall_s=stall_s,
            )
            missing_after = validator.sweep()
            rounds.append(
                {
                    "round": round_no,
                    "shards": len(missing),
                    "exit_code": code,
                    "seconds": round(time.time() - t0, 2),
                    "still_missing": len(missing_after),
                }
            )
            if code != 0 and len(missing_after) >= len(missing):
                # a crash that finished nothing will crash again: say why instead of retrying
                raise IngestError(
                    f"{spec.name}: img2dataset exited with {code} without finishing a shard; "
                    f"log {output_dir / 'ingest.log'}: {log_tail(output_dir)}"
                )
            missing = missing_after
        if missing:
            raise IngestError(
                f"{spec.name}: {len(missing)} shard(s) still missing or invalid after {max_rounds} "
                f"rounds (first: {missing[0]:05d}); log {output_dir / 'ingest.log'}: "
                f"{log_tail(output_dir)}"
            )
    ordered = [validator.reports[i] for i in range(len(sizes))]
    rates = throughput(ordered, downloaded, rounds, output_dir)
    manifest = build_manifest(
        spec,
        ordered,
        prepared.skipped,
        fp=fp,
        throughput={**rates, "wall_s": round(time.time() - started, 2)},
        rounds=rounds,
    )
    if prepared.served is not None:
        manifest["loopback_served"] = dict(
            prepared.served
        )  # this call's answers (0 when nothing was missing)
    write_json(output_dir / MANIFEST, manifest)
    if "parquet" in spec.output_format:
        from tasks.ingest.outputs import write_parquet_output

        write_parquet_output(output_dir, manifest, spec.encode_format, log=log)
    totals = manifest["totals"]
    log(
        f"[ingest {spec.name}] {totals['success']} of {totals['urls']} images ({totals['success_rate']:.1%}) in "
        f"{len(sizes)} shards, {totals['bytes'] / 1e6:.1f} MB; manifest {output_dir / MANIFEST}"
    )
    check_success_rate(spec, manifest, output_dir)
    return manifest


def check_success_rate(spec: SourceSpec, manifest: dict, output_dir: Path) -> None:
    totals = manifest["totals"]
    if totals["success_rate"] >= spec.min_success_rate:
        return
    top = ", ".join(f"{msg!r} x{n}" for msg, n in list(manifest["errors"].items())[:3])
    raise LowSuccessRate(
        f"{spec.name}: success rate {totals['success_rate']:.1%} ({totals['success']} of "
        f"{totals['urls']} URLs) is below min_success_rate {spec.min_success_rate:.0%}; "
        f"most common failures: {top}; see {output_dir / MANIFEST}"
    )
