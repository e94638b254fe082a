"""Which class each sample is explained for."""
from typing import Union

import torch
from torch import Tensor

Target = Union[None, int, Tensor]


def resolve_target(target: Target, output: Tensor) -> Tensor:
    """Turn the user's target (None = argmax, an int for all, or one class per sample) into a LongTensor (N,)."""
    n, classes = output.shape[0], output.shape[1]
    if target is None:
        return output.argmax(dim=1)
    if isinstance(target, bool) or not isinstance(target, (int, Tensor)):
        raise TypeError(f"target must be None, an int or a LongTensor of shape ({n},), got {type(target).__name__}")
    if isinstance(target, int):
        resolved = torch.full((n,), target, dtype=torch.long, device=output.device)
    else:
        if target.dtype.is_floating_point or target.dtype == torch.bool:
            raise TypeError(f"target tensor must hold integer class indices, got dtype {target.dtype}")
        if target.dim() == 0:
            target = target.expand(n)
        if target.shape != (n,):
            raise ValueError(
                f"target has shape {tuple(target.shape)} but the batch has {n} samples: "
                f"give one class per sample (shape ({n},)), a single int, or None for the top class"
            )
        resolved = target.to(device=output.device, dtype=torch.long)
    bad = (resolved < 0) | (resolved >= classes)
    if bad.any():
        raise ValueError(
            f"target {sorted(set(resolved[bad].tolist()))} out of range: "
            f"the model has {classes} classes (0..{classes - 1})"
        )
    return resolved


def one_hot_at(output: Tensor, target: Tensor) -> Tensor:
    """The output relevance / gradient seed: 1 at each sample's target class, 0 elsewhere."""
    return torch.zeros_like(output).scatter_(1, target[:, None], 1.0)
