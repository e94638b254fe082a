"""End-to-end runs of the pipeline (in-process and as ``python -m pipeline.run``) on small inputs.

The gradient run is checked against code nobody here wrote: Captum's Saliency for the attributions and
Quantus's PixelFlipping for the MoRF curves (tolerance 1e-5 absolute on probabilities: both sides run the
same float32 forwards, differing only in batch composition).
"""
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient
from PIL import Image
from torch import nn

from pipeline.bundled import digits_split, load_default_model
from pipeline.config import CONF_DIR
from pipeline.job import run_job
from pipeline.stages.models import load_model
from pipeline.stages.results import RunFolder
from xai.perturbation.features import slic_segments

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5


def make_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def quantus_morf_curve(model, x, attribution, target, features_in_step):
    import quantus

    metric = quantus.PixelFlipping(features_in_step=features_in_step, perturb_baseline=0.0, normalise=False,
                                   return_auc_per_sample=False, disable_warnings=True, display_progressbar=False)
    scores = metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=attribution.numpy(),
                    channel_first=True, softmax=True, device="cpu", batch_size=len(x))
    return np.asarray(scores, dtype=np.float32)


def test_gradient_run_matches_captum_and_quantus_and_is_tracked(tmp_path):
    from captum.attr import Saliency

    db = tmp_path / "mlflow.db"
    cfg = make_cfg(["method=gradient", "composite=none", "dataset.limit=12", "batch_size=5", "heatmaps=3",
                    "evaluation.features_in_step=64", f"tracking.uri=sqlite:///{db}", "tracking.experiment=t"])
    folder = run_job(cfg, tmp_path / "out")
    assert folder.is_complete
    arrays = folder.read_batches()
    assert arrays["sample_id"].tolist() == list(range(12))  # three batches 5 + 5 + 2, in order

    model = load_default_model()
    x = digits_split("test")[0][:12]
    predicted = model(x).argmax(1)
    expected_attribution = Saliency(model).attribute(x, target=predicted, abs=False).detach()
    np.testing.assert_allclose(arrays["heatmap_attribution"], expected_attribution[:3].numpy(), atol=1e-6, rtol=1e-4)
    assert arrays["heatmap_ids"].tolist() == [0, 1, 2]
    assert (arrays["target"] == predicted.numpy()).all()

    expected_curve = quantus_morf_curve(model, x, expected_attribution, predicted, features_in_step=64)
    assert arrays["curve_morf"].shape == (12, 1024 // 64 + 1)
    np.testing.assert_allclose(arrays["curve_morf"][:, 1:], expected_curve, atol=TOLERANCE, rtol=0)
    assert np.ptp(expected_curve, axis=1).min() > 0.05  # the curves move, so the equality means something

    table = pd.read_csv(folder.results / "per_sample.csv")
    metrics = json.loads((folder.results / "metrics.json").read_text())
    np.testing.assert_allclose(table.srg, table.auc_lerf - table.auc_morf, atol=1e-6)
    assert metrics["faithfulness/srg"] == pytest.approx(table.srg.mean(), abs=1e-6)
    assert metrics["faithfulness/aopc_morf"] == pytest.approx(
        (arrays["curve_morf"][:, :1] - arrays["curve_morf"]).mean(), abs=1e-6)  # Samek et al. 2017, eq. 12

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "gradient-none (digits_cnn on digits)" and run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("method", "composite", "model", "dataset")} == {
        "method": "gradient", "composite": "none", "model": "digits_cnn", "dataset": "digits"}
    assert run.data.params["dataset.limit"] == "12" and run.data.params["evaluation.features_in_step"] == "64"
    assert run.data.metrics["faithfulness/srg"] == pytest.approx(metrics["faithfulness/srg"])
    history = client.get_metric_history(run.info.run_id, "curve/morf")
    assert [m.step for m in history] == list(range(17))
    np.testing.assert_allclose([m.value for m in history], arrays["curve_morf"].mean(0), atol=1e-6)


def test_quickstart_command_runs_from_any_directory_with_the_default_tracking_uri(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.run", "method=lrp", "composite=epsilon_gamma_box", "experiment=quick",
         "dataset.limit=4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (output,) = (tmp_path / "outputs" / "xai-pipeline" / "digits_cnn-digits" / "lrp-epsilon_gamma_box").iterdir()
    assert (output / "COMPLETE").exists() and (output / ".hydra" / "config.yaml").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # sqlite:///mlflow.db in the cwd
    (run,) = client.search_runs([client.get_experiment_by_name("xai-pipeline").experiment_id])
    assert run.data.tags["run_key"] == json.loads((output / "manifest.json").read_text())["run_key"]


def write_image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    broken = root / "cat" / "9_broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    return broken


def resnet_checkpoint(path: Path, classes: int = 2) -> Path:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    torch.save(resnet18(weights=None, num_classes=classes).state_dict(), path)
    return path


IMAGE_FOLDER = ["method=gradient", "model=torchvision", "model.arch=resnet18", "model.num_classes=2",
                "dataset=image_folder", "evaluation.features_in_step=128", "tracking.publish=false", "heatmaps=2",
                "dataset.transforms=[{_target_:torchvision.transforms.Resize,size:32},"
                "{_target_:torchvision.transforms.ToTensor}]"]


def test_image_folder_skips_an_unreadable_image_and_counts_it(tmp_path):
    broken = write_image_folder(tmp_path / "images")
    checkpoint = resnet_checkpoint(tmp_path / "resnet.pt")
    cfg = make_cfg([*IMAGE_FOLDER, f"dataset.path={tmp_path / 'images'}", f"model.checkpoint={checkpoint}",
                    "batch_size=3"])
    folder = run_job(cfg, tmp_path / "out")
    metrics = json.loads((folder.results / "metrics.json").read_text())
    assert metrics["data/skipped_images"] == 1 and metrics["data/samples"] == 6
    skipped = pd.read_csv(folder.results / "skipped.csv")
    assert skipped.path.tolist() == [str(broken)]
    table = pd.read_csv(folder.results / "per_sample.csv")
    assert skipped.sample_id[0] not in table.sample_id.tolist() and len(table) == 6
    assert set(table.label) == {0, 1}


def test_image_folder_fails_on_an_unreadable_image_by_config(tmp_path):
    broken = write_image_folder(tmp_path / "images")
    checkpoint = resnet_checkpoint(tmp_path / "resnet.pt")
    cfg = make_cfg([*IMAGE_FOLDER, f"dataset.path={tmp_path / 'images'}", f"model.checkpoint={checkpoint}",
                    "dataset.on_corrupt=fail"])
    with pytest.raises(ValueError, match=f"unreadable image {broken}.*dataset.on_corrupt=skip"):
        run_job(cfg, tmp_path / "out")


def test_torchvision_weights_name_loads_from_torch_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = make_cfg(["model=torchvision", "model.arch=resnet18", "model.weights=ResNet18_Weights.IMAGENET1K_V1"])
    with pytest.raises(FileNotFoundError, match="not in torch's cache .*resnet18-f37072fd.pth.*never downloads"):
        load_model(cfg.model, torch.device("cpu"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    resnet_checkpoint(cache / "resnet18-f37072fd.pth", classes=1000)
    model = load_model(cfg.model, torch.device("cpu"))
    expected = torch.load(cache / "resnet18-f37072fd.pth", weights_only=True)
    assert torch.equal(model.fc.weight, expected["fc.weight"])
    with pytest.raises(ValueError, match="model.arch=resnet1800 is not a torchvision model; available: .*resnet18"):
        load_model(make_cfg(["model=torchvision", "model.arch=resnet1800"]).model, torch.device("cpu"))


USER_MODULE = '''
from torch import nn

class TinyNet(nn.Sequential):
    def __init__(self, classes=10, hidden=16):
        super().__init__(nn.Flatten(), nn.Linear(32 * 32, hidden), nn.ReLU(), nn.Linear(hidden, classes), nn.Softmax(dim=1))
'''


def test_custom_module_by_target_with_checkpoint(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    from user_nets import TinyNet

    torch.manual_seed(1)
    net = TinyNet(hidden=8)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "net.pt")
    cfg = make_cfg(["model=custom", "model.module._target_=user_nets.TinyNet", "+model.module.hidden=8",
                    f"model.checkpoint={tmp_path / 'net.pt'}", "method=input_x_gradient", "dataset.limit=4",
                    "tracking.publish=false", "evaluation.features_in_step=256"])
    model = load_model(cfg.model, torch.device("cpu"))
    assert isinstance(model[-1], nn.Identity)  # the softmax is stripped: explanations are taken on logits
    assert torch.equal(model[1].weight, net[1].weight)
    folder = run_job(cfg, tmp_path / "out")
    x = digits_split("test")[0][:4].requires_grad_()
    logits = nn.Sequential(*list(net)[:-1])(x)
    expected = x * torch.autograd.grad(logits.max(1).values.sum(), x)[0]
    np.testing.assert_allclose(folder.read_batches()["heatmap_attribution"], expected.detach().numpy(), atol=1e-6)

    torch.save({"net": TinyNet()}, tmp_path / "pickled.pt")  # a pickled module is refused, with the fix named
    bad = make_cfg(["model=custom", "model.module._target_=user_nets.TinyNet", f"model.checkpoint={tmp_path / 'pickled.pt'}"])
    with pytest.raises(ValueError, match="weights_only=True .*torch.save\\(model.state_dict\\(\\), path\\)"):
        load_model(bad.model, torch.device("cpu"))


def test_folder_of_another_config_is_refused(tmp_path):
    run_job(make_cfg(["method=gradient", "dataset.limit=2", "tracking.publish=false"]), tmp_path / "out")
    with pytest.raises(ValueError, match="holds results of a different run"):
        run_job(make_cfg(["method=gradient", "dataset.limit=3", "tracking.publish=false"]), tmp_path / "out")
    assert RunFolder(tmp_path / "out").is_complete


def write_cifar10(root: Path, n: int = 6) -> list[int]:
    """A CIFAR-10 folder in the python format (pickled dicts), with random images."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n).tolist()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return labels


def test_cifar10_from_a_local_folder(tmp_path, monkeypatch):
    from torchvision.datasets import cifar

    checkpoint = resnet_checkpoint(tmp_path / "resnet.pt", classes=10)
    overrides = ["method=gradient", "model=torchvision", "model.arch=resnet18", "model.num_classes=10",
                 f"model.checkpoint={checkpoint}", "dataset=cifar10", "dataset.limit=4", "tracking.publish=false",
                 "evaluation.features_in_step=256", "heatmaps=1"]
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found .*cifar-10-batches-py.*never downloads"):
        run_job(make_cfg([*overrides, f"dataset.path={tmp_path / 'nothing'}"]), tmp_path / "missing")

    labels = write_cifar10(tmp_path / "cifar")
    # our files are not the real ones, so their md5 sums cannot match: skip only that check
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = run_job(make_cfg([*overrides, f"dataset.path={tmp_path / 'cifar'}"]), tmp_path / "out")
    table = pd.read_csv(folder.results / "per_sample.csv")
    assert table.label.tolist() == labels[:4]
    assert folder.read_batches()["heatmap_x"].shape == (1, 3, 32, 32)


def test_image_folder_transforms_that_cannot_form_a_batch_are_named(tmp_path):
    write_image_folder(tmp_path / "images")
    (tmp_path / "images" / "cat" / "9_broken.png").unlink()
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "images" / "dog" / "odd.png")
    checkpoint = resnet_checkpoint(tmp_path / "resnet.pt")
    base = [o for o in IMAGE_FOLDER if not o.startswith("dataset.transforms")]
    base += [f"dataset.path={tmp_path / 'images'}", f"model.checkpoint={checkpoint}", "batch_size=8"]
    with pytest.raises(TypeError, match="gave Image images, not tensors: end dataset.transforms with .*ToTensor"):
        run_job(make_cfg([*base, "dataset.transforms=[]"]), tmp_path / "a")
    with pytest.raises(ValueError, match=r"one size .*\(3, 20, 30\).*\(3, 40, 40\).*Resize and CenterCrop"):
        run_job(make_cfg([*base, "dataset.transforms=[{_target_:torchvision.transforms.ToTensor}]"]), tmp_path / "b")


def _background(seed=0, k=8):
    from pipeline.stages.explain import background_ids

    ids = background_ids(make_cfg(["method=expected_gradients"]).method, len(digits_split("test")[1]), seed)
    assert len(ids) == k
    return digits_split("test")[0][ids]


@pytest.mark.parametrize("explainer, build", [
    ("deeplift-none", lambda m: __import__("xai").DeepLIFT(m, baseline=0.0)),
    ("deeplift_shap-none", lambda m: __import__("xai").DeepLIFTShap(m, baselines=_background())),
    ("expected_gradients-none", lambda m: __import__("xai").ExpectedGradients(m, _background(), samples=16, seed=0)),
    ("gradient_shap-none", lambda m: __import__("xai").GradientSHAP(m, _background(), samples=16, seed=0)),
    ("occlusion-none", lambda m: __import__("xai").Occlusion(m, window=8, stride=4)),
    ("kernel_shap-none", lambda m: __import__("xai").KernelSHAP(
        m, features=partial(slic_segments, n_segments=50), samples=256, seed=0)),
    ("lime-none", lambda m: __import__("xai").LIME(
        m, features=partial(slic_segments, n_segments=50), samples=256, seed=0)),
    ("grad_cam-none", lambda m: __import__("xai").GradCAM(m)),
    ("grad_cam_plus_plus-none", lambda m: __import__("xai").GradCAMPlusPlus(m)),
    ("layer_cam-none", lambda m: __import__("xai").LayerCAM(m)),
    ("score_cam-none", lambda m: __import__("xai").ScoreCAM(m)),
])
def test_methods_run_in_the_pipeline_as_in_the_api(tmp_path, explainer, build):
    folder = run_job(make_cfg([f"explainer={explainer}", "dataset.limit=3", "heatmaps=3", "tracking.publish=false",
                               "evaluation.steps=4"]), tmp_path / "out")
    x = digits_split("test")[0][:3]
    expected = build(load_default_model())(x).attribution.numpy()
    np.testing.assert_allclose(folder.read_batches()["heatmap_attribution"], expected, rtol=0, atol=1e-6)
    assert folder.manifest["method"] == explainer.removesuffix("-none") and folder.manifest["composite"] == "none"


def test_a_run_logs_the_complexity_of_its_attributions(tmp_path):
    from evaluation import Complexity, Sparseness

    folder = run_job(make_cfg(["method=gradient", "dataset.limit=3", "heatmaps=3", "tracking.publish=false",
                               "evaluation.steps=4"]), tmp_path / "out")
    attribution = torch.from_numpy(folder.read_batches()["heatmap_attribution"])
    metrics = json.loads((folder.results / "metrics.json").read_text())
    assert metrics["complexity/sparseness"] == pytest.approx(Sparseness()(None, attribution, attribution).scores.mean().item(), rel=1e-5)
    assert metrics["complexity/entropy"] == pytest.approx(Complexity()(None, attribution, attribution).scores.mean().item(), rel=1e-5)
    table = pd.read_csv(folder.results / "per_sample.csv")
    assert {"sparseness", "entropy"} <= set(table.columns) and len(table) == 3


def test_localisation_metrics_on_the_bundled_canvas_digits_equal_the_api(tmp_path):
    from evaluation import PointingGame, RelevanceMassAccuracy

    from pipeline.bundled import digits_localisation_split

    folder = run_job(make_cfg(["experiment=localisation", "method=gradient", "dataset.limit=4", "heatmaps=4",
                               "tracking.publish=false", "evaluation.steps=4"]), tmp_path / "out")
    x, _, mask = digits_localisation_split("test")
    attribution = torch.from_numpy(folder.read_batches()["heatmap_attribution"])
    table = pd.read_csv(folder.results / "per_sample.csv")
    metrics = json.loads((folder.results / "metrics.json").read_text())
    for name, metric in (("pointing_game", PointingGame()), ("relevance_mass_accuracy", RelevanceMassAccuracy())):
        expected = metric(None, x[:4], attribution, None, mask=mask[:4]).scores.numpy()
        np.testing.assert_allclose(table[name].to_numpy(), expected, rtol=1e-6)
        assert metrics[f"localisation/{name}"] == pytest.approx(expected.mean(), rel=1e-6)
    assert metrics["model/accuracy"] >= 0.75  # the bundled canvas model classifies (95 % on the 360 test digits)


@pytest.mark.parametrize("overrides, words", [
    (["evaluation.metrics=[srg,bogus]"], "evaluation.metrics has unknown metric(s) bogus; available: srg"),
    (["evaluation.metrics=[pointing_game]"], "need ground-truth masks, which this dataset does not have"),
    (["+evaluation.params.sparseness.x=1"], "parameters for sparseness: only metrics listed in evaluation.metrics"),
    (["+evaluation.params.pointing_game.x=1"], "parameters for pointing_game: only metrics listed"),
    (["experiment=localisation", "+evaluation.params.pointing_game.x=1"], "evaluation.params.pointing_game: .*; "
     "PointingGame takes no parameters"),
])
def test_bad_metric_settings_fail_before_any_work(tmp_path, overrides, words):
    import re

    with pytest.raises(ValueError, match=words if ".*" in words else re.escape(words)):
        run_job(make_cfg(["method=gradient", "dataset.limit=2", "tracking.publish=false", *overrides]), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_image_folder_with_masks_scores_localisation_with_masks_moved_like_the_images(tmp_path):
    from evaluation import RelevanceMassAccuracy

    write_image_folder(tmp_path / "images")
    (tmp_path / "images" / "cat" / "9_broken.png").unlink()
    for label in ("cat", "dog"):
        (tmp_path / "masks" / label).mkdir(parents=True)
        for i in range(3):
            mask = np.zeros((40, 40), dtype=np.uint8)
            mask[: 10 * (i + 1), :20] = 255  # the top-left: a band growing with i
            Image.fromarray(mask).save(tmp_path / "masks" / label / f"{i}.png")
    base = [*IMAGE_FOLDER, f"dataset.path={tmp_path / 'images'}", f"dataset.mask_path={tmp_path / 'masks'}",
            f"model.checkpoint={resnet_checkpoint(tmp_path / 'resnet.pt')}", "heatmaps=6",
            "evaluation.metrics=[srg,relevance_mass_accuracy]"]
    folder = run_job(make_cfg(base), tmp_path / "out")
    table = pd.read_csv(folder.results / "per_sample.csv")
    attribution = torch.from_numpy(folder.read_batches()["heatmap_attribution"])
    expected_masks = torch.zeros(6, 32, 32, dtype=torch.bool)  # Resize(32) with nearest: 40 -> 32 px
    for k in range(6):
        expected_masks[k, : round(8 * (k % 3 + 1)), :16] = True
    expected = RelevanceMassAccuracy()(None, attribution, attribution, None, mask=expected_masks).scores
    np.testing.assert_allclose(table["relevance_mass_accuracy"].to_numpy(), expected.numpy(), rtol=1e-6)

    (tmp_path / "masks" / "dog" / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no mask for 1 of 6 images, e.g. .*dog/2.png"):
        run_job(make_cfg(base), tmp_path / "out2")
    flip = "{_target_:torchvision.transforms.RandomHorizontalFlip}"
    with pytest.raises(ValueError, match="RandomHorizontalFlip, which dataset.mask_path cannot apply to the masks"):
        run_job(make_cfg([*base, f"dataset.transforms=[{flip},{{_target_:torchvision.transforms.ToTensor}}]"]),
                tmp_path / "out3")


def test_randomisation_and_robustness_metrics_re_explain_with_the_runs_analyzer(tmp_path):
    from evaluation import MaxSensitivity, ModelParameterRandomisation
    from xai import Gradient

    folder = run_job(make_cfg([
        "method=gradient", "dataset.limit=3", "heatmaps=3", "tracking.publish=false", "evaluation.steps=4",
        "evaluation.metrics=[srg,max_sensitivity,model_parameter_randomisation,road]",
        "+evaluation.params.road.percentages=[0.0,0.5,0.9]",
        "+evaluation.params.max_sensitivity.nr_samples=3", "+evaluation.params.max_sensitivity.perturb_radius=0.05",
    ]), tmp_path / "out")
    model = load_default_model()
    x = digits_split("test")[0][:3]
    attribution = torch.from_numpy(folder.read_batches()["heatmap_attribution"])
    table = pd.read_csv(folder.results / "per_sample.csv")
    seed = 0  # the first batch's seed: cfg.seed + its plan index
    sensitivity = MaxSensitivity(Gradient(model), perturb_radius=0.05, nr_samples=3, seed=seed)(model, x, attribution)
    np.testing.assert_allclose(table["max_sensitivity"].to_numpy(), sensitivity.scores.numpy(), rtol=1e-5)
    randomised = ModelParameterRandomisation(Gradient(model), seed=seed)(model, x, attribution)
    np.testing.assert_allclose(table["model_parameter_randomisation"].to_numpy(), randomised.scores.numpy(), rtol=1e-5)
    from evaluation import ROAD

    road = ROAD(percentages=[0.0, 0.5, 0.9], seed=seed)(model, x, attribution)
    np.testing.assert_allclose(table["road"].to_numpy(), road.scores.numpy(), rtol=1e-5, atol=1e-7)
    metrics = json.loads((folder.results / "metrics.json").read_text())
    assert metrics["robustness/max_sensitivity"] == pytest.approx(sensitivity.scores.mean().item(), rel=1e-5)
    assert "randomisation/model_parameter_randomisation" in metrics


def test_a_run_writes_a_self_contained_html_report_and_logs_it(tmp_path):
    import re
    from html.parser import HTMLParser

    db = tmp_path / "mlflow.db"
    folder = run_job(make_cfg(["method=gradient", "dataset.limit=3", "heatmaps=3", "evaluation.steps=4",
                               f"tracking.uri=sqlite:///{db}", "tracking.experiment=t"]), tmp_path / "out")
    page = (folder.results / "report.html").read_text()
    metrics = json.loads((folder.results / "metrics.json").read_text())

    class Tags(HTMLParser):
        sources, scripts, links = [], 0, []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            self.scripts += tag == "script"
            if tag == "img":
                self.sources.append(attrs["src"])
            if tag == "link":
                self.links.append(attrs)

    tags = Tags()
    tags.feed(page)
    assert tags.scripts == 0 and not tags.links  # nothing runs, nothing is fetched
    assert len(tags.sources) == 2 and all(s.startswith("data:image/png;base64,") for s in tags.sources)
    row = re.search(r"<tr><td>faithfulness/srg</td><td class=num>([^<]+)</td><td>higher</td></tr>", page)
    assert row and float(row.group(1)) == pytest.approx(metrics["faithfulness/srg"], rel=1e-3)
    assert "<td>complexity/entropy</td>" in page and "lower</td>" in page.split("complexity/entropy")[1][:60]
    assert f"accuracy {metrics['model/accuracy']:.1%} on 3 samples" in page
    assert "name: gradient" in page  # the config
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    run_id = client.search_runs([client.get_experiment_by_name("t").experiment_id])[0].info.run_id
    assert "report.html" in {a.path for a in client.list_artifacts(run_id)}
