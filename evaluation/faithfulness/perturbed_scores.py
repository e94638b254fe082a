"""The target score on many perturbed inputs, in chunks of ``batch_size``: the loop ROAD, FaithfulnessCorrelation and
Infidelity share.

The unperturbed batch runs first (it resolves the target), then the perturbed rows: ``build(start, stop)`` returns
the inputs of rows start..stop-1 and the sample each belongs to. Everything runs on the model's device under
``torch.inference_mode`` with the model borrowed (eval mode, frozen parameters, restored after, also on errors).
"""
from typing import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from evaluation.faithfulness.perturbation_curve import target_score
from xai.model_guard import borrowed, model_device
from xai.targets import Target, resolve_target
from xai.validation import run_model

# build(start, stop) -> (inputs of rows start..stop-1 on the model's device, their sample index (stop - start,))
RowBuilder = Callable[[int, int], tuple[Tensor, Tensor]]


def perturbed_scores(
    model: nn.Module, x: Tensor, target: Target, softmax: bool, rows: int, build: RowBuilder, batch_size: int,
    progress: bool, description: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(resolved target (N,), unperturbed scores (N,), scores of the ``rows`` perturbed rows), on the model's device.

    A score is the softmax probability (``softmax=True``) or the logit of the row's sample's target class.
    With ``rows=0`` only the unperturbed batch runs.
    """
    device = model_device(model)
    n = x.shape[0]
    with borrowed(model), torch.inference_mode():
        x_dev = x.detach().to(device)
        output = torch.cat([run_model(model, x_dev[i : i + batch_size]) for i in range(0, n, batch_size)])
        resolved = resolve_target(target, output)
        unperturbed = target_score(output, resolved, softmax)
        scores = torch.empty(rows, dtype=output.dtype, device=device)
        with tqdm(total=rows, unit="input", desc=description, leave=False,
                  disable=not progress or rows <= batch_size) as bar:
            for start in range(0, rows, batch_size):
                stop = min(start + batch_size, rows)
                inputs, sample = build(start, stop)
                scores[start:stop] = target_score(model(inputs), resolved[sample], softmax)
                bar.update(stop - start)
    # clone outside inference mode: callers may use the results in autograd-recorded code
    return resolved.clone(), unperturbed.clone(), scores.clone()
