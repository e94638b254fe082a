"""Fitting patterns from data in one streaming pass: the two-component estimator a_+- of Kindermans et al. (2018).

For a layer y = w^T x + b (per output unit j; for a convolution x is the input patch at each output position, so
the statistics of one output channel run over all samples and positions) and each region, y_j > 0 (+) and
y_j < 0 (-), the paper's estimator is (section 4.3, the ``relu`` pattern of iNNvestigate's ``PatternComputer``)

    a_j = (E[x y_j] - E[x] E[y_j]) / (w_j^T E[x y_j] - w_j^T E[x] E[y_j]),    expectations over that region.

One forward pass per batch accumulates, per region, the count, sum y, sum x and sum x y (float64 running sums).
The sums over patches are weight gradients of the layer (``convolution_backward`` with the region's mask or its
masked output as the output gradient), so no patch matrix is ever unfolded. The denominator is var(y_j) over the
region; a unit never active in a region (or constant there) gets a zero pattern. BatchNorm is folded into the
convolution before it first (``xai.batchnorm_folding``), so the patterns are those of the folded layers.
"""
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from xai.lrp.canonize import AffineLayer
from xai.model_guard import borrowed, model_device
from xai.pattern.patterns import LayerPattern, Patterns, folded_pattern_layers, pattern_layers
from xai.validation import check_input, check_model_input, forward


def _weight_gradient(geometry: AffineLayer, x: Tensor, g: Tensor, weight_shape: tuple[int, ...]) -> Tensor:
    """The sum over samples and positions of g_j * (the input unit j sees): the weight gradient for output grad g."""
    if not geometry.is_conv:
        return g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1])
    conv = geometry.module
    dims = len(conv.kernel_size)
    return torch.ops.aten.convolution_backward(
        g, x, x.new_empty(()).expand(weight_shape), None, conv.stride, geometry.padding, conv.dilation, False,
        (0,) * dims, conv.groups, (False, True, False),
    )[1]  # the weight is only read for its shape


def _patch_products(geometry: AffineLayer, x: Tensor, gs: list[Tensor], weight_shape: torch.Size) -> list[Tensor]:
    """``_weight_gradient`` for each g, stacked along the units into one call where the groups allow it."""
    if not geometry.stackable:
        return [_weight_gradient(geometry, x, g, tuple(weight_shape)) for g in gs]
    stacked_shape = (len(gs) * weight_shape[0],) + tuple(weight_shape[1:])
    unit_axis = 1 if geometry.is_conv else -1
    return list(_weight_gradient(geometry, x, torch.cat(gs, dim=unit_axis), stacked_shape).chunk(len(gs)))


class _RegionSums:
    """Running float64 sums over the positive (index 0) and negative (index 1) output region of one layer."""

    def __init__(self, weight: Tensor):
        units, device = weight.shape[0], weight.device
        self.weight_shape = weight.shape
        self.count = torch.zeros(2, units, dtype=torch.float64, device=device)
        self.sum_y = torch.zeros(2, units, dtype=torch.float64, device=device)
        self.sum_x = torch.zeros((2,) + tuple(weight.shape), dtype=torch.float64, device=device)
        self.sum_xy = torch.zeros_like(self.sum_x)

    def add(self, geometry: AffineLayer, x: Tensor, y: Tensor) -> None:
        """One batch: the products in the layer's dtype (float64 convolutions are many times slower on CPU), the
        sums in float64."""
        x, y = x.detach(), y.detach()
        unit_axis = 1 if geometry.is_conv else y.dim() - 1
        others = [d for d in range(y.dim()) if d != unit_axis]
        masks = [(y > 0).to(y.dtype), (y < 0).to(y.dtype)]
        masked_ys = [y * mask for mask in masks]
        products = _patch_products(geometry, x, masks + masked_ys, self.weight_shape)
        for region in (0, 1):
            self.count[region] += masks[region].sum(others, dtype=torch.float64)
            self.sum_y[region] += masked_ys[region].sum(others, dtype=torch.float64)
            self.sum_x[region] += products[region]
            self.sum_xy[region] += products[2 + region]

    def pattern(self, weight: Tensor) -> LayerPattern:
        per_unit = (2, -1) + (1,) * (weight.dim() - 1)
        count = self.count.clamp(min=1).reshape(per_unit)
        mean_x, mean_xy = self.sum_x / count, self.sum_xy / count
        covariance = mean_xy - mean_x * (self.sum_y.reshape(per_unit) / count)
        denominator = (weight.detach().double() * covariance).flatten(2).sum(2).reshape(per_unit)  # var(y) >= 0
        pattern = covariance / torch.where(denominator > 0, denominator, torch.inf)
        return LayerPattern(pattern[0].to(weight.dtype), pattern[1].to(weight.dtype))


def _batch_input(batch) -> Tensor:
    """A batch is an input tensor, or a (inputs, labels, ...) tuple or list as a DataLoader yields."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, Tensor):
        raise TypeError(f"data_batches must yield input tensors (N, ...) or (inputs, labels) pairs, got "
                        f"{type(batch).__name__}")
    return batch


def fit_patterns(model: nn.Module, data_batches: Iterable, progress: bool = True) -> Patterns:
    """The two-component patterns a_+- of every Linear/Conv layer of ``model``, from one pass over ``data_batches``
    (input tensors or ``(inputs, labels)`` pairs, e.g. a DataLoader over the training split).

    The model is run in eval mode with BatchNorm folded in and is left as it was.
    """
    device = model_device(model)
    batches = 0
    with borrowed(model):
        folded, layers = folded_pattern_layers(model)
        sums = {path: _RegionSums(module.weight) for path, (module, _) in layers.items()}

        def hook_for(path: str, geometry: AffineLayer):
            def hook(module, args, output):
                sums[path].add(geometry, args[0], output)
            return hook

        handles = [module.register_forward_hook(hook_for(path, geometry))
                   for path, (module, geometry) in layers.items()]
        try:
            for batch in tqdm(data_batches, desc="patterns", leave=False, disable=None if progress else True):
                x = _batch_input(batch)
                check_input(x)
                check_model_input(model, x)
                with torch.no_grad():
                    forward(folded, x.to(device))
                batches += 1
        finally:
            for handle in handles:
                handle.remove()
        if not batches:
            raise ValueError("data_batches yielded no batch: give an iterable of input tensors (or (inputs, labels) "
                             "pairs), e.g. a DataLoader over the training split")
        found = {path: sums[path].pattern(module.weight) for path, (module, _) in layers.items()}
    unused = {path: LayerPattern(torch.zeros_like(m.weight), torch.zeros_like(m.weight))  # fx dropped them
              for path, m in pattern_layers(model).items() if path not in found}
    return Patterns({**found, **unused})
