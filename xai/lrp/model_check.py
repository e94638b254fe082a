"""Can LRP explain this model? A static scan of the modules and a traced dry run, before any relevance is computed.

The static scan (``check_modules``) needs no input: recurrent layers, attention, transformers, softmax layers,
normalisations other than BatchNorm, unknown layers with parameters and parameters used directly in a container's
``forward`` are rejected unless the user gave the layer a rule. The dry run (``trace``, one sample, cached per
input shape by ``LRP``) sees what only execution shows: a layer called twice (shared weights), a functional
softmax at the output, products of two activations (gating, attention), and which BatchNorm directly consumes
the output of which Linear/Conv (the pairs ``LRP`` merges; execution order, not definition order).
"""
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from xai.lrp.canonize import BATCH_NORM_TYPES, CONV_TYPES, LINEAR_TYPES, conv_padding
from xai.lrp.composites import leaves
from xai.errors import UnsupportedModelError
from xai.lrp.rules import Rule
from xai.softmax import SOFTMAX_TYPES
from xai.validation import forward

ADVICE = (
    "What to do: remove a softmax at the output with xai.strip_softmax(model); give a layer a rule with "
    "LRP(model, composite, rules={'<path>': rule}) (e.g. xai.rules.NormRule() for a custom layer, or your own "
    "xai.rules.Rule subclass); or explain the model with a gradient-based method (xai.Gradient)."
)

# Routing layers whose plain gradient is already the LRP redistribution (winner takes all, reshape, identity).
GRADIENT_TYPES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ChannelShuffle, nn.PixelShuffle, nn.PixelUnshuffle, nn.Upsample,
)

UNSUPPORTED = (
    (nn.RNNBase, "recurrent layer: LRP rules for its gates are not implemented"),
    ((nn.RNNCellBase,), "recurrent cell: LRP rules for its gates are not implemented"),
    ((nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder,
      nn.TransformerEncoderLayer, nn.TransformerDecoderLayer), "attention: needs AttnLRP rules (not implemented)"),
    ((nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm),
     "normalisation layer without an LRP rule (only BatchNorm after a Linear/Conv is merged)"),
    ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Bilinear, nn.Embedding, nn.EmbeddingBag),
     "layer type without an LRP rule here"),
)

_PRODUCT_OPS = {"mul", "__mul__", "__rmul__", "mul_", "__imul__", "matmul", "__matmul__", "__rmatmul__", "bmm",
                "einsum", "div", "__truediv__", "__rtruediv__", "div_", "baddbmm", "scaled_dot_product_attention"}
_SOFTMAX_OPS = {"softmax", "log_softmax", "softmin"}


def _problem(path: str, module: nn.Module, reason: str) -> str:
    return f"{path or '<model>'} ({type(module).__name__}): {reason}"


def check_modules(model: nn.Module, rules: dict[str, Rule]) -> None:
    """Raise ``UnsupportedModelError`` for every module LRP cannot handle that has no user-given rule."""
    problems = []
    layer_list = leaves(model)
    last_path = layer_list[-1][0] if layer_list else None
    for path, module in model.named_modules():
        has_children = any(True for _ in module.children())
        if has_children:
            if any(True for _ in module.parameters(recurse=False)):
                problems.append(_problem(path, module, "uses its own parameters directly in forward() (e.g. a "
                                         "class token or a scale); LRP cannot see that operation"))
            continue
        if path in rules:
            reason = rules[path].check_module(module)
            if reason:
                problems.append(_problem(path, module, f"{rules[path]!r} cannot be used here: {reason}"))
            continue
        if isinstance(module, SOFTMAX_TYPES + (nn.Softmax2d,)):
            where = "at the output: strip it with xai.strip_softmax(model)" if path == last_path else \
                "inside the model (attention?): not supported"
            problems.append(_problem(path, module, f"softmax {where}; explanations are taken on logits"))
            continue
        reason = next((why for types, why in UNSUPPORTED if isinstance(module, types)), None)
        if reason is None and isinstance(module, CONV_TYPES) and conv_padding(module) is None:
            reason = (f"padding={module.padding!r}, padding_mode={module.padding_mode!r} is not supported; "
                      "use zero padding")
        if reason is None and isinstance(module, LINEAR_TYPES):
            reason = "has no rule: the composite does not map this layer; add an entry or a rule for it"
        if reason is None and not isinstance(module, BATCH_NORM_TYPES + GRADIENT_TYPES):
            if any(True for _ in module.parameters(recurse=False)):
                reason = "unknown layer with parameters: give it a rule"
        if reason:
            problems.append(_problem(path, module, reason))
    if problems:
        raise UnsupportedModelError(problems, ADVICE)


@dataclass
class Trace:
    """What a dry run saw: the BatchNorm merged into each Linear/Conv path (only where the BatchNorm is the sole
    consumer of the layer's output), and the problems found."""

    merged: dict[str, str] = field(default_factory=dict)  # linear path -> batch norm path
    problems: list[str] = field(default_factory=list)


class _OpWatch(TorchFunctionMode):
    """Records functional products of two activations and softmaxes, with the module that ran them."""

    def __init__(self, stack: list[tuple[str, nn.Module]], linear_outputs: dict[int, tuple[str, Tensor]]):
        super().__init__()
        self.stack = stack
        self.softmax_results: dict[int, tuple[str, nn.Module, Tensor]] = {}
        self.products: list[tuple[str, nn.Module, str]] = []
        self.linear_outputs = linear_outputs  # id -> (path, output) of the Linear/Conv outputs so far
        self.readers: dict[str, int] = {}  # Linear/Conv path -> how many ops took its output as an argument

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if isinstance(result, Tensor):  # a consumer of its tensor arguments (not .size(), .dim(), ...)
            for arg in list(args) + list(kwargs.values()):
                for tensor in (arg if isinstance(arg, (list, tuple)) else [arg]):
                    path, output = self.linear_outputs.get(id(tensor), (None, None))
                    if output is tensor:
                        self.readers[path] = self.readers.get(path, 0) + 1
        where = self.stack[-1] if self.stack else ("", None)
        if name in _PRODUCT_OPS:
            carrying = [a for a in list(args) + list(kwargs.values())
                        if isinstance(a, Tensor) and a.requires_grad]
            if len(carrying) >= 2 and torch.is_grad_enabled():
                self.products.append((*where, name))
        elif name in _SOFTMAX_OPS and isinstance(result, Tensor) and result.requires_grad:
            self.softmax_results[id(result)] = (*where, result)
        return result


def trace(model: nn.Module, sample: Tensor) -> Trace:
    """Run ``model`` once on ``sample`` (one input, parameters frozen) and record what LRP needs to know."""
    found = Trace()
    paths = {m: p for p, m in model.named_modules()}
    stack: list[tuple[str, nn.Module]] = []
    calls: dict[nn.Module, int] = {}
    linear_outputs: dict[int, tuple[str, Tensor]] = {}  # id -> (path, output), kept alive: ids stay unique

    def pre(module, args):
        stack.append((paths[module], module))
        calls[module] = calls.get(module, 0) + 1
        if isinstance(module, BATCH_NORM_TYPES) and args and id(args[0]) in linear_outputs:
            found.merged.setdefault(linear_outputs[id(args[0])][0], paths[module])

    def post(module, args, output):
        stack.pop()
        if isinstance(module, LINEAR_TYPES) and isinstance(output, Tensor):
            linear_outputs[id(output)] = (paths[module], output)

    handles = [h for m in model.modules() for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    watch = _OpWatch(stack, linear_outputs)
    try:
        with torch.enable_grad(), watch:
            output = forward(model, sample.detach().requires_grad_(True))  # LRP's own check reads the output
    finally:
        for h in handles:
            h.remove()
    for linear_path in list(found.merged):
        if watch.readers.get(linear_path, 0) > 1:  # the output also goes elsewhere: merging would cut that off
            del found.merged[linear_path]
    for module, count in calls.items():
        if count > 1 and any(True for _ in module.parameters(recurse=False)):
            found.problems.append(_problem(paths[module], module, f"called {count} times in one forward pass "
                                           "(shared weights); use a separate module for each use"))
    for path, module, op in watch.products:
        found.problems.append(_problem(path, module, f"multiplies two activations ({op}: gating or attention); "
                                       "LRP rules for products are not implemented"))
    for path, module, result in watch.softmax_results.values():
        where = "at the output: strip it (return logits)" if result is output else "inside the model: not supported"
        found.problems.append(_problem(path, module, f"functional softmax {where}; explanations are taken on logits"))
    return found
