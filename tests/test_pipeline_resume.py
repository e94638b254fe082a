"""Nothing lost: a killed run resumes from its finished batches to the same metrics and one MLflow run;
publishing is idempotent, also after an interrupted publish."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from pipeline.config import CONF_DIR
from pipeline.job import KILL_AFTER_BATCHES_ENV, run_job
from pipeline.stages.results import RunFolder
from pipeline.tracking.publishing import RUN_KEY_TAG, publish

# stochastic on purpose: SmoothGrad's noise and the uniform baseline must repeat their draws when resumed
STOCHASTIC = ["method=smoothgrad", "method.samples=4", "evaluation.baseline=uniform", "dataset.limit=14",
              "batch_size=4", "evaluation.features_in_step=128", "heatmaps=2", "tracking.experiment=resume"]


def make_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def runs_of(uri, experiment):
    client = MlflowClient(tracking_uri=uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_killed_run_resumes_to_identical_metrics_and_one_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline.run", *STOCHASTIC, f"tracking.uri={uri}", f"hydra.run.dir={out}"]

    killed = subprocess.run(command, env={**os.environ, KILL_AFTER_BATCHES_ENV: "2"}, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    folder = RunFolder(out)
    assert folder.finished_batches() == {0, 1} and not folder.is_complete
    before = {i: digest(folder.batch_file(i)) for i in (0, 1)}

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 of 4 batches done" in resumed.stdout + resumed.stderr
    assert {i: digest(folder.batch_file(i)) for i in (0, 1)} == before  # finished batches were not redone
    assert folder.is_complete

    reference = run_job(make_cfg([*STOCHASTIC, "tracking.publish=false"]), tmp_path / "uninterrupted")
    metrics = json.loads((folder.results / "metrics.json").read_text())
    expected = json.loads((reference.results / "metrics.json").read_text())
    faithfulness = [k for k in expected if k.startswith(("faithfulness/", "data/", "model/"))]
    assert len(faithfulness) == 7
    assert {k: metrics[k] for k in faithfulness} == {k: expected[k] for k in faithfulness}
    assert (folder.results / "curves.json").read_text() == (reference.results / "curves.json").read_text()
    assert (folder.results / "per_sample.csv").read_text() == (reference.results / "per_sample.csv").read_text()

    (run,) = runs_of(uri, "resume")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["faithfulness/srg"] == pytest.approx(expected["faithfulness/srg"], rel=1e-9)

    run_job(make_cfg([*STOCHASTIC, f"tracking.uri={uri}"]), out)  # complete already: publishing finds the run
    assert [r.info.run_id for r in runs_of(uri, "resume")] == [run.info.run_id]


def test_publishing_twice_or_after_an_interrupted_publish_keeps_one_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = run_job(make_cfg(["method=gradient", "dataset.limit=4", "evaluation.features_in_step=256",
                               "tracking.publish=false"]), tmp_path / "out")
    assert not folder.published_file.exists()

    client = MlflowClient(tracking_uri=uri)
    crashed = client.create_run(client.create_experiment("idem"), tags={RUN_KEY_TAG: folder.manifest["run_key"]})
    client.log_metric(crashed.info.run_id, "faithfulness/srg", -1.0)  # a publish that died halfway

    first = publish(folder, uri, "idem")
    second = publish(folder, uri, "idem")
    assert first == second != crashed.info.run_id
    (run,) = runs_of(uri, "idem")
    assert run.info.run_id == first and run.info.status == "FINISHED"
    assert client.get_run(crashed.info.run_id).info.lifecycle_stage == "deleted"
    assert run.data.metrics["faithfulness/srg"] == json.loads((folder.results / "metrics.json").read_text())[
        "faithfulness/srg"]
    assert json.loads(folder.published_file.read_text()) == [{"tracking_uri": uri, "experiment": "idem", "run_id": first}]


def test_incomplete_folder_is_not_published(tmp_path):
    folder = RunFolder(tmp_path / "empty")
    with pytest.raises(ValueError, match="not complete .*rerun the pipeline command"):
        publish(folder, f"sqlite:///{tmp_path / 'mlflow.db'}", "x")


def test_publish_command_explains_what_is_wrong(tmp_path, capsys):
    from pipeline.publish import main as publish_main

    folder = run_job(make_cfg(["method=gradient", "dataset.limit=2", "evaluation.features_in_step=256",
                               "tracking.publish=false"]), tmp_path / "out")
    folder.complete_file.unlink()
    assert publish_main([str(folder.path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 1
    assert "not published: " in capsys.readouterr().err
    folder.mark_complete()
    assert publish_main([str(folder.path), "--tracking-uri", "http://127.0.0.1:9"]) == 1  # nothing listens there
    assert "unreachable" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        publish_main([str(tmp_path)])  # not an output folder
    assert "not a pipeline output folder" in capsys.readouterr().err
