"""Extra output formats written from the validated tars, so one download serves several readers.

`parquet`: img2dataset's parquet output layout (one row per image: key, the image bytes under the
encode format's name, txt, and the sample's metadata), one file per shard under parquet/.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds


def write_parquet_output(
    output_dir: Path, manifest: dict, encode_format: str, log: Callable[[str], None] = print
) -> list[Path]:
    """One parquet per shard (skipped when newer than its tar); returns the files."""
    folder = output_dir / "parquet"
    folder.mkdir(exist_ok=True)
    written = []
    for shard in manifest["shards"]:
        tar = output_dir / shard["path"]
        out = folder / (Path(shard["path"]).stem + ".parquet")
        written.append(out)
        if out.exists() and out.stat().st_mtime >= tar.stat().st_mtime:
            continue
        rows = []
        for sample in sorted(
            wds.WebDataset(str(tar), shardshuffle=False, empty_check=False, nodesplitter=None),
            key=lambda s: s["__key__"],
        ):
            meta = json.loads(sample["json"])
            row = {
                k: v if isinstance(v, str | int | float | bool) or v is None else json.dumps(v)
                for k, v in meta.items()
            }
            row.update(key=sample["__key__"], txt=sample["txt"].decode() if "txt" in sample else None)
            row[encode_format] = sample[encode_format]
            rows.append(row)
        tmp = out.with_suffix(".parquet.tmp")
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        tmp.replace(out)
    log(f"[ingest {manifest['source']}] parquet output: {len(written)} files in {folder}")
    return written
