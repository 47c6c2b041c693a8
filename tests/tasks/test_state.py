"""The state folder is decided in one place: --home, else $VLMPIPE_HOME, else ./.vlmpipe."""

from pathlib import Path

from tasks.state import source_dir, vlmpipe_home
from tasks.tracking import default_tracking_uri


def test_home_precedence_and_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VLMPIPE_HOME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert vlmpipe_home() == tmp_path / ".vlmpipe"
    monkeypatch.setenv("VLMPIPE_HOME", str(tmp_path / "env"))
    assert vlmpipe_home() == tmp_path / "env"
    assert vlmpipe_home("given") == tmp_path / "given"
    assert source_dir("laion", "given") == tmp_path / "given" / "data" / "laion"
    # MLflow's default store follows the same folder, read when asked (not when imported)
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'env' / 'mlflow' / 'mlflow.db'}"
    assert Path(tmp_path / "env" / "mlflow").is_dir()
