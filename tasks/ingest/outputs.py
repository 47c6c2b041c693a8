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


def write_records_as_source(
    records: list[dict],
    output_dir: str | Path,
    *,
    source: str,
    per_shard: int = 1000,
    encode_format: str = "png",
) -> dict:
    """Write records already in memory (generated data: `shapes_world.in_memory_records`) as an
    ingested source: webdataset shards of the ingest's layout and a manifest naming each shard's
    sha256 and split counts. For tests and benchmarks of what reads a source; nothing is fetched."""
    import hashlib
    import io

    from tasks.ingest.prepare import write_json
    from tasks.ingest.read import MANIFEST

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for number, start in enumerate(range(0, len(records), per_shard)):
        path = output_dir / f"{number:05d}.tar"
        chunk = records[start : start + per_shard]
        with wds.TarWriter(str(path)) as sink:
            for i, record in enumerate(chunk):
                image = io.BytesIO()
                record["image"].save(image, format="PNG" if encode_format == "png" else "JPEG")
                meta = {
                    "source_key": record["key"],
                    "caption": record.get("caption") or "",
                    "annotations": json.dumps(record.get("annotations") or {}),
                    "split": record.get("split") or "train",
                }
                sink.write(
                    {
                        "__key__": f"{number:05d}{i:04d}",
                        encode_format: image.getvalue(),
                        "txt": meta["caption"].encode(),
                        "json": json.dumps(meta).encode(),
                    }
                )
        splits: dict[str, int] = {}
        for record in chunk:
            splits[record.get("split") or "train"] = splits.get(record.get("split") or "train", 0) + 1
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        shards.append({"path": path.name, "sha256": digest, "samples": len(chunk), "splits": splits})
    manifest = {"source": source, "shards": shards, "totals": {"success": len(records)}}
    write_json(output_dir / MANIFEST, manifest)
    return manifest
