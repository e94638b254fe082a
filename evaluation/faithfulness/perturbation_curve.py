"""The batched engine shared by every perturbation metric, and the curve it returns.

A curve of a sample is the model's score for the target after 0, 1, ..., S steps of flipping: after step s every
feature whose flip step is <= s holds its baseline value, all others their original value. The engine builds many
(sample, step) inputs at once with three float operations per sample, runs them through the model in chunks of
``batch_size``, on the model's device, under ``torch.inference_mode``, without any host round trip until the curves
are complete.
"""
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from evaluation.faithfulness.scores import aopc, auc
from xai.model_guard import borrowed, model_device
from xai.targets import Target, resolve_target
from xai.validation import run_model

LOGITS_KEPT = 2**22  # at most this many logits (16 MB in float32) wait for one softmax


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
        # Float arithmetic only (bool masks and torch.where are several times slower on the CPU): with f a feature's
        # flip step, its baseline weight at step s is clamp(s + 1 - f, 0, 1), exactly 1 (flipped) or 0, and
        # lerp(x, baseline, weight) is then exactly the baseline or x (while baseline - x does not overflow). The
        # steps are held in a float type that represents them exactly; row m perturbs sample m % n.
        exact = torch.promote_types(x.dtype, torch.float32 if steps < 2**24 else torch.float64)
        flips = torch.cat([f.to(device=device, dtype=exact) for f in flip_steps])
        output = torch.cat([run_model(model, x_dev[i : i + batch_size]) for i in range(0, n, batch_size)])
        resolved = resolve_target(target, output)

        total = flips.shape[0] * steps  # job j = (row j // steps, step j % steps + 1), rows one after the other
        # scores[:n] unperturbed, scores[n + j] job j. Their logits wait (up to LOGITS_KEPT) for one softmax: torch's
        # CPU softmax opens a parallel region even for 64 x 10 logits, and on a busy machine each region can wait
        # milliseconds for a descheduled thread.
        score_target = torch.cat([resolved, resolved[torch.arange(total, device=device) // steps % n]])
        scores = torch.empty(n + total, dtype=output.dtype, device=device)
        kept, waiting = [output], 0  # logits not scored yet, and the position of their first score
        next_step = torch.arange(2, steps + 2, device=device, dtype=exact).view(-1, *([1] * (x.dim() - 1)))
        # buffers reused by every chunk: no allocation (and no page faults) per forward pass; the weights of one row
        # at a time, used at once, so the rows of a chunk share (and find in the cache) the same memory
        inputs = torch.empty((min(batch_size, total), *x.shape[1:]), dtype=x.dtype, device=device)
        weight = torch.empty((min(batch_size, steps), *flips.shape[1:]), dtype=x.dtype, device=device)
        with tqdm(total=total, unit="input", desc="perturbation curves", leave=False,
                  disable=not progress or total <= batch_size) as bar:
            for start in range(0, total, batch_size):
                stop = min(start + batch_size, total)
                # a chunk covers consecutive steps of a few rows: one broadcast lerp per row, no gathers
                for m in range(start // steps, (stop - 1) // steps + 1):
                    first, last = max(start, m * steps), min(stop, (m + 1) * steps)
                    rows = slice(first - start, last - start)
                    row_weight = torch.sub(next_step[first - m * steps : last - m * steps], flips[m],
                                           out=weight[: last - first])
                    row_weight.clamp_(0, 1)
                    replacement = baseline_dev if baseline_dev.dim() == 0 else baseline_dev[m % n]
                    torch.lerp(x_dev[m % n], replacement, row_weight, out=inputs[rows])
                kept.append(model(inputs[: stop - start]))
                if (n + stop - waiting) * output.shape[1] >= LOGITS_KEPT or stop == total:
                    scored = slice(waiting, n + stop)
                    scores[scored] = target_score(torch.cat(kept), score_target[scored], softmax)
                    kept, waiting = [], n + stop
                bar.update(stop - start)
        curves = torch.cat([scores[:n].expand(len(flip_steps), n)[..., None], scores[n:].view(-1, n, steps)], dim=2)
    # clone outside inference mode: callers may use the results in autograd-recorded code
    return resolved.to(x.device).clone(), [c.to(x.device).clone() for c in curves]
