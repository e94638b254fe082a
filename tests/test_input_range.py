"""dataset.input_low/high: per-channel bounds for ZBox, the imagenet preset, and the warning on data outside them."""
import logging

import pytest
import torch
from hydra import compose, initialize_config_dir
from torchvision import transforms

from pipeline.config import CONF_DIR
from pipeline.stages.explain import build_composite
from pipeline.stages.input_range import check_input_range, input_bounds


def make_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_the_imagenet_preset_bounds_are_the_range_its_normalisation_gives_to_pixels_in_0_1():
    cfg = make_cfg(["dataset=imagenet", "dataset.path=/data/val"])
    assert cfg.dataset.kind.name == "image_folder" and cfg.dataset.on_corrupt.name == "skip"
    normalise = transforms.Normalize(**{k: list(v) for k, v in cfg.dataset.transforms[-1].items() if k != "_target_"})
    black, white = normalise(torch.zeros(3, 1, 1)).flatten(), normalise(torch.ones(3, 1, 1)).flatten()
    low, high = input_bounds(cfg.dataset.input_low, cfg.dataset.input_high)
    torch.testing.assert_close(low.flatten(), black, atol=1e-6, rtol=0)
    torch.testing.assert_close(high.flatten(), white, atol=1e-6, rtol=0)
    composite = build_composite(cfg.composite)  # per-channel bounds reach ZBox as a (1, C, 1, 1) tensor
    zbox = composite.entries[0].rule
    assert tuple(zbox.low.shape) == (1, 3, 1, 1) and zbox.low.flatten()[0].item() == pytest.approx(-2.1179039)


def test_data_outside_the_bounds_warn_with_the_range_found_and_the_keys(caplog):
    x = torch.rand(4, 3, 8, 8)
    with caplog.at_level(logging.WARNING):
        assert check_input_range(x, 0.0, 1.0)
        assert not caplog.records
        assert not check_input_range(x * 2 - 0.5, 0.0, 1.0)
    (record,) = caplog.records
    assert "outside dataset.input_low=0.0 / dataset.input_high=1.0" in record.message
    assert "dataset=imagenet" in record.message and "-0.4" in record.message and "1.4" in record.message


def test_per_channel_bounds_are_checked_per_channel(caplog):
    x = torch.zeros(2, 2, 4, 4)
    x[:, 1] = 5.0  # inside channel 1's bounds, outside channel 0's
    with caplog.at_level(logging.WARNING):
        assert check_input_range(x, [-1.0, 4.0], [1.0, 6.0])
        assert not check_input_range(x, [-1.0, -1.0], [1.0, 1.0])


@pytest.mark.parametrize("low, high, message", [
    (1.0, 0.0, "dataset.input_low=1.0 must be below dataset.input_high=0.0"),
    ([0.0, 0.0], [1.0, 1.0, 1.0], "dataset.input_low has 2 values and dataset.input_high 3"),
    ("abc", 1.0, "dataset.input_low='abc' must be a number or a list of numbers"),
    (float("nan"), 1.0, "must be finite"),
])
def test_bad_bounds_name_the_key(low, high, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        input_bounds(low, high)


def test_bounds_for_another_channel_count_than_the_data_are_refused():
    with pytest.raises(ValueError, match="have 3 values but the data have 1 channels"):
        check_input_range(torch.zeros(1, 1, 4, 4), [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])


def test_a_run_on_data_outside_its_bounds_warns_once(tmp_path, caplog):
    from pipeline.job import run_job

    cfg = make_cfg(["dataset.limit=8", "batch_size=4", "heatmaps=0", "dataset.input_high=0.5", "tracking.publish=false"])
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.input_range"):
        run_job(cfg, tmp_path / "run")
    warnings = [r for r in caplog.records if r.name == "pipeline.stages.input_range"]
    assert len(warnings) == 1 and "dataset.input_high=0.5" in warnings[0].message
