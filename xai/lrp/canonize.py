"""The canonical form of a linear layer for LRP: Linear/Conv with a following BatchNorm merged in, on copies.

LRP is not implementation invariant: a BatchNorm after a convolution is an affine map, and a rule must see
convolution and BatchNorm as the one affine layer they form together (Zennit's ``SequentialMergeBatchNorm``).
Zennit merges by overwriting the module's parameters for the duration of the analysis; here the merged weights
are new tensors held by an ``AffineLayer``, so the user's model is never written to, also not temporarily.

The weights derived from a layer (merged weights, W+, W-, W + gamma W+, ...) are computed once and cached until a
source parameter or buffer changes (its storage or its ``_version``), so an analyzer pays for them once, not on
every call (Zennit recomputes and copies them in every backward pass).
"""
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LINEAR_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCH_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def conv_padding(conv: nn.Module) -> tuple[int, ...] | None:
    """The explicit zero padding of a convolution, or None if it cannot be written as one (asymmetric 'same')."""
    if conv.padding_mode != "zeros":
        return None
    if conv.padding == "valid":
        return (0,) * len(conv.kernel_size)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            return None
        return tuple(t // 2 for t in total)
    return tuple(conv.padding)


def merge_batch_norm(weight: Tensor, bias: Tensor | None, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """(W, b) of a Linear/Conv followed by an eval-mode BatchNorm, as one layer: W * s, (b - mean) * s + beta.

    s = gamma / sqrt(running_var + eps) per output channel; the result does not track gradients.
    """
    scale = (bn.running_var + bn.eps) ** 0.5
    scale = (bn.weight.detach() if bn.weight is not None else torch.ones_like(scale)) / scale
    shift = bn.bias.detach() if bn.bias is not None else torch.zeros_like(scale)
    merged_weight = weight.detach() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    centred = -bn.running_mean if bias is None else bias.detach() - bn.running_mean
    return merged_weight, centred * scale + shift


class AffineLayer:
    """A Linear or Conv module (optionally with the BatchNorm that follows it) seen as z = W x + b.

    ``forward``/``transpose`` apply W (or a modified W) and its transpose; ``derived`` caches tensors computed from
    the merged (W, b). The module and the BatchNorm are only read.
    """

    def __init__(self, module: nn.Module, batch_norm: nn.Module | None = None):
        self.module = module
        self.batch_norm = batch_norm
        self.is_conv = isinstance(module, CONV_TYPES)
        if self.is_conv:
            self.padding = conv_padding(module)
            if self.padding is None:
                raise ValueError(f"{type(module).__name__} with padding={module.padding!r} and padding_mode="
                                 f"{module.padding_mode!r} has no explicit zero padding")
            self.stride = tuple(module.stride)
            self._subsample = None
            if set(module.kernel_size) == {1} and not any(self.padding) and max(self.stride) > 1:
                # a strided 1x1 convolution reads every s-th input only: subsample, then convolve with stride 1
                # (oneDNN's strided 1x1 transpose is several times slower than the stride-1 one plus a scatter)
                self._subsample = (Ellipsis, *(slice(None, None, s) for s in self.stride))
                self.stride = (1,) * len(self.stride)
        self._signature = None
        self._cache: dict = {}

    def _sources(self) -> list[Tensor]:
        tensors = [self.module.weight, self.module.bias]
        if self.batch_norm is not None:
            bn = self.batch_norm
            tensors += [bn.weight, bn.bias, bn.running_mean, bn.running_var]
        return [t for t in tensors if t is not None]

    def refresh(self) -> None:
        """Drop cached weights if any source tensor was replaced or modified in place since they were computed."""
        signature = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in self._sources())
        if self.batch_norm is not None:
            signature += (self.batch_norm.eps,)
        if signature != self._signature:
            self._cache.clear()
            self._signature = signature

    @property
    def params(self) -> tuple[Tensor, Tensor | None]:
        """The merged (weight, bias); bias is None for a bias-free layer without BatchNorm."""
        if "params" not in self._cache:
            self._cache["params"] = self._merge()
        return self._cache["params"]

    def _merge(self) -> tuple[Tensor, Tensor | None]:
        weight = self.module.weight.detach()
        bias = None if self.module.bias is None else self.module.bias.detach()
        if self.batch_norm is None:
            return weight, bias
        return merge_batch_norm(weight, bias, self.batch_norm)

    def derived(self, key, make: Callable[[Tensor, Tensor | None], object]):
        """``make(weight, bias)`` on the merged parameters, computed once per parameter state."""
        if key not in self._cache:
            self._cache[key] = make(*self.params)
        return self._cache[key]

    def forward(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """W x + b with the given (modified) parameters and the module's geometry."""
        if not self.is_conv:
            return F.linear(x, weight, bias)
        m = self.module
        if self._subsample is not None:
            x = x[self._subsample]
        dims = len(m.kernel_size)
        return torch.convolution(x, weight, bias, self.stride, self.padding, m.dilation, False, (0,) * dims, m.groups)

    @property
    def stackable(self) -> bool:
        """Whether modified weights can be stacked along the channels into one call (not for grouped convs)."""
        return not self.is_conv or self.module.groups == 1

    def forward_sum(self, xs: list[Tensor], weights: list[Tensor], bias: Tensor | None = None) -> Tensor:
        """sum_k W_k x_k + b in one call (inputs and weights stacked along the input features), as the
        sign-split rules need on a mixed-sign first layer, where a few wide calls beat many thin ones."""
        if not self.stackable:
            return sum(self.forward(x, w, bias if k == 0 else None) for k, (x, w) in enumerate(zip(xs, weights)))
        return self.forward(torch.cat(xs, dim=1 if self.is_conv else -1), torch.cat(weights, dim=1), bias)

    def transpose_each(self, g: Tensor, weights: list[Tensor], x: Tensor) -> list[Tensor]:
        """[W_k^T g for each k] in one call (the transpose of ``forward_sum``)."""
        if not self.stackable:
            return [self.transpose(g, w, x) for w in weights]
        dim = 1 if self.is_conv else -1
        shape = list(x.shape)
        shape[dim] *= len(weights)
        stacked = x.new_empty(()).expand(shape)  # only its shape is read
        return list(self.transpose(g, torch.cat(weights, dim=1), stacked).chunk(len(weights), dim=dim))

    def transpose(self, g: Tensor, weight: Tensor, x: Tensor) -> Tensor:
        """W^T g: the vector-Jacobian product with respect to an input shaped like ``x``, without autograd."""
        if not self.is_conv:  # as one matrix product: a batched one for a non-contiguous g would expand the weight
            return (g.reshape(-1, g.shape[-1]) @ weight).reshape(g.shape[:-1] + (weight.shape[1],))
        m = self.module
        dims = len(m.kernel_size)
        read = x if self._subsample is None else x[self._subsample]
        result = torch.ops.aten.convolution_backward(
            g, read, weight, None, self.stride, self.padding, m.dilation, False, (0,) * dims, m.groups,
            (True, False, False),
        )[0]
        if self._subsample is None:
            return result
        scattered = result.new_zeros(x.shape)
        scattered[self._subsample] = result
        return scattered
