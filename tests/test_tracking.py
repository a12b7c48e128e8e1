"""`--tracking mlflow` (MONAI's experiment tracking for bundle runs) with the configs as shipped
(issue 9, item 2): parameters, the loss, validation Dice and IoU and the best model land in a local
SQLite store, models/model.pt and checkpoint.pt are written as without tracking, and a run that
fails is marked FAILED, not left RUNNING."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import SMALL, run_bundle

pytestmark = pytest.mark.faults  # issue 9, item 2: part of `pytest -m faults` (docs/reliability.md)

mlflow = pytest.importorskip("mlflow", reason="the `mlflow` extra is not installed (pip install -e '.[mlflow]')")
pytest.importorskip("sqlalchemy", reason="MLflow's SQLite store needs sqlalchemy (the `mlflow` extra)")
from mlflow.tracking import MlflowClient  # noqa: E402


def only_run(uri: str, experiment: str):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {uri}"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_training_with_mlflow_tracking_records_the_run_and_keeps_the_models(tmp_path):
    uri = f"sqlite:///{tmp_path / 'tracking.db'}"
    run_bundle(["training", "--config_file", "configs/train.yaml", "--bundle_root", tmp_path, *SMALL,
                "--max_epochs", "2", "--tracking", "mlflow", "--tracking_uri", uri,
                "--experiment_name", "ds_transunet_test"])  # fmt: skip
    # the models are written as without tracking (MONAI's patch used to replace the validator's handlers)
    assert (tmp_path / "models" / "model.pt").is_file() and (tmp_path / "models" / "checkpoint.pt").is_file()

    client, run = only_run(uri, "ds_transunet_test")
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["max_epochs"] == "2" and params["batch_size"] == "4" and params["roi_size"] == "[64, 64]"
    assert params["preset"] == "tiny" and params["network"] == "DSTransUNet"
    for name in ("val_mean_dice", "val_mean_iou"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1, 2], name
    assert client.get_metric_history(run.info.run_id, "train_loss"), "no loss logged"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "plan.json", "datalist.json"} <= artifacts
    assert any(a.startswith("config_") for a in artifacts), artifacts  # MONAI's executed config
    local = Path(client.download_artifacts(run.info.run_id, "model.pt", str(tmp_path / "download")))
    shipped = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    logged = torch.load(local, map_location="cpu", weights_only=True)
    assert shipped.keys() == logged.keys() and all(torch.equal(shipped[k], logged[k]) for k in shipped)


def test_a_failing_run_is_marked_failed_not_left_running(tmp_path):
    from ignite.engine import Engine
    from monai.handlers import MLFlowHandler, StatsHandler

    from bundle.workflows.handlers import TrackingRecord

    def step(engine, batch):
        if engine.state.iteration == 3:
            raise RuntimeError("disk full")
        return {"loss": 0.5}

    uri = f"sqlite:///{tmp_path / 'tracking.db'}"
    engine = Engine(step)
    MLFlowHandler(tracking_uri=uri, experiment_name="failing", iteration_log=False).attach(engine)
    plan = SimpleNamespace(
        image_size=None,
        roi_size=[64, 64],
        batch_size=2,
        crops_per_image=1,
        intensity="minmax",
        time_budget_minutes=None,
        settings={"preset": "tiny"},
    )
    TrackingRecord(plan, tmp_path / "models", tmp_path / "runs").attach(engine)
    StatsHandler(iteration_log=False).attach(engine)  # re-raises, as in the bundle's trainer
    with pytest.raises(RuntimeError, match="disk full"):
        engine.run(range(5), max_epochs=2)
    _, run = only_run(uri, "failing")
    assert run.info.status == "FAILED"
    assert run.data.params["preset"] == "tiny"
