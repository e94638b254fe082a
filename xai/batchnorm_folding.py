"""A faster stand-in for a model in eval mode: BatchNorm folded into the convolution before it.

In eval mode BatchNorm is an affine map, so conv followed by BatchNorm equals one conv with rescaled
weights and bias: same outputs and input gradients (up to rounding), and 20 fewer elementwise passes
over the activations per forward and backward on a ResNet18. SmoothGrad and Integrated Gradients run the
model on many inputs, so they use this stand-in. The user's model is never modified: the stand-in is an
fx graph that shares every other module with it and owns only the new folded layers.
"""
from collections import Counter

from torch import Tensor, fx, nn

from xai.lrp.canonize import merge_batch_norm

_FOLDABLE = {(nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d)}
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


class FoldedConv(nn.Module):
    """``norm(conv(x))`` as one convolution with folded weight and bias (the conv itself is not copied)."""

    def __init__(self, conv: nn.Module, norm: nn.Module):
        super().__init__()
        self.conv = conv  # only its configuration (stride, padding, ...) is used
        self.weight, self.bias = merge_batch_norm(conv.weight, conv.bias, norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv._conv_forward(x, self.weight, self.bias)


def has_hooks(model: nn.Module) -> bool:
    """Hooks may change what a module computes, and a folded module would not call them."""
    return any(getattr(m, name, None) for m in model.modules() for name in _HOOK_DICTS)


def _foldable_pair(node: fx.Node, modules: dict[str, nn.Module], calls: Counter) -> tuple | None:
    """(conv node, conv, batchnorm) if ``node`` is an eval BatchNorm whose input comes only from a convolution."""
    if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    source = node.args[0]
    if source.op != "call_module" or len(source.users) != 1:
        return None
    layer, norm = modules[source.target], modules[node.target]
    if (type(layer), type(norm)) not in _FOLDABLE or layer.training or norm.training:
        return None
    if norm.running_mean is None or norm.running_var is None:
        return None
    if calls[source.target] != 1 or calls[node.target] != 1:  # a shared module must stay as it is
        return None
    return source, layer, norm


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """The model with eval-mode BatchNorm folded into the preceding conv, or the model itself if there is
    nothing to fold, it has hooks, or fx cannot trace it."""
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if model.training or has_hooks(model) or not has_batchnorm:
        return model
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # data-dependent control flow, unsupported ops, ...: tracing fails in many ways
        return model
    modules = dict(traced.named_modules())
    calls = Counter(node.target for node in traced.graph.nodes if node.op == "call_module")
    folded = 0
    for node in list(traced.graph.nodes):
        pair = _foldable_pair(node, modules, calls)
        if pair is None:
            continue
        source, layer, norm = pair
        parent_name, _, name = source.target.rpartition(".")
        parent = traced.get_submodule(parent_name) if parent_name else traced
        setattr(parent, name, FoldedConv(layer, norm))
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
        folded += 1
    if not folded:
        return model
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced
