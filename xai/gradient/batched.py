"""Weighted sums of target gradients over many derived inputs, evaluated in bounded chunks.

SmoothGrad and Integrated Gradients both average the gradient over ``steps`` derived copies of each
sample (noisy copies, points on a path). Stacking all ``steps x N`` copies at once runs out of memory
on large models, and one forward per copy is slow; this evaluates at most ``batch_size`` copies per
forward/backward and keeps no graph beyond a chunk.
"""
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from xai.analyzer import check_output
from xai.batchnorm_folding import fold_batchnorm
from xai.targets import one_hot_at

# points(step, sample) -> the inputs for these (step, sample) index pairs, shape (len(step), *sample_shape)
PointMaker = Callable[[Tensor, Tensor], Tensor]


def weighted_gradient_sum(
    model: nn.Module,
    points: PointMaker,
    weights: Tensor,
    target: Tensor,
    batch_size: int,
    desc: str = "gradients",
    fold: bool = False,
    scale: PointMaker | None = None,
) -> Tensor:
    """``sum_s weights[s] * d model(points_s)[n, target[n]] / d points_s[n]`` for every sample n.

    ``scale(step, sample)``, if given, multiplies each point's gradient before the sum (GradientSHAP's
    x - baseline, which changes with the step); it is asked for the same chunks as ``points``, after it.

    ``points(step, sample)`` returns the inputs for the given index pairs (one chunk, at most ``batch_size``).
    Chunks visit the steps in increasing order, so ``points`` may draw them lazily (e.g. seeded noise).
    The step weight is folded into the backward seed, so each chunk costs one forward and one backward.
    ``fold=True`` runs the model with its BatchNorm folded into the layer before: the same function up to
    rounding, but rounding can move a point across a ReLU or MaxPool tie, so it is an opt-in speed-up.
    """
    if fold:
        model = fold_batchnorm(model)
    n, steps = target.shape[0], weights.shape[0]
    total = steps * n
    total_grad: Tensor | None = None
    starts = range(0, total, batch_size)
    for start in tqdm(starts, desc=desc, leave=False, disable=None if len(starts) > 1 else True):
        flat = torch.arange(start, min(start + batch_size, total), device=target.device)
        step, sample = flat // n, flat % n
        chunk = points(step, sample).detach().requires_grad_(True)
        with torch.enable_grad():
            output = model(chunk)
            check_output(output)
            seed = one_hot_at(output, target[sample]) * weights.to(output)[step, None]
            (grad,) = torch.autograd.grad(output, chunk, grad_outputs=seed)
        if scale is not None:
            grad = grad * scale(step, sample)
        if total_grad is None:
            total_grad = torch.zeros((n, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
        total_grad.index_add_(0, sample, grad)
    return total_grad
