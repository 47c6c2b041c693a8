"""Turn each published URL-list format into img2dataset's input (parquet: url, caption, extras),
streamed in batches: BLIP's synthetic-caption JSON list of {url, caption}, CC3M's TSV (caption<TAB>url,
no header), SBU's JSON ({image_urls, captions}), and any parquet/CSV/TSV/JSON/JSONL/TXT list.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

Row = dict[str, object]
BATCH_ROWS = 100_000


@dataclass
class ConvertResult:
    rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> rows left out


def iter_json_array(path: Path, chunk_chars: int = 1 << 20) -> Iterator[object]:
    """Items of a top-level JSON array, decoded one at a time from a file read in chunks."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buf, pos, started, eof = "", 0, False, False

        def refill() -> None:
            nonlocal buf, pos, eof
            more = f.read(chunk_chars)
            eof = not more
            buf, pos = buf[pos:] + more, 0

        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(buf):
                if eof:
                    raise ValueError(f"{path}: {'JSON array is not closed' if started else 'empty file'}")
                refill()
                continue
            if not started:
                if buf[pos] != "[":
                    raise ValueError(f"{path}: expected a JSON array (a list of records)")
                started, pos = True, pos + 1
                continue
            if buf[pos] == "]":
                return
            try:
                item, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                if eof:
                    raise ValueError(f"{path}: not valid JSON ({exc})") from None
                refill()  # the item runs past the buffer: read on and decode it again
                continue
            if end == len(buf) and not eof:
                refill()  # a number cut at the buffer's end would decode short
                continue
            pos = end
            yield item


def laion_synthetic_rows(path: Path) -> Iterator[Row]:
    """BLIP's synthetic-caption files (laion_synthetic_filtered_large.json, ccs_synthetic_...)."""
    for item in iter_json_array(path):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: expected records with url and caption, got {type(item).__name__}")
        yield {"url": item.get("url"), "caption": item.get("caption")}


def cc3m_rows(path: Path) -> Iterator[Row]:
    """Conceptual Captions TSV: caption<TAB>url per line, no header, no quoting."""
    with open(path, encoding="utf-8", newline="") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line:
                continue
            caption, _, url = line.rpartition("\t")
            yield {"url": url, "caption": caption}


def sbu_rows(path: Path) -> Iterator[Row]:
    """SBU Captioned Photo Dataset JSON: parallel lists image_urls and captions (user_ids optional)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "image_urls" not in data or "captions" not in data:
        raise ValueError(f"{path}: expected an object with image_urls and captions lists")
    urls, captions = data["image_urls"], data["captions"]
    if len(urls) != len(captions):
        raise ValueError(f"{path}: {len(urls)} image_urls but {len(captions)} captions")
    for url, caption in zip(urls, captions, strict=True):
        yield {"url": url, "caption": caption}


def table_rows(
    path: Path, input_format: str, url_col: str, caption_col: str | None, extra: Iterable[str] = ()
) -> Iterator[Row]:
    """Any URL list with named columns (img2dataset's input formats)."""
    wanted = {url_col: "url", **({caption_col: "caption"} if caption_col else {}), **{c: c for c in extra}}
    if input_format == "txt":
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield {"url": line.strip()}
        return
    if input_format == "json":
        items: Iterable = iter_json_array(path)
    elif input_format == "jsonl":
        items = (json.loads(line) for line in open(path, encoding="utf-8") if line.strip())
    else:
        items = (
            row for batch in _arrow_batches(path, input_format, list(wanted)) for row in batch.to_pylist()
        )
    for item in items:
        missing = [c for c in wanted if c not in item]
        if missing:
            raise ValueError(f"{path}: no column {missing[0]!r} (columns: {', '.join(map(str, item))})")
        yield {new: item[old] for old, new in wanted.items()}


def _arrow_batches(path: Path, input_format: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    if input_format == "parquet":
        file = pq.ParquetFile(path)
        names = file.schema_arrow.names
        for c in columns:
            if c not in names:
                raise ValueError(f"{path}: no column {c!r} (columns: {', '.join(names)})")
        yield from file.iter_batches(batch_size=BATCH_ROWS, columns=columns)
        return
    import pyarrow.csv as csv

    parse = csv.ParseOptions(delimiter="\t" if input_format == "tsv" else ",")
    convert = csv.ConvertOptions(column_types={c: pa.string() for c in columns})
    with csv.open_csv(path, parse_options=parse, convert_options=convert) as reader:
        yield from reader


def write_rows(rows: Iterable[Row], out: Path, columns: list[str]) -> ConvertResult:
    """Write rows as parquet (url, caption first); rows without a usable URL are counted and left out."""
    result = ConvertResult()
    schema = pa.schema([(c, pa.string()) for c in columns])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".parquet.tmp")
    batch: dict[str, list] = {c: [] for c in columns}

    def flush(writer: pq.ParquetWriter) -> None:
        if batch["url"]:
            writer.write_table(pa.table(batch, schema=schema))
            for c in columns:
                batch[c].clear()

    with pq.ParquetWriter(tmp, schema) as writer:
        for row in rows:
            url = row.get("url")
            if not isinstance(url, str) or not url.strip():
                result.skipped["empty url"] += 1
                continue
            for c in columns:
                value = row.get(c)
                batch[c].append(
                    None if value is None and c != "caption" else str(value if value is not None else "")
                )
            result.rows += 1
            if len(batch["url"]) >= BATCH_ROWS:
                flush(writer)
        flush(writer)
    tmp.replace(out)
    return result


def source_rows(
    kind: str,
    path: Path,
    input_format: str | None = None,
    url_col: str = "url",
    caption_col: str | None = "caption",
    extra: Iterable[str] = (),
) -> Iterator[Row]:
    """Rows of one input file of a source of `kind`."""
    if kind == "laion_synthetic":
        return laion_synthetic_rows(path)
    if kind == "cc3m":
        return cc3m_rows(path)
    if kind == "sbu":
        return sbu_rows(path)
    if kind == "url_list":
        return table_rows(path, input_format or "parquet", url_col, caption_col, extra)
    raise ValueError(f"no converter for kind {kind!r}")


def input_files(url_list: Path, kind: str, input_format: str | None) -> list[Path]:
    """The file, or the sorted files of a folder (with the format's extension), of a URL list."""
    if url_list.is_dir():
        suffix = {"laion_synthetic": "json", "cc3m": "tsv", "sbu": "json"}.get(kind, input_format or "")
        files = sorted(p for p in url_list.iterdir() if p.name.endswith("." + suffix))
        if not files:
            raise FileNotFoundError(f"{url_list}: no *.{suffix} files in this folder")
        return files
    if not url_list.is_file():
        raise FileNotFoundError(f"{url_list}: no such URL list")
    return [url_list]
