"""Models from the MLflow Model Registry (``model=mlflow``) and the champion/challenger gate, against a real
``mlflow server`` (SQLite backend, loopback only, started by the session's ``server`` fixture).

The registered model is the bundled CNN in both of MLflow 3's formats (pt2, pickle) and a degraded copy (its dense
layers re-drawn at random). The pt2 graph is rebuilt as the original modules (``xai.from_exported``), so a run on
it computes what a run on the bundled model computes: the metrics are compared for equality.
"""
import json
import warnings

import mlflow
import mlflow.pytorch
import mlflow.sklearn
import pytest
import torch
from mlflow import MlflowClient

from pipeline.bundled import digits_split, load_default_model
from pipeline.gate import Comparison, compare, main as gate
from pipeline.job import run_job
from pipeline.tracking.identity import changes, input_identity
from pipeline.tracking.registry import load, resolve
from pipeline.tracking.store import fluent_uri

from conftest import compose_config, free_port

RUN = ["experiment=quick", "dataset.limit=8", "batch_size=8", "heatmaps=2", "evaluation.features_in_step=128"]
NAME = "digits"


def degraded(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for layer in (model[1][1], model[1][4]):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * layer.weight.std())
    return model


@pytest.fixture(scope="module")
def registry(server):
    """Versions 1 (pt2), 2 (pickle) and 3 (degraded, pt2) of ``digits``, champion -> 1, challenger -> 3; and a
    scikit-learn model ``tabular``. Returns the versions' logged model ids."""
    from sklearn.linear_model import LogisticRegression

    example = digits_split("test")[0][:4].numpy()
    with fluent_uri(server):
        mlflow.set_experiment("models")
        with mlflow.start_run(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fast = {"pip_requirements": ["torch"]}  # MLflow would infer them in a subprocess: a minute
            ids = [mlflow.pytorch.log_model(load_default_model(), name="pt2", input_example=example,
                                            registered_model_name=NAME, **fast).model_id,
                   mlflow.pytorch.log_model(load_default_model(), name="pickle", serialization_format="pickle",
                                            registered_model_name=NAME, **fast).model_id,
                   mlflow.pytorch.log_model(degraded(load_default_model()), name="degraded",
                                            input_example=example, registered_model_name=NAME, **fast).model_id]
            mlflow.sklearn.log_model(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), name="tabular",
                                     registered_model_name="tabular", pip_requirements=["scikit-learn"])
    client = MlflowClient(server)
    client.set_registered_model_alias(NAME, "champion", "1")
    client.set_registered_model_alias(NAME, "challenger", "3")
    return ids


def results(folder) -> dict[str, float]:
    metrics = json.loads((folder.results / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not k.startswith("runtime/")}


def test_registered_models_in_both_formats_give_the_bundled_models_results_and_are_tagged(server, registry,
                                                                                           tmp_path):
    tracking = [f"tracking.uri={server}", "tracking.experiment=registry"]
    bundled = run_job(compose_config([*RUN, *tracking, "tracking.publish=false"]), tmp_path / "bundled")
    pt2 = run_job(compose_config([*RUN, *tracking, "model=mlflow", f"model.uri=models:/{NAME}@champion"]),
                  tmp_path / "pt2")
    pickled = run_job(compose_config([*RUN, *tracking, "model=mlflow", f"model.uri=models:/{NAME}/2"]),
                      tmp_path / "pickle")
    assert results(pt2) == results(bundled) and results(pickled) == results(bundled)
    assert results(bundled)["faithfulness/srg"] > 0.3

    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name("registry").experiment_id])
    by_version = {run.data.tags["model.registry.version"]: run for run in runs}
    source_run = client.get_model_version(NAME, "1").run_id
    assert {k: v for k, v in by_version["1"].data.tags.items() if k.startswith("model.")} == {
        "model.uri": f"models:/{NAME}@champion", "model.registry.name": NAME, "model.registry.version": "1",
        "model.registry.alias": "champion", "model.registry.run_id": source_run}
    assert "model.registry.alias" not in by_version["2"].data.tags and by_version["2"].data.tags["model"] == "digits-v2"
    linked = client.get_run(by_version["1"].info.run_id).inputs.model_inputs
    assert [m.model_id for m in linked] == [registry[0]]


def test_the_xai_evaluator_on_a_registered_model_gives_the_pipelines_metrics(server, registry, tmp_path):
    """``mlflow.models.evaluate(models:/digits/1, evaluators=["xai"])`` against the server, beside ``model=mlflow``."""
    folder = run_job(compose_config([*RUN, f"tracking.uri={server}", "tracking.publish=false", "model=mlflow",
                                     f"model.uri=models:/{NAME}/1"]), tmp_path / "run")
    images, labels = (t[:8].numpy() for t in digits_split("test"))
    settings = {"method": "lrp", "composite": "epsilon_gamma_box",
                "overrides": ["batch_size=8", "heatmaps=2", "evaluation.features_in_step=128"]}
    with fluent_uri(server):
        experiment = mlflow.create_experiment("evaluate")
        with mlflow.start_run(experiment_id=experiment):
            result = mlflow.models.evaluate(f"models:/{NAME}/1", images.reshape(8, -1), targets=labels,
                                            model_type="classifier", evaluators=["xai"],
                                            evaluator_config={"xai": settings})
    evaluated = {k: v for k, v in result.metrics.items() if not k.startswith("runtime/")}
    assert evaluated == results(folder)


def test_unknown_models_aliases_versions_and_non_torch_models_are_refused_naming_what_exists(server, registry):
    with pytest.raises(ValueError, match=r"no registered model is named 'digitz'; registered: digits, tabular"):
        resolve("models:/digitz@champion", server)
    with pytest.raises(ValueError, match=r"no alias 'prod'; its aliases: challenger \(version 3\), champion"):
        resolve(f"models:/{NAME}@prod", server)
    with pytest.raises(ValueError, match=r"has no version 9; its versions: 1, 2, 3"):
        resolve(f"models:/{NAME}/9", server)
    with pytest.raises(ValueError, match=r"there is no run 0123abcd"):
        resolve("runs:/0123abcd/model", server)
    with pytest.raises(ValueError, match=r"is not a model URI: use models:/<name>@<alias>"):
        resolve("s3://bucket/model", server)
    with pytest.raises(TypeError, match=r"flavor\(s\) .*sklearn.*not a PyTorch one"):
        load(resolve("models:/tabular/1", server))


def test_a_tracking_server_that_is_down_stops_the_run_before_anything_is_computed(tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    cfg = compose_config([*RUN, "model=mlflow", f"model.uri=models:/{NAME}@champion", f"tracking.uri={down}"])
    with pytest.raises(ConnectionError, match=r"unreachable.*start the server.*Nothing was computed"):
        run_job(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_gate_refuses_a_degraded_challenger_then_promotes_a_good_one(server, registry, tmp_path, capsys):
    client = MlflowClient(server)
    args = ["--model", NAME, "--tracking-uri", server, "--experiment", "gate", "--output-root", str(tmp_path)]
    assert gate([*args, "--", *RUN]) == 2
    experiment = client.get_experiment_by_name("gate").experiment_id
    (comparison,) = client.search_runs([experiment], "tags.sweep = 'true'")
    assert comparison.data.tags["gate.verdict"] == "worse"
    assert comparison.data.tags["gate.challenger"] == "challenger (version 3)"
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{comparison.info.run_id}'")
    assert sorted(r.data.tags["model.registry.alias"] for r in children) == ["challenger", "champion"]
    assert client.get_model_version_by_alias(NAME, "champion").version == "1"  # not promoted
    assert "faithfulness/srg (higher is better)" in capsys.readouterr().out

    before = input_identity(compose_config(["model=mlflow", f"model.uri=models:/{NAME}@champion",
                                            f"tracking.uri={server}"]))
    client.set_registered_model_alias(NAME, "challenger", "2")
    assert gate([*args, "--promote", "--min-accuracy", "0.9", "--", *RUN]) == 0
    assert client.get_model_version_by_alias(NAME, "champion").version == "2"
    after = input_identity(compose_config(["model=mlflow", f"model.uri=models:/{NAME}@champion",
                                           f"tracking.uri={server}"]))
    assert changes(before, after) == [f"the model that model.uri names changed (models:/{NAME}/1 {registry[0]} -> "
                                      f"models:/{NAME}/2 {registry[1]})"]


def test_the_gate_fails_without_running_anything_on_an_alias_that_is_not_there(server, registry, tmp_path, capsys):
    code = gate(["--model", NAME, "--challenger", "nightly", "--tracking-uri", server, "--output-root",
                 str(tmp_path)])
    assert code == 1 and "has no alias 'nightly'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_comparisons_follow_each_metrics_direction_and_the_margin():
    srg = Comparison("faithfulness/srg", champion=0.50, challenger=0.47, higher_is_better=True, margin=0.02)
    assert not srg.passes and Comparison("faithfulness/srg", 0.50, 0.49, True, 0.02).passes
    sensitivity, = compare({"robustness/max_sensitivity": 0.10}, {"robustness/max_sensitivity": 0.13},
                           ["robustness/max_sensitivity"], margin=0.02)
    assert not sensitivity.higher_is_better and not sensitivity.passes
    assert not Comparison("faithfulness/srg", 0.5, float("nan"), True, 0.02).passes
    with pytest.raises(ValueError, match=r"the challenger run logged no such metric.*faithfulness/srg"):
        compare({"faithfulness/srg": 0.5}, {}, ["faithfulness/srg"], 0.02)
