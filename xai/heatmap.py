"""Attributions as images: one RGB heatmap per sample, overlays on the input, and labelled grids.

Conventions follow ExplainableAI.jl / VisionHeatmaps.jl: channels are reduced (``reduce="sum"`` by
default, also ``"norm"`` and ``"maxabs"``), each sample is scaled on its own (``rangescale="centered"``
maps [-max|a|, +max|a|] to [0, 1] so zero is the middle colour; ``"extrema"`` maps [min, max] to
[0, 1]), then coloured. The default colormap ``"seismic"`` is diverging: dark blue (0, 0, 0.3) at -1,
blue at -0.5, **white exactly at 0**, red at +0.5, dark red (0.5, 0, 0) at +1; so positive relevance
is red, negative blue, zero white. ``"bwr"`` is the plain blue-white-red map. Any other matplotlib
colormap name can be given too (sampled from its 256-entry table, e.g. ``"gray"`` or ``"viridis"``
for sensitivities with ``reduce="norm", rangescale="extrema"``).
"""
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from xai.explanation import Explanation

REDUCTIONS = ("sum", "norm", "maxabs")
RANGESCALES = ("centered", "extrema")

# Piecewise-linear diverging maps: (position in [0, 1], RGB) anchors, white exactly at 0.5.
DIVERGING = {
    "seismic": ((0.0, (0.0, 0.0, 0.3)), (0.25, (0.0, 0.0, 1.0)), (0.5, (1.0, 1.0, 1.0)),
                (0.75, (1.0, 0.0, 0.0)), (1.0, (0.5, 0.0, 0.0))),
    "bwr": ((0.0, (0.0, 0.0, 1.0)), (0.5, (1.0, 1.0, 1.0)), (1.0, (1.0, 0.0, 0.0))),
}


def reduce_channels(attribution: Tensor, reduce: str = "sum") -> Tensor:
    """(N, C, H, W) -> (N, H, W): sum, L2 norm or largest magnitude over channels; (N, H, W) passes through."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}: choose one of {', '.join(REDUCTIONS)}")
    if attribution.dim() == 3:
        return attribution
    if attribution.dim() != 4:
        raise ValueError(
            f"heatmaps need image attributions of shape (N, C, H, W) or (N, H, W), got {tuple(attribution.shape)}"
        )
    if reduce == "sum":
        return attribution.sum(dim=1)
    if reduce == "norm":
        return attribution.norm(dim=1)
    return attribution.abs().amax(dim=1)


def scale_range(values: Tensor, rangescale: str = "centered") -> Tensor:
    """Map each sample (first dim) to [0, 1]; a constant sample maps to 0.5 (white for diverging maps)."""
    if rangescale not in RANGESCALES:
        raise ValueError(f"unknown rangescale {rangescale!r}: choose one of {', '.join(RANGESCALES)}")
    flat = values.flatten(1)
    shape = (-1,) + (1,) * (values.dim() - 1)
    if rangescale == "centered":
        bound = flat.abs().amax(dim=1).view(shape)
        scaled = 0.5 + 0.5 * values / torch.where(bound > 0, bound, torch.ones_like(bound))
    else:
        low, high = flat.amin(dim=1).view(shape), flat.amax(dim=1).view(shape)
        spread = high - low
        scaled = torch.where(spread > 0, (values - low) / torch.where(spread > 0, spread, 1.0), 0.5)
    return scaled.clamp(0.0, 1.0)


def colorize(unit: np.ndarray, colormap: str = "seismic") -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB of shape (..., 3)."""
    if colormap in DIVERGING:
        positions, colors = zip(*DIVERGING[colormap])
        rgb = np.stack([np.interp(unit, positions, [c[i] for c in colors]) for i in range(3)], axis=-1)
    else:
        import matplotlib

        if colormap not in matplotlib.colormaps:
            raise ValueError(f"unknown colormap {colormap!r}: use 'seismic', 'bwr' or a matplotlib colormap name")
        rgb = matplotlib.colormaps[colormap](unit)[..., :3]
    return np.round(rgb * 255).astype(np.uint8)


def _attribution_of(expl: Explanation | Tensor) -> Tensor:
    if isinstance(expl, Explanation):
        return expl.attribution
    if isinstance(expl, Tensor):
        return expl
    raise TypeError(f"expected an Explanation or an attribution Tensor, got {type(expl).__name__}")


def heatmap(
    expl: Explanation | Tensor,
    reduce: str = "sum",
    rangescale: str = "centered",
    colormap: str = "seismic",
) -> list[Image.Image]:
    """One RGB PIL image (H x W of the input) per sample of an Explanation or an attribution tensor."""
    values = reduce_channels(_attribution_of(expl).detach().cpu().double(), reduce)
    unit = scale_range(values, rangescale).numpy()
    return [Image.fromarray(colorize(sample, colormap)) for sample in unit]


def input_images(x: Tensor) -> list[Image.Image]:
    """The inputs (N, 1 or 3, H, W) as RGB images: used as they are if within [0, 1], else min-max scaled per sample."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"input images must have shape (N, 1 or 3, H, W), got {tuple(x.shape)}")
    x = x.detach().cpu().double()
    if x.min() < 0 or x.max() > 1:
        x = scale_range(x, "extrema")
    pixels = np.round(x.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    return [Image.fromarray(p) for p in pixels]


def overlay(expl: Explanation | Tensor, x: Tensor, alpha: float = 0.6, **heatmap_options) -> list[Image.Image]:
    """Heatmaps blended over the input images: ``image * (1 - alpha) + heatmap * alpha`` (as VisionHeatmaps)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    maps = heatmap(expl, **heatmap_options)
    images = input_images(x)
    if len(images) != len(maps) or images[0].size != maps[0].size:
        raise ValueError(
            f"input of shape {tuple(x.shape)} does not match the attribution of shape "
            f"{tuple(_attribution_of(expl).shape)}: overlay needs the explained input"
        )
    return [Image.blend(image, hm, alpha) for image, hm in zip(images, maps)]


def heatmap_grid(
    rows: Mapping[str, Sequence[Image.Image]],
    column_labels: Sequence[str] | None = None,
    cell_inches: float = 1.4,
    dpi: int = 100,
) -> Image.Image:
    """A gallery: one row per entry of ``rows`` (label -> images, e.g. method -> heatmaps), labelled columns."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(rows)
    if not labels:
        raise ValueError("heatmap_grid needs at least one row")
    n_cols = max(len(images) for images in rows.values())
    if column_labels is not None and len(column_labels) != n_cols:
        raise ValueError(f"{len(column_labels)} column labels for {n_cols} columns")
    figure = Figure(figsize=(cell_inches * n_cols + 1.2, cell_inches * len(labels) + 0.4), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(labels), n_cols, squeeze=False)
    for r, label in enumerate(labels):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(rows[label]):
                ax.imshow(np.asarray(rows[label][c]), interpolation="nearest")
            else:
                ax.set_axis_off()
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
            if r == 0 and column_labels is not None:
                ax.set_title(column_labels[c], fontsize=9)
    figure.tight_layout()
    figure.canvas.draw()
    return Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())
