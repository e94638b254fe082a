"""``experiment=tune_lrp``: an optuna sweep whose trials are MLflow children, whose best parameters land on the parent
and in a composite file that a later run loads (``composite=tuned/<name>``), and the validation split it tunes on.

The sweep runs once per module (``python -m pipeline.run`` as a subprocess, as in test_sweep.py): 3 trials on 16
validation digits with coarse pixel flipping.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from omegaconf import OmegaConf

from pipeline.bundled import digits_split
from pipeline.config import CONF_DIR, BoxCompositeConf, validate
from pipeline.stages.explain import build_composite
from pipeline.stages.results import read_json
from pipeline.tuning import RESULTS_FILE, TunedComposite

EXPERIMENT = "tune-test"
NAME = "digits_cnn-epsilon_gamma_box"  # the preset's ${model.name}-${composite.name}
SMALL = ["dataset.limit=16", "evaluation.features_in_step=64", "heatmaps=2"]
#: The tiny search space of the test sweep (on the command line, it replaces the preset's wider one).
SPACE = ["composite.gamma=tag(log, interval(0.05, 0.5))", "composite.epsilon=tag(log, interval(1e-8, 1e-4))"]


def pipeline_run(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "-m", "pipeline.run", *overrides]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The tiny tuning sweep, and what it left: the MLflow runs and the folders."""
    root = tmp_path_factory.mktemp("tune")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    done = pipeline_run(root, "experiment=tune_lrp", "hydra.sweeper.n_trials=3", *SPACE, *SMALL,
                        f"output_root={root / 'out'}", f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}")
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return {"root": root, "client": client, "runs": runs, "parents": parents, "children": children}


def test_every_trial_is_a_child_of_one_parent(tuned):
    parents, children = tuned["parents"], tuned["children"]
    assert len(parents) == 1 and len(children) == 3 and len(tuned["runs"]) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" and c.data.params["dataset.split"] == "validation" for c in children)
    # three different points of the search space, each inside its bounds
    gammas = {float(c.data.params["composite.gamma"]) for c in children}
    epsilons = {float(c.data.params["composite.epsilon"]) for c in children}
    assert len(gammas) == 3 and all(0.05 <= g <= 0.5 for g in gammas)
    assert len(epsilons) == 3 and all(1e-8 <= e <= 1e-4 for e in epsilons)


def test_the_parent_holds_the_best_trial(tuned):
    parent, children = tuned["parents"][0], tuned["children"]
    best = max(children, key=lambda c: c.data.metrics["faithfulness/srg"])
    assert parent.data.params["best/composite.gamma"] == best.data.params["composite.gamma"]
    assert parent.data.params["best/composite.epsilon"] == best.data.params["composite.epsilon"]
    srg = best.data.metrics["faithfulness/srg"]
    assert parent.data.metrics["best/faithfulness/srg"] == pytest.approx(srg, abs=1e-9)
    assert parent.data.tags["best/composite"] == f"tuned/{NAME}"
    # optuna maximised what pipeline.run.main returned: the SRG of each run
    optuna = OmegaConf.load(tuned["root"] / "out" / EXPERIMENT / RESULTS_FILE)
    assert optuna.best_value == pytest.approx(srg, abs=1e-9)
    artifacts = [a.path for a in tuned["client"].list_artifacts(parent.info.run_id, "tuned")]
    assert artifacts == [f"tuned/{NAME}.yaml"]


def test_the_tuned_composite_loads_and_reproduces_the_best_trial(tuned):
    root, parent = tuned["root"], tuned["parents"][0]
    conf = root / "out" / "conf"
    assert Path(parent.data.tags["best/file"]) == conf / "composite" / "tuned" / f"{NAME}.yaml"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra.searchpath=[file://{conf}]", f"composite=tuned/{NAME}"])
    validate(cfg)
    assert OmegaConf.get_type(cfg.composite) is BoxCompositeConf  # it starts from the schema: typos fail
    assert cfg.composite.name == "epsilon_gamma_box" and cfg.dataset.split == "test"
    assert cfg.composite.gamma == float(parent.data.params["best/composite.gamma"]) != 0.25
    assert cfg.composite.epsilon == float(parent.data.params["best/composite.epsilon"]) != 1e-6
    assert (cfg.composite.low, cfg.composite.high) == (0.0, 1.0)  # ZBox's bounds still follow the dataset
    build_composite(cfg.composite)

    # the same data with the tuned file: the best trial's config (same hash), and its SRG, computed afresh
    rerun = root / "rerun"
    done = pipeline_run(root, f"hydra.searchpath=[file://{conf}]", f"composite=tuned/{NAME}",
                        "dataset.split=validation", *SMALL, f"output_root={rerun}", "tracking.publish=false")
    assert done.returncode == 0, done.stderr[-3000:]
    [metrics] = list(rerun.glob("*/*/*/*/results/metrics.json"))
    best = max(tuned["children"], key=lambda c: c.data.metrics["faithfulness/srg"])
    assert read_json(metrics.parents[1] / "manifest.json")["config_hash"] == best.data.tags["config_hash"]
    assert read_json(metrics)["faithfulness/srg"] == pytest.approx(best.data.metrics["faithfulness/srg"], abs=1e-6)


def test_from_the_folder_of_the_default_output_root_the_file_loads_by_name_alone(tuned, tmp_path, monkeypatch):
    """conf/config.yaml searches outputs/conf (of the working folder): where output_root is the default."""
    written = tuned["root"] / "out" / "conf" / "composite" / "tuned" / f"{NAME}.yaml"
    target = tmp_path / "outputs" / "conf" / "composite" / "tuned"
    target.mkdir(parents=True)
    (target / written.name).write_text(written.read_text())
    monkeypatch.chdir(tmp_path)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"composite=tuned/{NAME}"])
    assert cfg.composite.gamma == float(tuned["parents"][0].data.params["best/composite.gamma"])


def test_the_callback_refuses_a_sweep_that_cannot_become_a_composite_file_before_any_trial(capsys):
    callback = TunedComposite(conf_dir="conf", name=NAME)
    optuna = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    beyond = OmegaConf.create({"hydra": {"sweeper": {"_target_": optuna, "params": {
        "composite.gamma": "interval(0.01, 1)", "seed": "range(3)"}}}})
    basic_sweeper = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    basic = OmegaConf.create({"hydra": {"sweeper": {"_target_": basic_sweeper, "params": {"composite.gamma": "0.1"}}}})
    refusals = [(beyond, "hydra.sweeper.params may search only composite.* keys for a tuned composite (got seed)"),
                (basic, "the tuned_composite callback needs hydra/sweeper=optuna")]
    for config, message in refusals:
        with pytest.raises(SystemExit) as exited:  # not an exception: Hydra would only warn and run every trial
            callback.on_multirun_start(config)
        assert exited.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(ValueError, match="hydra.callbacks.tuned_composite.name"):
        TunedComposite(conf_dir="conf", name="../escape")


def test_validation_is_a_stratified_part_of_train_disjoint_from_test():
    train, _ = digits_split("train")
    test, _ = digits_split("test")
    validation, labels = digits_split("validation")
    as_keys = lambda images: {bytes(image.numpy().tobytes()) for image in images}  # noqa: E731
    assert len(validation) == 288 and as_keys(validation) <= as_keys(train)
    assert not as_keys(validation) & as_keys(test)
    assert torch.bincount(labels, minlength=10).min() >= 28  # every class, in train's proportions
    assert torch.equal(digits_split("validation")[0], validation)  # deterministic
    with pytest.raises(ValueError, match="dataset.split=val is not a split of the bundled digits; available: train, "
                                         "validation, test"):
        digits_split("val")
