"""Faults are data: a loopback web of good images and every fault kind, downloaded by the real
img2dataset through the Prefect ingest flow; counts per reason in the manifest and in MLflow equal
what the server served, and a low success rate fails with one line."""

from __future__ import annotations

import argparse
import json

import pytest
from ingest_helpers import FAST_DOWNLOAD, spec_file, url_list_file
from mlflow.tracking import MlflowClient

from data_specs.sources import load_source_spec
from flows.cli.ingest import add_parsers as add_ingest_parser
from flows.cli.ingest import cmd_ingest as cli_ingest
from flows.ingest import ingest_flow
from tasks.ingest import LowSuccessRate, ingest_source
from tasks.ingest.checks import TOO_LARGE, TRUNCATED
from tasks.loopback import FAULT_KINDS, FaultServer, fault_url_rows
from tasks.tracking import start_run

pytestmark = pytest.mark.slow
GOOD, EACH = 40, 3
# what img2dataset (with our truncation check) records for each fault the server answers with
EXPECTED = {
    "not_found": ("failed_to_download", "HTTP Error 404: Not Found", "http_404"),
    "timeout": ("failed_to_download", "timed out", "timeout"),
    "noai": (
        "failed_to_download",
        "Use of image disallowed by X-Robots-Tag directive",
        "disallowed_by_robots",
    ),
    "not_image": ("failed_to_resize", "Image decoding error", "not_an_image"),
    "truncated_jpeg": ("failed_to_resize", TRUNCATED, "truncated"),
    "oversize": ("failed_to_resize", TOO_LARGE, "too_large"),
}


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory, prefect_api):
    root = tmp_path_factory.mktemp("faults")
    with FaultServer(slow_s=3.0, oversize_px=1200) as server:
        rows = fault_url_rows(server.base_url, GOOD, {kind: EACH for kind in FAULT_KINDS}, seed=1)
        spec_path = spec_file(
            root,
            "faults",
            kind="url_list",
            url_list=str(url_list_file(root, rows)),
            input_format="parquet",
            number_sample_per_shard=25,
            max_image_area=1_000_000,
            min_success_rate=0.5,
            **{**FAST_DOWNLOAD, "timeout": 1},
        )
        tracker = start_run("ingest-tests", "faults", tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
        summary = ingest_flow(str(spec_path), str(root / "out"), tracking=tracker.handle())
        served = dict(server.served)
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    return {
        "root": root,
        "spec_path": spec_path,
        "summary": summary,
        "served": served,
        "manifest": manifest,
        "tracker": tracker,
    }


def test_server_served_each_fault(fault_run):
    served = fault_run["served"]
    assert served == {"good": GOOD, "redirected": EACH, **{kind: EACH for kind in FAULT_KINDS}}


def test_manifest_counts_per_reason_equal_what_was_served(fault_run):
    manifest, served = fault_run["manifest"], fault_run["served"]
    assert manifest["totals"]["urls"] == GOOD + EACH * len(FAULT_KINDS)
    # a redirect to a good image is a success; every other fault is counted under its own reason
    assert manifest["totals"]["success"] == served["good"] + served["redirected"]
    expected_by_status: dict[str, dict[str, int]] = {"failed_to_download": {}, "failed_to_resize": {}}
    for kind, (status, message, _) in EXPECTED.items():
        expected_by_status[status][message] = served[kind]
    assert manifest["errors_by_status"] == expected_by_status
    assert manifest["reasons"] == {reason: served[kind] for kind, (_, _, reason) in EXPECTED.items()}
    for status in ("failed_to_download", "failed_to_resize"):
        assert manifest["totals"][status] == sum(expected_by_status[status].values())
    summary = fault_run["summary"]
    assert summary["status"] == {
        s: manifest["totals"][s] for s in ("success", "failed_to_download", "failed_to_resize")
    }
    assert summary["shards"] == 3 and summary["samples"] == manifest["totals"]["success"]


def test_mlflow_holds_the_same_counts_and_the_manifest_as_dataset(fault_run):
    tracker, served, manifest = fault_run["tracker"], fault_run["served"], fault_run["manifest"]
    run = MlflowClient(tracker.tracking_uri).get_run(tracker.run_id)
    metrics = run.data.metrics
    for kind, (_, _, reason) in EXPECTED.items():
        assert metrics[f"failures.{reason}"] == served[kind]
        assert metrics[f"failure_rate.{reason}"] == pytest.approx(served[kind] / manifest["totals"]["urls"])
    assert metrics["success"] == served["good"] + served["redirected"]
    assert metrics["images_per_s"] > 0 and metrics["bytes"] == manifest["totals"]["bytes"]
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "faults" and dataset_input.dataset.digest == manifest["digest"]
    artifacts = {a.path for a in MlflowClient(tracker.tracking_uri).list_artifacts(tracker.run_id, "ingest")}
    assert {"ingest/manifest.json", "ingest/outcomes.json"} <= artifacts


def test_prefect_table_artifact(fault_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ingest-faults"]))
        )
    assert artifacts and artifacts[0].type == "table"
    rows = json.loads(artifacts[0].data) if isinstance(artifacts[0].data, str) else artifacts[0].data
    assert {r["reason"] for r in rows} >= {reason for _, _, reason in EXPECTED.values()}


def test_min_success_rate_fails_with_one_line(fault_run, tmp_path):
    strict = json.loads(json.dumps(load_source_spec(fault_run["spec_path"]).model_dump(mode="json")))
    strict["min_success_rate"] = 0.9  # not a shard-shaping field: the shards are reused, nothing is fetched
    path = spec_file(
        fault_run["root"] / "strict", "faults", **{k: v for k, v in strict.items() if k != "name"}
    )
    with pytest.raises(LowSuccessRate) as err:
        ingest_source(load_source_spec(path), fault_run["root"] / "out", log=lambda _: None)
    message = str(err.value)
    assert "\n" not in message and "below min_success_rate 90%" in message
    totals = fault_run["manifest"]["totals"]
    assert f"({totals['success']} of {totals['urls']} URLs)" in message and "manifest.json" in message
    # through the flow: the counts are still logged, then the flow fails with the same line
    tracker = start_run("ingest-tests", "strict", tracking_uri=fault_run["tracker"].tracking_uri)
    with pytest.raises(LowSuccessRate, match="below min_success_rate"):
        ingest_flow(str(path), str(fault_run["root"] / "out"), tracking=tracker.handle())
    assert (
        MlflowClient(tracker.tracking_uri).get_run(tracker.run_id).data.metrics["failures.http_404"] == EACH
    )


def test_cli_ingest_json_summary(fault_run, capsys):
    parser = argparse.ArgumentParser()
    add_ingest_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "ingest",
            str(fault_run["spec_path"]),
            "--output",
            str(fault_run["root"] / "out"),
            "--json",
            "--no-mlflow",
        ]
    )
    assert args.func is cli_ingest
    capsys.readouterr()
    assert cli_ingest(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["status"] == fault_run["summary"]["status"]
    assert printed["errors"]["HTTP Error 404: Not Found"] == EACH and printed["shards"] == 3
