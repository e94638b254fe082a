"""Composites: which LRP rule each layer gets, built from small matchers (first match wins, as in Zennit).

Building blocks: ``ByType`` (layer type), ``FirstLayer`` (the first layer of a type), ``ByName`` (module path, with
shell-style wildcards), ``IndexRange`` (the k-th linear layer for k in a range). Layers are visited in definition
order (``model.named_modules()``), as Zennit does. Every composite ends with the structural defaults that all of
Zennit's composites share: ``PassRule`` on element-wise activations and ``NormRule`` on average pooling (and on
residual sums, see ``LRP``); BatchNorm is merged into the layer before it. Beyond Zennit: ``LayerNormRule`` on
LayerNorm/GroupNorm/RMSNorm and ``GateRule`` on products of an activation and a gate (squeeze-excitation).
Functional ops in ``forward`` (``F.relu``, ``x.mean((2, 3))``) get the rule of their module form
(``rule_for_type``). The attention composites ``CPLRP`` and ``AttnLRP`` add a matmul rule and a softmax rule, for
Vision Transformers (torchvision's ``VisionTransformer`` and ``swin_t``, timm's ViT/DeiT).

A custom composite in a few lines::

    Composite(FirstLayer(nn.Conv2d, FlatRule()), ByName("classifier.*", EpsilonRule(0.25)),
              ByType(nn.Conv2d, ZPlusRule()), ByType(nn.Linear, EpsilonRule()), name="MyComposite")
"""
from fnmatch import fnmatchcase
from typing import Callable, Iterable

from torch import nn

from xai.lrp.canonize import CONV_TYPES, LINEAR_TYPES
from xai.lrp.rules import (
    AlphaBetaRule, ConstantRule, EpsilonRule, FlatRule, GammaRule, GateRule, LayerNormRule, NormRule, PassRule,
    ProductRule, Rule, SoftmaxRule, UniformRule, ZBoxRule, ZPlusRule,
)
from xai.validation import finite_number

# Zennit's ``zennit.types.Activation``: element-wise, so relevance passes through unchanged.
ACTIVATION_TYPES = (
    nn.ELU, nn.Hardshrink, nn.Hardsigmoid, nn.Hardtanh, nn.Hardswish, nn.LeakyReLU, nn.LogSigmoid, nn.PReLU,
    nn.ReLU, nn.ReLU6, nn.RReLU, nn.SELU, nn.CELU, nn.GELU, nn.Sigmoid, nn.SiLU, nn.Softplus, nn.Softshrink,
    nn.Softsign, nn.Tanh, nn.Tanhshrink, nn.Threshold, nn.Mish,
)
AVG_POOL_TYPES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                  nn.AdaptiveAvgPool3d)
# Normalisations whose scale LRP treats as a constant (``LayerNormRule``); subclasses (timm's and torchvision's
# LayerNorm2d, timm's GroupNorm1) included.
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)

Matcher = Callable[[str, nn.Module], bool]


def leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules without children, in definition order: the layers rules are given to."""
    return [(name, m) for name, m in model.named_modules() if not any(True for _ in m.children())]


class Entry:
    """One line of a composite: a rule and the layers it applies to."""

    def __init__(self, rule: Rule):
        if not isinstance(rule, Rule):
            raise TypeError(f"{type(self).__name__} needs an xai.rules.Rule, got {type(rule).__name__}")
        self.rule = rule

    def bind(self, model: nn.Module) -> Matcher:
        """A predicate (name, module) -> bool for this model."""
        raise NotImplementedError


class ByType(Entry):
    """Every layer that is an instance of ``types``."""

    def __init__(self, types: type | tuple[type, ...], rule: Rule):
        super().__init__(rule)
        self.types = types

    def bind(self, model):
        return lambda name, module: isinstance(module, self.types)

    def __repr__(self):
        return f"ByType({self.types!r}, {self.rule!r})"


class FirstLayer(Entry):
    """The first layer (in definition order) that is an instance of ``types``."""

    def __init__(self, types: type | tuple[type, ...], rule: Rule):
        super().__init__(rule)
        self.types = types

    def bind(self, model):
        first = next((name for name, m in leaves(model) if isinstance(m, self.types)), None)
        return lambda name, module: name == first

    def __repr__(self):
        return f"FirstLayer({self.types!r}, {self.rule!r})"


class ByName(Entry):
    """Layers whose path (as in ``model.named_modules()``, e.g. "features.0") matches a pattern ("features.*")."""

    def __init__(self, patterns: str | Iterable[str], rule: Rule):
        super().__init__(rule)
        self.patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)

    def bind(self, model):
        return lambda name, module: any(fnmatchcase(name, p) for p in self.patterns)

    def __repr__(self):
        return f"ByName({self.patterns!r}, {self.rule!r})"


class IndexRange(Entry):
    """The layers of ``types`` (default: Linear and Conv) numbered 0, 1, ... in definition order, from start to
    stop (exclusive; negative values count from the end), like ExplainableAI.jl's ``RangeMap``."""

    def __init__(self, start: int | None, stop: int | None, rule: Rule, types: tuple[type, ...] = LINEAR_TYPES):
        super().__init__(rule)
        self.start, self.stop, self.types = start, stop, types

    def bind(self, model):
        names = [name for name, m in leaves(model) if isinstance(m, self.types)]
        chosen = set(names[self.start:self.stop])
        return lambda name, module: name in chosen

    def __repr__(self):
        return f"IndexRange({self.start}, {self.stop}, {self.rule!r})"


class Composite:
    """An ordered list of entries; a layer gets the rule of the first entry that matches it.

    ``stabilizer`` is the one of the structural ``NormRule`` (average pooling, residual sums).
    """

    def __init__(self, *entries: Entry, name: str = "Composite", stabilizer: float = 1e-6):
        for entry in entries:
            if not isinstance(entry, Entry):
                raise TypeError(f"a Composite is built from entries (ByType, FirstLayer, ByName, IndexRange), got "
                                f"{type(entry).__name__}")
        self.entries = list(entries)
        self.name = name
        self.stabilizer = finite_number(stabilizer, f"{name}'s stabilizer", minimum=0)

    def with_entries(self, *entries: Entry) -> "Composite":
        """A copy with ``entries`` put first, so they take precedence (Zennit's cooperative ``layer_map``)."""
        return Composite(*entries, *self.entries, name=self.name, stabilizer=self.stabilizer)

    @property
    def sum_rule(self) -> Rule:
        """The rule for residual additions a + b: each summand's share of the sum."""
        return NormRule(self.stabilizer)

    @property
    def product_rule(self) -> ProductRule:
        """The rule for products of an activation and a gate (``x * sigmoid(s(x))``)."""
        return GateRule()

    @property
    def activation_product_rule(self) -> GateRule | UniformRule | None:
        """The rule for products of two activations neither of which is a sigmoid (gated MLPs,
        ``silu(x W_g) * (x W_u)``): ``GateRule``, the factor that is an activation function's output as the gate;
        ``UniformRule``, half to each factor; None: refused."""
        return None

    @property
    def matmul_rule(self) -> UniformRule | None:
        """The rule for ops linear in each activation factor (matmuls, ``F.linear``); None: refused."""
        return None

    @property
    def softmax_rule(self) -> Rule | None:
        """The rule for a softmax inside the model (attention); None: refused. Attention ops need it."""
        return None

    def structural_entries(self) -> list[Entry]:
        return [ByType(ACTIVATION_TYPES, PassRule()), ByType(AVG_POOL_TYPES, NormRule(self.stabilizer)),
                ByType(NORM_TYPES, LayerNormRule(self.stabilizer))]

    def rule_for_type(self, module_type: type[nn.Module]) -> Rule | None:
        """The rule of the first by-type entry that covers ``module_type``: what a functional op gets whose module
        form is ``module_type`` (``F.relu``: ``nn.ReLU``)."""
        for entry in self.entries + self.structural_entries():
            if isinstance(entry, ByType) and issubclass(module_type, entry.types):
                return entry.rule
        return None

    def rules_for(self, model: nn.Module) -> dict[str, Rule]:
        """The rule of each leaf module that gets one, keyed by its path."""
        bound = [(entry.bind(model), entry.rule) for entry in self.entries + self.structural_entries()]
        found = {}
        for name, module in leaves(model):
            for matches, rule in bound:
                if matches(name, module):
                    found[name] = rule
                    break
        return found

    def __repr__(self):
        return f"{self.name}({', '.join(map(repr, self.entries))})"


class EpsilonGammaBox(Composite):
    """ZBox on the first convolution, Gamma on the other convolutions, Epsilon on dense layers."""

    def __init__(self, low=-3.0, high=3.0, epsilon: float = 1e-6, gamma: float = 0.25, stabilizer: float = 1e-6):
        super().__init__(
            FirstLayer(CONV_TYPES, ZBoxRule(low, high, stabilizer)),
            ByType(CONV_TYPES, GammaRule(gamma, stabilizer)),
            ByType(nn.Linear, EpsilonRule(epsilon)),
            name="EpsilonGammaBox", stabilizer=stabilizer,
        )


class EpsilonPlus(Composite):
    """ZPlus on convolutions, Epsilon on dense layers."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6):
        super().__init__(
            ByType(CONV_TYPES, ZPlusRule(stabilizer)),
            ByType(nn.Linear, EpsilonRule(epsilon)),
            name="EpsilonPlus", stabilizer=stabilizer,
        )


class EpsilonPlusFlat(Composite):
    """Flat on the first linear layer (conv or dense), ZPlus on convolutions, Epsilon on dense layers."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6):
        super().__init__(
            FirstLayer(LINEAR_TYPES, FlatRule(stabilizer)),
            ByType(CONV_TYPES, ZPlusRule(stabilizer)),
            ByType(nn.Linear, EpsilonRule(epsilon)),
            name="EpsilonPlusFlat", stabilizer=stabilizer,
        )


class EpsilonAlpha2Beta1(Composite):
    """AlphaBeta(2, 1) on convolutions, Epsilon on dense layers."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6):
        super().__init__(
            ByType(CONV_TYPES, AlphaBetaRule(2.0, 1.0, stabilizer)),
            ByType(nn.Linear, EpsilonRule(epsilon)),
            name="EpsilonAlpha2Beta1", stabilizer=stabilizer,
        )


class EpsilonAlpha2Beta1Flat(Composite):
    """Flat on the first linear layer, AlphaBeta(2, 1) on convolutions, Epsilon on dense layers."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6):
        super().__init__(
            FirstLayer(LINEAR_TYPES, FlatRule(stabilizer)),
            ByType(CONV_TYPES, AlphaBetaRule(2.0, 1.0, stabilizer)),
            ByType(nn.Linear, EpsilonRule(epsilon)),
            name="EpsilonAlpha2Beta1Flat", stabilizer=stabilizer,
        )


class _AttentionComposite(Composite):
    """Gamma on Linear and Conv layers (as LXT 2.1's ViT example, with Zennit's Gamma; a gamma of 0: the Epsilon
    rule), the uniform rule on matmuls and on weights used functionally (``UniformRule``) and the subclass's rule on
    the attention's softmax. ``epsilon``: the Epsilon and uniform rules'; ``stabilizer``: the Gamma rule's, and that
    of LayerNorm and of residual sums."""

    def __init__(self, gamma_linear: float, gamma_conv: float, epsilon: float, stabilizer: float, name: str,
                 softmax_rule: Rule):
        def rule(gamma, what):
            gamma = finite_number(gamma, f"{name}'s {what}", minimum=0)
            return GammaRule(gamma, stabilizer) if gamma else EpsilonRule(epsilon)

        super().__init__(ByType(CONV_TYPES, rule(gamma_conv, "gamma_conv")),
                         ByType(nn.Linear, rule(gamma_linear, "gamma_linear")), name=name, stabilizer=stabilizer)
        self._matmul_rule = UniformRule(epsilon)
        self._softmax_rule = softmax_rule

    @property
    def matmul_rule(self) -> UniformRule:
        return self._matmul_rule

    @property
    def softmax_rule(self) -> Rule:
        return self._softmax_rule


class CPLRP(_AttentionComposite):
    """CP-LRP for transformers (Ali et al. 2022, "XAI for Transformers: Better Explanations through Conservative
    Propagation"; LXT 2.1's ``cp_LRP`` recipe for torchvision's ViT): the attention weights are constants, so
    relevance flows through the values and their projections only (``ConstantRule`` on the softmax). LayerNorm with
    its std held fixed, the identity rule on GELU and other element-wise activations, Gamma on Linear/Conv; in a
    gated MLP (``silu(x W_g) * (x W_u)``) the gate is a constant, so relevance flows through the other factor."""

    def __init__(self, gamma_linear: float = 0.0, gamma_conv: float = 0.25, epsilon: float = 1e-6,
                 stabilizer: float = 1e-6):
        super().__init__(gamma_linear, gamma_conv, epsilon, stabilizer, name="CPLRP", softmax_rule=ConstantRule())

    @property
    def activation_product_rule(self) -> GateRule:
        """A gated MLP's gate (the activation's output) is a constant: LXT 2.1's ``cp_gated_mlp_forward``."""
        return GateRule()


class AttnLRP(_AttentionComposite):
    """AttnLRP (Achtibat et al. 2024, "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
    Transformers"; LXT 2.1): the uniform rule on query @ key^T and weights @ values (half the relevance to each
    factor), the softmax rule on the attention scores, the uniform rule on a gated MLP's product; otherwise as
    ``CPLRP``."""

    def __init__(self, gamma_linear: float = 0.0, gamma_conv: float = 0.25, epsilon: float = 1e-6,
                 stabilizer: float = 1e-6):
        super().__init__(gamma_linear, gamma_conv, epsilon, stabilizer, name="AttnLRP", softmax_rule=SoftmaxRule())

    @property
    def activation_product_rule(self) -> UniformRule:
        """A gated MLP's product splits its relevance in half: LXT 2.1's ``gated_mlp_forward``."""
        return self._matmul_rule


def default_composite() -> Composite:
    """``LRP(model)`` without a composite: Epsilon (1e-6, nearly LRP-0 but safe at z = 0) on all linear layers."""
    return Composite(ByType(LINEAR_TYPES, EpsilonRule()), name="Epsilon")


__all__ = [
    "ACTIVATION_TYPES", "AVG_POOL_TYPES", "NORM_TYPES", "AttnLRP", "ByName", "ByType", "CPLRP", "Composite",
    "EpsilonAlpha2Beta1",
    "EpsilonAlpha2Beta1Flat", "EpsilonGammaBox", "EpsilonPlus", "EpsilonPlusFlat", "FirstLayer", "IndexRange",
    "default_composite",
]
