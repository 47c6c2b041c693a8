"""Prepare img2dataset's input for a source: convert its published URL list to parquet once (kept
while the list and the shard-shaping settings are unchanged), or, for the shapes world, generate
the scenes and serve them on a loopback port for the length of the download.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from data_specs.sources import SourceSpec
from tasks.ingest import convert

Log = Callable[[str], None]
# img2dataset's own columns; a source column of the same name is saved under a source_ prefix
_RESERVED = {
    "key",
    "caption",
    "url",
    "width",
    "height",
    "original_width",
    "original_height",
    "status",
    "error_message",
    "exif",
    "md5",
    "sha256",
    "sha512",
}
# fields that decide what lands in the shards; changing one of them starts the shards afresh
_SHARD_SHAPING = (
    "kind",
    "shapes_world",
    "url_list",
    "input_format",
    "url_col",
    "caption_col",
    "save_additional_columns",
    "image_size",
    "resize_mode",
    "resize_only_if_bigger",
    "upscale_interpolation",
    "downscale_interpolation",
    "encode_format",
    "encode_quality",
    "skip_reencode",
    "extract_exif",
    "compute_hash",
    "number_sample_per_shard",
    "min_image_size",
    "max_image_area",
    "allowed_hosts",
    "denied_hosts",
    "allow_private_addresses",
    "max_download_bytes",
    "max_aspect_ratio",
    "reject_truncated",
    "user_agent_token",
    "disallowed_header_directives",
)


@dataclass
class PreparedInput:
    folder: Path  # img2dataset's url_list: a folder of parquet files
    files: list[tuple[str, int]]  # (file name, rows) in img2dataset's (sorted) order
    extra_columns: list[str]
    has_caption: bool
    skipped: dict[str, int]
    served: Counter | None = None  # what the embedded loopback server answered, per kind

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


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader (or a crash) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def prepared_input(spec: SourceSpec, output_dir: Path, fp: str, log: Log) -> Iterator[PreparedInput]:
    """img2dataset's input for `spec`; for shapes world the loopback server stays up inside."""
    folder = output_dir / "input"
    if spec.kind == "shapes_world":
        from tasks import shapes_world as sw

        cfg = spec.shapes_world
        assert cfg is not None
        scenes = sw.generate_scenes(
            cfg.num_train, cfg.num_heldout, cfg.seed, cfg.canvas_size, cfg.max_shapes, cfg.num_heldout_novel
        )
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
            yield PreparedInput(
                folder,
                [("00000.parquet", table.num_rows)],
                ["source_key", "split", "annotations"],
                True,
                {},
                server.served,
            )
        return
    yield _convert_url_list(spec, folder, fp, log)


def _convert_url_list(spec: SourceSpec, folder: Path, fp: str, log: Log) -> PreparedInput:
    assert spec.url_list is not None
    extra_src = list(spec.save_additional_columns)
    extra = [c if c not in _RESERVED else f"source_{c}" for c in extra_src]
    has_caption = spec.caption_col is not None
    done = read_json(folder / "prepared.json")
    if done and done.get("fingerprint") == fp:
        return PreparedInput(folder, [tuple(f) for f in done["files"]], extra, has_caption, done["skipped"])
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    files, skipped = [], Counter()
    columns = ["url"] + (["caption"] if has_caption else []) + extra
    for i, path in enumerate(convert.input_files(spec.url_list, spec.kind, spec.input_format)):
        rows = convert.source_rows(
            spec.kind, path, spec.input_format, spec.url_col, spec.caption_col, extra_src
        )
        if extra != extra_src:
            rows = ({**r, **{n: r.get(o) for o, n in zip(extra_src, extra, strict=True)}} for r in rows)
        name = f"{i:05d}.parquet"
        try:
            result = convert.write_rows(rows, folder / name, columns)
        except (ValueError, OSError) as exc:
            raise ValueError(f"cannot read URL list {path}: {exc}") from None
        files.append((name, result.rows))
        skipped.update(result.skipped)
        log(
            f"[ingest {spec.name}] converted {path.name}: {result.rows} URLs"
            + (f", left out {dict(result.skipped)}" if result.skipped else "")
        )
    write_json(folder / "prepared.json", {"fingerprint": fp, "files": files, "skipped": dict(skipped)})
    return PreparedInput(folder, files, extra, has_caption, dict(skipped))
