"""RegionPerturbation: hand-computed curves (region sums, cut border regions, steps), SRG, errors.

Exact float32 arithmetic on small integers: tolerance 1e-5.
"""
import pytest
import torch
from torch import nn

from evaluation import PixelFlipping, RegionPerturbation, SymmetricRelevanceGain

ATOL = 1e-5


class LinearLogit(nn.Module):
    """Logit 0 = sum(weight * x), logit 1 = 0."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, x):
        score = (x * self.weight).flatten(1).sum(1)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


class CountFlipped(nn.Module):
    """Logit 0 = number of input values equal to -1 (the baseline used below): the curve counts flipped pixels."""

    def forward(self, x):
        count = (x == -1).flatten(1).sum(1).to(x.dtype)
        return torch.stack([count, torch.zeros_like(count)], dim=1)


# 4x4, region 2: sums TL 1+2+3+4 = 10, TR 0+0+1-1 = 0, BL 5, BR -8; f(x) = 7 for x = 1
WEIGHT = torch.tensor([[1.0, 2, 0, 0], [3, 4, 1, -1], [5, 0, -2, -2], [0, 0, -2, -2]])[None]
ONES = torch.ones(1, 1, 4, 4)


@pytest.mark.parametrize(
    "order,per_step,expected",
    [
        ("morf", 1, [7, -3, -8, -8, 0]),   # TL, BL, TR, BR
        ("lerf", 1, [7, 15, 15, 10, 0]),   # BR, TR, BL, TL
        ("morf", 2, [7, -8, 0]),           # {TL, BL}, {TR, BR}
    ],
)
def test_hand_computed_region_curves(order, per_step, expected):
    metric = RegionPerturbation(region_size=2, regions_in_step=per_step, baseline=0.0, order=order, softmax=False)
    result = metric(LinearLogit(WEIGHT), ONES, WEIGHT[None], 0)
    torch.testing.assert_close(result.curve, torch.tensor([expected], dtype=torch.float32), atol=ATOL, rtol=0)
    steps = len(expected) - 1
    torch.testing.assert_close(result.fraction, torch.arange(steps + 1) / steps, atol=1e-7, rtol=0)


def test_region_relevance_sums_over_channels():
    # two channels each holding half of WEIGHT rank the regions as WEIGHT does
    attribution = torch.cat([WEIGHT, WEIGHT], dim=0)[None] / 2
    x = torch.ones(1, 2, 4, 4)
    model = LinearLogit(torch.cat([WEIGHT, WEIGHT])[None] / 2)
    result = RegionPerturbation(region_size=2, softmax=False)(model, x, attribution, 0)
    torch.testing.assert_close(result.curve, torch.tensor([[7.0, -3, -8, -8, 0]]), atol=ATOL, rtol=0)


def test_border_regions_are_cut_to_the_image():
    # 5x5 with region 2: a 3x3 grid whose right and bottom regions hold 2 pixels and the corner 1
    attribution = torch.zeros(1, 1, 5, 5)
    attribution[0, 0, 4, 4] = 9      # region (2,2), 1 pixel
    attribution[0, 0, 2, 3] = 4      # region (1,1), 4 pixels
    attribution[0, 0, 0, 0] = 1      # region (0,0), 4 pixels: sum 1 + 2 = 3
    attribution[0, 0, 1, 1] = 2
    attribution[0, 0, 4, 0] = -5     # region (2,0), 2 pixels; the 5 others sum to 0 and keep their index order
    x = torch.rand(1, 1, 5, 5)
    result = RegionPerturbation(region_size=2, baseline=-1.0, softmax=False)(CountFlipped(), x, attribution, 0)
    # (2,2) 1, (1,1) 4, (0,0) 4, (0,1) 4, (0,2) 2, (1,0) 4, (1,2) 2, (2,1) 2, (2,0) 2
    expected = torch.tensor([[0.0, 1, 5, 9, 13, 15, 19, 21, 23, 25]])
    torch.testing.assert_close(result.curve, expected, atol=0, rtol=0)


def test_region_of_one_pixel_is_pixel_flipping(digits_model, digits_batch):
    x, labels = digits_batch
    attribution = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    regions = RegionPerturbation(region_size=1, steps=16, baseline="mean", progress=False)(
        digits_model, x, attribution, labels
    )
    pixels = PixelFlipping(steps=16, baseline="mean", progress=False)(digits_model, x, attribution, labels)
    torch.testing.assert_close(regions.curve, pixels.curve, atol=ATOL, rtol=0)


def test_batch_size_does_not_change_region_curves(digits_model, digits_batch):
    x, labels = digits_batch
    attribution = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    results = [
        RegionPerturbation(region_size=4, regions_in_step=4, baseline="blur", batch_size=b, progress=False)(
            digits_model, x, attribution, labels
        )
        for b in (5, 1000)
    ]
    assert results[0].curve.shape == (6, 17)
    torch.testing.assert_close(results[0].curve, results[1].curve, atol=ATOL, rtol=0)


def test_srg_of_regions_for_a_perfect_linear_attribution():
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 12, 12, generator=generator)
    weight = torch.randn(1, 3, 12, 12, generator=generator)
    srg = SymmetricRelevanceGain(RegionPerturbation(region_size=3, baseline=0.0, softmax=False))
    model = LinearLogit(weight)
    assert (srg(model, x, weight * x, 0).srg > 0).all()
    assert (srg(model, x, -weight * x, 0).srg < 0).all()


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: RegionPerturbation(region_size=0), "region_size must be a positive int"),
        (lambda: RegionPerturbation(regions_in_step=2, steps=3), "not both"),
        (lambda: RegionPerturbation(baseline="noise"), "unknown baseline"),
    ],
)
def test_bad_options(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "metric,match",
    [
        (RegionPerturbation(region_size=5), "region_size=5 is larger than the 4x4 image"),
        (RegionPerturbation(region_size=2, regions_in_step=5), "5 features per step is more than the 4 2x2 regions"),
    ],
)
def test_bad_sizes(metric, match):
    with pytest.raises(ValueError, match=match):
        metric(LinearLogit(WEIGHT), ONES, WEIGHT[None], 0)
