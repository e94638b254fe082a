"""Operations called inside ``forward()`` (``F.relu``, ``x.mean((2, 3))``, ``x * gate``): what LRP does with each.

A functional op gets the rule its module form gets (``F.relu`` the rule of ``nn.ReLU``, ``F.adaptive_avg_pool2d``
and a spatial ``mean`` the rule of average pooling, ``F.layer_norm`` the rule of ``nn.LayerNorm``), so that writing
an operation as a function or as a module gives the same relevance. Routing ops (reshapes, indexing, ``cat``, max
pooling) keep their gradient, which is already the LRP redistribution (winner takes all, moves). Sums of two
activations are split in proportion to the summands (Zennit's ``Norm`` rule on its ``Sum`` layer); an activation
scaled by a constant (``x * layer_scale``, ``x / 6``) keeps its relevance (the Epsilon rule of an element-wise
linear map without bias); a product of an activation and a gate (the output of a sigmoid, as in squeeze-excitation)
gets the composite's product rule, and a product of two activations (a gated MLP, ``silu(x W_g) * (x W_u)``) the
composite's rule for those, where it has one (``CPLRP``: the factor that is an activation function's output is the
gate; ``AttnLRP``: the uniform rule). Attention (composites ``CPLRP``, ``AttnLRP``): ops linear in each activation
factor (a matmul of two activations, an activation times a constant matrix, ``F.linear`` with a weight used
functionally) get the composite's matmul rule, ``softmax`` its softmax rule; ``scaled_dot_product_attention`` and
``multi_head_attention_forward`` are run as their decomposition into these ops (``xai.lrp.attention``), so that
each part gets its rule. Everything else that touches an activation has no rule: the model check refuses
it, naming the module whose ``forward`` calls it (the engine never routes an unknown op by its gradient).

``classify`` is the one decision both the model check (dry run) and the engine (relevance forward) use, so that
what the check accepts is exactly what the engine explains. New op families are added here as a kind plus a rule on
the composite.
"""
from enum import Enum
from typing import Callable

import torch
from torch import Tensor, nn

ROUTING_OPS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "t", "movedim",
    "swapaxes", "contiguous", "squeeze", "unsqueeze", "chunk", "split", "tensor_split", "unbind", "narrow", "select",
    "__getitem__", "cat", "concat", "concatenate", "stack", "clone", "to", "float", "double", "half", "type",
    "type_as", "expand", "expand_as", "repeat", "roll", "flip", "pad", "channel_shuffle", "pixel_shuffle",
    "pixel_unshuffle", "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "max", "amax", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "detach", "masked_fill",
})

# op -> the module whose rule it gets
MODULE_FORMS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "hardtanh": nn.Hardtanh, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU,
    "selu": nn.SELU, "celu": nn.CELU, "gelu": nn.GELU, "silu": nn.SiLU, "mish": nn.Mish, "hardswish": nn.Hardswish,
    "hardsigmoid": nn.Hardsigmoid, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "softplus": nn.Softplus,
    "avg_pool1d": nn.AvgPool1d, "avg_pool2d": nn.AvgPool2d, "avg_pool3d": nn.AvgPool3d,
    "adaptive_avg_pool1d": nn.AdaptiveAvgPool1d, "adaptive_avg_pool2d": nn.AdaptiveAvgPool2d,
    "adaptive_avg_pool3d": nn.AdaptiveAvgPool3d, "mean": nn.AdaptiveAvgPool2d, "sum": nn.AdaptiveAvgPool2d,
    "layer_norm": nn.LayerNorm, "group_norm": nn.GroupNorm, "rms_norm": nn.RMSNorm,
}

#: Element-wise activations among the functional ops: the gate of a gated MLP (``silu(x W_g) * (x W_u)``) is one.
ACTIVATION_OPS = frozenset({"relu", "relu6", "hardtanh", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish",
                            "hardswish", "hardsigmoid", "sigmoid", "tanh", "softplus"})
GATE_OPS = frozenset({"sigmoid", "hardsigmoid"})
GATE_TYPES = (nn.Sigmoid, nn.Hardsigmoid)
SUM_OPS = frozenset({"add", "__add__", "__radd__"})
SCALE_OPS = frozenset({"mul", "__mul__", "__rmul__", "multiply"})
QUOTIENT_OPS = frozenset({"div", "__truediv__", "divide", "true_divide"})
MATMUL_OPS = frozenset({"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "einsum", "linear"})
#: Attention ops run as their decomposition into matmuls and a softmax (``xai.lrp.attention.DECOMPOSITIONS``).
ATTENTION_OPS = frozenset({"scaled_dot_product_attention", "multi_head_attention_forward"})
SOFTMAX_OPS = frozenset({"softmax", "log_softmax", "softmin"})
#: Ops that read a tensor's shape (exported graphs call ``sym_size`` for a dynamic batch): no relevance flows.
SHAPE_OPS = frozenset({"size", "sym_size", "sym_numel", "sym_stride", "dim", "numel", "stride"})
_IN_PLACE_DUNDERS = {"__iadd__": "__add__", "__imul__": "__mul__", "__itruediv__": "__truediv__"}


class Kind(Enum):
    NONE = "no activation involved"
    ROUTE = "gradient"
    RULE = "rule of its module form"
    SUM = "proportional sum"
    SCALE = "scaled by a constant"
    PRODUCT = "element-wise product of two activations"
    MATMUL = "linear in each activation factor (matmul, F.linear)"
    SOFTMAX = "softmax"
    ATTENTION = "attention, run as its decomposition"
    UNKNOWN = "no rule"


def op_name(func: Callable) -> str:
    """``relu_`` for ``torch.ops.aten.relu_.default`` (the ops of an exported graph), else the ``__name__``."""
    return func._opname if isinstance(func, torch._ops.OpOverload) else getattr(func, "__name__", "")


def canonical(func: Callable) -> str:
    """The op's name without its in-place marker: ``relu_`` -> ``relu``, ``__iadd__`` -> ``__add__``."""
    name = op_name(func)
    if name in _IN_PLACE_DUNDERS:
        return _IN_PLACE_DUNDERS[name]
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


def activations(args: tuple, kwargs: dict) -> list[Tensor]:
    """The arguments that carry relevance: tensors that require grad, other than parameters (those of the model
    are frozen during analysis; a parameter from elsewhere is a constant too)."""
    found = []
    for arg in list(args) + list(kwargs.values()):
        for tensor in (arg if isinstance(arg, (list, tuple)) else [arg]):
            if isinstance(tensor, Tensor) and tensor.requires_grad and not isinstance(tensor, nn.Parameter):
                found.append(tensor)
    return found


def classify(name: str, args: tuple, kwargs: dict) -> Kind:
    """What LRP does with the op ``name`` (see ``canonical``) on these arguments."""
    carrying = activations(args, kwargs)
    if not carrying or name in SHAPE_OPS:
        return Kind.NONE
    if name in ROUTING_OPS:
        return Kind.ROUTE
    first_only = len(carrying) == 1 and carrying[0] is args[0]
    if name in MODULE_FORMS and first_only:
        return Kind.RULE
    if name in SUM_OPS and len(args) == 2:
        return Kind.SUM
    if name in SCALE_OPS and len(args) == 2:
        return Kind.SCALE if len(carrying) == 1 else Kind.PRODUCT
    if name in QUOTIENT_OPS and len(args) == 2:
        return Kind.SCALE if first_only else Kind.PRODUCT
    if name in MATMUL_OPS:
        return Kind.MATMUL
    if name in ATTENTION_OPS:
        return Kind.ATTENTION
    if name in SOFTMAX_OPS:
        return Kind.SOFTMAX
    return Kind.UNKNOWN


def out_of_place(func: Callable, kwargs: dict) -> tuple[Callable, dict]:
    """The out-of-place form of an op called in place (``relu_``, ``F.relu(x, inplace=True)``)."""
    if kwargs.get("inplace") is True:
        kwargs = {**kwargs, "inplace": False}
    name = op_name(func)
    if name in _IN_PLACE_DUNDERS:
        return getattr(Tensor, _IN_PLACE_DUNDERS[name]), kwargs
    if isinstance(func, torch._ops.OpOverload) and name.endswith("_") and hasattr(torch.ops.aten, name[:-1]):
        return getattr(getattr(torch.ops.aten, name[:-1]), func._overloadname), kwargs
    if name.endswith("_") and not name.startswith("_") and hasattr(Tensor, name[:-1]):
        func = getattr(Tensor, name[:-1])
    return func, kwargs


class FunctionalCall:
    """A functional op with its other arguments bound, seen by a rule as a module: ``forward(x)`` reruns it."""

    def __init__(self, func: Callable, args: tuple, kwargs: dict):
        self.func, self.kwargs = out_of_place(func, kwargs)
        self.rest = tuple(args[1:])

    def forward(self, x: Tensor) -> Tensor:
        return self.func(x, *self.rest, **self.kwargs)


__all__ = ["ACTIVATION_OPS", "ATTENTION_OPS", "FunctionalCall", "GATE_OPS", "GATE_TYPES", "Kind", "MODULE_FORMS",
           "ROUTING_OPS", "activations", "canonical", "classify", "op_name", "out_of_place"]
