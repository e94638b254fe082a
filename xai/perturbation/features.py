"""Feature groups for perturbation methods: which pixels are switched on and off together.

A segmentation is a LongTensor (N, H, W): pixel (h, w) of sample n belongs to feature ``segments[n, h, w]``, the
ids of each sample running 0..K_n-1 (K_n may differ between samples). A feature covers all channels of its pixels,
as Captum's ``feature_mask`` of shape (N, 1, H, W) does.

- ``slic_segments``: SLIC superpixels (Achanta et al. 2012, scikit-image's ``slic``) of each image, which is first
  scaled to [0, 1] (RGB, then converted to Lab as scikit-image does) or to [0, 100] (other channel counts, the
  range of Lab's lightness), so one ``compactness`` behaves alike for normalised, [0, 1] and grey inputs.
- ``grid_segments``: square cells in row-major order, the last row and column cropped at the border.
- ``check_segments``: a user's mask, (N, H, W) or one (H, W) for all samples, renumbered 0..K_n-1 per sample
  (in the order of the ids given).
- ``segments_for``: the ``features=`` argument of KernelSHAP and LIME: "slic", "grid", a mask tensor, or a
  callable x -> mask (e.g. ``functools.partial(slic_segments, n_segments=100)``).
"""
import math
from typing import Callable, Union

import numpy as np
import torch
from torch import Tensor

from xai.validation import positive_int

Features = Union[str, Tensor, Callable[[Tensor], Tensor]]

#: The named segmentations ``features=`` accepts, with their default parameters.
NAMED_FEATURES = ("slic", "grid")


def slic_segments(x: Tensor, n_segments: int = 50, compactness: float = 10.0) -> Tensor:
    """SLIC superpixels of each image of ``x`` (N, C, H, W): LongTensor (N, H, W), ids 0..K_n-1 per image."""
    from skimage.segmentation import slic

    _check_images(x, "slic_segments")
    positive_int(n_segments, "n_segments", "about how many superpixels")
    if isinstance(compactness, bool) or not isinstance(compactness, (int, float)) or not compactness > 0:
        raise ValueError(f"compactness must be a positive number (higher: squarer superpixels), got {compactness!r}")
    images = x.detach().to("cpu", torch.float64)
    low = images.flatten(1).min(1).values.view(-1, 1, 1, 1)
    spread = (images.flatten(1).max(1).values.view(-1, 1, 1, 1) - low).clamp_min(1e-12)
    rgb = x.shape[1] == 3
    scaled = ((images - low) / spread * (1.0 if rgb else 100.0)).permute(0, 2, 3, 1).numpy()
    labels = np.stack([slic(image, n_segments=n_segments, compactness=float(compactness), start_label=0,
                            convert2lab=rgb, channel_axis=-1) for image in scaled])
    return contiguous_ids(torch.from_numpy(labels).long()).to(x.device)


def grid_segments(x: Tensor, cell: int | None = None) -> Tensor:
    """Square cells of ``cell`` pixels (default: an 8 x 8 grid over the longer side), LongTensor (N, H, W)."""
    _check_images(x, "grid_segments")
    n, _, height, width = x.shape
    if cell is None:
        cell = math.ceil(max(height, width) / 8)
    if isinstance(cell, bool) or not isinstance(cell, int) or cell < 1:
        raise ValueError(f"cell must be a positive int (pixels per cell side) or None, got {cell!r}")
    rows = torch.arange(height, device=x.device) // cell
    cols = torch.arange(width, device=x.device) // cell
    ids = rows[:, None] * math.ceil(width / cell) + cols[None, :]
    return ids.expand(n, height, width).contiguous()


def check_segments(segments: Tensor, x: Tensor) -> Tensor:
    """A user's mask for ``x``: (N, H, W) or (H, W) (the same for every sample) of integer ids, renumbered
    0..K_n-1 per sample; returned as a LongTensor (N, H, W) on ``x``'s device."""
    _check_images(x, "features")
    n, _, height, width = x.shape
    if not isinstance(segments, Tensor):
        raise TypeError(f"features must be 'slic', 'grid', a LongTensor mask or a callable, got "
                        f"{type(segments).__name__}")
    if segments.dtype.is_floating_point or segments.dtype.is_complex or segments.dtype == torch.bool:
        raise TypeError(f"the features mask must hold integer feature ids, got dtype {segments.dtype}: "
                        "convert it with mask.long()")
    if segments.shape == (height, width):
        segments = segments.expand(n, height, width)
    if segments.shape != (n, height, width):
        raise ValueError(f"the features mask has shape {tuple(segments.shape)}, the input {tuple(x.shape)}: "
                         f"give (N, H, W) = ({n}, {height}, {width}) or one ({height}, {width}) mask for all")
    return contiguous_ids(segments.to(x.device, torch.long))


def contiguous_ids(segments: Tensor) -> Tensor:
    """Renumber each sample's ids of ``segments`` (N, H, W) to 0..K_n-1, keeping their order."""
    n = segments.shape[0]
    shifted = segments - segments.flatten(1).min(1).values.view(-1, 1, 1)
    span = int(shifted.max()) + 1
    # one unique over all samples: sample n's ids are offset by n * span, so they sort after sample n-1's
    _, joint = torch.unique(shifted + span * torch.arange(n, device=segments.device).view(-1, 1, 1),
                            return_inverse=True)
    first = joint.flatten(1).min(1).values.view(-1, 1, 1)
    return joint - first


def check_features(features: Features) -> Features:
    """Refuse a ``features=`` argument that can never work (checked at construction time)."""
    if isinstance(features, str) and features not in NAMED_FEATURES:
        raise ValueError(f"features={features!r} is not known: use one of {NAMED_FEATURES}, a LongTensor mask "
                         "(N, H, W) or (H, W), or a callable x -> mask")
    if not isinstance(features, (str, Tensor)) and not callable(features):
        raise TypeError(f"features must be one of {NAMED_FEATURES}, a LongTensor mask or a callable x -> mask, "
                        f"got {type(features).__name__}")
    return features


def segments_for(features: Features, x: Tensor) -> Tensor:
    """The segmentation (N, H, W) the ``features=`` argument asks for on ``x`` (see the module docstring)."""
    check_features(features)
    if isinstance(features, str):
        return slic_segments(x) if features == "slic" else grid_segments(x)
    return check_segments(features(x) if callable(features) else features, x)


def feature_counts(segments: Tensor) -> Tensor:
    """K_n, the number of features of each sample of a contiguous segmentation (N, H, W)."""
    return segments.flatten(1).max(1).values + 1


def _check_images(x: Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} needs images (N, C, H, W), got shape {tuple(x.shape)}")
