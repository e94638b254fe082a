"""PatternNet and PatternAttribution (Kindermans et al., ICLR 2018): the gradient's backward pass with each layer's
weights replaced by its fitted pattern (PatternNet: the signal, back-projected) or by weight * pattern
(PatternAttribution: a root point x0 = x - a w^T x in deep Taylor terms, so r = w * a * y for a linear model).

Both start from the target's output value y (the paper's r_out = y, iNNvestigate's ``_head_mapping``), not from 1,
and do not multiply by the input at the end. ReLU gates as in the forward pass (its gradient), MaxPool routes to
its winners, residual additions and reshapes pass the plain gradient: only the Linear/Conv layers change. Through a
layer, the two-component pattern is used per output unit and sample: a_+ where its output was positive, a_- where
negative (after a ReLU only a_+ receives anything). Biases play no part.

Mechanism: as in ``xai.lrp.engine``, a forward hook replaces each layer's output by the same values coming out of
an autograd Function whose backward applies the pattern's transpose (``AffineLayer.transpose``); the model runs with
BatchNorm folded in (as the patterns were fitted) and its hooks are removed in ``finally``. The LRP engine itself is
not reused: it splits residual sums in proportion and passes relevance through ReLUs, where PatternNet needs the
gradient.
"""
from itertools import chain

import torch
from torch import Tensor, nn

from xai.analyzer import Analyzer
from xai.lrp.canonize import AffineLayer
from xai.pattern.patterns import LayerPattern, Patterns, folded_pattern_layers
from xai.targets import Target, one_hot_at, resolve_target
from xai.validation import run_model


class _PatternBackward(torch.autograd.Function):
    """Forward: the layer's output (passed in a list, so that the result is no view of an input and a following
    in-place ReLU may modify it). Backward: a_+^T (g where y > 0) + a_-^T (g where y < 0)."""

    @staticmethod
    def forward(ctx, x, boxed_output: list, geometry: AffineLayer, weights: LayerPattern):
        output = boxed_output.pop()
        ctx.save_for_backward(torch.sign(output))
        ctx.geometry, ctx.weights, ctx.input = geometry, weights, x.new_empty(()).expand(x.shape)  # shape only
        return output

    @staticmethod
    def backward(ctx, g):
        (sign,) = ctx.saved_tensors
        positive = g * sign.clamp(min=0)
        result = ctx.geometry.transpose(positive, ctx.weights.positive, ctx.input)
        negative = g * sign.clamp(max=0).neg_()
        if negative.any():
            result = result + ctx.geometry.transpose(negative, ctx.weights.negative, ctx.input)
        return result, None, None, None


class PatternNet(Analyzer):
    """The signal of the target's output in input space: the backward pass with each weight replaced by its
    pattern. ``patterns`` from ``xai.fit_patterns(model, batches)`` or ``xai.Patterns.load(path)``."""

    def __init__(self, model: nn.Module, patterns: Patterns):
        super().__init__(model)
        if not isinstance(patterns, Patterns):
            raise TypeError(f"patterns must be an xai.Patterns (from xai.fit_patterns(model, batches) or "
                            f"xai.Patterns.load(path)), got {type(patterns).__name__}")
        patterns.check(model)
        self.patterns = patterns
        self._prepared: tuple | None = None  # (key, folded model, {path: (module, geometry, backward weights)})

    def _backward_weights(self, module: nn.Module, pattern: LayerPattern) -> LayerPattern:
        """The weights that replace the layer's in the backward pass."""
        return LayerPattern(*(p.to(module.weight) for p in pattern))

    def _check_model(self) -> None:
        self.patterns.check(self.model)

    def _prepare(self) -> tuple[nn.Module, dict]:
        """The BatchNorm-folded model (an fx trace: 70-330 ms) and each layer's backward weights, made once and
        again only when a parameter or buffer of the model changes (another tensor, or written in place)."""
        key = tuple((t.data_ptr(), t._version) for t in chain(self.model.parameters(), self.model.buffers()))
        if self._prepared is None or self._prepared[0] != key:
            folded, layers = folded_pattern_layers(self.model)
            weights = {path: (module, geometry, self._backward_weights(module, self.patterns[path]))
                       for path, (module, geometry) in layers.items()}
            self._prepared = key, folded, weights
        return self._prepared[1], self._prepared[2]

    def _attribute(self, x: Tensor, target: Target) -> tuple[Tensor, Tensor, Tensor]:
        folded, layers = self._prepare()

        def hook_for(geometry: AffineLayer, weights: LayerPattern):
            def hook(module, args, output):
                return _PatternBackward.apply(args[0], [output.detach()], geometry, weights)
            return hook

        handles = []
        try:
            for module, geometry, weights in layers.values():
                handles.append(module.register_forward_hook(hook_for(geometry, weights)))
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                output = run_model(folded, x)
        finally:
            for handle in handles:
                handle.remove()
        resolved = resolve_target(target, output)
        seed = one_hot_at(output, resolved) * output.detach()  # r_out = y at the target
        (signal,) = torch.autograd.grad(output, x, grad_outputs=seed)
        return signal, output, resolved


class PatternAttribution(PatternNet):
    """The contribution of each input value to the target's output: the backward pass with each weight w replaced
    by w * a (elementwise), a the layer's pattern (a_+ / a_- per output sign)."""

    def _backward_weights(self, module, pattern):
        weight = module.weight.detach()
        return LayerPattern(*(weight * p.to(weight) for p in pattern))
