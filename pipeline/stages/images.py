"""Image folders read as the data really are: exact bit depths, explicit conversions, no symlink loops, no bombs.

torchvision's ``ImageFolder`` converts every image with ``PIL.Image.convert("RGB")``, which clips 16-bit values at
255 (a 16-bit PNG becomes all white), walks symlinked folders (a symlink loop repeats its images until the path is
too long) and lets PIL's decompression-bomb error end the run. ``CheckedImageFolder`` fixes all three and hands back
``Unreadable(path, reason)`` for a file it cannot read, so that ``dataset.on_corrupt`` decides: skip or fail.
"""
import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

#: PIL's own bound (about 89 million pixels, a 9459x9459 image): the default of ``dataset.max_pixels``.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS

#: Integer modes with more than 8 bits per value, and the full scale of their values.
HIGH_BIT_DEPTH = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}

_reported: set[str] = set()  # conversions already described in this process (once per run)


@dataclass(frozen=True)
class Unreadable:
    """Stands in for a sample whose file could not be read."""

    path: str
    reason: str


def _report_once(mode: str, what: str) -> None:
    if mode not in _reported:
        _reported.add(mode)
        log.warning("images of mode %s: %s", mode, what)


def to_rgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB, every conversion that is not plain decoding said once per run."""
    mode = image.mode
    if mode in HIGH_BIT_DEPTH:
        scale = HIGH_BIT_DEPTH[mode]
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) > scale:
            raise ValueError(f"mode {mode} values up to {values.max():.0f}, above the 16-bit range 0..{scale}")
        _report_once(mode, f"{scale + 1}-level values scaled to 8 bits (v * 255 / {scale}), then grey -> RGB")
        return Image.fromarray(np.rint(values * (255 / scale)).astype(np.uint8), mode="L").convert("RGB")
    if mode == "F":
        raise ValueError("mode F (32-bit float) images have no fixed range: convert them to 8 or 16-bit PNGs")
    if mode == "P":
        has_alpha = "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        _report_once("P", "palette colours looked up" + (", transparency then dropped" if has_alpha else ""))
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        _report_once(mode, "alpha channel dropped (the colour under transparent pixels is kept), as torchvision does")
    elif mode not in ("RGB", "L", "1"):
        _report_once(mode, "converted to RGB by PIL")
    return image.convert("RGB")


def load_image(path: str, max_pixels: int) -> Image.Image:
    """Read one image file, refusing (before decoding) any larger than ``max_pixels``."""
    with open(path, "rb") as file:
        image = Image.open(file)
        width, height = image.size
        if width * height > max_pixels:
            raise ValueError(f"{width}x{height} = {width * height} pixels is more than dataset.max_pixels="
                             f"{max_pixels} (raise it to read such images)")
        image.load()
        return to_rgb(image)


def walk_files(class_dir: str, is_valid_file: Callable[[str], bool]) -> list[str]:
    """The files below ``class_dir`` in sorted order, not descending into symlinked folders (no loops)."""
    found = []
    for root, dirs, files in os.walk(class_dir, followlinks=False):
        dirs.sort()
        found += [os.path.join(root, name) for name in sorted(files) if is_valid_file(os.path.join(root, name))]
    return sorted(found)


class CheckedImageFolder(Dataset):
    """``ImageFolder``'s layout (``<root>/<class>/**/<image>``) read with ``load_image``; ``Unreadable`` on failure."""

    def __init__(self, root: str, transform: Optional[Callable], max_pixels: int = DEFAULT_MAX_PIXELS):
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension

        # PIL refuses images above twice its bound on open, before our own check could name dataset.max_pixels
        Image.MAX_IMAGE_PIXELS = max(DEFAULT_MAX_PIXELS, max_pixels)
        self.classes, class_to_idx = find_classes(root)
        self.classes = tuple(self.classes)
        allowed = lambda path: has_file_allowed_extension(path, IMG_EXTENSIONS)  # noqa: E731
        self.samples = [(path, class_to_idx[name]) for name in self.classes
                        for path in walk_files(os.path.join(root, name), allowed)]
        empty = sorted(set(self.classes) - {self.classes[label] for _, label in self.samples})
        if empty:
            raise FileNotFoundError(f"dataset.path={root}: no images in the class folder(s) {', '.join(empty)} "
                                    f"(extensions {', '.join(IMG_EXTENSIONS)})")
        self.transform, self.max_pixels = transform, max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            image = load_image(path, self.max_pixels)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:  # PIL's ways to fail
            return Unreadable(path, f"{type(error).__name__}: {error}"), label
        return (self.transform(image) if self.transform else image), label


class MaskedImageFolder(CheckedImageFolder):
    """A ``CheckedImageFolder`` with a ground-truth mask per image: ``<mask_root>/<class>/<same path>/<stem>.png``
    (any image extension; a pixel is on the object where the mask's grey value is above 127). Items are (image,
    label, mask (H, W) bool); ``mask_transform`` moves the mask as the image transforms move the image."""

    has_masks = True

    def __init__(self, root: str, mask_root: str, transform: Optional[Callable], mask_transform: Optional[Callable],
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__(root, transform, max_pixels)
        self.mask_transform = mask_transform
        self.mask_paths = [_mask_path(root, mask_root, path) for path, _ in self.samples]
        missing = [path for path, mask in zip((p for p, _ in self.samples), self.mask_paths) if mask is None]
        if missing:
            raise FileNotFoundError(f"dataset.mask_path={mask_root} has no mask for {len(missing)} of "
                                    f"{len(self.samples)} images, e.g. {missing[0]}: give each image a mask file of "
                                    f"the same relative path and stem (e.g. <class>/<stem>.png)")

    def __getitem__(self, index: int):
        image, label = super().__getitem__(index)
        if isinstance(image, Unreadable):
            return image, label, None
        try:
            with open(self.mask_paths[index], "rb") as file:
                mask = Image.open(file).convert("L")
        except (OSError, ValueError, SyntaxError) as error:
            return Unreadable(self.mask_paths[index], f"mask: {type(error).__name__}: {error}"), label, None
        if self.mask_transform:
            mask = self.mask_transform(mask)
        return image, label, torch.from_numpy(np.asarray(mask) > 127)


def _mask_path(root: str, mask_root: str, image_path: str) -> Optional[str]:
    """The mask file of an image: the same path below ``mask_root`` with any image extension, or None."""
    relative = os.path.splitext(os.path.relpath(image_path, root))[0]
    for extension in (".png", ".PNG", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg"):
        candidate = os.path.join(mask_root, relative + extension)
        if os.path.isfile(candidate):
            return candidate
    return None
