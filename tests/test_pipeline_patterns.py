"""method=pattern_net / pattern_attribution: patterns fitted once per model and fit data, cached, logged."""
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

import xai
from pipeline.bundled import digits_split, load_default_model
from pipeline.job import run_job
from pipeline.stages.patterns import model_digest
from tests.test_pipeline_run import make_cfg

FIT_LIMIT = 256  # the first 256 training digits: enough for the check, a quarter of the fit time of all


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("output_root")


def pattern_cfg(method, cache, *more):
    return make_cfg([f"explainer={method}-none", "dataset.limit=3", "heatmaps=3", "tracking.publish=false",
                     "evaluation.steps=4", f"method.fit_limit={FIT_LIMIT}", f"output_root={cache}", *more])


@pytest.mark.parametrize("method, analyzer", [("pattern_net", xai.PatternNet),
                                              ("pattern_attribution", xai.PatternAttribution)])
def test_pattern_methods_in_the_pipeline_equal_the_api(tmp_path, cache, method, analyzer):
    folder = run_job(pattern_cfg(method, cache), tmp_path / "out")
    model = load_default_model()
    patterns = xai.fit_patterns(model, digits_split("train")[0][:FIT_LIMIT].split(64), progress=False)
    expected = analyzer(model, patterns)(digits_split("test")[0][:3]).attribution.numpy()
    np.testing.assert_allclose(folder.read_batches()["heatmap_attribution"], expected, rtol=0, atol=1e-6)
    assert folder.manifest["method"] == method and folder.manifest["composite"] == "none"
    assert len(list((cache / "patterns").glob("*.pt"))) == 1  # both methods share one fit


def test_patterns_are_fitted_once_per_model_and_data_and_logged(tmp_path, cache, monkeypatch):
    run_job(pattern_cfg("pattern_net", cache), tmp_path / "first")
    cached = sorted((cache / "patterns").glob("*.pt"))

    def refuse(*args, **kwargs):
        raise AssertionError("the cached patterns should have been reused")

    monkeypatch.setattr(xai, "fit_patterns", refuse)
    db = tmp_path / "mlflow.db"
    folder = run_job(pattern_cfg("pattern_net", cache, "dataset.limit=2", f"tracking.uri=sqlite:///{db}",
                                 "tracking.experiment=t", "tracking.publish=true"), tmp_path / "second")
    assert (folder.path / "patterns.pt").read_bytes() == cached[0].read_bytes()
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    run_id = client.search_runs([client.get_experiment_by_name("t").experiment_id])[0].info.run_id
    assert "results/patterns.pt" in {a.path for a in client.list_artifacts(run_id, "results")}
    with pytest.raises(AssertionError, match="should have been reused"):  # other fit data: a new fit
        run_job(pattern_cfg("pattern_net", cache, "method.fit_limit=128"), tmp_path / "third")


def test_the_model_digest_changes_with_any_parameter_or_buffer():
    model = load_default_model()
    before = model_digest(model)
    assert model_digest(load_default_model()) == before
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-7
    assert model_digest(model) != before
