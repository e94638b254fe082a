"""LRP rules: how the relevance at a layer's output is redistributed to its input.

The formulas, defaults and bias handling are Zennit's (``zennit.rules``), so that results agree with it to
rounding. A rule for linear layers (Linear, Conv) follows ExplainableAI.jl's recipe, whose steps are small
overridable hooks, so that a new rule is a few lines::

    x~ = modify_input(x)                      z = W~ x~ + b~     with W~, b~ = modify_parameters(W, b)
    s  = R / modify_denominator(z)            R_in = x~ * (W~^T s)

The preset rules override ``relevance`` with a faster but equal computation: modified weights are computed once per
analyzer (not once per backward as in Zennit), non-negative inputs (after a ReLU) drop the half of the
sign-split terms that vanish, and the module's own forward output is reused where the rule needs it.
"""
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from xai.lrp.canonize import AffineLayer
from xai.validation import finite_number


def signed_epsilon(z: Tensor, epsilon: float) -> Tensor:
    """+epsilon where z >= 0 (also at -0.0, as Zennit's ``z >= 0``), -epsilon where z < 0, as a new tensor.

    Float arithmetic only: on CPU ``torch.where`` and bool masks mixed with floats are ~10x slower than a float pass.
    """
    return torch.sign(z).add_(0.5).sign_().mul_(epsilon)


def _is_temporary(result: Tensor, source: Tensor) -> bool:
    """Whether ``result``, computed from ``source``, is a new tensor of its own (not ``source`` or a view of it)."""
    return result.untyped_storage().data_ptr() != source.untyped_storage().data_ptr() and \
        result.shape == source.shape and result.is_contiguous()


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """Zennit's stabilizer: move z away from 0 by epsilon, keeping its sign (0 becomes +epsilon)."""
    return signed_epsilon(z, epsilon).add_(z)


def stabilize_(z: Tensor, epsilon: float) -> Tensor:
    """stabilize(z, epsilon) in the storage of the temporary ``z``; one sign throughout (z+ after a ReLU) is one
    cheap reduction and one in-place pass, without the activation-sized temporary of the mixed-sign case."""
    low, high = torch.aminmax(z)
    if low >= 0:  # -0.0 >= 0 too: +epsilon, as Zennit's z >= 0
        return z.add_(epsilon)
    if high < 0:
        return z.sub_(epsilon)
    return z.add_(signed_epsilon(z, epsilon))


def _shifted(bias: Tensor | None, shift: float, weight: Tensor) -> Tensor | None:
    """bias + shift, a missing bias counting as 0 (None if there is nothing to add)."""
    if bias is None:
        return torch.full((weight.shape[0],), shift, dtype=weight.dtype, device=weight.device) if shift else None
    return bias + shift


def _positive(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(min=0)


def _negative(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(max=0)


def _nonnegative(x: Tensor) -> bool:
    """Inputs after a ReLU: the sign-split rules then lose their x- terms."""
    return bool(x.min() >= 0)


def _parameter(rule: "Rule", name: str, value) -> float:
    """A rule's numeric parameter: a finite number >= 0, or an error that names the rule and the parameter."""
    return finite_number(value, f"{type(rule).__name__}'s {name}", minimum=0)


class Rule:
    """Redistributes the relevance at a module's output to its input.

    ``propagate`` gets the module's input ``x`` (None unless ``needs_input``) and the relevance at its output;
    it returns the relevance at the input. Subclass this for modules that are not Linear or Conv.
    """

    needs_input = True

    def propagate(self, module: nn.Module, x: Tensor | None, relevance: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement propagate()")

    def check_module(self, module: nn.Module) -> str | None:
        """Why this rule cannot be used on ``module``, or None if it can."""
        return None

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class PassRule(Rule):
    """R_in = R_out: for element-wise layers (activations), whose own Jacobian would distort the relevance."""

    needs_input = False

    def propagate(self, module, x, relevance):
        return relevance


class NormRule(Rule):
    """R_in = x * J^T (R / stab(f(x))): proportional redistribution (Zennit's ``Norm``).

    Used for average pooling and for residual sums; on any other module it is the Epsilon rule of the module's
    whole map, computed by autograd.
    """

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = _parameter(self, "stabilizer", stabilizer)

    def propagate(self, module, x, relevance):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            y = self.forward(module, x)
            (vjp,) = torch.autograd.grad(y, x, relevance / stabilize(y.detach(), self.stabilizer))
        return x.detach() * vjp

    def forward(self, module, x: Tensor) -> Tensor:
        """The map whose Jacobian J redistributes: the module's own (``.forward``: no hooks in a backward pass)."""
        return module.forward(x)


def _affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, shape: tuple[int, ...]) -> Tensor:
    if weight is not None:
        y = y * weight.reshape(shape)
    return y if bias is None else y + bias.reshape(shape)


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = tuple(range(-len(normalized_shape), 0))
    centred = x - x.mean(dims, keepdim=True)
    scale = (centred.detach().pow(2).mean(dims, keepdim=True) + eps).rsqrt()
    return _affine(centred * scale, weight, bias, tuple(normalized_shape))


def _group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    grouped = x.reshape(x.shape[0], num_groups, -1)
    centred = grouped - grouped.mean(-1, keepdim=True)
    scale = (centred.detach().pow(2).mean(-1, keepdim=True) + eps).rsqrt()
    return _affine((centred * scale).reshape(x.shape), weight, bias, (-1,) + (1,) * (x.dim() - 2))


def _rms_norm(x, normalized_shape, weight=None, eps=None):
    dims = tuple(range(-len(normalized_shape), 0))
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    scale = (x.detach().pow(2).mean(dims, keepdim=True) + eps).rsqrt()
    return _affine(x * scale, weight, None, tuple(normalized_shape))


class _ConstantScale(TorchFunctionMode):
    """``F.layer_norm``, ``F.group_norm`` and ``F.rms_norm`` with their scale (1/std, 1/rms) detached."""

    _NORMS = {"layer_norm": _layer_norm, "group_norm": _group_norm, "rms_norm": _rms_norm}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        norm = self._NORMS.get(getattr(func, "__name__", ""))
        return (norm or func)(*args, **(kwargs or {}))


class LayerNormRule(NormRule):
    """LayerNorm, RMSNorm, GroupNorm (ConvNeXt's channel LayerNorm, timm's LayerNorm2d, GroupNorm(1, C)):
    the scale 1/std is a constant, the rest is one linear map, explained with the Epsilon rule.

    y = (x - mean(x)) * w / std + b per normalised group (RMSNorm: y = x * w / rms) is, with std held fixed,
    y = A x + b with A = diag(w / std) (I - 11^T / N); R_in = x * A^T (R / stab(y)). With b = 0 the relevance is
    conserved. It is the Gradient x Input form of LXT 2.1's ``layer_norm_forward`` (``lxt.efficient.patches``,
    std behind a stop-gradient; AttnLRP, Achtibat et al. 2024) and the LN rule of Ali et al. 2022 (ExplainableAI.jl's
    ``LayerNormRule``), with the affine part as an element-wise linear layer. Any module whose ``forward`` calls
    one of these functions (with permutes around it, as LayerNorm2d does) gets the rule.
    """

    def forward(self, module, x):
        with _ConstantScale():
            return module.forward(x)


class ProductRule(Rule):
    """How a product ``value * gate`` of two activations splits its relevance between the two factors.

    ``split`` returns (relevance of value, relevance of gate or None); shapes are the factors' (broadcasting).
    """

    needs_input = False

    def split(self, relevance: Tensor, value_shape: torch.Size, gate_shape: torch.Size | None
              ) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError(f"{type(self).__name__} does not implement split()")


class GateRule(ProductRule):
    """The gate as a constant: R_value = R, R_gate = 0 (CP-LRP's treatment of gates; Ali et al. 2022).

    y = value * g with g held fixed is an element-wise linear map without bias, whose Epsilon rule gives
    value * g * R / (value * g) = R: all relevance flows to the gated branch (squeeze-excitation
    ``x * sigmoid(s(x))``: torchvision's ``SqueezeExcitation``, timm's ``SqueezeExcite``), none into the gate.
    """

    def split(self, relevance, value_shape, gate_shape):
        return relevance.sum_to_size(value_shape), None


class UniformRule(Rule):
    """AttnLRP's uniform rule (Achtibat et al. 2024, Eq. 7; LXT 2.1's ``divide_gradient`` on ``torch.matmul``) for
    an op z = f(a_1, ..., a_n) linear in each of its n activation factors (a matmul of two activations, n = 2; an
    activation times a constant, F.linear, n = 1): each factor gets an equal share of its Epsilon-rule relevance,
    the other factors held fixed, R_{a_i} = a_i * J_i^T (R / stab(z)) / n. With n = 1 it is the Epsilon rule of the
    linear map (R_a = a * J^T (R / stab(z)), a bias absorbing its share), which is what LXT's Gradient x Input gives
    a weight used functionally (Zennit's rules attach to module calls only). With n = 2 and no bias the relevance
    is conserved: sum R_a + sum R_b = sum z * R / stab(z).
    """

    needs_input = True

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = _parameter(self, "epsilon", epsilon)

    def modify_denominator(self, z: Tensor) -> Tensor:
        return stabilize(z, self.epsilon)

    def split(self, factors: tuple[Tensor, ...], vjps: tuple[Tensor, ...], n: int) -> list[Tensor]:
        """R_{a_i} from the distinct factors a_i and the vector-Jacobian products J_i^T (R / stab(z)); ``n`` counts
        the activation arguments (a factor passed twice, ``einsum("ij,kj", a, a)``, is one factor of degree 2)."""
        return [vjp.mul_(factor).div_(n) if n > 1 else vjp.mul_(factor) for factor, vjp in zip(factors, vjps)]


class SoftmaxRule(Rule):
    """AttnLRP's softmax rule (Achtibat et al. 2024, Prop. 3.1): s = softmax(x) along ``dim``,
    R_in = x * (R - s * sum(R)), the sum along ``dim``. It is the Gradient x Input of the softmax taken on R / s,
    which is how LXT 2.1 explains a softmax (``lxt.efficient`` leaves the softmax to autograd). Not conservative:
    the rest is absorbed as by a bias.
    """

    def redistribute(self, x: Tensor, s: Tensor, relevance: Tensor, dim: int) -> Tensor:
        return (s * relevance.sum(dim, keepdim=True)).neg_().add_(relevance).mul_(x)


class ConstantRule(Rule):
    """CP-LRP's treatment of the attention weights (Ali et al. 2022; LXT 2.1's ``stop_gradient`` on query and key in
    ``cp_multi_head_attention_forward``): the op's output (the softmax of the attention scores) is a constant. No
    relevance reaches its input; a product with it is a linear map of the other factor (the values), explained
    with the Epsilon rule (``UniformRule`` with one factor)."""


@dataclass
class LayerOutput:
    """A layer's output z as a backward pass that needs only its positive part sees it.

    When a ReLU consumes z, the engine swaps in the ReLU's output (``rectified``): the next layer keeps that tensor
    anyway, so nothing is kept for z itself. relu(z) has z's positive part; where z <= 0 it cannot tell z < 0 from
    z == 0, so a rule that needs that recomputes z (``exact``). What the engine knows for sure saves checks:
    ``relevance_on_positive``, the relevance arriving here is 0 wherever ``tensor`` is (it comes straight from the
    next layer's rule, which multiplies by that layer's input, relu(z)); ``input_nonnegative``, this layer's input
    is itself a rectified output.
    """

    tensor: Tensor
    rectified: bool = False
    relevance_on_positive: bool = False
    input_nonnegative: bool = False

    def exact(self, layer: AffineLayer, x: Tensor) -> Tensor:
        return layer.forward(x, *layer.params) if self.rectified else self.tensor


class LinearRule(Rule):
    """Base of the rules for Linear and Conv layers: override the hooks, or ``relevance`` for full control.

    The default hooks give LRP-0 with Zennit's stabilizer; parameters are the merged (BatchNorm) ones.
    ``uses_output``: ``relevance`` gets the layer's forward output z as ``extra`` (kept from the forward pass);
    ``rectified_output_suffices``: it gets a ``LayerOutput`` instead, which may hold relu(z) (see there).
    ``relevance_vanishes_with_input``: the relevance it returns is 0 wherever the input is (R_in = x * ...).
    """

    stabilizer = 1e-6
    uses_output = False
    rectified_output_suffices = False
    relevance_vanishes_with_input = False

    def modify_input(self, x: Tensor) -> Tensor:
        return x

    def modify_parameters(self, param: Tensor, name: str) -> Tensor | None:
        """``name`` is "weight" or "bias"; return None to drop the parameter (a zero bias)."""
        return param

    def modify_denominator(self, z: Tensor) -> Tensor:
        return stabilize(z, self.stabilizer)

    def check_module(self, module):
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return f"{type(self).__name__} applies to Linear and Conv layers only"
        return None

    def modified_parameters(self, layer: AffineLayer) -> tuple[Tensor, Tensor | None]:
        """The modified (weight, bias) of ``layer``, computed once per parameter state."""

        def make(weight, bias):
            bias = None if bias is None else self.modify_parameters(bias, "bias")
            return self.modify_parameters(weight, "weight"), bias

        return layer.derived((id(self), "modified"), make)

    def relevance(self, layer: AffineLayer, x: Tensor, extra, relevance: Tensor) -> Tensor:
        """The generic four steps; ``extra`` is the output (see ``uses_output``) or None."""
        x_mod = self.modify_input(x)
        weight, bias = self.modified_parameters(layer)
        z = layer.forward(x_mod, weight, bias)
        s = relevance / self.modify_denominator(z)
        return x_mod * layer.transpose(s, weight, x)


class EpsilonRule(LinearRule):
    """R_i = x_i sum_j w_ji R_j / stab_eps(z_j), with z = W x + b the layer's own output (bias absorbs relevance)."""

    uses_output = True
    relevance_vanishes_with_input = True

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = _parameter(self, "epsilon", epsilon)

    def modify_denominator(self, z):
        return stabilize(z, self.epsilon)

    def relevance(self, layer, x, z, relevance):
        weight, _ = layer.params
        denominator = self.modify_denominator(z)
        # a temporary, as a rule's hook returns it, takes the share: one activation-sized allocation less
        share = torch.div(relevance, denominator, out=denominator) if _is_temporary(denominator, z) else \
            relevance / denominator
        return layer.transpose(share, weight, x).mul_(x)


class ZeroRule(EpsilonRule):
    """LRP-0: the Epsilon rule with epsilon = 0; where z_j is exactly 0 its relevance is dropped (not NaN)."""

    def __init__(self):
        super().__init__(epsilon=0.0)

    def modify_denominator(self, z):
        return torch.where(z == 0, torch.inf, z)

    def __repr__(self):
        return "ZeroRule()"


def _share(relevance: Tensor, z: Tensor, epsilon: float) -> Tensor:
    """relevance / stabilize(z, epsilon), computed in the storage of the temporary ``z``."""
    return torch.div(relevance, stabilize_(z, epsilon), out=z)


class GammaRule(LinearRule):
    """Zennit's generalised Gamma rule: positive contributions boosted by gamma, valid for mixed-sign inputs too.

    z_up = (W + g W+) x+ + (W + g W-) x- + b + g b+, z_down = (W + g W-) x+ + (W + g W+) x- + b + g b-;
    s_up = [z > 0] R / stab(z_up), s_down = [z < 0] R / stab(z_down);
    R_in = x+ * ((W + g W+)^T s_up + (W + g W-)^T s_down) + x- * ((W + g W-)^T s_up + (W + g W+)^T s_down).
    With x >= 0 and relevance on z > 0 only (after a ReLU) this is the classic x (W + g W+)^T (R / z_up), which
    needs only the positive part of z; otherwise z_up + z_down = (2 + g) z gives z_down without a convolution.
    """

    uses_output = True
    rectified_output_suffices = True
    relevance_vanishes_with_input = True

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6):
        self.gamma = _parameter(self, "gamma", gamma)
        self.stabilizer = _parameter(self, "stabilizer", stabilizer)

    def _boosted(self, layer, positive: bool, shift: float = 0.0) -> tuple[Tensor, Tensor | None]:
        """(W + gamma W+, b + gamma b+ + shift) if ``positive``, else (W + gamma W-, b + gamma b- + shift)."""
        part = (lambda t: t.clamp(min=0)) if positive else (lambda t: t.clamp(max=0))
        weight = layer.derived((id(self), positive), lambda w, b: w + self.gamma * part(w))

        def make_bias(w, b):
            return _shifted(None if b is None else b + self.gamma * part(b), shift, w)

        return weight, layer.derived((id(self), positive, shift), make_bias)

    def relevance(self, layer, x, output: LayerOutput, relevance):
        if not (output.input_nonnegative or _nonnegative(x)):
            return self._mixed_sign_input(layer, x, output.exact(layer, x), relevance)
        eps = self.stabilizer
        w_up, b_up = self._boosted(layer, True, shift=eps)
        z, r_up = None, relevance  # z: needed only where relevance sits on z <= 0 (not after a ReLU)
        if not output.relevance_on_positive:
            minus_outside = torch.sign(output.tensor).clamp_(min=0).mul_(relevance).sub_(relevance)  # -[z <= 0] R
            low, high = torch.aminmax(minus_outside)
            if low != 0 or high != 0:
                z = output.exact(layer, x)  # relu(z) cannot tell z < 0 from z == 0: recomputed
                if output.rectified:
                    r_up = _on_sign(z, relevance, positive=True)
                else:  # [z > 0] R, exactly: (R - R) + R = R and (0 - R) + R = 0
                    r_up = minus_outside.add_(relevance)
        z_up = layer.forward(x, w_up, b_up)  # z_up + eps: > eps where z > 0, as z_up >= z for x >= 0
        if z is None:
            return layer.transpose(torch.div(r_up, z_up.clamp_(min=eps), out=z_up), w_up, x).mul_(x)
        s_up = torch.div(r_up, z_up, out=r_up).nan_to_num_(0.0)  # 0 / 0 only where z <= 0, which has no r_up
        den_down = z_up.sub_(z, alpha=2 + self.gamma).clamp_(min=eps)  # eps - z_down, > eps where z < 0
        minus_s_down = torch.div(_on_sign(z, relevance, positive=False), den_down, out=den_down)
        grad = layer.transpose(s_up, w_up, x)
        grad -= layer.transpose(minus_s_down, self._boosted(layer, False)[0], x)
        return grad.mul_(x)

    def _mixed_sign_input(self, layer, x, z, relevance):
        """The formulas above through x+ W+ + x- W- = (x W + |x| |W|) / 2 and its transpose. With h = g/2 and
        a = h |W| |x| + h |b|: z_up = (1 + h) z + a, z_down = (1 + h) z - a, and where z > 0 only s_up is nonzero,
        where z < 0 only s_down, so s_up + s_down = R / D with D = (1 + h) z + sign(z) (a + eps) (0 where z = 0,
        as in Zennit) and s_up - s_down = sign(z) (s_up + s_down); R_in = (1 + h) x W^T (s_up + s_down)
        + h |x| |W|^T (s_up - s_down). Divided through by 1 + h (folded into the cached |W|, |b|): one convolution,
        two transposes and five output-sized passes."""
        magnitude, (scaled_abs_weight, scaled_abs_bias) = x.abs(), self._scaled_absolute(layer)
        sign = torch.sign(z)
        denominator = layer.forward(magnitude, scaled_abs_weight, scaled_abs_bias)
        denominator = torch.addcmul(z, sign, denominator, out=denominator)  # D / (1 + h): |.| > eps/(1+h) if z != 0
        share = torch.div(relevance, denominator, out=denominator).nan_to_num_(0.0, 0.0, 0.0)  # R / 0 where z = 0
        signed_share = sign.mul_(share)
        on_x = layer.transpose(share, layer.params[0], x).mul_(x)
        return on_x.addcmul_(layer.transpose(signed_share, scaled_abs_weight, x), magnitude)

    def _scaled_absolute(self, layer: AffineLayer) -> tuple[Tensor, Tensor]:
        """(c |W|, c |b| + eps / (1 + h)) with h = g/2 and c = h / (1 + h): the cached parameters of a / (1 + h)."""
        half = self.gamma / 2
        scale = half / (1 + half)

        def make(w, b):
            shift = torch.full((w.shape[0],), self.stabilizer / (1 + half), dtype=w.dtype, device=w.device)
            return w.abs().mul_(scale), shift if b is None else b.abs().mul_(scale).add_(shift)

        return layer.derived((id(self), "scaled absolute"), make)


def _on_sign(z: Tensor, relevance: Tensor, positive: bool) -> Tensor:
    """[z > 0] R (``positive``) or [z < 0] R, in float arithmetic only."""
    sign = torch.sign(z)
    return (sign.clamp_(min=0) if positive else sign.clamp_(max=0).neg_()).mul_(relevance)


def _positive_part(layer: AffineLayer) -> tuple[Tensor, Tensor | None]:
    """(W+, b+) of the merged parameters, cached on the layer (shared by all rules)."""
    return layer.derived("positive", lambda w, b: (w.clamp(min=0), _positive(b)))


def _negative_part(layer: AffineLayer) -> tuple[Tensor, Tensor | None]:
    """(W-, b-) of the merged parameters, cached on the layer (shared by all rules)."""
    return layer.derived("negative", lambda w, b: (w.clamp(max=0), _negative(b)))


class AlphaBetaRule(LinearRule):
    """R_in = alpha * (positive contributions) - beta * (negative contributions), alpha - beta = 1 (Zennit's).

    z+ = W+ x+ + W- x- + b+, z- = W- x+ + W+ x- + b-;
    R_in = alpha (x+ W+^T s+ + x- W-^T s+) - beta (x+ W-^T s- + x- W+^T s-), s+- = R / stab(z+-).
    """

    relevance_vanishes_with_input = True

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6):
        alpha, beta = _parameter(self, "alpha", alpha), _parameter(self, "beta", beta)
        if not math.isclose(alpha - beta, 1.0, rel_tol=0.0, abs_tol=1e-12):
            raise ValueError(f"AlphaBetaRule needs alpha - beta == 1 to conserve relevance, got alpha={alpha}, "
                             f"beta={beta}; e.g. AlphaBetaRule(alpha=2.0, beta=1.0) or (1.0, 0.0)")
        self.alpha = alpha
        self.beta = beta
        self.stabilizer = _parameter(self, "stabilizer", stabilizer)

    def _shifted_bias(self, layer, positive: bool) -> Tensor:
        """b+ + eps or b- - eps: for x >= 0, z+ >= 0 and z- <= 0, so this is the stabilizer, without a pass.
        (At z- == 0 Zennit adds +eps, but then every x_i w-_ji is 0 and the sign does not matter.)"""
        eps = self.stabilizer if positive else -self.stabilizer
        part = _positive if positive else _negative
        return layer.derived(("shifted bias", positive, eps), lambda w, b: _shifted(part(b), eps, w))

    def relevance(self, layer, x, extra, relevance):
        wp = _positive_part(layer)[0]
        if _nonnegative(x):
            z = layer.forward(x, wp, self._shifted_bias(layer, True))
            grad = layer.transpose(torch.div(relevance, z, out=z), wp, x)
            if self.alpha != 1:
                grad.mul_(self.alpha)
            if self.beta:
                wn = _negative_part(layer)[0]
                z = layer.forward(x, wn, self._shifted_bias(layer, False))
                grad.sub_(layer.transpose(torch.div(relevance, z, out=z), wn, x), alpha=self.beta)
            return grad.mul_(x)
        if layer.stackable:
            return self._mixed_sign_stacked(layer, x, relevance)
        return self._mixed_sign_grouped(layer, x, relevance)

    def _mixed_sign_grouped(self, layer, x, relevance):
        """z+ and z- for grouped (depthwise) convolutions, whose sign-split weights cannot be stacked (wider
        grouped calls are slower than these thin ones), the stabilizer in the biases (z+ >= 0 >= z-)."""
        wp, wn = _positive_part(layer)[0], _negative_part(layer)[0]
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        z_pos = layer.forward(xp, wp, self._shifted_bias(layer, True)).add_(layer.forward(xn, wn))
        if not self.beta:  # ZPlus: alpha = 1
            share = torch.div(relevance, z_pos, out=z_pos)
            return layer.transpose(share, wp, x).mul_(xp).addcmul_(layer.transpose(share, wn, x), xn)
        z_neg = layer.forward(xp, wn, self._shifted_bias(layer, False)).add_(layer.forward(xn, wp))
        return self._from_shares(layer, x, torch.div(relevance, z_pos, out=z_pos),
                                 torch.div(relevance, z_neg, out=z_neg))

    def _mixed_sign_stacked(self, layer, x, relevance):
        """z+ and z- with [x+, x-] stacked along the input features and [z+, z-] along the outputs: one call for
        both (a few wide calls beat many thin ones), the stabilizer in the biases (z+ >= 0 >= z-)."""
        dim = 1 if layer.is_conv else -1
        shape = list(x.shape)
        shape[dim] *= 2
        split = x.new_empty(shape)
        x_pos, x_neg = split.chunk(2, dim)
        torch.clamp(x, min=0, out=x_pos)
        torch.clamp(x, max=0, out=x_neg)
        forward_weight, bias = self._stacked_parameters(layer)
        z = layer.forward(split, forward_weight, bias)
        if not self.beta:  # ZPlus: alpha = 1, one transpose of [W+, W-]
            on_pos, on_neg = layer.transpose(torch.div(relevance, z, out=z), forward_weight, split).chunk(2, dim)
            return torch.mul(on_pos, x_pos).addcmul_(on_neg, x_neg)
        z_pos, z_neg = z.chunk(2, dim)  # the shares overwrite z: two output-sized tensors fewer alive at once
        share_pos, share_neg = torch.div(relevance, z_pos, out=z_pos), torch.div(relevance, z_neg, out=z_neg)
        return self._from_shares(layer, x, share_pos, share_neg)

    def _from_shares(self, layer, x, share_pos, share_neg):
        """R_in from s+ = R / z+ and s- = R / z-: x+ (a W+^T s+ - b W-^T s-) + x- (a W-^T s+ - b W+^T s-), which
        through W+- = (W +- |W|) / 2 is (x W^T (a s+ - b s-) + |x| |W|^T (a s+ + b s-)) / 2: two transposes
        instead of four (as Gamma's; the denominators z+ and z- stay exact, where the same identity would not)."""
        positive, negative = share_pos.mul_(self.alpha), share_neg.mul_(self.beta)
        difference = positive - negative
        on_x = layer.transpose(difference, layer.params[0], x).mul_(x)
        absolute_weight = layer.derived("absolute weight", lambda w, b: w.abs())
        on_magnitude = layer.transpose(positive.add_(negative), absolute_weight, x)
        return on_x.addcmul_(on_magnitude, x.abs()).mul_(0.5)

    def _stacked_parameters(self, layer) -> tuple[Tensor, Tensor]:
        """(forward weight, bias) of ``_mixed_sign_stacked``, cached: rows z+ (and z-), columns x+, x-:
        [[W+, W-], [W-, W+]], [b+ + eps, b- - eps]."""

        def make(w, b):
            wp, wn = w.clamp(min=0), w.clamp(max=0)
            rows = [(torch.cat([wp, wn], 1), self._shifted_bias(layer, True))]
            if self.beta:
                rows.append((torch.cat([wn, wp], 1), self._shifted_bias(layer, False)))
            return torch.cat([row for row, _ in rows]), torch.cat([bias for _, bias in rows])

        return layer.derived((id(self), "stacked"), make)


class ZPlusRule(AlphaBetaRule):
    """Only positive contributions: AlphaBetaRule(alpha=1, beta=0) (Zennit's ZPlus, negative inputs allowed)."""

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__(alpha=1.0, beta=0.0, stabilizer=stabilizer)

    def __repr__(self):
        return f"ZPlusRule(stabilizer={self.stabilizer!r})"


def _bound_tensor(bound, name: str) -> Tensor:
    """A ZBox bound as a float64 tensor, refused unless it is a number or a tensor of finite values."""
    try:
        if isinstance(bound, (bool, str)):
            raise TypeError
        tensor = torch.as_tensor(bound, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"ZBoxRule's {name} must be a number or a tensor, got {bound!r} "
                        f"({type(bound).__name__})") from None
    if not torch.isfinite(tensor).all():
        raise ValueError(f"ZBoxRule's {name} must be finite, got {bound!r}: give the lowest (highest) value the "
                         "input can take, e.g. low=-3.0, high=3.0 for standardised images")
    return tensor


class ZBoxRule(LinearRule):
    """For the first layer of inputs bounded in [low, high] (Montavon et al.'s z^B).

    z_B = W x - W+ low - W- high (the bias cancels); R_in = x W^T s - low W+^T s - high W-^T s, s = R / stab(z_B).
    ``low``/``high`` are numbers or tensors broadcastable to the input (e.g. per channel, shape (1, C, 1, 1)).
    """

    def __init__(self, low, high, stabilizer: float = 1e-6):
        low_t, high_t = _bound_tensor(low, "low"), _bound_tensor(high, "high")
        try:
            bad = bool((low_t >= high_t).any())
        except RuntimeError as error:
            raise ValueError(f"ZBoxRule: low and high must broadcast against each other: {error}") from None
        if bad:
            raise ValueError(f"ZBoxRule needs low < high everywhere, got low={low!r}, high={high!r}")
        self.low = low
        self.high = high
        self.stabilizer = _parameter(self, "stabilizer", stabilizer)

    def check_module(self, module):
        """The bounds must line up with the layer's input: one value, or one per channel (or feature)."""
        reason = super().check_module(module)
        if reason:
            return reason
        dims = 1 if isinstance(module, nn.Linear) else module.weight.dim() - 1  # input dims after the batch
        features = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        for name, bound in (("low", self.low), ("high", self.high)):
            shape = tuple(torch.as_tensor(bound).shape)
            if math.prod(shape) == 1:
                continue
            channel_axis = len(shape) - dims  # where the channel (feature) axis of the input lands
            if len(shape) > dims + 1 or channel_axis < 0 or shape[channel_axis] not in (1, features):
                layout = "(1, C" + ", 1" * (dims - 1) + ")"
                return (f"ZBoxRule's {name} has shape {shape}, which does not line up with this layer's input of "
                        f"{features} {'features' if dims == 1 else 'channels'}: give a number or a tensor of shape "
                        f"{layout.replace('C', str(features))}, e.g. torch.tensor([...]).view{layout.replace('C', '-1')}")
        return None

    def _bound(self, bound, x: Tensor) -> Tensor:
        bound = torch.as_tensor(bound).to(x)
        if bound.dim() == x.dim() and bound.shape[0] > x.shape[0]:
            bound = bound[: x.shape[0]]
        return bound.expand_as(x)

    @staticmethod
    def _per_feature(bound, x: Tensor) -> Tensor | None:
        """The bound as one value per input channel/feature, or None if it varies over samples or positions."""
        bound = torch.as_tensor(bound).to(x)
        if bound.dim() > x.dim():
            return None
        bound = bound.reshape((1,) * (x.dim() - bound.dim()) + tuple(bound.shape))
        if any(size != 1 for dim, size in enumerate(bound.shape) if dim != 1):
            return None
        return bound.reshape(-1).expand(x.shape[1])

    def relevance(self, layer, x, extra, relevance):
        low, high = self._per_feature(self.low, x), self._per_feature(self.high, x)
        if low is None or high is None or not layer.stackable:
            return self._any_bounds(layer, x, relevance)
        # Bounds the same for every sample and position (scalars, per channel): W+ low + W- high is a constant
        # of the input's shape, and low W+^T s + high W-^T s = (low W+ + high W-)^T s, one weight.
        key = (id(self), x.dtype, x.device)

        def bounds_weight(w, b):
            per_input = (1, -1) + (1,) * (w.dim() - 2)
            return -(w.clamp(min=0) * low.reshape(per_input) + w.clamp(max=0) * high.reshape(per_input))

        def offset(w, b):  # -(W+ low + W- high) for one sample
            one = (1,) + tuple(x.shape[1:])
            per_input = (1, -1) + (1,) * (x.dim() - 2)
            return layer.forward_sum([low.reshape(per_input).expand(one), high.reshape(per_input).expand(one)],
                                     [-w.clamp(min=0), -w.clamp(max=0)])

        weight = layer.params[0]
        lh_weight = layer.derived(key + ("bounds weight",), bounds_weight)
        z = layer.forward(x, weight).add_(layer.derived(key + ("offset", x.shape[1:]), offset))  # the bias cancels
        on_x, on_bounds = layer.transpose_each(_share(relevance, z, self.stabilizer), [weight, lh_weight], x)
        return on_x.mul_(x).add_(on_bounds)

    def _any_bounds(self, layer, x, relevance):
        weights = layer.derived("zbox", lambda w, b: [w, -w.clamp(min=0), -w.clamp(max=0)])
        low, high = self._bound(self.low, x), self._bound(self.high, x)
        # W x + b - (W+ low + b+) - (W- high + b-): the biases cancel exactly (b = b+ + b-)
        s = _share(relevance, layer.forward_sum([x, low, high], weights), self.stabilizer)
        on_x, on_low, on_high = layer.transpose_each(s, weights, x)
        return on_x.mul_(x).add_(on_low.mul_(low)).add_(on_high.mul_(high))


class _OnesInputRule(LinearRule):
    """A rule whose modified input is all ones (WSquare, Flat): z depends on the input's shape only, so it is
    computed once per shape (for one sample, broadcast over the batch), and R_in = W~^T s needs no product."""

    def modify_input(self, x):
        return torch.ones_like(x)

    def relevance(self, layer, x, extra, relevance):
        weight, bias = self.modified_parameters(layer)

        def denominator(w, b):
            ones = torch.ones((1,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
            return self.modify_denominator(layer.forward(ones, weight, bias))

        key = (id(self), "denominator", tuple(x.shape[1:]), x.dtype, x.device)
        return layer.transpose(relevance / layer.derived(key, denominator), weight, x)


class WSquareRule(_OnesInputRule):
    """R_i = sum_j w_ji^2 R_j / stab(sum_k w_jk^2 + b_j^2): input-independent (Zennit squares the bias too)."""

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = _parameter(self, "stabilizer", stabilizer)

    def modify_parameters(self, param, name):
        return param ** 2


class FlatRule(_OnesInputRule):
    """R_i = sum_j [i feeds j] R_j / n_j: spread uniformly over each output's receptive field (bias dropped)."""

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = _parameter(self, "stabilizer", stabilizer)

    def modify_parameters(self, param, name):
        return torch.ones_like(param) if name == "weight" else None


__all__ = [
    "AlphaBetaRule", "ConstantRule", "EpsilonRule", "FlatRule", "GammaRule", "GateRule", "LayerNormRule", "LayerOutput",
    "LinearRule", "NormRule", "PassRule", "ProductRule", "Rule", "SoftmaxRule", "UniformRule", "WSquareRule",
    "ZBoxRule", "ZPlusRule", "ZeroRule", "signed_epsilon", "stabilize", "stabilize_",
]
