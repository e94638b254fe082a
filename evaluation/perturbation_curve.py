"""The batched engine shared by every perturbation metric, and the curve it returns.

A curve of a sample is the model's score for the target after 0, 1, ..., S steps of flipping: after step s every
feature whose flip step is <= s holds its baseline value, all others their original value. The engine builds many
(sample, step) inputs at once with one ``torch.where`` each, runs them through the model in chunks of ``batch_size``,
on the model's device, under ``torch.inference_mode``, without any host round trip until the curves are complete.
"""
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from evaluation.scores import aopc, auc
from xai.analyzer import check_output
from xai.model_guard import borrowed, model_device
from xai.targets import Target, resolve_target


@dataclass(frozen=True)
class PerturbationResult:
    """Per-sample curves of one flipping order.

    ``curve`` (N, steps + 1): score of the target after 0, 1, ..., steps flips (column 0 = unperturbed).
    ``fraction`` (steps + 1,): the x axis, fraction of the features flipped after each column (0 ... 1).
    ``target`` (N,): the class whose score is tracked.  ``order``: "morf" or "lerf".
    """

    curve: Tensor
    fraction: Tensor
    target: Tensor
    order: str

    @property
    def steps(self) -> int:
        return self.curve.shape[1] - 1

    @property
    def auc(self) -> Tensor:
        """(N,) trapezoid area under the curve over the flipped fraction in [0, 1]."""
        return auc(self.curve, self.fraction)

    @property
    def aopc(self) -> Tensor:
        """(N,) area over the perturbation curve, 1/(L+1) sum_k (curve_0 - curve_k) (Samek et al. 2017)."""
        return aopc(self.curve)

    @property
    def mean_curve(self) -> Tensor:
        """(steps + 1,) the curve averaged over the samples."""
        return self.curve.mean(dim=0)


def target_score(output: Tensor, target: Tensor, softmax: bool) -> Tensor:
    """The tracked score: softmax probability (``softmax=True``) or logit of each row's target class."""
    if softmax:
        output = torch.softmax(output, dim=1)
    return output.gather(1, target[:, None]).squeeze(1)


def perturbation_curves(
    model: nn.Module,
    x: Tensor,
    baseline: Tensor | float,
    flip_steps: Sequence[Tensor],
    steps: int,
    target: Target,
    softmax: bool,
    batch_size: int,
    progress: bool = True,
) -> tuple[Tensor, list[Tensor]]:
    """Curves (N, steps + 1) for each flip-step map, and the resolved target (N,).

    ``x`` is (N, C, H, W), ``baseline`` a tensor of its shape or one number; each flip-step map is
    (N, C or 1, H, W) and holds, per feature, the 1-based step from which it is flipped. The unperturbed column is
    computed once and shared by all maps. Everything is returned on the device of ``x``.
    """
    device = model_device(model)
    n = x.shape[0]
    with borrowed(model), torch.inference_mode():
        x_dev = x.to(device)
        baseline_dev = torch.as_tensor(baseline, dtype=x.dtype, device=device)
        # row m perturbs sample m % n; the smallest integer type that holds the steps saves memory traffic
        step_type = torch.int16 if steps < torch.iinfo(torch.int16).max else torch.int32
        flips = torch.cat([f.to(device=device, dtype=step_type) for f in flip_steps])
        chunks = range(0, n, batch_size)
        output = torch.cat([model(x_dev[i : i + batch_size]) for i in chunks])
        check_output(output)
        resolved = resolve_target(target, output)
        unperturbed = target_score(output, resolved, softmax)

        total = flips.shape[0] * steps  # job j = (row j // steps, step j % steps + 1), rows one after the other
        sample = torch.arange(total, device=device) // steps % n
        step_values = torch.arange(1, steps + 1, device=device, dtype=step_type).view(-1, *([1] * (x.dim() - 1)))
        scores = torch.empty(total, dtype=unperturbed.dtype, device=device)
        # buffers reused by every chunk: no allocation (and no page faults) per forward pass
        width = min(batch_size, total)
        inputs = torch.empty((width, *x.shape[1:]), dtype=x.dtype, device=device)
        flipped = torch.empty((width, *flips.shape[1:]), dtype=torch.bool, device=device)
        with tqdm(total=total, unit="input", desc="perturbation curves", leave=False,
                  disable=not progress or total <= batch_size) as bar:
            for start in range(0, total, batch_size):
                stop = min(start + batch_size, total)
                # a chunk covers consecutive steps of a few rows: one broadcast where per row, no gathers
                for m in range(start // steps, (stop - 1) // steps + 1):
                    first, last = max(start, m * steps), min(stop, (m + 1) * steps)
                    rows = slice(first - start, last - start)
                    mask = torch.le(flips[m], step_values[first - m * steps : last - m * steps], out=flipped[rows])
                    replacement = baseline_dev if baseline_dev.dim() == 0 else baseline_dev[m % n]
                    torch.where(mask, replacement, x_dev[m % n], out=inputs[rows])
                perturbed = inputs[: stop - start]
                scores[start:stop] = target_score(model(perturbed), resolved[sample[start:stop]], softmax)
                bar.update(stop - start)
        curves = torch.cat([unperturbed.expand(len(flip_steps), n)[..., None], scores.view(-1, n, steps)], dim=2)
    # clone outside inference mode: callers may use the results in autograd-recorded code
    return resolved.to(x.device).clone(), [c.to(x.device).clone() for c in curves]
