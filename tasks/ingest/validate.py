"""Check finished img2dataset shards before anything downstream reads them: stats cover the
shard's URLs, the tar reads to its end with exactly the stats' successes, the parquet metadata has
a row per URL, a sample of images decodes. Results are cached by file size and mtime.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from collections.abc import Callable
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
    return {
        "tar": shards_dir / f"{name}.tar",
        "meta": shards_dir / f"{name}.parquet",
        "stats": shards_dir / f"{name}_stats.json",
    }


@dataclass
class TarScan:
    samples: dict[str, set[str]]  # key -> extensions
    sha256: str
    picked: list[tuple[str, bytes]]  # (member name, bytes) chosen for decoding


_ZERO_BLOCK = bytes(512)


def _octal(field: bytes) -> int:
    text = field.strip(b"\0 ")
    return int(text, 8) if text else 0


def scan_tar(path: Path, pick: Callable[[str, int], bool] | None = None) -> TarScan:
    """Read a tar once: every header (checksum checked), the sha256 of the whole file, and the bytes
    of the members for which `pick(name, index among members with that extension)` is true.

    Python's tarfile takes ~0.4 ms per sample on webdataset's pax headers; this single pass is
    several times faster and finds the same truncation or corruption.
    """
    digest = hashlib.sha256()
    samples: dict[str, set[str]] = {}
    picked: list[tuple[str, bytes]] = []
    seen: Counter[str] = Counter()
    with open(path, "rb") as f:

        def read(n: int, where: str) -> bytes:
            data = f.read(n)
            digest.update(data)
            if len(data) < n:
                raise ShardInvalid(f"tar is truncated ({where})")
            return data

        long_name = None
        while True:
            block = f.read(512)
            digest.update(block)
            if len(block) < 512:
                raise ShardInvalid("tar is truncated (no end-of-archive marker)")
            if block == _ZERO_BLOCK:
                digest.update(f.read())  # the second end block and the record padding
                break
            if _octal(block[148:156]) != sum(block[:148]) + 256 + sum(block[156:]):
                raise ShardInvalid("tar header checksum mismatch (corrupt bytes)")
            size, kind = _octal(block[124:136]), block[156:157]
            body = read(size, "inside a member")
            read(-size % 512, "inside a member's padding")
            if kind == b"x":  # pax header of the next member: it may carry the long name
                for record in body.decode("utf-8", "replace").splitlines():
                    if record.partition(" ")[2].startswith("path="):
                        long_name = record.partition(" ")[2][5:]
                continue
            name = long_name or _ustar_name(block)
            long_name = None
            if kind not in (b"0", b"\0"):
                continue  # directories, links, global headers: not samples
            key, _, ext = name.rpartition("/")[2].partition(".")
            samples.setdefault(key, set()).add(ext)
            if pick is not None and pick(name, seen[ext]):
                picked.append((name, body))
            seen[ext] += 1
    return TarScan(samples, digest.hexdigest(), picked)


def _ustar_name(block: bytes) -> str:
    name = block[:100].split(b"\0")[0].decode("utf-8", "replace")
    prefix = block[345:500].split(b"\0")[0].decode("utf-8", "replace") if block[257:262] == b"ustar" else ""
    return f"{prefix}/{name}" if prefix else name


def _decode(name: str, data: bytes) -> None:
    try:
        if name.endswith(".json"):
            json.loads(data)
        else:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
    except Exception as exc:  # noqa: BLE001 (any decode failure condemns the shard)
        raise ShardInvalid(f"{name} does not decode ({exc})") from None


def check_shard(
    shards_dir: Path, shard_id: int, expected_urls: int, image_ext: str, with_caption: bool, decode: int = 8
) -> ShardReport:
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
    successes = stats["successes"]
    step = max(1, successes // decode) if decode else 0
    wanted = {image_ext, "json"}

    def pick(name: str, index: int) -> bool:
        return (
            bool(step) and name.rpartition(".")[2] in wanted and index % step == 0 and index // step < decode
        )

    try:
        scan = scan_tar(files["tar"], pick)
    except OSError as exc:
        raise ShardInvalid(f"tar does not read ({exc})") from None
    samples = scan.samples
    if len(samples) != successes:
        raise ShardInvalid(f"tar holds {len(samples)} samples but stats say {successes} successes")
    needed = {image_ext, "json"} | ({"txt"} if with_caption else set())
    for key, exts in samples.items():
        if not needed <= exts:
            raise ShardInvalid(f"sample {key} lacks {', '.join(sorted(needed - exts))}")
    for name, data in scan.picked:
        _decode(name, data)
    try:
        names = pq.ParquetFile(files["meta"]).schema_arrow.names
        meta = pq.read_table(
            files["meta"], columns=[c for c in ("status", "error_message", "split") if c in names]
        ).to_pydict()
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
    return ShardReport(
        shard_id=shard_id,
        urls=expected_urls,
        samples=stats["successes"],
        failed_to_download=stats["failed_to_download"],
        failed_to_resize=stats["failed_to_resize"],
        tar_bytes=files["tar"].stat().st_size,
        sha256=scan.sha256,
        errors={k: dict(v) for k, v in errors.items()},
        splits=dict(splits),
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
        self.entries[shard_name(report.shard_id)] = {
            "stamp": self._stamp(shards_dir, report.shard_id),
            "report": asdict(report),
        }

    def drop(self, shard_id: int) -> None:
        self.entries.pop(shard_name(shard_id), None)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True))
        tmp.replace(self.path)
