"""``python -m pipeline.scheduled`` as cron runs it: the lock, the exit codes, the regression tag.

The sweep is cut down to one config (gradient on 8 digits) with extra Hydra overrides.
"""
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from pipeline.config import CONF_DIR, config_hash
from pipeline.exit_codes import ExitCode

SMALL = ["hydra.sweeper.params.explainer=gradient-none", "dataset.limit=8", "heatmaps=1", "evaluation.features_in_step=64",
         # the nightly's metrics less the slow ones (its params for these three stay; test_sweep checks them all)
         "evaluation.metrics=[srg,max_sensitivity,avg_sensitivity,local_lipschitz_estimate]"]


def scheduled(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "-m", "pipeline.scheduled", "--lock", str(tmp_path / "nightly.lock"),
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--output-root", str(tmp_path / "out"), *args]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_a_second_instance_exits_75_while_the_lock_is_held(tmp_path):
    with open(tmp_path / "nightly.lock", "w") as held:
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = scheduled(tmp_path, "--", *SMALL)
    assert done.returncode == ExitCode.LOCKED == 75
    assert "another scheduled run (4242) holds" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing ran


def test_a_killed_wrapper_leaves_its_sweep_holding_the_lock(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    slow = ["hydra.sweeper.params.explainer=gradient-none", "dataset.limit=64", "evaluation.features_in_step=1",
            "heatmaps=1"]  # 1024 flip steps: minutes of scoring
    command = [sys.executable, "-m", "pipeline.scheduled", "--lock", str(tmp_path / "nightly.lock"),
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--output-root", str(tmp_path / "out"),
               "--", *slow]
    wrapper = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "out").glob("nightly/*/*/*/*")) and time.monotonic() < deadline:
            time.sleep(0.2)  # until the sweep's first job has its folder: the sweep is running
        assert wrapper.poll() is None, "the sweep ended before the test could kill its wrapper"
        os.kill(wrapper.pid, signal.SIGKILL)
        wrapper.wait()
        done = scheduled(tmp_path, "--", *SMALL)
        assert done.returncode == ExitCode.LOCKED, done.stderr[-2000:]
    finally:
        os.killpg(wrapper.pid, signal.SIGKILL)  # the orphaned sweep: same process group as its wrapper


def test_planted_regression_exits_2_and_tags_the_new_run(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=nightly", "explainer=gradient-none", *SMALL[1:]])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    planted = client.create_run(client.create_experiment("nightly"), run_name="gradient-none",
                                tags={"schedule": "nightly", "config_hash": config_hash(cfg)}).info.run_id
    client.log_metric(planted, "faithfulness/srg", 1.0)  # SRG <= 1: any real run is a drop beyond 0.05
    client.set_terminated(planted)

    done = scheduled(tmp_path, "--threshold", "0.05", "--", *SMALL)
    assert done.returncode == ExitCode.REGRESSION, done.stdout[-2000:] + done.stderr[-3000:]
    assert "1 of 1 config(s) regressed" in done.stdout
    runs = client.search_runs([client.get_experiment_by_name("nightly").experiment_id], "tags.regression = 'true'")
    assert len(runs) == 1 and runs[0].data.tags["regression.previous_run_id"] == planted
    assert runs[0].data.tags["mlflow.parentRunId"]  # a child of tonight's sweep
    assert float(runs[0].data.tags["regression.srg_drop"]) == pytest.approx(1.0 - runs[0].data.metrics["faithfulness/srg"], abs=1e-6)


def test_a_failing_job_exits_1_and_fails_the_parent(tmp_path):
    done = scheduled(tmp_path, "--", *SMALL, "device=no_such_device")
    assert done.returncode == ExitCode.JOB_FAILED, done.stderr[-3000:]
    assert "no_such_device" in done.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("nightly").experiment_id])
    assert [(r.data.tags.get("sweep"), r.info.status) for r in runs] == [("true", "FAILED")]  # no child
    assert runs[0].data.tags["schedule"] == "nightly"


def test_bad_usage_exits_64(tmp_path):
    done = scheduled(tmp_path, "--threshold", "not-a-number")
    assert done.returncode == ExitCode.USAGE
