"""Can LRP explain this model? A static scan of the modules and a traced dry run, before any relevance is computed.

The static scan (``check_modules``) needs no input: recurrent layers, attention, transformers, softmax layers,
normalisations without a rule (InstanceNorm, LocalResponseNorm) and unknown layers with parameters are rejected
unless the user gave the layer a rule (``nn.MultiheadAttention`` is accepted with an attention composite,
``CPLRP``/``AttnLRP``, and checked by the dry run); a module with a user-given rule is covered as a whole (its
children are not checked). The dry run (``trace``, one sample, cached per input shape by ``LRP``) sees what only execution shows: a
layer called twice (shared weights), a functional softmax at the output, every functional op on an activation
outside the modules that have a rule (``xai.lrp.functional.classify``: an op without a rule, or a product of two
activations that is not an activation times a gate, is refused, naming the module whose ``forward`` calls it;
matmuls, softmaxes inside the model and attention ops are accepted when the composite has rules for them, and the
attention ops are checked as their decomposition, ``xai.lrp.attention``), and
which BatchNorm directly consumes the output of which Linear/Conv (the pairs ``LRP`` merges; execution order, not
definition order). timm's norm-act modules (BatchNorm + activation in one module) merge like a BatchNorm.
"""
from dataclasses import dataclass, field
from typing import Collection

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from xai.errors import Problem, UnsupportedModelError
from xai.lrp.canonize import BATCH_NORM_TYPES, CONV_TYPES, LINEAR_TYPES, conv_padding
from xai.lrp.composites import ACTIVATION_TYPES, leaves
from xai.lrp.attention import DECOMPOSITIONS, unsupported
from xai.lrp.functional import ACTIVATION_OPS, GATE_OPS, GATE_TYPES, Kind, canonical, classify
from xai.lrp.rules import Rule, UniformRule
from xai.softmax import SOFTMAX_TYPES
from xai.validation import forward

ADVICE = (
    "What to do: give the module a rule, for every module of its type with LRP(model, composite, "
    "rules={ModuleType: rule}) or for one with rules={'<path>': rule} (xai.rules.PassRule() passes relevance "
    "through unchanged, xai.rules.NormRule() redistributes in proportion to the inputs' contributions; or your own "
    "xai.rules.Rule subclass): a module with a rule is explained by that rule as a whole. A softmax at the output: "
    "remove it with xai.strip_softmax(model). Or explain the model with a gradient-based method (xai.Gradient, "
    "xai.IntegratedGradients; in the pipeline method=gradient or method=integrated_gradients)."
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
    ((nn.Transformer, nn.TransformerEncoder, nn.TransformerDecoder, nn.TransformerEncoderLayer,
      nn.TransformerDecoderLayer), "transformer layer: LRP rules for it are not implemented (nn.MultiheadAttention "
     "is supported, with composite=xai.composites.CPLRP() or AttnLRP())"),
    ((nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm),
     "normalisation layer without an LRP rule (BatchNorm is merged, LayerNorm/GroupNorm/RMSNorm get LayerNormRule)"),
    ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Bilinear, nn.Embedding, nn.EmbeddingBag),
     "layer type without an LRP rule here"),
)


def _problem(path: str, module: nn.Module, reason: str) -> Problem:
    return Problem(path, type(module).__name__, reason)


def is_norm_act(module: nn.Module) -> bool:
    """A BatchNorm with children (timm's ``BatchNormAct2d``: F.batch_norm, then its ``drop`` and ``act`` children)."""
    return isinstance(module, BATCH_NORM_TYPES) and any(True for _ in module.children())


def _covered(path: str, ruled_containers: list[str]) -> bool:
    return any(path.startswith(prefix + ".") for prefix in ruled_containers)


ATTENTION_ADVICE = "use an attention composite: LRP(model, composite=xai.composites.CPLRP()) or AttnLRP()"


def check_modules(model: nn.Module, rules: dict[str, Rule], attention: bool = False) -> None:
    """Raise ``UnsupportedModelError`` for every module LRP cannot handle that has no rule (``rules``: by path);
    ``attention``: the composite has attention rules (``nn.MultiheadAttention`` is then left to the dry run)."""
    problems = []
    layer_list = leaves(model)
    last_path = layer_list[-1][0] if layer_list else None
    ruled_containers = []  # and unsupported ones
    for path, module in model.named_modules():
        if _covered(path, ruled_containers):
            continue
        has_children = any(True for _ in module.children())
        if path in rules:
            reason = rules[path].check_module(module)
            if reason:
                problems.append(_problem(path, module, f"{rules[path]!r} cannot be used here: {reason}"))
            if has_children:
                ruled_containers.append(path)
            continue
        reason = next((why for types, why in UNSUPPORTED if isinstance(module, types)), None)
        if reason is None and isinstance(module, nn.MultiheadAttention) and not attention:
            reason = f"attention: {ATTENTION_ADVICE}"
        if reason is not None:  # also a container (MultiheadAttention): reported once, its children not
            problems.append(_problem(path, module, reason))
            ruled_containers.append(path)
            continue
        if has_children:
            continue  # how a container uses its own parameters is seen by the dry run
        if isinstance(module, SOFTMAX_TYPES + (nn.Softmax2d,)):
            where = "at the output: strip it with xai.strip_softmax(model)" if path == last_path else \
                "inside the model (attention?): not supported"
            problems.append(_problem(path, module, f"softmax {where}; explanations are taken on logits"))
            continue
        if isinstance(module, CONV_TYPES) and conv_padding(module) is None:
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
    problems: list[Problem] = field(default_factory=list)


class _OpWatch(TorchFunctionMode):
    """Records, with the module whose forward runs them, the functional ops on activations LRP has no rule for,
    products that are not gated, softmaxes, and who reads each Linear/Conv output."""

    def __init__(self, stack: list[tuple[str, nn.Module]], linear_outputs: dict[int, tuple[str, Tensor]],
                 opaque: set[nn.Module], functional_rules: Collection[str], matmul: bool, softmax: bool,
                 activation_products: Rule | None):
        super().__init__()
        self.matmul, self.softmax, self.activation_products = matmul, softmax, activation_products
        self.stack = stack
        self.opaque = opaque
        self.functional_rules = functional_rules
        self.softmax_results: dict[int, tuple[str, nn.Module, Tensor]] = {}
        self.refused: dict[tuple[str, str], nn.Module] = {}  # (path, reason) -> module, each once
        self.linear_outputs = linear_outputs  # id -> (path, output) of the Linear/Conv outputs so far
        self.readers: dict[str, int] = {}  # Linear/Conv path -> how many ops took its output as an argument
        self.gates: dict[int, Tensor] = {}  # outputs of sigmoids, kept alive: ids stay unique
        self.activated: dict[int, Tensor] = {}  # outputs of the other element-wise activations, likewise

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = canonical(func)
        if self.softmax and classify(name, args, kwargs) is Kind.ATTENTION and torch.is_grad_enabled() and \
                not any(m in self.opaque for _, m in self.stack):
            reason = unsupported(name, args, kwargs)
            if reason is None:
                with self:  # checked as the engine explains it: as its decomposition
                    return DECOMPOSITIONS[name](*args, **kwargs)
            path, module = self.stack[-1] if self.stack else ("", None)
            self.refused[path, f"calls {name}: {reason}"] = module
            return func(*args, **kwargs)
        result = func(*args, **kwargs)
        if isinstance(result, Tensor):  # a consumer of its tensor arguments (not .size(), .dim(), ...)
            for arg in list(args) + list(kwargs.values()):
                for tensor in (arg if isinstance(arg, (list, tuple)) else [arg]):
                    path, output = self.linear_outputs.get(id(tensor), (None, None))
                    if output is tensor:
                        self.readers[path] = self.readers.get(path, 0) + 1
        if not torch.is_grad_enabled() or not _carries(result) or any(m in self.opaque for _, m in self.stack):
            return result  # relevance cannot flow through a result without grad (sizes, masks, argmax)
        path, module = self.stack[-1] if self.stack else ("", None)
        if name == "batch_norm" and isinstance(module, BATCH_NORM_TYPES):
            return result  # a norm-act module's own BatchNorm: merged or passed by the engine
        kind = classify(name, args, kwargs)
        if kind is Kind.RULE and name not in self.functional_rules:
            self.refused[path, f"calls {name} on an activation, and the composite has no rule for its module "
                         "form"] = module
        elif kind is Kind.RULE and name in ACTIVATION_OPS:
            self.add_output(result, gate=name in GATE_OPS)
        elif kind is Kind.PRODUCT and not self.is_gated(args):
            reason = self.unexplained_product(args)
            if reason:
                self.refused[path, f"multiplies two activations ({name}), not an activation and a gate (the output "
                             f"of a sigmoid): {reason}"] = module
        elif kind is Kind.MATMUL and not self.matmul:
            self.refused[path, f"calls {name} on an activation (a matmul, attention?): {ATTENTION_ADVICE}"] = module
        elif kind is Kind.ATTENTION:
            self.refused[path, f"calls {name} (attention): {ATTENTION_ADVICE}"] = module
        elif kind is Kind.SOFTMAX and isinstance(result, Tensor):
            self.softmax_results[id(result)] = (path, module, result, self.softmax and name == "softmax")
        elif kind is Kind.UNKNOWN:
            self.refused[path, f"calls {name} on an activation in forward(): LRP has no rule for this "
                         "operation"] = module
        return result

    def add_output(self, tensor: Tensor, gate: bool) -> None:
        (self.gates if gate else self.activated)[id(tensor)] = tensor

    def is_gated(self, args) -> bool:
        return len(args) == 2 and sum(self.gates.get(id(a)) is a for a in args) == 1

    def unexplained_product(self, args) -> str | None:
        """Why the composite cannot explain this product of two activations (a gated MLP?), or None."""
        if isinstance(self.activation_products, UniformRule):
            return None
        if self.activation_products is None:
            return ("the composite has no rule for such products; CPLRP and AttnLRP have one for gated MLPs "
                    "(silu(x W_g) * (x W_u))")
        if len(args) == 2 and sum(self.activated.get(id(a)) is a for a in args) == 1:
            return None
        return (f"{type(self.activation_products).__name__} takes the factor that is an activation function's output "
                "as the gate, and here neither or both are; AttnLRP's uniform rule splits any such product")


def _carries(result) -> bool:
    items = result if isinstance(result, (list, tuple)) else [result]
    return any(isinstance(t, Tensor) and t.requires_grad for t in items)


def trace(model: nn.Module, sample: Tensor, ruled: Collection[str] = (), functional_rules: Collection[str] = (),
          matmul: bool = False, softmax: bool = False, activation_products: Rule | None = None) -> Trace:
    """Run ``model`` once on ``sample`` (one input, parameters frozen) and record what LRP needs to know.

    ``ruled``: the paths of modules that have a rule (they are explained as a whole, what runs inside them is not
    checked; a BatchNorm with a rule, or inside a module with one, is not merged); ``functional_rules``: the functional
    ops that have a rule; ``matmul``, ``softmax``: the composite has a matmul rule, a softmax rule (attention);
    ``activation_products``: its rule for products of two activations (``Composite.activation_product_rule``).
    """
    found = Trace()
    paths = {m: p for p, m in model.named_modules()}
    opaque = {m for m, p in paths.items()
              if p in ruled or isinstance(m, GRADIENT_TYPES) or (isinstance(m, BATCH_NORM_TYPES) and not is_norm_act(m))}
    stack: list[tuple[str, nn.Module]] = []
    calls: dict[nn.Module, int] = {}
    linear_outputs: dict[int, tuple[str, Tensor]] = {}  # id -> (path, output), kept alive: ids stay unique
    watch = _OpWatch(stack, linear_outputs, opaque, functional_rules, matmul, softmax, activation_products)
    sample = sample.detach().requires_grad_(True)

    def pre(module, args):
        stack.append((paths[module], module))
        calls[module] = calls.get(module, 0) + 1
        within_rule = any(paths[m] in ruled for _, m in stack)  # explained as a whole: not merged
        if isinstance(module, BATCH_NORM_TYPES) and not within_rule and args and id(args[0]) in linear_outputs:
            found.merged.setdefault(linear_outputs[id(args[0])][0], paths[module])

    def post(module, args, output):
        stack.pop()
        if isinstance(module, LINEAR_TYPES) and isinstance(output, Tensor):
            linear_outputs[id(output)] = (paths[module], output)
        if isinstance(module, ACTIVATION_TYPES) and isinstance(output, Tensor):
            watch.add_output(output, gate=isinstance(module, GATE_TYPES))

    handles = [h for m in model.modules() for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        with torch.enable_grad(), watch:
            output = forward(model, sample)  # LRP's own check reads the output
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
    for (path, reason), module in watch.refused.items():
        found.problems.append(_problem(path, module if module is not None else model, reason))
    for path, module, result, ruled_softmax in watch.softmax_results.values():
        if ruled_softmax and result is not output:
            continue
        where = "at the output: strip it (return logits); explanations are taken on logits" if result is output \
            else f"inside the model (attention?): {ATTENTION_ADVICE}"
        found.problems.append(_problem(path, module if module is not None else model, f"functional softmax {where}"))
    return found
