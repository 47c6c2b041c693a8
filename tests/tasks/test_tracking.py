"""A failed step's MLflow run ends FAILED with its traceback as error.txt; an interrupted one KILLED."""

import pytest
from mlflow.tracking import MlflowClient

from tasks.stopping import Interrupted
from tasks.tracking import tracked_run


def test_failed_and_interrupted_runs_end_with_their_status_and_traceback(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ValueError):
        with tracked_run("t", "fails", tracking_uri=uri) as failed:
            raise ValueError("bad data in shard 3")
    with pytest.raises(Interrupted):
        with tracked_run("t", "stopped", tracking_uri=uri) as stopped:
            raise Interrupted(15)
    client = MlflowClient(uri)
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert client.get_run(stopped.run_id).info.status == "KILLED"
    client.download_artifacts(failed.run_id, "error.txt", str(tmp_path))
    text = (tmp_path / "error.txt").read_text()
    assert "Traceback" in text and "bad data in shard 3" in text
