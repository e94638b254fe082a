"""Multiruns: one MLflow parent run per sweep (created before the jobs), one child run per job.

Each test runs ``python -m pipeline.run -m ...`` as a subprocess in its own folder and SQLite file, on 8
digits with the gradient methods (cheap), and reads the result back with MLflow's own client.
"""
import os
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from pipeline.publish import main as publish_main
from pipeline.stages.results import RunFolder, read_json
from pipeline.tracking.sweep_runs import PARENT_FILE, SWEEP_FILE

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "sweep-test"


def run_sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [
        sys.executable, "-m", "pipeline.run", "-m", "explainer=gradient-none,input_x_gradient-none",
        "dataset.limit=8", "heatmaps=2", "evaluation.features_in_step=64",
        f"output_root={tmp_path / 'out'}", f"tracking.uri={uri(tmp_path)}", f"tracking.experiment={EXPERIMENT}",
        *overrides,
    ]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def runs_by_kind(tmp_path: Path):
    client = MlflowClient(tracking_uri=uri(tmp_path))
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children, runs


def test_joblib_sweep_makes_one_parent_with_two_children(tmp_path):
    done = run_sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert done.returncode == 0, done.stderr[-3000:]
    client, parents, children, runs = runs_by_kind(tmp_path)

    assert len(parents) == 1 and len(runs) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["launcher"] == "JoblibLauncher"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.info.run_name for c in children) == ["gradient-none (digits_cnn on digits)", "input_x_gradient-none (digits_cnn on digits)"]
    assert all(c.info.status == "FINISHED" and "faithfulness/srg" in c.data.metrics for c in children)
    # the parent was created before the jobs started, and it holds the ranking of its children
    assert parent.info.start_time < min(c.info.start_time for c in children)
    ranking = client.download_artifacts(parent.info.run_id, "comparison/ranking.csv", str(tmp_path))
    ranked = Path(ranking).read_text().splitlines()[1:]
    best = max(children, key=lambda c: c.data.metrics["faithfulness/srg"])
    assert ranked[0].startswith(best.info.run_name) and len(ranked) == 2
    assert parent.data.tags["best_run"].startswith(best.info.run_name)


def test_basic_sweep_deferred_publish_lands_under_the_parent(tmp_path):
    done = run_sweep(tmp_path, "tracking.publish=false")
    assert done.returncode == 0, done.stderr[-3000:]
    client, parents, children, runs = runs_by_kind(tmp_path)
    assert len(parents) == 1 and children == [] and len(runs) == 1  # nothing published yet
    parent_id = parents[0].info.run_id
    assert parents[0].data.tags["launcher"] == "BasicLauncher"
    assert read_json(tmp_path / "out" / EXPERIMENT / SWEEP_FILE)["parent_run_id"] == parent_id

    folders = sorted(p.parent for p in (tmp_path / "out" / EXPERIMENT).glob(f"*/*/*/{PARENT_FILE}"))
    assert len(folders) == 2 and all(RunFolder(f).is_complete for f in folders)
    for folder in folders:
        assert publish_main([str(folder)]) == 0
    assert publish_main([str(folders[0])]) == 0  # publishing again finds the run it made
    client, parents, children, runs = runs_by_kind(tmp_path)
    assert len(children) == 2 and len(runs) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent_id}
    assert {c.data.tags["output_dir"] for c in children} == {str(f.resolve()) for f in folders}



def test_nightly_sweeps_every_method_and_every_lrp_composite_once():
    """On the CNN every method and the CNN composites; on the ViT (``digits_vit/<pair>``) the attention composites
    and the rule-free methods that apply to it; each LRP composite once in all."""
    from hydra import compose, initialize_config_dir

    from pipeline.config import CONF_DIR, run_name, validate
    from pipeline.stages.explain import COMPOSITES, METHODS, uses_composite
    from pipeline.stages.metrics import SPECS, MetricSuite

    rule_free = {f"{m}-none" for m in METHODS if not uses_composite(m)}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        nightly = compose(config_name="config", overrides=["experiment=nightly"], return_hydra_config=True)
        swept = nightly.hydra.sweeper.params.explainer.split(",")
        on_vit = [e.removeprefix("digits_vit/") for e in swept if e.startswith("digits_vit/")]
        on_cnn = [e for e in swept if "/" not in e]
        assert len(on_cnn) + len(on_vit) == len(swept) == len(set(swept))
        assert rule_free == {e for e in on_cnn if not e.startswith("lrp-")} and rule_free >= {
            e for e in on_vit if not e.startswith("lrp-")}
        composites = [e.removeprefix("lrp-") for e in on_cnn + on_vit if e.startswith("lrp-")]
        assert sorted(composites) == sorted(COMPOSITES)
        assert {"lrp-cp_lrp", "lrp-attn_lrp", "gradient-none", "integrated_gradients-none"} <= set(on_vit)
        assert nightly.hydra.mode.name == "MULTIRUN" and nightly.tracking.tags.schedule == "nightly"
        assert set(nightly.evaluation.metrics) == {n for n, spec in SPECS.items() if not spec.needs_mask} - {
            "sparseness", "entropy"}  # all that apply to the digits (complexity is always scored)
        for explainer in swept:
            cfg = compose(config_name="config", overrides=["experiment=nightly", f"explainer={explainer}"])
            validate(cfg)
            MetricSuite(cfg.evaluation, has_masks=False)  # every metric name and parameter is valid
            pair = explainer.removeprefix("digits_vit/")
            assert run_name(cfg.method.name, cfg.composite.name) == pair  # the pair is what the run is named
            assert cfg.model.name == ("digits_vit" if pair != explainer else "digits_cnn")
