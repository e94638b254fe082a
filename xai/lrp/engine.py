"""The LRP analyzer: one forward pass in which relevance replaces the gradient, one backward pass.

How it works (and why it is faster than Zennit, see reference/zennit.md section 8): during a single forward pass
of the user's model, a forward hook replaces the output of every layer that has a rule by the same values coming
out of a custom ``torch.autograd.Function``, whose backward maps the relevance at the output directly to the
relevance at the input. Autograd then carries relevance instead of gradient; layers without a rule (MaxPool:
winner takes all; Flatten, Dropout, reshapes) route it with their plain gradient. Unlike Zennit, the layer's own
gradient is never computed and thrown away, its forward is not recomputed for rules that can reuse its output,
and modified weights (W+, W + gamma W+, merged BatchNorm) are computed once per analyzer and cached.

Functional ops inside ``forward`` are caught by a ``TorchFunctionMode`` and get the rule of their module form
(``xai.lrp.functional``): ``F.relu`` that of ``nn.ReLU``, ``F.adaptive_avg_pool2d`` and ``x.mean((2, 3))`` that of
average pooling, ``F.layer_norm`` that of ``nn.LayerNorm``. Residual additions ``a + b`` of two activations (also a
functional ``+``/``+=``, as in torchvision's ResNet) are split in proportion to the summands (Zennit's Norm rule on
its ``Sum`` layer), so relevance is never duplicated; an activation times a constant keeps its relevance, an
activation times a gate gets the composite's product rule. With an attention composite (``CPLRP``, ``AttnLRP``)
matmuls and ``F.linear`` get its matmul rule, ``softmax`` its softmax rule, and fused attention ops
(``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``'s ``F.multi_head_attention_forward``) run as their
decomposition into these ops (``xai.lrp.attention``). Inside a module that has a rule nothing is intercepted:
the rule replaces the module as a whole. timm's norm-act modules are merged at their ``F.batch_norm`` call.
"""
import weakref
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from xai.analyzer import Analyzer, check_output
from xai.lrp.attention import DECOMPOSITIONS
from xai.lrp.canonize import BATCH_NORM_TYPES, AffineLayer
from xai.lrp.composites import ACTIVATION_TYPES, NORM_TYPES, Composite, default_composite
from xai.errors import UnsupportedModelError
from xai.lrp.functional import (ACTIVATION_OPS, GATE_OPS, GATE_TYPES, MODULE_FORMS, FunctionalCall, Kind, activations,
                                canonical, classify, op_name, out_of_place)
from xai.lrp.model_check import ADVICE, Trace, check_modules, is_norm_act, trace
from xai.lrp.rules import (ConstantRule, GateRule, LayerOutput, LinearRule, PassRule, ProductRule, Rule,
                           SoftmaxRule, UniformRule, signed_epsilon)
from xai.targets import Target, one_hot_at, resolve_target
from xai.validation import module_at


class _LinearRelevance(torch.autograd.Function):
    """Forward: the layer's own output. Backward: the rule's relevance at the input, from what the rule kept.

    The output comes in a ``LayerOutput`` box: returned as-is from a tensor argument it would become a view, which
    autograd does not let a following in-place ReLU modify.
    """

    @staticmethod
    def forward(ctx, x, output: LayerOutput, layer, rule, known: "_Rectifiable", remakes: "_Remakes"):
        boxed = rule.uses_output and rule.rectified_output_suffices
        kept, ctx.recipe = remakes.keep(x)
        ctx.save_for_backward(output.tensor if rule.uses_output and not boxed else None, *kept)
        ctx.layer, ctx.rule, ctx.layer_output, ctx.known = layer, rule, output if boxed else None, known
        return output.tensor

    @staticmethod
    def backward(ctx, relevance):
        output, *kept = ctx.saved_tensors
        x, ctx.recipe = _remade(kept, ctx.recipe), None  # attributes would live as long as the graph
        layer_output, ctx.layer_output = ctx.layer_output, None  # attributes would live as long as the graph
        if layer_output is not None:
            ctx.known.annotate(layer_output, x, relevance)
        result = ctx.rule.relevance(ctx.layer, x, layer_output if layer_output is not None else output, relevance)
        if ctx.rule.relevance_vanishes_with_input:
            ctx.known.vanishes_where_zero(result, x)
        return result, None, None, None, None, None


class _ModuleRelevance(torch.autograd.Function):
    """Forward: the module's own output. Backward: ``rule.propagate`` (Pass, Norm, custom rules)."""

    @staticmethod
    def forward(ctx, x, output, module, rule):
        ctx.save_for_backward(x if rule.needs_input else None)
        ctx.module, ctx.rule, ctx.shape = module, rule, x.shape
        return output

    @staticmethod
    def backward(ctx, relevance):
        (x,) = ctx.saved_tensors
        relevance = ctx.rule.propagate(ctx.module, x, relevance)
        return relevance.reshape(ctx.shape), None, None, None


class _ProportionalSum(torch.autograd.Function):
    """a + b whose backward gives each summand its share: R_a = a R / stab(a + b), R_b = b R / stab(a + b).

    A constant summand (a bias added in ``forward``) absorbs its share, as a layer's bias does."""

    @staticmethod
    def forward(ctx, a, b, stabilizer):
        total = a + b
        ctx.save_for_backward(a, b)
        ctx.stabilizer = stabilizer
        return total

    @staticmethod
    def backward(ctx, relevance):
        a, b = ctx.saved_tensors
        total = a + b
        shift = signed_epsilon(total, ctx.stabilizer)
        s = torch.div(relevance, total.add_(shift), out=total)
        return torch.mul(a, s, out=shift).sum_to_size(a.shape), s.mul_(b).sum_to_size(b.shape), None


class _ProductRelevance(torch.autograd.Function):
    """value * gate (computed already, ``output``) whose backward is the product rule's split of the relevance."""

    @staticmethod
    def forward(ctx, value, gate, output, rule: ProductRule):
        ctx.rule, ctx.shapes = rule, (value.shape, gate.shape if isinstance(gate, Tensor) else None)
        return output

    @staticmethod
    def backward(ctx, relevance):
        on_value, on_gate = ctx.rule.split(relevance, *ctx.shapes)
        return on_value, on_gate, None, None


class _MatmulRelevance(torch.autograd.Function):
    """An op linear in each of its activation factors (a matmul, ``F.linear``). Forward: the op's output; only the
    factors are kept, as autograd keeps them for a gradient. Backward: the output recomputed with its graph (one more
    matmul, where keeping it would hold every attention's scores and projections until the backward pass), then the
    rule's relevance at the factors from the vector-Jacobian products J_i^T (R / stab(z)) (``UniformRule.split``).
    Given ``transpose`` (``F.linear`` with constant weights: attention's projections), the output is kept instead,
    as attention keeps it anyway, and J^T s = ``transpose(s)``: no recomputation."""

    @staticmethod
    def forward(ctx, rule: UniformRule, call, n: int, remakes: "_Remakes", transpose, *factors):
        kept = [remakes.keep(f) for f in factors]
        output = call(*factors)
        ctx.save_for_backward(output if transpose is not None else None, *(t for tensors, _ in kept for t in tensors))
        ctx.recipes = [(len(tensors), recipe) for tensors, recipe in kept]
        ctx.rule, ctx.call, ctx.n, ctx.transpose = rule, call, n, transpose
        return output

    @staticmethod
    def backward(ctx, relevance):
        call, transpose, ctx.call, ctx.transpose = ctx.call, ctx.transpose, None, None  # they hold other arguments
        output, *saved = ctx.saved_tensors
        saved = iter(saved)
        factors = [_remade([next(saved) for _ in range(count)], recipe) for count, recipe in ctx.recipes]
        ctx.recipes = None
        if transpose is not None:
            vjps = (transpose(relevance / ctx.rule.modify_denominator(output)),)
            return (None,) * 5 + tuple(ctx.rule.split(tuple(factors), vjps, ctx.n))
        with torch.enable_grad():
            leaves = [f.detach().requires_grad_(True) for f in factors]
            output = call(*leaves)
        share = relevance / ctx.rule.modify_denominator(output.detach())
        vjps = torch.autograd.grad(output, leaves, share)
        del output
        return (None,) * 5 + tuple(ctx.rule.split(tuple(leaf.detach() for leaf in leaves), vjps, ctx.n))


def _linear_transpose(share: Tensor, weight: Tensor) -> Tensor:
    """J^T share of F.linear(x, weight, bias) at x."""
    return share.matmul(weight)


class _SoftmaxRelevance(torch.autograd.Function):
    """softmax(x) along ``dim`` (computed already, ``output``) whose backward is the softmax rule. Where x can be
    remade (attention scores), so is the output, from it: neither is kept."""

    @staticmethod
    def forward(ctx, x, output, dim: int, rule: SoftmaxRule, remakes: "_Remakes", softmax):
        kept, ctx.recipe = remakes.keep(x)
        ctx.softmax = softmax if ctx.recipe is not None else None
        ctx.save_for_backward(output if ctx.recipe is None else None, *kept)
        ctx.dim, ctx.rule = dim, rule
        return output

    @staticmethod
    def backward(ctx, relevance):
        output, *kept = ctx.saved_tensors
        x, ctx.recipe = _remade(kept, ctx.recipe), None
        if output is None:
            with torch.no_grad():
                output = ctx.softmax(x)
        return ctx.rule.redistribute(x, output, relevance, ctx.dim).to(x.dtype), None, None, None, None, None


# Ops whose output a rule may remake from their input (``_Remakes``): deterministic, as large as their input, and
# cheap against a matrix product. Not the ReLU, whose outputs ``_Rectifiable`` already shares with the layer before.
REMAKEABLE_TYPES = tuple(t for t in ACTIVATION_TYPES if t not in (nn.ReLU, nn.RReLU)) + NORM_TYPES
REMAKEABLE_OPS = (ACTIVATION_OPS - {"relu"}) | {"layer_norm", "group_norm", "rms_norm"}


class _Recipe:
    """How to remake a tensor in the backward pass from the inputs of the cheap op that made it (``_Remakes``):
    the op, where in its output the tensor lies, and for each input how many kept tensors it takes and its own
    recipe (an input may be remade too)."""

    def __init__(self, call, view: tuple, parts: list[tuple[int, "_Recipe | None"]]):
        self.call, self.view, self.parts = call, view, parts

    def remake(self, kept) -> Tensor:
        kept = iter(kept)
        inputs = [_remade([next(kept) for _ in range(count)], recipe) for count, recipe in self.parts]
        with torch.no_grad():
            return self.call(*inputs).as_strided(*self.view)


def _remade(kept: tuple, recipe: "_Recipe | None") -> Tensor:
    return kept[0] if recipe is None else recipe.remake(kept)


class _Remakes:
    """Outputs of cheap deterministic ops (element-wise activations, LayerNorms, products of two activations such as
    attention scores) during one LRP pass, with the inputs they were made from. A rule that needs such an output in
    the backward pass keeps the inputs, which their own rules keep anyway, and remakes the output (bitwise the same:
    the same op on the same tensors), instead of holding an activation-sized copy until then: in a ViT block the
    normalised tokens, the GELU's output and the attention scores.

    Outputs are recognised by their storage while they are alive (weak references), so views (reshapes,
    transposes, chunks) are recognised too and remade as the same view. Their inputs are held only while they are.
    """

    def __init__(self):
        self._recipes: dict[int, tuple[weakref.ref, tuple, object]] = {}  # storage address -> recipe

    def add(self, output: Tensor, inputs: tuple, call) -> None:
        address = output.untyped_storage().data_ptr()

        def forget(ref):
            if self._recipes.get(address, (None,))[0] is ref:
                del self._recipes[address]

        self._recipes[address] = (weakref.ref(output, forget), inputs, call)

    def is_input(self, tensor: Tensor) -> bool:
        """Whether a recorded op read ``tensor``, so that changing it in place would falsify the remade output."""
        return any(t is tensor for _, inputs, _ in self._recipes.values() for t in inputs)

    def keep(self, tensor: Tensor, depth: int = 3) -> tuple[tuple[Tensor, ...], _Recipe | None]:
        """What a rule saves for ``tensor``: what its op's inputs need (up to ``depth`` ops back) and the recipe, or
        the tensor itself and None."""
        ref, inputs, call = self._recipes.get(tensor.untyped_storage().data_ptr(), (None, (), None))
        output = ref and ref()
        if output is None or depth == 0:
            return (tensor,), None
        kept, parts = [], []
        for t in inputs:
            tensors, recipe = self.keep(t, depth - 1)
            kept += tensors
            parts.append((len(tensors), recipe))
        view = (tensor.size(), tensor.stride(), tensor.storage_offset() - output.storage_offset())
        return tuple(kept), _Recipe(call, view, parts)

    def forward_done(self) -> None:
        self._recipes.clear()


def _call_with(func, args: tuple, kwargs: dict, factors: list[Tensor]):
    """``func`` with the other arguments bound: called with one tensor per factor, in their place. The factors
    themselves are not held (each is a ``_Slot``): a rule decides what of them to keep."""
    slots = {id(f): _Slot(i) for i, f in enumerate(factors)}
    args, kwargs = _with_slots(args, slots), {k: _with_slots(v, slots) for k, v in kwargs.items()}

    def call(*leaves):
        return func(*_filled(args, leaves), **{k: _filled(v, leaves) for k, v in kwargs.items()})

    return call


class _Slot:
    """The place of the ``index``-th factor among an op's arguments."""

    def __init__(self, index: int):
        self.index = index


def _with_slots(a, slots: dict[int, _Slot]):
    """``a`` with the tensors whose id is in ``slots`` replaced by their slot, also inside lists and tuples. (Not a
    closure: a recursive closure is a reference cycle, which would hold the tensors until the garbage collector
    runs.)"""
    if isinstance(a, (list, tuple)):
        return type(a)(_with_slots(t, slots) for t in a)
    return slots.get(id(a), a) if isinstance(a, Tensor) else a


def _filled(a, leaves: tuple):
    if isinstance(a, (list, tuple)):
        return type(a)(_filled(t, leaves) for t in a)
    return leaves[a.index] if isinstance(a, _Slot) else a


class _RelevanceForward(TorchFunctionMode):
    """During the LRP forward pass, outside the modules that have a rule: functional ops get the rule of their
    module form, sums of activations become proportional sums, products with constants and gates get their rules
    (``xai.lrp.functional.classify``); a norm-act module's ``F.batch_norm`` is merged (``batch_norm_handler``).
    Everywhere: in-place ops on activations (``F.relu(x, inplace=True)``, ``x += y``) run out of place, because the
    rules keep their inputs. The callers use the returned tensor (``+=`` rebinds the name), so the result is the
    same. The exception: an in-place ReLU on a layer output that no rule keeps exactly stays in place
    (``_Rectifiable.relu_in_place``)."""

    def __init__(self, stabilizer: float, rectifiable: "_Rectifiable", remakes: _Remakes,
                 functional_rules: dict[str, Rule], composite: Composite):
        super().__init__()
        self.stabilizer = stabilizer
        self.rectifiable = rectifiable
        self.remakes = remakes
        self.functional_rules = functional_rules
        self.product_rule = composite.product_rule
        self.activation_product_rule = composite.activation_product_rule
        self.matmul_rule = composite.matmul_rule
        self.softmax_rule = composite.softmax_rule
        self.opaque_depth = 0  # > 0 while a module with a rule runs
        self.batch_norm_handler = None  # set while a norm-act module runs: what to do with its F.batch_norm
        self._gates: dict[int, weakref.ref] = {}  # outputs of sigmoids
        self._activated: dict[int, weakref.ref] = {}  # outputs of the other element-wise activations

    def add_output(self, tensor: Tensor, gate: bool) -> None:
        """Remember an activation function's output: a sigmoid's is a gate (squeeze-excitation), another's may be
        the gate of a gated MLP."""
        (self._gates if gate else self._activated)[id(tensor)] = weakref.ref(tensor)

    def _is_gate(self, tensor) -> bool:
        ref = self._gates.get(id(tensor))
        return ref is not None and ref() is tensor

    def _is_activated(self, tensor) -> bool:
        ref = self._activated.get(id(tensor))
        return ref is not None and ref() is tensor

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not torch.is_grad_enabled() or "out" in kwargs or not args:
            return func(*args, **kwargs)
        if self.opaque_depth == 0:
            name = canonical(func)
            if name == "batch_norm" and self.batch_norm_handler is not None:
                handler, self.batch_norm_handler = self.batch_norm_handler, None
                return handler(args[0], func(*args, **kwargs))
            kind = classify(name, args, kwargs)
            if kind is Kind.RULE and name in self.functional_rules:
                return self._rule(func, name, args, kwargs)
            if kind is Kind.ATTENTION and self.softmax_rule is not None:
                with self:  # the decomposition's ops get their rules
                    constant = self._constant_weights if isinstance(self.softmax_rule, ConstantRule) else None
                    return DECOMPOSITIONS[name](*args, **kwargs, constant_weights=constant)
            if kind is Kind.MATMUL and self.matmul_rule is not None:
                carrying = activations(args, kwargs)
                factors = list({id(a): a for a in carrying}.values())
                op, op_kwargs = out_of_place(func, kwargs)
                weight = args[1] if len(args) > 1 else kwargs.get("weight")
                transpose = partial(_linear_transpose, weight=weight) if name == "linear" and \
                    len(factors) == 1 and factors[0] is args[0] else None
                return self._matmul(self.matmul_rule, _call_with(op, args, op_kwargs, factors), len(carrying),
                                    factors, transpose)
            if kind is Kind.SOFTMAX and name == "softmax" and self.softmax_rule is not None:
                return self._softmax(func, args, kwargs)
            if kind is Kind.SUM:
                a, b = args
                alpha = kwargs.get("alpha", 1)
                if not isinstance(b, Tensor):
                    b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
                elif not isinstance(a, Tensor):
                    a = torch.as_tensor(a, dtype=b.dtype, device=b.device)
                return _ProportionalSum.apply(a, b if alpha == 1 else alpha * b, self.stabilizer)
            if kind in (Kind.SCALE, Kind.PRODUCT):
                return self._product(func, args, kwargs, kind)
        if isinstance(args[0], Tensor) and args[0].requires_grad:
            if kwargs.get("inplace") is True:  # F.relu(x, inplace=True) and friends
                if func is F.relu and self.rectifiable.relu_in_place(args[0], self.rectifiable.relu_rule):
                    return args[0]
                return func(*args, **{**kwargs, "inplace": False})
            name = op_name(func)
            if name.endswith("_") and name[0] != "_" and hasattr(Tensor, name[:-1]):
                op, op_kwargs = out_of_place(func, kwargs)
                return op(*args, **op_kwargs)
        return func(*args, **kwargs)

    def _rule(self, func, name: str, args: tuple, kwargs: dict) -> Tensor:
        """A functional op with the rule of its module form, as its module's hook would apply it."""
        x, rule = args[0], self.functional_rules[name]
        in_place = kwargs.get("inplace") is True or op_name(func).endswith("_")
        if name == "relu" and in_place and self.rectifiable.relu_in_place(x, rule):
            return x
        call = FunctionalCall(func, args, kwargs)
        with torch.no_grad():
            output = call.forward(x)
        if name == "relu":
            self.rectifiable.rectified(x, output)
        result = _ModuleRelevance.apply(x, output, call, rule)
        if name in REMAKEABLE_OPS:
            self.remakes.add(result, (x,), call.forward)
        if name in ACTIVATION_OPS:
            self.add_output(result, gate=name in GATE_OPS)
        return result

    def _softmax(self, func, args: tuple, kwargs: dict) -> Tensor:
        """A softmax with the composite's softmax rule; with ``ConstantRule`` (CP-LRP) its output is a constant."""
        with torch.no_grad():
            output = func(*args, **kwargs)
        if isinstance(self.softmax_rule, ConstantRule):
            return output
        x = args[0]
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        dim = F._get_softmax_dim("softmax", x.dim(), 3) if dim is None else dim
        softmax = FunctionalCall(func, args, kwargs).forward
        result = _SoftmaxRelevance.apply(x, output, dim, self.softmax_rule, self.remakes, softmax)
        self.remakes.add(result, (x,), softmax)
        return result

    def _constant_weights(self, weighted, value: Tensor) -> Tensor:
        """CP-LRP's weights @ values (``xai.lrp.attention.ConstantProduct``): relevance flows to the values only, and
        the backward pass recomputes the weights inside ``weighted`` instead of keeping them."""
        if not value.requires_grad:
            return weighted(value)
        return self._matmul(self.matmul_rule, weighted, 1, [value])

    def _matmul(self, rule: UniformRule, call, n: int, factors: list[Tensor], transpose=None) -> Tensor:
        """A matmul or product with the uniform rule; a product of two activations (attention's scores and weighted
        values) is cheap to remake from them."""
        result = _MatmulRelevance.apply(rule, call, n, self.remakes, transpose, *factors)
        if n == 2:
            self.remakes.add(result, tuple(factors), call)
        return result

    def _product(self, func, args: tuple, kwargs: dict, kind: Kind) -> Tensor:
        """An activation times a constant (its relevance kept), or times a gate (the composite's product rule)."""
        first, second = args
        if kind is Kind.SCALE:
            carrying_first = isinstance(first, Tensor) and first.requires_grad
            value, gate, rule = (first, second, GateRule()) if carrying_first else (second, first, GateRule())
        elif self._is_gate(second) != self._is_gate(first):
            value, gate, rule = (first, second, self.product_rule) if self._is_gate(second) else \
                (second, first, self.product_rule)
        elif isinstance(self.activation_product_rule, UniformRule):  # half to each factor (AttnLRP)
            op, op_kwargs = out_of_place(func, kwargs)
            factors = list({id(a): a for a in args}.values())
            return self._matmul(self.activation_product_rule, _call_with(op, args, op_kwargs, factors), 2, factors)
        elif self.activation_product_rule is not None and self._is_activated(first) != self._is_activated(second):
            value, gate, rule = (first, second, self.activation_product_rule) if self._is_activated(second) else \
                (second, first, self.activation_product_rule)  # the activation's output is the gate (CP-LRP)
        else:  # refused by the model check
            return func(*args, **kwargs)
        op, op_kwargs = out_of_place(func, kwargs)
        with torch.no_grad():
            output = op(*args, **op_kwargs)
        if kind is Kind.PRODUCT:
            return _ProductRelevance.apply(value, gate, output, rule)
        return _ProductRelevance.apply(value, None, output, rule)


class LRP(Analyzer):
    """Layer-wise Relevance Propagation with Zennit's rules and composites.

    ``composite`` maps layers to rules (default: ``EpsilonRule()`` on every Linear/Conv, see
    ``xai.composites.default_composite``); ``rules`` maps module paths (as in ``named_modules()``), module
    objects or module types to rules and takes precedence. The output relevance is one-hot at the target.
    """

    def __init__(self, model: nn.Module, composite: Composite | None = None,
                 rules: dict[str | nn.Module | type, Rule] | None = None):
        super().__init__(model)
        if composite is not None and not isinstance(composite, Composite):
            raise TypeError(f"composite must be an xai.composites.Composite (e.g. EpsilonGammaBox()), got "
                            f"{type(composite).__name__}")
        modules = set(map(id, model.modules()))
        for key, rule in (rules or {}).items():
            if not isinstance(rule, Rule):
                raise TypeError(f"rules[{key!r}] must be an xai.rules.Rule, got {type(rule).__name__}")
            if isinstance(key, str):
                module_at(model, key, f"rules[{key!r}]")
            if isinstance(key, nn.Module) and id(key) not in modules:
                raise ValueError(f"rules[{type(key).__name__}(...)]: that module is not part of the model; key it by "
                               "path (a name from model.named_modules()) or by type")
            if not isinstance(key, (str, nn.Module, type)):
                raise TypeError(f"rules keys are module paths, modules or module types, got {key!r}")
        self.composite = composite if composite is not None else default_composite()
        self.rules = dict(rules or {})
        self._layers: dict[tuple[nn.Module, nn.Module | None], AffineLayer] = {}
        self._traces: dict[tuple, Trace] = {}

    @property
    def method(self) -> str:
        return f"LRP({self.composite.name}{'+rules' if self.rules else ''})"

    def layer_rules(self) -> dict[str, Rule]:
        """The rule of every layer that gets one, keyed by path: user rules first, then the composite."""
        found = self.composite.rules_for(self.model)
        for path, module in self.model.named_modules():
            for key in (path, module, type(module)):
                if key in self.rules:
                    found[path] = self.rules[key]
                    break
        return found

    def functional_rules(self) -> dict[str, Rule]:
        """The rule of each functional op (``xai.lrp.functional.MODULE_FORMS``): that of its module form, from the
        user's rules by type, else from the composite."""
        found = {}
        for name, module_type in MODULE_FORMS.items():
            rule = self.rules.get(module_type) or self.composite.rule_for_type(module_type)
            if rule is not None:
                found[name] = rule
        return found

    def _check_model(self) -> None:
        check_modules(self.model, self.layer_rules(), attention=self.composite.softmax_rule is not None)

    def _trace(self, x: Tensor) -> Trace:
        key = (tuple(x.shape[1:]), x.dtype, x.device, tuple(id(m) for m in self.model.modules()))
        if key not in self._traces:
            self._traces[key] = trace(self.model, x[:1], set(self.layer_rules()), set(self.functional_rules()),
                                      matmul=self.composite.matmul_rule is not None,
                                      softmax=self.composite.softmax_rule is not None,
                                      activation_products=self.composite.activation_product_rule)
        return self._traces[key]

    def _affine(self, module: nn.Module, batch_norm: nn.Module | None) -> AffineLayer:
        key = (module, batch_norm)
        if key not in self._layers:
            self._layers[key] = AffineLayer(module, batch_norm)
        layer = self._layers[key]
        layer.refresh()
        return layer

    def _hooks(self, found: Trace, rectifiable: "_Rectifiable", mode: _RelevanceForward) -> list:
        """Forward hooks that put each layer's rule into the graph; BatchNorms merged into their layer pass. A module
        with a rule is explained as a whole: nothing inside it is hooked."""
        modules = dict(self.model.named_modules())
        rules = self.layer_rules()
        merged_into = {bn: lin for lin, bn in found.merged.items()}
        ruled_containers = []
        handles = []
        for path, module in modules.items():
            if any(path.startswith(prefix + ".") for prefix in ruled_containers):
                continue
            rule = rules.get(path)
            if rule is not None and any(True for _ in module.children()):
                ruled_containers.append(path)
            if rule is None and is_norm_act(module):
                linear_path = merged_into.get(path)
                linear_rule = rules.get(linear_path) if linear_path is not None else None
                merged = None
                if isinstance(linear_rule, LinearRule):
                    linear = modules[linear_path]
                    merged = (linear, self._affine(linear, module), linear_rule, rectifiable)
                handles += _norm_act_hooks(module, mode, merged)
                continue
            if path in merged_into:
                continue  # part of its Linear/Conv's rule
            if isinstance(module, BATCH_NORM_TYPES):
                rule = rule or PassRule()  # Zennit's composites pass a BatchNorm that follows no Linear/Conv
            if rule is None:
                continue
            if not isinstance(rule, LinearRule):
                handles += _module_hooks(module, rule, rectifiable, mode)
            elif path in found.merged and is_norm_act(modules[found.merged[path]]) and \
                    found.merged[path] not in rules:
                continue  # hooked with its norm-act module
            elif path in found.merged:
                batch_norm = modules[found.merged[path]]
                handles += _merged_hooks(module, batch_norm, self._affine(module, batch_norm), rule, rectifiable)
            else:
                layer = self._affine(module, None)
                handles.append(module.register_forward_hook(_linear_hook(layer, rule, rectifiable)))
        return handles

    def _attribute(self, x: Tensor, target: Target) -> tuple[Tensor, Tensor, Tensor]:
        found = self._trace(x)
        if found.problems:
            raise UnsupportedModelError(found.problems, ADVICE)
        # an in-place activation would overwrite tensors the rules keep (ReLUs: decided per call, see _Rectifiable)
        inplace = [m for m in self.model.modules()
                   if getattr(m, "inplace", False) is True and not isinstance(m, nn.ReLU)]
        remakes = _Remakes()
        rectifiable = _Rectifiable(remakes)
        mode = _RelevanceForward(self.composite.stabilizer, rectifiable, remakes, self.functional_rules(),
                                 self.composite)
        handles = []
        try:
            for m in inplace:
                m.inplace = False
            handles = self._hooks(found, rectifiable, mode)
            x = x.detach().requires_grad_(True)
            with torch.enable_grad(), mode:
                output = self.model(x)
            rectifiable.forward_done()
            remakes.forward_done()
        finally:
            for h in handles:
                h.remove()
            for m in inplace:
                m.inplace = True
        check_output(output)
        resolved = resolve_target(target, output)
        (relevance,) = torch.autograd.grad(output, x, grad_outputs=one_hot_at(output, resolved))
        return relevance, output, resolved


class _Rectifiable:
    """The outputs of rule layers that need only their positive part (``LinearRule.rectified_output_suffices``),
    during one LRP pass. When a ReLU consumes one, its ``LayerOutput`` takes the ReLU's output instead, which the
    next layer keeps anyway, so that the layer's own output can be freed. An in-place ReLU on such an output, or on
    one whose rule keeps nothing of it, runs in place, saving an activation-sized allocation. In the backward pass
    it tells such a layer what it knows for sure (``LayerOutput.relevance_on_positive``, ``input_nonnegative``), so
    the rule can skip checks.

    Tensors are recognised by their storage (``data_ptr``) while they are alive (weak references): two live tensors
    starting at the same address are views of one storage.
    """

    def __init__(self, remakes: _Remakes):
        self.remakes = remakes
        self._waiting: dict[int, tuple[weakref.ref, LayerOutput]] = {}
        self._unkept: dict[int, weakref.ref] = {}  # outputs whose rule keeps nothing of them
        self._rectified: dict[int, weakref.ref] = {}  # data_ptr -> a rectified output
        self._vanishing: dict[int, tuple[weakref.ref, int]] = {}  # data_ptr of R_in -> (R_in, data_ptr of x)
        self.relu_rule: Rule | None = None  # the rule of the ReLU module running now, if any

    def relevance(self, x: Tensor, output: Tensor, layer: AffineLayer, rule: LinearRule) -> Tensor:
        layer_output = LayerOutput(output)
        result = _LinearRelevance.apply(x, layer_output, layer, rule, self, self.remakes)
        if rule.uses_output and rule.rectified_output_suffices:
            self._waiting[id(result)] = (weakref.ref(result), layer_output)
        elif not rule.uses_output:
            self._unkept[id(result)] = weakref.ref(result)
        return result

    def forward_done(self) -> None:
        """No ReLU comes any more: drop the outputs still waiting, so that each is freed with its layer's node."""
        self._waiting.clear()

    def _pop(self, tensor: Tensor) -> LayerOutput | None:
        ref, layer_output = self._waiting.pop(id(tensor), (None, None))
        return layer_output if ref is not None and ref() is tensor else None

    def _mark_rectified(self, layer_output: LayerOutput, tensor: Tensor) -> None:
        layer_output.tensor, layer_output.rectified = tensor, True
        self._rectified[tensor.data_ptr()] = weakref.ref(tensor)

    def rectified(self, relu_input: Tensor, relu_output: Tensor) -> None:
        layer_output = self._pop(relu_input)
        if layer_output is not None:
            self._mark_rectified(layer_output, relu_output)

    def relu_in_place(self, tensor: Tensor, rule: Rule | None) -> bool:
        """Apply an in-place ReLU in place if no rule keeps ``tensor`` exactly; else False, nothing done.

        With the Pass rule (a ReLU module's, or a functional ReLU's) it runs outside autograd (the rule replaces
        the ReLU's gradient); without a rule (inside a module explained as a whole) through autograd.
        """
        if rule is not None and not isinstance(rule, PassRule) or self.remakes.is_input(tensor):
            return False
        layer_output = self._pop(tensor)
        ref = self._unkept.pop(id(tensor), None)
        if layer_output is None and (ref is None or ref() is not tensor):
            return False
        if rule is None:
            torch.relu_(tensor)
        else:
            tensor.detach().relu_()
        if layer_output is not None:
            self._mark_rectified(layer_output, tensor.detach())
        return True

    def vanishes_where_zero(self, relevance: Tensor, x: Tensor) -> None:
        """Record that ``relevance`` (a rule's result) is 0 wherever its input ``x`` is."""
        self._vanishing[relevance.data_ptr()] = (weakref.ref(relevance), x.data_ptr())

    def annotate(self, layer_output: LayerOutput, x: Tensor, relevance: Tensor) -> None:
        ref = self._rectified.get(x.data_ptr())
        layer_output.input_nonnegative = _same_storage(ref, x)
        ref, input_ptr = self._vanishing.get(relevance.data_ptr(), (None, None))
        layer_output.relevance_on_positive = (layer_output.rectified and _same_storage(ref, relevance)
                                              and input_ptr == layer_output.tensor.data_ptr())


def _same_storage(ref: weakref.ref | None, tensor: Tensor) -> bool:
    other = None if ref is None else ref()
    return other is not None and other.data_ptr() == tensor.data_ptr() and other.numel() == tensor.numel()


def _linear_hook(layer: AffineLayer, rule: LinearRule, rectifiable: _Rectifiable):
    def hook(module, args, output):
        return rectifiable.relevance(args[0], output.detach(), layer, rule)

    return hook


def _merged_hooks(linear: nn.Module, batch_norm: nn.Module, layer: AffineLayer, rule: LinearRule,
                  rectifiable: _Rectifiable) -> list:
    """Linear/Conv and its BatchNorm as one rule layer: the rule's input is the Linear/Conv's, its output the
    BatchNorm's own (no recomputation); the BatchNorm runs outside the graph."""
    inputs = []

    def linear_hook(module, args, output):
        inputs.append(args[0])
        return output.detach()

    def batch_norm_hook(module, args, output):
        return rectifiable.relevance(inputs.pop(), output.detach(), layer, rule)

    return [linear.register_forward_hook(linear_hook), batch_norm.register_forward_hook(batch_norm_hook)]


def _norm_act_hooks(norm_act: nn.Module, mode: _RelevanceForward,
                    merged: tuple[nn.Module, AffineLayer, LinearRule, _Rectifiable] | None) -> list:
    """timm's norm-act module (``BatchNormAct2d``): its ``F.batch_norm`` call is the BatchNorm, merged into the
    Linear/Conv before it (``merged``: that layer, the merged layer, its rule) or else passed; its children
    (activation, dropout) have hooks of their own."""
    if merged is None:
        def handler(x, output):
            return _ModuleRelevance.apply(x, output.detach(), None, PassRule())
        handles = []
    else:
        linear, layer, rule, rectifiable = merged
        inputs = []

        def linear_hook(module, args, output):
            inputs.append(args[0])
            return output.detach()

        def handler(x, output):
            return rectifiable.relevance(inputs.pop(), output.detach(), layer, rule)

        handles = [linear.register_forward_hook(linear_hook)]

    def pre_hook(module, args):
        mode.batch_norm_handler = handler

    def hook(module, args, output):
        mode.batch_norm_handler = None

    return handles + [norm_act.register_forward_pre_hook(pre_hook), norm_act.register_forward_hook(hook)]


def _out_of_place_forward(module: nn.Module, x: Tensor) -> Tensor:
    """``module.forward(x)`` without hooks and never in place (``inplace=True`` is restored after the LRP forward
    pass, the remakes run in the backward pass)."""
    if getattr(module, "inplace", False) is not True:
        return module.forward(x)
    module.inplace = False
    try:
        return module.forward(x)
    finally:
        module.inplace = True


def _module_hooks(module: nn.Module, rule: Rule, rectifiable: _Rectifiable, mode: _RelevanceForward) -> list:
    """The rule replaces the module as a whole: nothing inside it is intercepted (``opaque_depth``)."""
    is_relu = isinstance(module, nn.ReLU)
    is_gate, is_activation = isinstance(module, GATE_TYPES), isinstance(module, ACTIVATION_TYPES)
    remakeable = isinstance(module, REMAKEABLE_TYPES) and not is_relu

    def pre_hook(module, args):
        mode.opaque_depth += 1
        if is_relu:
            rectifiable.relu_rule = rule

    def hook(module, args, output):
        mode.opaque_depth -= 1
        if is_relu:
            rectifiable.relu_rule = None
            rectifiable.rectified(args[0], output.detach())
        result = _ModuleRelevance.apply(args[0], output.detach(), module, rule)
        if remakeable:
            mode.remakes.add(result, (args[0],), partial(_out_of_place_forward, module))
        if is_activation or is_gate:
            mode.add_output(result, gate=is_gate)
        return result

    return [module.register_forward_hook(hook), module.register_forward_pre_hook(pre_hook)]


__all__ = ["LRP"]
