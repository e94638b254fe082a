"""The tracking side under concurrency and faults: a fresh SQLite store made once, a kill mid-creation, two
publishers of one folder, a server that stops answering, a sweep driver killed. Processes are forked (no re-import), servers bind 127.0.0.1.
"""
import logging
import multiprocessing
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from pipeline.config import CONF_DIR
from pipeline.job import publish_or_explain, run_job
from pipeline.stages.results import RunFolder, read_json, write_json
from pipeline.tracking.publishing import RUN_KEY_TAG, publish
from pipeline.tracking.store import TrackingUnavailable, ensure_store, tracking_client
from pipeline.tracking.sweep_runs import DRIVER_TAG, PARENT_FILE, SWEEP_FILE

FORK = multiprocessing.get_context("fork")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One complete, unpublished results folder (2 digits, Gradient)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["method=gradient", "dataset.limit=2", "batch_size=2",
                                                       "heatmaps=1", "tracking.publish=false"])
    return run_job(cfg, tmp_path_factory.mktemp("folder") / "out")


def in_processes(target, *arg_lists):
    """Run target(*args) in one forked process per argument list, all at once; their exit codes."""
    processes = [FORK.Process(target=target, args=args) for args in arg_lists]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
    return [p.exitcode for p in processes]


def finished_runs(uri, experiment, run_key):
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return [r for r in client.search_runs([found.experiment_id], f"tags.{RUN_KEY_TAG} = '{run_key}'")
            if r.info.status == "FINISHED"]


def test_four_first_publishes_at_once_on_a_fresh_store_all_land_and_the_store_stays_usable(tmp_path, folder):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    codes = in_processes(publish, *[(folder, uri, f"parallel-{i}") for i in range(4)])
    assert codes == [0, 0, 0, 0]
    for i in range(4):
        assert len(finished_runs(uri, f"parallel-{i}", folder.manifest["run_key"])) == 1
    assert not list(tmp_path.glob(".mlflow.db.*.building"))


def test_a_kill_during_store_creation_leaves_no_store_and_the_next_publish_works(tmp_path, folder):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    creator = FORK.Process(target=ensure_store, args=(uri,))
    creator.start()
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".mlflow.db.*.building")) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(creator.pid, signal.SIGKILL)  # mid-creation: the schema is being built in the temporary file
    creator.join()
    assert not (tmp_path / "mlflow.db").exists()  # never a half-made store in place
    publish(folder, uri, "after-kill")
    assert len(finished_runs(uri, "after-kill", folder.manifest["run_key"])) == 1
    assert not list(tmp_path.glob(".mlflow.db.*.building"))


def test_a_broken_store_is_refused_with_the_way_to_recover(tmp_path, folder, caplog):
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # what a creation killed mid-way (before this fix) left
        db.execute("CREATE TABLE experiments (experiment_id INTEGER)")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(TrackingUnavailable, match=r"mlflow.db is broken .* move .*mlflow.db aside, then publish each "
                                                  r"folder again with `python -m pipeline.publish <output folder>`"):
        tracking_client(uri)
    with caplog.at_level(logging.WARNING):
        assert publish_or_explain(folder, uri, "broken", {}) is None  # the folder is kept; the command is printed
    assert "python -m pipeline.publish" in caplog.text


def test_two_publishers_of_one_folder_make_one_run(tmp_path, folder):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_store(uri)
    for trial in range(5):
        codes = in_processes(publish, (folder, uri, f"twice-{trial}"), (folder, uri, f"twice-{trial}"))
        assert codes == [0, 0]
        assert len(finished_runs(uri, f"twice-{trial}", folder.manifest["run_key"])) == 1
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(f"twice-{trial}").experiment_id
        assert len(client.search_runs([experiment], run_view_type=3)) == 1  # none made and deleted either


class Unanswering(BaseHTTPRequestHandler):
    """A tracking server that says it is healthy, then never answers an API call (as one that hangs mid-publish)."""

    release = threading.Event()

    def do_GET(self):
        if self.path.startswith("/health"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
            return
        self.release.wait(120)

    do_POST = do_GET

    def log_message(self, *args):
        pass


def test_a_server_that_stops_answering_ends_in_the_fallback_within_the_bound(folder, caplog):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Unanswering)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        start = time.monotonic()
        with caplog.at_level(logging.WARNING):
            assert publish_or_explain(folder, uri, "hanging", {}, timeout_s=3) is None
        elapsed = time.monotonic() - start
    finally:
        Unanswering.release.set()
        server.shutdown()
    assert elapsed < 3 + 3, f"publishing gave up after {elapsed:.1f} s, bound 3 s (+3 s for the last request)"
    assert "python -m pipeline.publish" in caplog.text and "could not publish" in caplog.text


def test_a_sweep_left_running_by_a_killed_driver_is_marked_killed_by_the_next_publish(tmp_path, folder):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep_dir = tmp_path / "sweep"
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline.run", "--multirun", "method=gradient", "dataset.limit=64",
         "evaluation.features_in_step=1", f"tracking.uri={uri}", "tracking.experiment=orphans",
         f"hydra.sweep.dir={sweep_dir}"],  # 1024 flip steps a sample: still running when killed
        cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (sweep_dir / SWEEP_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        parent = read_json(sweep_dir / SWEEP_FILE)["parent_run_id"]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(parent).info.status == "RUNNING"  # what kill -9 leaves
    elsewhere = client.create_run(client.get_run(parent).info.experiment_id, tags={"sweep": "true",
                                                                                  DRIVER_TAG: "another-host:1"})
    publish(folder, uri, "orphans")
    assert client.get_run(parent).info.status == "KILLED"
    assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"  # its driver may live: left alone


def test_a_rerun_sweep_says_it_logs_a_copy_of_a_config_published_before(tmp_path, folder, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    copy = RunFolder(shutil.copytree(folder.path, tmp_path / "copy"))
    client = tracking_client(uri)
    experiment = client.create_experiment("rerun")
    children = []
    for sweep in ("first", "second"):
        parent = client.create_run(experiment, tags={"sweep": "true"}).info.run_id
        write_json(copy.path / PARENT_FILE, {"parent_run_id": parent, "tracking_uri": uri, "experiment": "rerun"})
        with caplog.at_level(logging.INFO, logger="pipeline.tracking.publishing"):
            children.append(publish(copy, uri, "rerun"))
    assert children[0] != children[1]  # each sweep's parent ranks its own children
    assert (f"these results were published before as run {children[0]}; logging a copy under this sweep's parent "
            f"run {parent}") in caplog.text
