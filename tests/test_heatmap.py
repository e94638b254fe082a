"""Heatmap colours, shapes, reductions, range scaling, overlays and grids."""
import numpy as np
import pytest
import torch
from PIL import Image

from xai import Gradient, heatmap, heatmap_grid, overlay
from xai.explanation import Explanation

WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)
DARK_RED, DARK_BLUE = (128, 0, 0), (0, 0, 76)  # seismic ends: 0.5 red at +max, 0.3 blue at -max


def pixel(image: Image.Image, row: int, col: int) -> tuple[int, int, int]:
    return image.getpixel((col, row))


def test_one_rgb_image_per_sample_of_the_inputs_height_and_width(digits_model, digits_batch):
    x = digits_batch[0][:3]
    images = heatmap(Gradient(digits_model)(x))
    assert len(images) == 3
    assert all(image.mode == "RGB" and image.size == (32, 32) for image in images)
    wide = heatmap(torch.randn(2, 3, 5, 7))
    assert [image.size for image in wide] == [(7, 5), (7, 5)]  # PIL size is (width, height)


def test_centered_colours_red_positive_blue_negative_white_zero():
    a = torch.zeros(1, 3, 3, 3)
    a[0, :, 0, 0] = 2.0 / 3  # channel sum +2 = +max
    a[0, :, 0, 1] = 1.0 / 3  # +1 = half of max
    a[0, :, 1, 0] = -2.0 / 3  # -2
    a[0, :, 1, 1] = -1.0 / 3  # -1
    image = heatmap(a)[0]
    assert pixel(image, 0, 0) == DARK_RED
    assert pixel(image, 0, 1) == RED
    assert pixel(image, 1, 0) == DARK_BLUE
    assert pixel(image, 1, 1) == BLUE
    assert pixel(image, 2, 2) == WHITE  # exactly zero is exactly white


def test_bwr_colormap_and_all_zero_attribution_is_white():
    a = torch.tensor([[[[1.0, -1.0, 0.0]]]])
    assert [pixel(heatmap(a, colormap="bwr")[0], 0, c) for c in range(3)] == [RED, BLUE, WHITE]
    blank = heatmap(torch.zeros(2, 1, 4, 4))
    assert all(np.all(np.asarray(image) == 255) for image in blank)


def test_each_sample_is_scaled_on_its_own():
    a = torch.zeros(2, 1, 1, 2)
    a[0, 0, 0, 0], a[1, 0, 0, 0] = 1.0, 1000.0
    first, second = heatmap(a)
    assert pixel(first, 0, 0) == pixel(second, 0, 0) == DARK_RED


def test_channel_reductions():
    a = torch.zeros(1, 2, 1, 3)
    a[0, :, 0, 0] = torch.tensor([3.0, -3.0])  # cancels in the sum, large norm
    a[0, :, 0, 1] = torch.tensor([1.0, 1.0])
    a[0, :, 0, 2] = torch.tensor([-4.0, 0.0])
    summed = heatmap(a, reduce="sum")[0]
    assert pixel(summed, 0, 0) == WHITE and pixel(summed, 0, 2) == DARK_BLUE
    norm = heatmap(a, reduce="norm")[0]  # sqrt(18) is the largest: dark red
    assert pixel(norm, 0, 0) == DARK_RED and pixel(norm, 0, 2) != WHITE
    maxabs = heatmap(a, reduce="maxabs")[0]  # max |c| = 3, 1, 4
    assert pixel(maxabs, 0, 2) == DARK_RED and pixel(maxabs, 0, 1) != WHITE


def test_extrema_rangescale_maps_min_and_max_to_the_colormap_ends():
    a = torch.tensor([[[[2.0, 3.0, 4.0]]]])  # all positive: centred would give no blue at all
    image = heatmap(a, rangescale="extrema")[0]
    assert [pixel(image, 0, c) for c in range(3)] == [DARK_BLUE, WHITE, DARK_RED]
    gray = heatmap(a, reduce="norm", rangescale="extrema", colormap="gray")[0]
    assert pixel(gray, 0, 0) == (0, 0, 0) and pixel(gray, 0, 2) == (255, 255, 255)


def test_accepts_an_explanation_or_a_tensor_alike():
    a = torch.randn(2, 3, 4, 4)
    expl = Explanation(attribution=a, output=torch.zeros(2, 5), target=torch.zeros(2, dtype=torch.long), method="x")
    assert [np.asarray(i).tolist() for i in heatmap(expl)] == [np.asarray(i).tolist() for i in heatmap(a)]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"reduce": "mean"}, "sum, norm, maxabs"), ({"rangescale": "minmax"}, "centered, extrema"),
     ({"colormap": "no-such-map"}, "colormap")],
)
def test_bad_options_name_the_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        heatmap(torch.randn(1, 1, 2, 2), **kwargs)


def test_non_image_attribution_is_rejected():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        heatmap(torch.randn(2, 10))


def test_overlay_blends_input_and_heatmap():
    a = torch.zeros(1, 1, 2, 2)
    a[0, 0, 0, 0] = 1.0
    x = torch.full((1, 1, 2, 2), 0.0)  # black image
    assert pixel(overlay(a, x, alpha=1.0)[0], 0, 0) == DARK_RED
    assert pixel(overlay(a, x, alpha=0.0)[0], 0, 0) == (0, 0, 0)
    half = overlay(a, x, alpha=0.5)[0]
    assert all(abs(c - 127.5) <= 0.5 for c in pixel(half, 1, 1))  # white heatmap over black, half and half
    with pytest.raises(ValueError, match="does not match"):
        overlay(a, torch.zeros(1, 1, 3, 3))


def test_overlay_rescales_inputs_outside_unit_range():
    x = torch.tensor([[[[-2.0, 2.0]]]]).expand(1, 3, 1, 2)  # normalised-looking input
    image = overlay(torch.zeros(1, 3, 1, 2), x, alpha=0.0)[0]
    assert pixel(image, 0, 0) == (0, 0, 0) and pixel(image, 0, 1) == (255, 255, 255)


def test_grid_has_a_cell_per_image_and_grows_with_rows_and_columns():
    images = heatmap(torch.randn(3, 1, 8, 8))
    one = heatmap_grid({"Gradient": images[:1]})
    wide = heatmap_grid({"Gradient": images}, column_labels=["a", "b", "c"])
    tall = heatmap_grid({"Gradient": images, "SmoothGrad": images, "IG": images})
    assert wide.mode == "RGB"
    assert wide.width > one.width and tall.height > wide.height
    pixels = np.asarray(wide)
    assert (pixels[..., 0] > 200).sum() > 0 and (pixels[..., 2] > 200).sum() > 0  # heatmap colours are drawn
    with pytest.raises(ValueError, match="2 column labels for 3 columns"):
        heatmap_grid({"Gradient": images}, column_labels=["a", "b"])
