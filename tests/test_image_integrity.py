"""Image folders give the data as they are: 16-bit scaled right, conversions said, no symlink loops, no bombs."""
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms import ToTensor

from pipeline.bundled import digits_split
from pipeline.config import OnCorrupt
from pipeline.stages.data import iterate_batches
from pipeline.stages.images import CheckedImageFolder, Unreadable


def write_digits(root, bits: int, n: int = 6) -> None:
    """n held-out digits as PNGs in <root>/<label>/, 8-bit (v) or 16-bit (v * 257, the same value at full scale)."""
    images, labels = digits_split("test")
    for i in range(n):
        values = np.rint(images[i, 0].numpy() * 255).astype(np.uint8)
        folder = root / str(int(labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        if bits == 8:
            Image.fromarray(values, mode="L").save(folder / f"{i}.png")
        else:
            Image.fromarray(values.astype(np.uint16) * 257).save(folder / f"{i}.png")  # mode I;16


def stacked(folder) -> torch.Tensor:
    return torch.stack([x for x, _ in (folder[i] for i in range(len(folder)))])


def test_a_16_bit_png_folder_reads_as_its_8_bit_copy(tmp_path, caplog):
    write_digits(tmp_path / "8bit", 8)
    write_digits(tmp_path / "16bit", 16)
    assert Image.open(next((tmp_path / "16bit").rglob("*.png"))).mode.startswith("I")
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.images"):
        sixteen = stacked(CheckedImageFolder(str(tmp_path / "16bit"), ToTensor()))
    eight = stacked(CheckedImageFolder(str(tmp_path / "8bit"), ToTensor()))
    assert torch.equal(sixteen, eight) and 0 < eight.mean() < 1  # identical, so the accuracy is too
    assert "65536-level values scaled to 8 bits" in caplog.text
    # torchvision's own loader clips them: why the folder has its own
    clipped = stacked(ImageFolder(str(tmp_path / "16bit"), ToTensor()))
    assert clipped.min() == 1.0 or not torch.equal(clipped, eight)


def test_a_symlink_loop_does_not_repeat_images(tmp_path):
    write_digits(tmp_path / "data", 8)
    first_class = sorted(p for p in (tmp_path / "data").iterdir())[0]
    os.symlink(first_class, first_class / "loop")  # <class>/loop -> <class>: an endless walk when followed
    os.symlink(tmp_path / "data", first_class / "up")
    folder = CheckedImageFolder(str(tmp_path / "data"), ToTensor())
    assert len(folder) == 6 and len({path for path, _ in folder.samples}) == 6


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA"])
def test_palette_and_alpha_images_are_converted_and_said_once(tmp_path, caplog, mode):
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    for i in range(2):
        image = Image.new("RGB", (4, 4), (200, 30, 10))
        image = image.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else image.convert(mode)
        image.save(folder / f"{i}.png")
    with caplog.at_level(logging.WARNING, logger="pipeline.stages.images"):
        data = CheckedImageFolder(str(tmp_path / "data"), ToTensor())
        images = stacked(data)
    assert images.shape == (2, 3, 4, 4)
    if mode == "LA":
        assert torch.allclose(images, images[:, :1].expand_as(images))  # grey stays grey
    else:
        torch.testing.assert_close(images[0, :, 0, 0], torch.tensor([200, 30, 10]) / 255, atol=2 / 255, rtol=0)
    assert caplog.text.count(f"images of mode {mode}") <= 1


def test_an_oversized_image_is_unreadable_naming_the_file_and_the_key(tmp_path):
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    Image.new("L", (40, 40)).save(folder / "big.png")
    Image.new("L", (8, 8)).save(folder / "small.png")
    data = CheckedImageFolder(str(tmp_path / "data"), ToTensor(), max_pixels=1000)
    big, _ = data[0]
    assert isinstance(big, Unreadable) and big.path.endswith("big.png")
    assert "40x40 = 1600 pixels is more than dataset.max_pixels=1000" in big.reason
    (batch,) = iterate_batches(data, [[0, 1]], OnCorrupt.skip)
    assert batch.ids.tolist() == [1] and batch.skipped_ids == [0]
    with pytest.raises(ValueError, match="unreadable image .*big.png .*dataset.max_pixels=1000.*on_corrupt=skip"):
        list(iterate_batches(data, [[0, 1]], OnCorrupt.fail))
