"""evaluation.steps: a fixed number of flip steps whatever the image size, and the scoring plan printed before work."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from pipeline.config import CONF_DIR
from pipeline.stages.evaluate import Faithfulness


def evaluation_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides)).evaluation


def tiny_model(channels=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 5)).eval()


def score(cfg, x):
    model = tiny_model(x.shape[1])
    attribution = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    return Faithfulness(cfg)(model, x, attribution, torch.zeros(x.shape[0], dtype=torch.long), seed=0)


def test_the_default_is_32_steps_whatever_the_image_size():
    scores = score(evaluation_cfg(), torch.rand(2, 3, 96, 80))
    assert scores.curve_morf.shape == (2, 33) and scores.curve_lerf.shape == (2, 33)


def test_on_the_bundled_digits_the_default_equals_32_pixels_per_step():
    x = torch.rand(2, 1, 32, 32)
    default = score(evaluation_cfg(), x)
    per_step = score(evaluation_cfg("evaluation.features_in_step=32"), x)
    assert torch.equal(default.curve_morf, per_step.curve_morf) and torch.equal(default.srg, per_step.srg)


def test_features_in_step_alone_sets_the_steps():
    scores = score(evaluation_cfg("evaluation.features_in_step=1000"), torch.rand(1, 3, 50, 50))
    assert scores.curve_morf.shape == (1, 4)  # ceil(2500 / 1000) steps


def test_steps_and_features_in_step_together_are_refused_naming_both():
    with pytest.raises(ValueError, match="evaluation.steps=8 and evaluation.features_in_step=64: give one"):
        Faithfulness(evaluation_cfg("evaluation.steps=8", "evaluation.features_in_step=64"))


def test_chunked_curves_equal_one_chunk():
    x = torch.rand(3, 3, 16, 16)
    small = score(evaluation_cfg("evaluation.batch_size=5"), x)
    large = score(evaluation_cfg("evaluation.batch_size=4096"), x)
    torch.testing.assert_close(small.curve_morf, large.curve_morf, rtol=0, atol=1e-6)  # same inputs, other batching


def test_the_plan_names_the_forward_passes_and_the_chunks_shrink_for_large_images():
    plan = Faithfulness(evaluation_cfg()).plan((3, 224, 224), samples=100)
    assert plan == ("scoring: 100 samples x (1 unperturbed + 2 orders x 32 steps) = 6500 forward passes, "
                    "in chunks of 111 inputs")  # 2**24 values: bounded memory whatever the image size
    assert Faithfulness(evaluation_cfg()).plan((1, 32, 32), samples=2).endswith("in chunks of 512 inputs")
    fixed = Faithfulness(evaluation_cfg("evaluation.batch_size=64", "evaluation.features_in_step=3136"))
    assert fixed.plan((3, 224, 224), samples=1) == ("scoring: 1 samples x (1 unperturbed + 2 orders x 16 steps) = "
                                                    "33 forward passes, in chunks of 64 inputs")
