"""The bundled Vision Transformer (``model=digits_vit``): accurate, a real torchvision ViT, runnable in the pipeline
with the gradient methods and the attention-aware LRP composites (``composite=cp_lrp``, ``composite=attn_lrp``)."""
import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from pipeline.bundled import VIT_WEIGHTS, WEIGHTS, DigitsViT, digits_split, load_default_model
from pipeline.job import run_job
from pipeline.stages.results import RunFolder
from pipeline.tracking.identity import checkpoint_sha256, file_sha256
from tests.test_pipeline_run import make_cfg
from xai import LRP
from xai.composites import AttnLRP, CPLRP


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return load_default_model(name="digits_vit")


def test_shipped_vit_is_a_small_torchvision_vision_transformer(vit):
    assert isinstance(vit, VisionTransformer) and isinstance(vit, DigitsViT) and not vit.training
    attention = [m for m in vit.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(attention) == len(vit.encoder.layers) >= 2
    assert vit.conv_proj.in_channels == 1 and vit.patch_size in (4, 8)
    assert VIT_WEIGHTS.stat().st_size < 1_000_000
    state = torch.load(VIT_WEIGHTS, map_location="cpu", weights_only=True)
    assert set(state) == set(DigitsViT().state_dict())


def test_vit_held_out_accuracy_is_at_least_95_percent(vit):
    images, labels = digits_split("test")
    with torch.no_grad():
        accuracy = (vit(images).argmax(dim=1) == labels).float().mean().item()
    assert accuracy >= 0.95, f"held-out accuracy {accuracy:.3f}"


def test_model_option_names_the_vit_and_its_weights_digest():
    cfg = make_cfg(["model=digits_vit"])
    assert cfg.model.arch == "digits_vit" and cfg.model.checkpoint is None
    assert checkpoint_sha256(cfg.model) == file_sha256(VIT_WEIGHTS) != file_sha256(WEIGHTS)


@pytest.mark.parametrize("method, build", [
    ("gradient", lambda m: __import__("xai").Gradient(m)),
    ("integrated_gradients", lambda m: __import__("xai").IntegratedGradients(m, steps=16)),
])
def test_gradient_methods_run_on_the_vit_in_the_pipeline_as_in_the_api(tmp_path, vit, method, build):
    extra = ["method.steps=16"] if method == "integrated_gradients" else []
    folder = run_job(make_cfg(["model=digits_vit", f"method={method}", "composite=none", "dataset.limit=8",
                               "heatmaps=8", "tracking.publish=false", "evaluation.features_in_step=128", *extra]),
                     tmp_path / "out")
    assert folder.is_complete and folder.manifest["method"] == method
    x = digits_split("test")[0][:8]
    expected = build(vit)(x).attribution.numpy()
    np.testing.assert_allclose(folder.read_batches()["heatmap_attribution"], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("composite, build", [("cp_lrp", CPLRP), ("attn_lrp", AttnLRP)])
def test_attention_composites_run_on_the_vit_in_the_pipeline_as_in_the_api(tmp_path, vit, composite, build):
    folder = run_job(make_cfg(["model=digits_vit", "method=lrp", f"composite={composite}", "composite.gamma_conv=0.5",
                               "composite.gamma_linear=0.1", "dataset.limit=8", "heatmaps=8", "tracking.publish=false",
                               "evaluation.features_in_step=128"]), tmp_path / "out")
    assert folder.manifest["composite"] == composite
    x = digits_split("test")[0][:8]
    expected = LRP(vit, composite=build(gamma_linear=0.1, gamma_conv=0.5))(x).attribution.numpy()
    np.testing.assert_allclose(folder.read_batches()["heatmap_attribution"], expected, rtol=1e-4, atol=1e-7)
    assert np.abs(expected).sum() > 0


@pytest.mark.parametrize("override, key, words", [
    ("composite.gamma_linear=abc", "composite.gamma_linear", "Float"),
    ("composite.gamma=0.5", "composite.gamma", "not in 'AttentionCompositeConf'"),  # the box composite's key
])
def test_bad_attention_composite_keys_fail_at_composition_naming_the_key(override, key, words):
    with pytest.raises(ConfigCompositionException) as error:
        make_cfg(["model=digits_vit", "composite=attn_lrp", override])
    message = f"{error.value} {error.value.__cause__}"
    assert key in message and words in message


def test_negative_rule_strength_fails_before_any_work_naming_the_key(tmp_path):
    cfg = make_cfg(["model=digits_vit", "composite=cp_lrp", "composite.gamma_conv=-0.25", "tracking.publish=false"])
    with pytest.raises(ValueError, match=r"composite\.gamma_conv=-0\.25 must be a finite number >= 0"):
        run_job(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_cnn_composite_on_the_vit_is_refused_naming_the_pipeline_options_and_writes_no_batch(tmp_path):
    cfg = make_cfg(["model=digits_vit", "method=lrp", "composite=epsilon_gamma_box", "dataset.limit=4",
                    "tracking.publish=false"])
    with pytest.raises(ValueError, match=r"MultiheadAttention x3[\s\S]*composite=attn_lrp or composite=cp_lrp"):
        run_job(cfg, tmp_path / "out")
    folder = RunFolder(tmp_path / "out")
    assert folder.manifest_file.exists() and not folder.finished_batches() and not folder.is_complete
