"""The range of the model's inputs (``dataset.input_low/high``): ZBox's bounds, and a check that the data obey them.

A bound is one number for all channels or a list with one number per channel (normalised data, e.g. the
``imagenet`` dataset preset). LRP's ZBox rule assumes every input value lies in [low, high]; data outside
give relevance of the wrong sign at the first layer, silently, so the first batch is checked and a
warning names the range found and the keys to set.
"""
import logging
import math
from typing import Any, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)


def bound_values(value: Any, key: str) -> list[float]:
    """``value`` (a number or a per-channel list) as a list of finite floats; ``key`` names it in errors."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{key}={value!r} must be a number or a list of numbers (one per channel)")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{key}={value!r} must be finite")
    return [float(v) for v in values]


def input_bounds(low: Any, high: Any) -> tuple[Tensor, Tensor]:
    """(low, high) as tensors of shape (1, C, 1, 1) (C = 1 for one number), checked: same length, low < high."""
    lows, highs = bound_values(low, "dataset.input_low"), bound_values(high, "dataset.input_high")
    if len(lows) != len(highs) and 1 not in (len(lows), len(highs)):
        raise ValueError(
            f"dataset.input_low has {len(lows)} values and dataset.input_high {len(highs)}: give one number, "
            "or one per channel for both"
        )
    low_t, high_t = torch.broadcast_tensors(torch.tensor(lows), torch.tensor(highs))
    if (low_t >= high_t).any():
        raise ValueError(f"dataset.input_low={low!r} must be below dataset.input_high={high!r} in every channel")
    return low_t.view(1, -1, 1, 1), high_t.view(1, -1, 1, 1)


def composite_bound(value: Any, key: str) -> float | Tensor:
    """A config bound as ZBox takes it: a number stays a number, a list becomes a (1, C, 1, 1) tensor."""
    values = bound_values(value, key)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)
    return values[0]


def check_input_range(x: Tensor, low: Any, high: Any) -> bool:
    """Warn when ``x`` (N, C, ...) lies outside [low, high] in some channel; True when it lies inside."""
    low_t, high_t = input_bounds(low, high)
    if x.dim() < 2 or low_t.shape[1] not in (1, x.shape[1]):
        raise ValueError(
            f"dataset.input_low/high have {low_t.shape[1]} values but the data have {x.shape[1]} channels: "
            "give one number, or one per channel"
        )
    per_channel = x.detach().transpose(0, 1).flatten(1).float()
    found_low, found_high = per_channel.min(dim=1).values, per_channel.max(dim=1).values
    low_c, high_c = low_t.flatten().expand(x.shape[1]), high_t.flatten().expand(x.shape[1])
    tolerance = 1e-5 * (high_c - low_c)  # float32 rounding of normalised bounds
    if bool(((found_low < low_c - tolerance) | (found_high > high_c + tolerance)).any()):
        log.warning(
            "the data (after dataset.transforms) lie in [%s] per channel, outside dataset.input_low=%s / "
            "dataset.input_high=%s, the bounds LRP's ZBox rule assumes: set both to the range your transforms produce "
            "(one number, or a list per channel; for ImageNet normalisation use dataset=imagenet)",
            ", ".join(f"{a:.3g}..{b:.3g}" for a, b in zip(found_low.tolist(), found_high.tolist())), low, high,
        )
        return False
    return True
