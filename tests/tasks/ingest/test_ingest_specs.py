"""Source specs: the shipped files load; a bad field gives one SpecError line naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_specs.loader import SpecError
from data_specs.sources import SourceSpec, load_source_spec

SHIPPED = sorted((Path(__file__).resolve().parents[3] / "data_specs" / "sources").glob("*.yaml"))


def test_shipped_source_specs_load():
    names = {p.stem for p in SHIPPED}
    assert {"shapes_world", "laion_synthetic", "cc3m", "sbu", "laion_pyspark"} <= names
    for path in SHIPPED:
        spec = load_source_spec(path)
        assert spec.name
        header = path.read_text().splitlines()[:8]
        assert any("vlmpipe ingest" in line for line in header), f"{path.name}: header lacks the command"
    demo = load_source_spec(SHIPPED[[p.stem for p in SHIPPED].index("shapes_world")])
    from model import get_preset

    # the demo stores images at the size the tiny preset's tower reads
    assert demo.image_size == get_preset("tiny").image_size
    spark = load_source_spec(SHIPPED[[p.stem for p in SHIPPED].index("laion_pyspark")])
    assert spark.distributor == "pyspark" and spark.spark.master.startswith("spark://")


def test_url_list_is_resolved_against_the_spec_folder(write_spec):
    path = write_spec(kind="cc3m", url_list="raw/cc3m.tsv")
    assert load_source_spec(path).url_list == (path.parent / "raw" / "cc3m.tsv").resolve()
    path = write_spec(kind="cc3m", url_list="/abs/cc3m.tsv")
    assert load_source_spec(path).url_list == Path("/abs/cc3m.tsv")


def test_knobs_reach_img2dataset_under_their_own_names(write_spec):
    spec = load_source_spec(write_spec(kind="sbu", url_list="x.json", thread_count=7, max_aspect_ratio=3))
    options = spec.img2dataset_options()
    assert options["thread_count"] == 7 and options["max_aspect_ratio"] == 3
    assert options["max_image_area"] == 89_478_485  # PIL's limit unless the spec says otherwise
    assert spec.fetch_policy()["allow_private_addresses"] is False  # a web source never reaches this machine
    assert options["disallowed_header_directives"] == ["noai", "noimageai", "noindex", "noimageindex"]


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"kind": "shapes_world"}, "shapes_world", "kind shapes_world needs this block"),
        ({"kind": "shapes_world", "shapes_world": {"num_train": 5}, "url_list": "x"}, "url_list", "remove"),
        ({"kind": "cc3m", "url_list": "x", "shapes_world": {"num_train": 5}}, "shapes_world", "only applies"),
        (
            {"kind": "shapes_world", "shapes_world": {"num_train": 0}},
            "shapes_world.num_train",
            "greater than",
        ),
        (
            {"kind": "shapes_world", "shapes_world": {"num_train": 5, "colours": 3}},
            "shapes_world.colours",
            "unknown field",
        ),
        ({"kind": "laion", "url_list": "x.json"}, "kind", "unknown source kind 'laion'"),
        ({"kind": "cc3m"}, "url_list", "kind cc3m needs the file"),
        ({"kind": "url_list", "url_list": "x.csv"}, "input_format", "kind url_list needs it"),
        (
            {"kind": "sbu", "url_list": "x.json", "input_format": "csv"},
            "input_format",
            "fixed published format",
        ),
        ({"kind": "cc3m", "url_list": "x.tsv", "image_sise": 64}, "image_sise", "unknown field"),
        ({"kind": "cc3m", "url_list": "x.tsv", "resize_mode": "stretch"}, "resize_mode", "input should be"),
        ({"kind": "cc3m", "url_list": "x.tsv", "min_success_rate": 1.5}, "min_success_rate", "less than"),
        (
            {"kind": "cc3m", "url_list": "x.tsv", "output_format": "parquet"},
            "output_format",
            "must include webdataset",
        ),
        ({"kind": "cc3m", "url_list": "x.tsv", "distributor": "ray"}, "distributor", "input should be"),
        (
            {"kind": "cc3m", "url_list": "x.tsv", "encode_format": "png", "encode_quality": 95},
            "encode_quality",
            "zlib level",
        ),
        (
            {"kind": "cc3m", "url_list": "x.tsv", "feature_cache": {"dtype": "int8"}},
            "feature_cache.dtype",
            "input should be",
        ),
    ],
)
def test_bad_fields_name_file_and_field(write_spec, fields, field, words):
    path = write_spec(name="bad", **fields)
    with pytest.raises(SpecError) as err:
        load_source_spec(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}: "), message
    assert words.lower() in message.lower(), message


def test_bad_name_and_missing_file(tmp_path, write_spec):
    with pytest.raises(SpecError, match=r": name: string should match pattern"):
        load_source_spec(write_spec(name="Bad Name", kind="cc3m", url_list="x.tsv"))
    with pytest.raises(SpecError, match="no such spec file"):
        load_source_spec(tmp_path / "absent.yaml")


def test_model_has_descriptions_for_every_field():
    for name, field in SourceSpec.model_fields.items():
        assert field.description, f"SourceSpec.{name} has no description"


def test_pyspark_distributor_reaches_the_worker_and_needs_pyspark(tmp_path, monkeypatch):
    import importlib.util

    from tasks.ingest import IngestError, ingest_source
    from tasks.ingest.prepare import PreparedInput
    from tasks.ingest.run import worker_config

    spec = load_source_spec(SHIPPED[[p.stem for p in SHIPPED].index("laion_pyspark")])
    prepared = PreparedInput(tmp_path, [("00000.parquet", 10)], ["similarity", "NSFW"], True, {})
    config = worker_config(spec, prepared, tmp_path / "shards")
    assert config["download"]["distributor"] == "pyspark" and config["download"]["subjob_size"] == 1000
    assert config["spark"]["master"] == "spark://spark-master:7077"
    assert config["download"]["incremental_mode"] == "incremental"
    assert config["download"]["save_additional_columns"] == ["similarity", "NSFW"]
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyspark" else real(name, *a)
    )
    with pytest.raises(IngestError, match=r"distributor pyspark needs pyspark"):
        ingest_source(spec, tmp_path / "out", log=lambda _: None)
