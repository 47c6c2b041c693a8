"""Check finished img2dataset shards before anything downstream reads them.

A shard is good when its stats say it saw every URL of its slice, its tar opens to the end, the tar
holds exactly the stats' successes (image + json [+ txt] each), its parquet metadata has one row
per URL, and a sample of its images decodes. Results are cached by file size and mtime, so a
resumed ingest does not re-read shards it already checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image


@dataclass
class ShardReport:
    shard_id: int
    urls: int
    samples: int
    failed_to_download: int
    failed_to_resize: int
    tar_bytes: int
    sha256: str
    errors: dict[str, dict[str, int]] = field(default_factory=dict)  # status -> message -> count
    splits: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0


class ShardInvalid(Exception):
    """One line saying what is wrong with a shard."""


def shard_name(shard_id: int) -> str:
    return f"{shard_id:05d}"  # img2dataset's default oom_shard_count of 5


def shard_files(shards_dir: Path, shard_id: int) -> dict[str, Path]:
    name = shard_name(shard_id)
    return {"tar": shards_dir / f"{name}.tar", "meta": shards_dir / f"{name}.parquet",
            "stats": shards_dir / f"{name}_stats.json"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tar_samples(tar_path: Path) -> dict[str, dict[str, bytes | None]]:
    """key -> {extension: None}; reading every header to the end finds a truncated tar."""
    samples: dict[str, dict[str, bytes | None]] = {}
    try:
        with tarfile.open(tar_path, "r") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition("/")[2].partition(".")
                samples.setdefault(key, {})[ext] = None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardInvalid(f"tar does not read to the end ({exc})") from None
    return samples


def _decode_some(tar_path: Path, keys: list[str], image_ext: str) -> None:
    wanted = {f"{k}.{image_ext}" for k in keys} | {f"{k}.json" for k in keys}
    with tarfile.open(tar_path, "r") as tar:
        for member in tar:
            if member.name in wanted:
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                try:
                    if member.name.endswith(".json"):
                        json.loads(data)
                    else:
                        with Image.open(io.BytesIO(data)) as im:
                            im.load()
                except Exception as exc:  # noqa: BLE001 (any decode failure condemns the shard)
                    raise ShardInvalid(f"{member.name} does not decode ({exc})") from None


def check_shard(shards_dir: Path, shard_id: int, expected_urls: int, image_ext: str, with_caption: bool,
                decode: int = 8) -> ShardReport:
    """Validate one finished shard; raises ShardInvalid with the reason."""
    files = shard_files(shards_dir, shard_id)
    for kind in ("stats", "tar", "meta"):
        if not files[kind].is_file():
            raise ShardInvalid(f"{files[kind].name} is missing")
    try:
        stats = json.loads(files["stats"].read_text())
    except (OSError, ValueError) as exc:
        raise ShardInvalid(f"stats do not parse ({exc})") from None
    if stats.get("count") != expected_urls:
        raise ShardInvalid(f"stats count {stats.get('count')} but the shard has {expected_urls} URLs")
    samples = _tar_samples(files["tar"])
    if len(samples) != stats["successes"]:
        raise ShardInvalid(f"tar holds {len(samples)} samples but stats say {stats['successes']} successes")
    needed = {image_ext, "json"} | ({"txt"} if with_caption else set())
    for key, exts in samples.items():
        if not needed <= exts.keys():
            raise ShardInvalid(f"sample {key} lacks {', '.join(sorted(needed - exts.keys()))}")
    try:
        meta = pq.read_table(files["meta"]).to_pydict()
    except Exception as exc:  # noqa: BLE001 (pyarrow raises several types for a bad file)
        raise ShardInvalid(f"metadata parquet does not read ({exc})") from None
    status = meta.get("status", [])
    if len(status) != expected_urls:
        raise ShardInvalid(f"metadata has {len(status)} rows but the shard has {expected_urls} URLs")
    if status.count("success") != stats["successes"]:
        raise ShardInvalid("metadata and stats disagree on successes")
    errors: dict[str, Counter] = {}
    for st, msg in zip(status, meta.get("error_message", [None] * len(status)), strict=True):
        if st != "success":
            errors.setdefault(st or "unknown", Counter())[msg or "unknown"] += 1
    split_col = meta.get("split", ["train"] * len(status))
    splits = Counter(sp or "train" for st, sp in zip(status, split_col, strict=True) if st == "success")
    keys = sorted(samples)
    if decode and keys:
        step = max(1, len(keys) // decode)
        _decode_some(files["tar"], keys[::step][:decode], image_ext)
    return ShardReport(
        shard_id=shard_id, urls=expected_urls, samples=stats["successes"],
        failed_to_download=stats["failed_to_download"], failed_to_resize=stats["failed_to_resize"],
        tar_bytes=files["tar"].stat().st_size, sha256=sha256_file(files["tar"]),
        errors={k: dict(v) for k, v in errors.items()}, splits=dict(splits),
        duration_s=float(stats.get("duration", 0.0)),
    )


def remove_shard(shards_dir: Path, shard_id: int) -> None:
    """Delete a shard's files; stats last is not needed: img2dataset only trusts a shard with stats."""
    for path in shard_files(shards_dir, shard_id).values():
        path.unlink(missing_ok=True)


class ValidationCache:
    """Reports of shards already checked, keyed by the (size, mtime) of their three files."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.entries: dict[str, dict] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}

    @staticmethod
    def _stamp(shards_dir: Path, shard_id: int) -> list:
        out = []
        for p in shard_files(shards_dir, shard_id).values():
            st = p.stat()
            out.append([st.st_size, st.st_mtime_ns])
        return out

    def get(self, shards_dir: Path, shard_id: int, expected_urls: int) -> ShardReport | None:
        entry = self.entries.get(shard_name(shard_id))
        try:
            stamp = self._stamp(shards_dir, shard_id)
        except OSError:
            return None
        if entry and entry["stamp"] == stamp and entry["report"]["urls"] == expected_urls:
            return ShardReport(**entry["report"])
        return None

    def put(self, shards_dir: Path, report: ShardReport) -> None:
        self.entries[shard_name(report.shard_id)] = {"stamp": self._stamp(shards_dir, report.shard_id),
                                                      "report": asdict(report)}

    def drop(self, shard_id: int) -> None:
        self.entries.pop(shard_name(shard_id), None)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        tmp.replace(self.path)
