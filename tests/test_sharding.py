"""Sharded evaluation: shards of whole batches, merged into one run equal to the unsharded one.

Tolerance 1e-6 (absolute) on metrics and per-sample scores: shards and the unsharded run compute the
same batches with the same seeds; only thread counts (and so float32 summation order inside the
model) may differ between processes. The launcher tests run the real CLI as a multirun with
``hydra/launcher=joblib`` and ``submitit_local``, one thread per process (2 cores).
"""
import importlib.util
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from pipeline.config import CONF_DIR, config_hash
from pipeline.job import KILL_AFTER_BATCHES_ENV, run_job
from pipeline.merge import IncompleteShards, ShardSet, find_shard_sets, merge
from pipeline.stages.data import batch_plan, plan_index, select_samples
from pipeline.stages.explain import build_analyzer
from pipeline.stages.models import load_model

TOLERANCE = 1e-6
#: The config of the launcher tests: 24 digits in 3 batches of 8, so 3 shards of one batch each.
SMALL = ["method=gradient", "dataset.limit=24", "batch_size=8", "heatmaps=4", "evaluation.features_in_step=64"]


def make_cfg(overrides, hydra=False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def metrics_of(folder):
    return json.loads((folder.results / "metrics.json").read_text())


def assert_same_results(merged, unsharded):
    """Same per-sample table (ids, labels, targets exactly; scores within the tolerance) and same metrics."""
    a, b = (pd.read_csv(f.results / "per_sample.csv") for f in (merged, unsharded))
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for column in ("sample_id", "label", "prediction", "target"):
        assert a[column].tolist() == b[column].tolist()
    np.testing.assert_allclose(a.drop(columns="sample_id").to_numpy(float), b.drop(columns="sample_id").to_numpy(float),
                               atol=TOLERANCE, rtol=0)
    got, want = metrics_of(merged), metrics_of(unsharded)
    for key in [k for k in want if not k.startswith("runtime/")]:
        assert got[key] == pytest.approx(want[key], abs=TOLERANCE), key
    assert merged.manifest["dataset"]["digest"] == unsharded.manifest["dataset"]["digest"]


@pytest.mark.parametrize("total,limit,num_shards,batch_size", [(10, 7, 3, 1), (360, None, 4, 32), (50, 50, 2, 8), (5, None, 1, 2)])
def test_shards_are_whole_batches_that_cover_the_selection_exactly_once(total, limit, num_shards, batch_size):
    everything = select_samples(total, limit, batch_size=batch_size)
    plan = batch_plan(everything, batch_size)
    shards = [select_samples(total, limit, num_shards, i, batch_size) for i in range(num_shards)]
    assert sorted(sum(shards, [])) == everything  # covered once: no padding, no repetition, nothing dropped
    assert shards == [select_samples(total, limit, num_shards, i, batch_size) for i in range(num_shards)]
    for shard, ids in enumerate(shards):
        for k, batch in enumerate(batch_plan(ids, batch_size)):  # the shard's k-th batch is a batch of the plan
            assert batch == plan[plan_index(k, num_shards, shard)]


def test_more_shards_than_batches_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="dataset.num_shards=4 is more than the 3 batches of batch_size=8: .*at most dataset.num_shards=3"):
        select_samples(24, num_shards=4, shard=0, batch_size=8)


def test_shards_share_the_config_identity_and_live_below_its_folder():
    plain = make_cfg(SMALL, hydra=True)
    shard = make_cfg(SMALL + ["dataset.num_shards=3", "dataset.shard=2"], hydra=True)
    assert config_hash(plain) == config_hash(shard)
    assert config_hash(plain) != config_hash(make_cfg(SMALL + ["batch_size=4"]))  # the batch plan is identity
    assert shard.hydra.run.dir == f"{plain.hydra.run.dir}/shard-2-of-3"
    assert shard.hydra.sweep.subdir == f"{plain.hydra.sweep.subdir}/shard-2-of-3"


def test_smoothgrad_shards_merge_to_the_unsharded_run_and_a_missing_shard_blocks_the_merge(tmp_path):
    """SmoothGrad draws noise per batch: equal results need each batch's seed from the unsharded plan."""
    base = ["method=smoothgrad", "composite=none", "method.samples=4", "dataset.limit=12", "batch_size=4", "heatmaps=8",
            "evaluation.features_in_step=128", "tracking.publish=false"]
    unsharded = run_job(make_cfg(base), tmp_path / "cfg")
    shards = ShardSet(tmp_path / "cfg", 3)
    shard_cfg = lambda i: make_cfg(base + ["dataset.num_shards=3", f"dataset.shard={i}"])  # noqa: E731
    for i in (0, 2):
        run_job(shard_cfg(i), shards.folder(i).path)

    with pytest.raises(IncompleteShards, match=r"shard\(s\) 1 of 3 missing") as refused:
        merge(shards)
    assert refused.value.missing == [1]
    assert "dataset.shard=1" in str(refused.value) and f"hydra.run.dir={shards.folder(1).path}" in str(refused.value)
    assert not shards.merged.path.exists()

    run_job(shard_cfg(1), shards.folder(1).path)  # the rerun of the missing shard
    assert find_shard_sets(tmp_path) == [shards]
    merged = merge(shards)
    assert merged.is_complete and merged.manifest["batches"] == unsharded.manifest["batches"]
    assert_same_results(merged, unsharded)
    heatmaps = merged.read_batches()["heatmap_attribution"]
    np.testing.assert_allclose(heatmaps, unsharded.read_batches()["heatmap_attribution"], atol=TOLERANCE, rtol=0)

    # The check has teeth: batch 1 (shard 1's only batch) seeded as the first batch of its shard differs.
    cfg = make_cfg(base)
    model = load_model(cfg.model, torch.device("cpu"))
    x = unsharded.read_batches()["heatmap_x"][4:8]
    naive = build_analyzer(model, cfg.method, cfg.composite, seed=cfg.seed)(torch.as_tensor(x)).attribution
    assert np.abs(naive.numpy() - heatmaps[4:8]).max() > 1e-3


# --- launchers: the real CLI as a multirun ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def unsharded_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference") / "cfg"
    return run_job(make_cfg(SMALL + ["tracking.publish=false"]), folder)


def cli(tmp_path, *args, env=None):
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} | (env or {})
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def multirun(tmp_path, *overrides, env=None, check=True):
    done = cli(tmp_path, "pipeline.run", "-m", *overrides, f"output_root={tmp_path / 'out'}",
               f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "tracking.experiment=scale", env=env)
    assert done.returncode == 0 or not check, done.stderr[-3000:]
    return done


def runs_of(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("scale")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return client, [r for r in runs if r.data.tags.get("sweep") != "true"]  # not the sweep's parent run


RAY = importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None


@pytest.mark.parametrize("launcher", [
    ["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"],
    ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
    pytest.param(["hydra/launcher=ray_cluster", "hydra.launcher.ray.init.address=null",  # a private local Ray
                  "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.init.include_dashboard=false"],
                 marks=pytest.mark.skipif(not RAY, reason="pip install .[ray]")),
], ids=["joblib", "submitit_local", "ray"])
def test_three_shard_multirun_ends_in_one_merged_run_equal_to_the_unsharded_run(tmp_path, launcher, unsharded_reference):
    multirun(tmp_path, *launcher, *SMALL, "dataset.num_shards=3", "dataset.shard=0,1,2")

    client, runs = runs_of(tmp_path)
    assert len(runs) == 1, "shard jobs must not publish; the merge publishes one run"
    (run,) = runs
    assert run.data.tags["shards"] == "3" and run.info.status == "FINISHED"
    (parent,) = [r for r in client.search_runs([run.info.experiment_id]) if r.data.tags.get("sweep") == "true"]
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id  # a child of the sweep, like unsharded jobs
    (shards,) = find_shard_sets(tmp_path / "out")
    assert run.data.tags["run_key"] == shards.merged.manifest["run_key"]
    assert_same_results(shards.merged, unsharded_reference)
    want = metrics_of(unsharded_reference)
    for key in ("faithfulness/srg", "faithfulness/auc_morf", "faithfulness/auc_lerf", "faithfulness/aopc_morf"):
        assert run.data.metrics[key] == pytest.approx(want[key], abs=TOLERANCE)
    curve = [m.value for m in client.get_metric_history(run.info.run_id, "curve/morf")]
    np.testing.assert_allclose(curve, json.loads((unsharded_reference.results / "curves.json").read_text())["morf"],
                               atol=TOLERANCE)

    # The rerun command a refused merge prints recomputes exactly that shard, into its folder.
    command = shlex.split(shards.rerun_command(1))
    assert command[:3] == ["python", "-m", "pipeline.run"]
    again = make_cfg(command[3:], hydra=True)
    assert again.hydra.run.dir == str(shards.folder(1).path.resolve())
    assert config_hash(again) == shards.merged.manifest["config_hash"] and again.dataset.shard == 1


def test_a_failed_shard_is_named_with_its_rerun_command_and_rerunning_it_alone_completes_the_merge(tmp_path, unsharded_reference):
    # Shard 0 holds batches 0 and 2, shard 1 batch 1: killing every job after its 2nd batch fails shard 0 only.
    # submitit runs each shard in its own process: under joblib, the killed worker breaks the pool and takes shard 1 down too.
    failed = multirun(tmp_path, "hydra/launcher=submitit_local", *SMALL, "dataset.num_shards=2", "dataset.shard=0,1",
                      env={KILL_AFTER_BATCHES_ENV: "2"}, check=False)
    assert failed.returncode != 0
    (shards,) = find_shard_sets(tmp_path / "out")
    assert shards.incomplete() == [0] and not (shards.merged.path / "COMPLETE").exists()
    assert "shard(s) 0 of 2 missing or incomplete" in failed.stdout + failed.stderr
    assert f"shard 0: {shards.rerun_command(0)}" in failed.stdout + failed.stderr
    assert runs_of(tmp_path)[1] == []  # nothing published

    command = shlex.split(shards.rerun_command(0))
    assert cli(tmp_path, *command[2:]).returncode == 0  # `python -m pipeline.run ...` with this interpreter
    merged = cli(tmp_path, "pipeline.merge", str(tmp_path / "out"))
    assert merged.returncode == 0, merged.stderr[-3000:]
    (run,) = runs_of(tmp_path)[1]
    assert run.data.tags["shards"] == "2"
    assert_same_results(shards.merged, unsharded_reference)


def test_parallel_jobs_on_one_sqlite_store_lose_no_run(tmp_path):
    multirun(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "method=gradient,input_x_gradient",
             "seed=0,1", "dataset.limit=4", "evaluation.features_in_step=256")
    _, runs = runs_of(tmp_path)
    assert sorted((r.data.tags["method"], r.data.params["seed"]) for r in runs) == [
        ("gradient", "0"), ("gradient", "1"), ("input_x_gradient", "0"), ("input_x_gradient", "1")]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_slurm_preset_is_a_submitit_slurm_array_with_gpu_time_limit_and_partition_from_config():
    cfg = make_cfg(["hydra/launcher=slurm_gpu", "hydra.launcher.partition=a100", "hydra.launcher.timeout_min=30"], hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_node) == ("a100", 30, 1)


def test_ray_preset_connects_to_a_cluster_without_the_launchers_object_store_default():
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="pip install .[ray]")
    init = make_cfg(["hydra/launcher=ray_cluster"], hydra=True).hydra.launcher.ray.init
    assert init.address == "auto" and "object_store_memory" in init and init.object_store_memory is None
