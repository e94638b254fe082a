"""The pipeline against a real ``mlflow server`` process (SQLite backend, proxied artifacts), checked over HTTP."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline.job import run_job
from pipeline.publish import main as publish_main

from conftest import compose_config as make_cfg, free_port

RUN = ["dataset.limit=10", "batch_size=4", "heatmaps=3", "evaluation.features_in_step=64", "tracking.experiment=srv"]


def runs_of(client: MlflowClient, experiment: str):
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_run_is_logged_completely_to_the_server(server, tmp_path):
    folder = run_job(make_cfg([*RUN, "method=lrp", "composite=epsilon_gamma_box", f"tracking.uri={server}",
                               "+tracking.tags.trigger=test"]), tmp_path / "out")
    client = MlflowClient(tracking_uri=server)
    (run,) = runs_of(client, "srv")
    run_id = run.info.run_id
    assert run.info.run_name == "lrp-epsilon_gamma_box (digits_cnn on digits)" and run.info.status == "FINISHED"
    tags = run.data.tags
    assert {k: tags[k] for k in ("method", "composite", "model", "dataset", "trigger")} == {
        "method": "lrp", "composite": "epsilon_gamma_box", "model": "digits_cnn", "dataset": "digits",
        "trigger": "test"}
    assert len(tags["git_commit"]) == 40 and tags["mlflow.source.git.commit"] == tags["git_commit"]
    params = run.data.params
    assert params["method.name"] == "lrp" and params["composite.low"] == "0.0" and params["composite.high"] == "1.0"
    assert params["dataset.limit"] == "10" and params["dataset.transforms"] == "[]" and params["device"] == "auto"

    expected = json.loads((folder.results / "metrics.json").read_text())
    for key in ("faithfulness/srg", "faithfulness/auc_morf", "faithfulness/auc_lerf", "faithfulness/aopc_morf",
                "runtime/explain_seconds", "runtime/evaluate_seconds", "data/skipped_images"):
        assert run.data.metrics[key] == pytest.approx(expected[key], rel=1e-6)
    curves = json.loads((folder.results / "curves.json").read_text())
    for order in ("morf", "lerf"):
        history = client.get_metric_history(run_id, f"curve/{order}")
        assert [m.step for m in history] == list(range(17))
        np.testing.assert_allclose([m.value for m in history], curves[order], rtol=1e-6)

    images = [a.path for a in client.list_artifacts(run_id, "images")]
    for sample in ("00000", "00001", "00002"):
        assert any(p.startswith(f"images/heatmap~sample_{sample}+step+0+") and p.endswith(".png") for p in images)
    assert not any("sample_00003" in p for p in images)
    assert tags["mlflow.loggedImages"]

    table = json.loads(Path(client.download_artifacts(run_id, "per_sample.json", str(tmp_path))).read_text())
    assert table["columns"][:2] == ["sample_id", "label"] and len(table["data"]) == 10
    artifacts = {a.path for folder_ in ("results", "figures", "config") for a in client.list_artifacts(run_id, folder_)}
    assert {"figures/gallery.png", "figures/curves.png", "results/per_sample.csv", "config/config.yaml"} <= artifacts
    (dataset_input,) = client.get_run(run_id).inputs.dataset_inputs
    assert dataset_input.dataset.name == "digits" and dataset_input.dataset.source_type == "local"
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "evaluation"


def test_server_down_then_publish_gives_one_complete_run(server, tmp_path, caplog):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="pipeline.job"):
        folder = run_job(make_cfg([*RUN, "method=gradient", f"tracking.uri={down}", "tracking.experiment=later"]),
                         tmp_path / "out")
    assert folder.is_complete and not folder.published_file.exists()
    command = f"python -m pipeline.publish {folder.path} --tracking-uri {down} --experiment later"
    assert "unreachable" in caplog.text and command in caplog.text

    done = subprocess.run([sys.executable, "-m", "pipeline.publish", str(folder.path), "--tracking-uri", server],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    client = MlflowClient(tracking_uri=server)
    (run,) = runs_of(client, "later")
    assert run.info.status == "FINISHED" and f"run {run.info.run_id}" in done.stdout
    assert publish_main([str(folder.path), "--tracking-uri", server]) == 0  # again: finds that run
    assert [r.info.run_id for r in runs_of(client, "later")] == [run.info.run_id]
    assert run.data.metrics["faithfulness/srg"] == pytest.approx(
        json.loads((folder.results / "metrics.json").read_text())["faithfulness/srg"], rel=1e-6)
    assert len(client.get_metric_history(run.info.run_id, "curve/morf")) == 17
    assert len(client.list_artifacts(run.info.run_id, "images")) == 6  # 3 heatmaps, each png + webp thumbnail
