"""Converting the published URL-list formats (fixtures in the official layouts) to img2dataset's
input, and the checks that turn bad bytes into counted reasons."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_specs.sources import load_source_spec
from tasks.ingest import convert
from tasks.ingest.checks import TRUNCATED, StrictResizer, jpeg_is_truncated
from tasks.ingest.prepare import fingerprint, prepared_input
from tasks.ingest.report import reason_of
from tasks.loopback import sample_jpeg

FIXTURES = Path(__file__).parent / "fixtures"

LAION = [
    (
        "http://farm4.staticflickr.com/3220/2834522405_0ec2a10b47.jpg",
        "a dog running on the beach with a ball",
    ),
    ('https://images.example.org/photos/1128/tram, "blue".jpg', "a blue tram on a city street, with people"),
    ("http://i.pinimg.com/736x/5e/0c/9a/5e0c9a7e.jpg", "café tables under a striped awning"),
]
CC3M = [
    (
        "http://lh6.ggpht.com/-IvRtNLNcG8o/TpFyrudaT6I/AAAAAAAAM6o/_11MuAAKalQ/IMG_3422.JPG?imgmax=800",
        "a very typical bus station",
    ),
    (
        "http://78.media.tumblr.com/3b133294bdc7c7784b7e6f13f2d9a7f1/tumblr_ns3a6uVGRq1t2fvqbo1_500.jpg",
        "sierra looked stunning in this top and this skirt while performing with person at their former university",
    ),
    (
        "http://www.celebrity.example.com/images/2010/premiere.jpg",
        'actor arrives at the premiere of "film" at a theatre, it\'s raining',
    ),
]
SBU = [
    (
        "http://static.flickr.com/2723/4385058960_b0f291553e.jpg",
        "Man sits in a rusted car buried in the sand on Waitarere beach",
    ),
    (
        "http://static.flickr.com/3573/3389961442_1a9d7d7b6b.jpg",
        "Interior design of modern white and brown living room furniture against white wall with a lamp hanging.",
    ),
    ("http://static.flickr.com/3007/3081433330_8d3c6a5ac4.jpg", "Emma in her hat looking super cute"),
]


def _prepare(write_spec, tmp_path, **fields) -> tuple[list[tuple[str, str]], dict]:
    spec = load_source_spec(write_spec(**fields))
    with prepared_input(spec, tmp_path / "out", fingerprint(spec), log=lambda _: None) as prepared:
        rows = [r for name, _ in prepared.files for r in pq.read_table(prepared.folder / name).to_pylist()]
    return [(r["url"], r.get("caption")) for r in rows], prepared.skipped


@pytest.mark.parametrize(
    ("kind", "fixture", "expected"),
    [
        ("laion_synthetic", "laion_synthetic.json", LAION),
        ("cc3m", "cc3m.tsv", CC3M),
        ("sbu", "sbu.json", SBU),
    ],
)
def test_published_formats_give_the_right_pairs(write_spec, tmp_path, kind, fixture, expected):
    pairs, skipped = _prepare(write_spec, tmp_path, kind=kind, url_list=str(FIXTURES / fixture))
    assert pairs == expected
    assert skipped == ({"empty url": 1} if kind == "laion_synthetic" else {})


def test_named_columns_and_extra_columns(write_spec, tmp_path):
    spec = load_source_spec(
        write_spec(
            kind="url_list",
            url_list=str(FIXTURES / "named_columns.csv"),
            input_format="csv",
            url_col="URL",
            caption_col="TEXT",
            save_additional_columns=["similarity"],
        )
    )
    with prepared_input(spec, tmp_path / "out", fingerprint(spec), log=lambda _: None) as prepared:
        rows = pq.read_table(prepared.folder / prepared.files[0][0]).to_pylist()
        assert prepared.extra_columns == ["similarity"]
    assert rows == [
        {"url": "http://example.com/a.jpg", "caption": "a photo, with a comma", "similarity": "0.31"},
        {"url": "http://example.com/b.jpg", "caption": "a plain caption", "similarity": "0.29"},
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "tsv", "txt"])
def test_every_generic_input_format(tmp_path, fmt):
    records = [{"link": f"http://h/{i}.jpg", "text": f"caption {i}"} for i in range(5)]
    path = tmp_path / f"list.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in records))
    elif fmt == "json":
        path.write_text(json.dumps(records))
    elif fmt == "parquet":
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(records), path)
    elif fmt == "tsv":
        path.write_text("link\ttext\n" + "\n".join(f"{r['link']}\t{r['text']}" for r in records))
    else:
        path.write_text("\n".join(r["link"] for r in records))
    rows = list(convert.table_rows(path, fmt, "link", None if fmt == "txt" else "text"))
    assert [r["url"] for r in rows] == [r["link"] for r in records]
    if fmt != "txt":
        assert [r["caption"] for r in rows] == [r["text"] for r in records]


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"url": "http://h/1.jpg"}\n')
    with pytest.raises(ValueError, match="no column 'caption'"):
        list(convert.table_rows(path, "jsonl", "url", "caption"))


def test_json_array_streams_across_chunk_boundaries(tmp_path):
    items = [{"url": f"http://h/{i}.jpg", "caption": "x" * (i % 7) + ', [] {} "q"'} for i in range(300)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(items, indent=1))
    assert list(convert.iter_json_array(path, chunk_chars=64)) == items
    path.write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="expected a JSON array"):
        list(convert.iter_json_array(path))


def test_truncated_jpeg_check():
    whole = sample_jpeg(1, 128)
    assert not jpeg_is_truncated(whole)
    assert jpeg_is_truncated(whole[: len(whole) // 2]) and jpeg_is_truncated(whole[:-2])
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    assert not jpeg_is_truncated(png.getvalue())  # other formats: the decoder decides

    calls = []
    resizer = StrictResizer(lambda stream, bbox=None: calls.append(stream.read()) or ("ok",))
    assert resizer(io.BytesIO(whole[:100]))[-1] == TRUNCATED and not calls
    assert resizer(io.BytesIO(whole)) == ("ok",) and calls == [whole]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("HTTP Error 404: Not Found", "http_404"),
        ("HTTP Error 503: Service Unavailable", "http_503"),
        ("timed out", "timeout"),
        ("<urlopen error timed out>", "timeout"),
        ("Use of image disallowed by X-Robots-Tag directive", "disallowed_by_robots"),
        ("Image decoding error", "not_an_image"),
        (TRUNCATED, "truncated"),
        ("image area too large", "too_large"),
        ("<urlopen error [Errno 111] Connection refused>", "connection_error"),
        ("something new", "other"),
    ],
)
def test_error_messages_map_to_reasons(message, reason):
    assert reason_of(message) == reason
