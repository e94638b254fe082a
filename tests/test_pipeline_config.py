"""The pipeline's config: every option of every group composes; bad values fail before any work, naming the key."""
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException

from pipeline.config import CONF_DIR, config_hash, validate
from pipeline.stages.data import batch_plan, select_samples
from pipeline.stages.explain import effective_composite

GROUPS = ("method", "composite", "model", "dataset", "evaluation", "tracking", "experiment")
NEEDS_VALUES = {  # options with mandatory (???) values and the overrides that fill them
    "model=custom": ["model.module._target_=pipeline.bundled.DigitsCNN", "model.checkpoint=/tmp/net.pt"],
    "dataset=image_folder": ["dataset.path=/tmp/images"],
    "dataset=imagenet": ["dataset.path=/tmp/images"],
    "dataset=cifar10": ["dataset.path=/tmp/cifar"],
}


def make_cfg(overrides=()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def all_options():
    return [f"{g}={p.stem}" for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def test_every_group_has_its_options():
    options = set(all_options())
    for method in ("gradient", "input_x_gradient", "smoothgrad", "integrated_gradients", "lrp"):
        assert f"method={method}" in options
    for composite in ("epsilon_gamma_box", "epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1",
                      "epsilon_alpha2_beta1_flat", "cp_lrp", "attn_lrp", "none"):
        assert f"composite={composite}" in options
    assert {"dataset=digits", "dataset=image_folder", "dataset=cifar10", "model=digits_cnn", "model=digits_vit",
            "model=torchvision", "model=custom", "evaluation=pixel_flipping", "tracking=mlflow",
            "experiment=quick"} <= options


@pytest.mark.parametrize("option", all_options())
def test_every_option_composes_and_validates(option):
    cfg = make_cfg([option, *NEEDS_VALUES.get(option, [])])
    validate(cfg)
    group, name = option.split("=")
    if group in ("method", "composite", "dataset", "evaluation"):
        assert cfg[group].name == name


def test_defaults_are_the_quickstart_run():
    cfg = make_cfg()
    assert (cfg.method.name, cfg.composite.name, cfg.model.name, cfg.dataset.name) == (
        "lrp", "epsilon_gamma_box", "digits_cnn", "digits")
    assert cfg.device == "auto" and cfg.tracking.uri is None
    # the ZBox bounds follow the dataset's input range
    assert (cfg.composite.low, cfg.composite.high) == (0.0, 1.0)
    assert make_cfg(["dataset.input_low=-2.5"]).composite.low == -2.5


def test_experiment_preset_overrides_globals():
    cfg = make_cfg(["experiment=quick"])
    assert cfg.dataset.limit == 16 and cfg.heatmaps == 4


@pytest.mark.parametrize("override, key, words", [
    ("composite.gamma=abc", "composite.gamma", "Float"),
    ("dataset.limit=many", "dataset.limit", "Integer"),
    ("batch_size=1.5", "batch_size", "Integer"),
    ("dataset.on_corrupt=maybe", "dataset.on_corrupt", "skip, fail"),
    ("model.kind=onnx", "model.kind", "bundled, torchvision, custom"),
    ("dataset.foo=1", "dataset.foo", "not in 'DatasetConf'"),
    ("method.samples=3", "method.samples", "not in 'LRPConf'"),  # lrp takes no samples
])
def test_bad_values_fail_naming_the_key(override, key, words):
    with pytest.raises(ConfigCompositionException) as error:
        make_cfg([override])
    message = f"{error.value} {error.value.__cause__}"
    assert key in message and words in message


def test_method_parameters_are_typed():
    assert make_cfg(["method=smoothgrad", "method.samples=3"]).method.samples == 3
    with pytest.raises(ConfigCompositionException) as error:
        make_cfg(["method=smoothgrad", "method.samples=lots"])
    assert "method.samples" in str(error.value.__cause__)


def test_unknown_option_lists_the_available_ones():
    with pytest.raises(MissingConfigException) as error:
        make_cfg(["method=deeplyft"])
    message = str(error.value)
    for method in ("gradient", "input_x_gradient", "smoothgrad", "integrated_gradients", "lrp"):
        assert f"\t{method}\n" in message
    assert "schema" not in message.split("Available options")[1].split("Config search path")[0]


def test_appended_unknown_keys_and_missing_values_fail_in_validate():
    with pytest.raises(ValueError, match=r"unknown config key\(s\) dataset\.foo; valid keys here: .*limit"):
        validate(make_cfg(["+dataset.foo=1"]))
    with pytest.raises(ValueError, match=r"unknown config key\(s\) bar"):
        validate(make_cfg(["+bar=2"]))
    with pytest.raises(ValueError, match=r"missing config value\(s\): dataset.path; set them, e.g. dataset.path="):
        validate(make_cfg(["dataset=image_folder"]))


def test_config_hash_names_the_results_not_their_destination():
    base = config_hash(make_cfg())
    assert base == config_hash(make_cfg())
    assert base == config_hash(make_cfg(["tracking.uri=http://elsewhere:5000", "tracking.experiment=other",
                                         "output_root=/elsewhere"]))
    assert base != config_hash(make_cfg(["dataset.limit=10"]))
    assert base != config_hash(make_cfg(["composite=epsilon_plus"]))


def test_composite_is_none_for_methods_without_rules():
    assert effective_composite(make_cfg().method, make_cfg().composite) == "epsilon_gamma_box"
    with pytest.warns(UserWarning, match="ignored"):
        assert effective_composite(make_cfg(["method=gradient"]).method, make_cfg().composite) == "none"
    with pytest.raises(ValueError, match="method=lrp needs a composite: choose composite= one of epsilon_gamma_box"):
        cfg = make_cfg(["composite=none"])
        effective_composite(cfg.method, cfg.composite)


def test_sample_selection_limit_and_shards():
    assert select_samples(10, limit=4) == [0, 1, 2, 3]
    shards = [select_samples(10, limit=7, num_shards=3, shard=i) for i in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))  # disjoint and covering
    assert shards[1] == [1, 4]
    with pytest.raises(ValueError, match="dataset.shard=3 must be in 0..2"):
        select_samples(10, num_shards=3, shard=3)
    with pytest.raises(ValueError, match="dataset.limit=0"):
        select_samples(10, limit=0)
    assert batch_plan([5, 6, 7, 8, 9], 2) == [[5, 6], [7, 8], [9]]


def test_device_auto_picks_cuda_when_present(monkeypatch):
    import torch

    from pipeline.stages.models import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
