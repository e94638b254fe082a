"""The MLflow evaluator plugin ``xai`` (pipeline.mlflow_evaluator) against the pipeline on the same model and data.

Equality is exact: the plugin runs the pipeline's own explain + score code on the same float32 images, in the
same batches with the same seeds, so every metric but the timings (``runtime/*``) is the same number.
"""
import json

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import infer_signature

from pipeline.bundled import digits_split, load_default_model
from pipeline.job import run_job
from tests.test_pipeline_run import make_cfg

SAMPLES = 16
SETTINGS = {"method": "lrp", "composite": "epsilon_gamma_box", "metrics": ["srg", "road"],
            "overrides": ["evaluation.features_in_step=64", "heatmaps=4", "batch_size=8"]}
PIPELINE = ["method=lrp", "composite=epsilon_gamma_box", "evaluation.metrics=[srg,road]",
            "evaluation.features_in_step=64", "heatmaps=4", "batch_size=8", f"dataset.limit={SAMPLES}",
            "tracking.publish=false"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """(model URI, images, labels, experiment id): the bundled digits model logged (pickle) to a fresh SQLite store,
    artifacts in the same temporary folder."""
    store = tmp_path_factory.mktemp("evaluator")
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    experiment = MlflowClient().create_experiment("xai-evaluator", artifact_location=str(store / "artifacts"))
    model = load_default_model()
    images, labels = (t[:SAMPLES].numpy() for t in digits_split("test"))
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle",
                                        signature=infer_signature(images),  # the (-1, 1, 32, 32) input tensor
                                        pip_requirements=["torch"])  # no requirement inference: seconds saved
    yield info.model_uri, images, labels, experiment
    mlflow.set_tracking_uri(None)


def evaluate(model_uri, data, targets, **config):
    return mlflow.models.evaluate(model_uri, data, targets=targets, model_type="classifier", evaluators=["xai"],
                                  evaluator_config={"xai": config})


def test_metrics_equal_the_pipelines_and_the_results_are_logged(logged, tmp_path):
    model_uri, images, labels, experiment = logged
    with mlflow.start_run(experiment_id=experiment) as run:
        result = evaluate(model_uri, images.reshape(SAMPLES, -1), labels, **SETTINGS)  # shape from the signature

    folder = run_job(make_cfg(PIPELINE), tmp_path / "pipeline")
    expected = json.loads((folder.results / "metrics.json").read_text())
    assert set(result.metrics) == set(expected)
    same = {k: v for k, v in expected.items() if not k.startswith("runtime/")}
    assert {k: result.metrics[k] for k in same} == same
    assert result.metrics["data/samples"] == SAMPLES and "faithfulness/road" in result.metrics

    client = MlflowClient()
    logged_metrics = client.get_run(run.info.run_id).data.metrics
    assert {k: logged_metrics[k] for k in same} == same
    assert len(client.get_metric_history(run.info.run_id, "curve/morf")) == 1024 // 64 + 1
    files = {a.path for path in ("figures", "results", "config") for a in client.list_artifacts(run.info.run_id, path)}
    assert {"figures/gallery.png", "figures/curves.png", "results/per_sample.csv", "config/config.yaml"} <= files
    heatmaps = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    assert len(heatmaps) == 4 and all("heatmap" in p and "sample_0000" in p for p in heatmaps)
    assert result.artifacts["gallery"].uri.endswith("figures/gallery.png")
    assert len(result.artifacts["per_sample"].content) == SAMPLES

    frame = pd.DataFrame({"image": list(images), "label": labels})  # one (C, H, W) array per row
    with mlflow.start_run(experiment_id=experiment):
        again = evaluate(model_uri, frame, "label", **SETTINGS)
    assert {k: again.metrics[k] for k in same} == same


def test_a_bad_evaluator_config_names_the_key_and_the_valid_ones(logged):
    model_uri, images, labels, _ = logged
    flat = images.reshape(SAMPLES, -1)
    with pytest.raises(ValueError, match=r"'methd' unknown to the xai evaluator; valid keys: method: .*composite: "):
        evaluate(model_uri, flat, labels, methd="lrp")
    with pytest.raises(ValueError, match=r"method='lpr' is not one of .*lrp"):
        evaluate(model_uri, flat, labels, method="lpr")
    with pytest.raises(ValueError, match=r"sets model.checkpoint, which the xai evaluator does not take.*overridable"):
        evaluate(model_uri, flat, labels, overrides=["model.checkpoint=x.pt"])
    with pytest.raises(ValueError, match=r"1024 values per image, evaluator_config input_shape \[1, 16, 16\] needs 256"):
        evaluate(model_uri, flat, labels, input_shape=[1, 16, 16])


def test_a_pt2_model_gives_the_pickled_models_metrics_and_a_non_torch_model_the_fix(logged):
    model_uri, images, labels, experiment = logged
    flat = images.reshape(SAMPLES, -1)
    quick = {"overrides": ["evaluation.features_in_step=128", "heatmaps=0"]}
    with mlflow.start_run(experiment_id=experiment):  # MLflow 3's default format: a torch.export graph
        exported = mlflow.pytorch.log_model(load_default_model(), name="exported", serialization_format="pt2",
                                            input_example=images[:2], pip_requirements=["torch"])
        from_graph = evaluate(exported.model_uri, flat, labels, **quick)
    with mlflow.start_run(experiment_id=experiment):
        pickled = evaluate(model_uri, flat, labels, **quick)
    same = [k for k in pickled.metrics if not k.startswith("runtime/")]
    assert {k: from_graph.metrics[k] for k in same} == {k: pickled.metrics[k] for k in same}
    with pytest.raises(TypeError, match=r"explains PyTorch models, got .*log the classifier with mlflow.pytorch"):
        evaluate(lambda rows: rows[:, :10], flat, labels)
