"""DeepLIFT with the Rescale rule (Shrikumar et al. 2017) and DeepLIFTShap, equal to Captum's ``DeepLift`` and
``DeepLiftShap`` (``multiply_by_inputs=True``).

DeepLIFT explains the difference f(x) - f(x0) to a baseline x0: attribution = (x - x0) * m, where the multiplier m
is the chain rule with each non-linearity's local derivative replaced by a difference quotient against the
baseline's forward pass; the attributions of a sample then sum to f(x) - f(x0) ("summation-to-delta").

- Element-wise activations (ReLU, LeakyReLU, ELU, Sigmoid, Tanh, Softplus, ..., see ``ELEMENTWISE_TYPES``):
  m = (f(x) - f(x0)) / (x - x0), and the plain gradient where |x - x0| < 1e-10 (Captum's ``nonlinear``).
  Captum rescales only ReLU, ELU, LeakyReLU, Sigmoid, Tanh and Softplus and passes the plain gradient through
  every other activation; here GELU, SiLU, Hardtanh, ... are rescaled too (on models whose activations are among
  Captum's six, the two agree).
- MaxPool (Captum's ``maxpool``): the output difference is split into max(y, y0) - y0, sent to the inputs that
  are the maxima for x, and y - max(y, y0), sent to those for x0; each input's share divided by its own
  x - x0, and the plain gradient where |x - x0| < 1e-10. As in Captum the shares are placed with
  ``max_unpool``, which keeps only one of the shares of an input picked by several overlapping windows
  (ResNet's 3x3 / stride 2 stem), so there summation-to-delta fails; ``sum_overlaps=True`` adds them up
  instead, which restores it (and differs from Captum on such models).
- Linear layers (Conv, Linear, BatchNorm in eval mode, AvgPool, additions, reshapes): their gradient.

How: per chunk of samples, a forward pass of the distinct baselines they use, without gradients (a shared baseline,
such as zeros, is one image), records the input and output of every activation and MaxPool call; the forward pass
of the samples then wraps each such call's output in an autograd function whose backward applies the multiplier
against the recorded baseline call, and one backward pass seeded at the target logit gives m. The cost is a
gradient's plus a forward pass of the baselines; for a shared baseline (or DeepLIFTShap's set) the analyzer keeps
that pass's record for its next chunk or call while the baselines and the model's parameters and buffers (their
storage and in-place version counters) are the same: explaining batch after batch against one baseline costs a
gradient each; one baseline per sample keeps nothing. Weights changed through
``.data`` bypass the version counters: make a new analyzer then. A module called several times (torchvision's
BasicBlock uses one ReLU twice) is handled per call.

Captum 0.9's DeepLift has three bugs that this avoids (the equality tests give Captum an equivalent model and
one sample per call, which sidesteps them): (1) it fails on a module used more than once; (2) when two hooked
modules follow each other directly (ReLU then MaxPool, as in the bundled CNN and ResNet's stem), the first
one rescales the gradient of its output from before the second one's rule (Captum issue 1104); (3) its
maxpool falls back to the gradient of the first sample of the batch for every sample (issue 1276). Captum
also seeds the baseline half of its batch; that only enters through (3), and here the baseline is never
differentiated.

Not handled: non-linearities applied as functions in a ``forward`` (``F.relu``, ``torch.sigmoid``,
``x.relu()``) cannot be seen by module hooks and are silently treated by their gradient, as in Captum: use
``nn`` modules for them. Modules that are neither linear nor element-wise (softmax, normalisations by the
sample's own statistics, attention, recurrent layers, adaptive max pooling) raise ``UnsupportedModelError``.
"""
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from xai.analyzer import Analyzer
from xai.errors import UnsupportedModelError
from xai.gradient.integrated_gradients import Baseline, check_baseline, resolve_baseline
from xai.softmax import SOFTMAX_TYPES
from xai.targets import Target, one_hot_at, resolve_target
from xai.validation import check_batch_size, run_model

#: |x - x0| below this takes the plain gradient instead of the difference quotient (Captum's ``eps``).
EPSILON = 1e-10

ELEMENTWISE_TYPES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Softplus, nn.Softsign, nn.LogSigmoid,
    nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Threshold,
)
MAXPOOL_UNPOOL = {nn.MaxPool1d: (F.max_pool1d, F.max_unpool1d), nn.MaxPool2d: (F.max_pool2d, F.max_unpool2d),
                  nn.MaxPool3d: (F.max_pool3d, F.max_unpool3d)}

UNSUPPORTED = (
    (SOFTMAX_TYPES + (nn.Softmax2d,), "softmax: explanations are taken on logits (xai.strip_softmax(model) removes "
                                      "one at the output)"),
    ((nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm),
     "normalisation by the sample's own statistics is not linear and has no DeepLIFT rule here"),
    ((nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.FractionalMaxPool2d,
      nn.FractionalMaxPool3d, nn.LPPool1d, nn.LPPool2d), "pooling without a DeepLIFT rule here (only MaxPool1d/2d/3d)"),
    ((nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.GLU),
     "products of activations (attention, gating) have no Rescale rule"),
    ((nn.RNNBase, nn.RNNCellBase), "recurrent layer: its gates have no Rescale rule here"),
)
ADVICE = ("What to do: explain the model with a gradient-based method (xai.IntegratedGradients is the closest "
          "to DeepLIFT), or replace the layer.")


def check_deeplift_model(model: nn.Module) -> None:
    """Raise ``UnsupportedModelError`` naming every module DeepLIFT has no rule for (path and type)."""
    problems = []
    for path, module in model.named_modules():
        reason = next((why for types, why in UNSUPPORTED if isinstance(module, types)), None)
        if reason is None and isinstance(module, tuple(MAXPOOL_UNPOOL)) and module.return_indices:
            reason = "MaxPool with return_indices=True returns a tuple; DeepLIFT needs its output tensor"
        if reason is not None:
            problems.append(f"{path or '<model>'} ({type(module).__name__}): {reason}")
    if problems:
        raise UnsupportedModelError(problems, ADVICE)


class _Rescale(torch.autograd.Function):
    """Forward: ``y`` unchanged. Backward: grad * multiplier to the module's input ``x``, and grad * passthrough
    into ``y``'s own graph (the module's true local gradient, used where |x - x0| < EPSILON; None: nowhere).

    ``y`` also comes in a list, detached: returned from a tensor argument it would be copied (or become a view, which
    autograd does not let a following in-place op modify); the detached one is the same memory.
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, boxed_y: list, multiplier: Tensor, passthrough: Tensor | None) -> Tensor:
        ctx.save_for_backward(multiplier, passthrough)
        return boxed_y.pop()

    @staticmethod
    def backward(ctx, grad: Tensor):
        multiplier, passthrough = ctx.saved_tensors
        return grad * multiplier, None if passthrough is None else grad * passthrough, None, None, None


def scatter_sum(values: Tensor, indices: Tensor, like: Tensor) -> Tensor:
    """Pooled ``values`` added back at their max ``indices`` (flat per channel) into a tensor shaped like ``like``."""
    return torch.zeros_like(like).flatten(2).scatter_add_(2, indices.flatten(2), values.flatten(2)).view_as(like)


class _MaxPoolRescale(torch.autograd.Function):
    """Forward: ``y`` unchanged. Backward: Captum's maxpool rule, against the baseline's ``x0``, ``y0``, ``indices0``."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, indices: Tensor, x0: Tensor, y0: Tensor, indices0: Tensor, unpool,
                pool: nn.Module) -> Tensor:
        ctx.save_for_backward(x, y, indices, x0, y0, indices0)
        ctx.unpool, ctx.pool = unpool, pool  # unpool None: sum the shares of overlapping windows
        return y.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, y, indices, x0, y0, indices0 = ctx.saved_tensors
        delta_in = x - x0
        y_max = torch.maximum(y, y0)
        indices0 = indices0.expand_as(indices)  # a shared baseline's record is a batch of one

        def unpool(values: Tensor, where: Tensor) -> Tensor:
            if ctx.unpool is None:
                return scatter_sum(values, where, delta_in)
            pool = ctx.pool
            return ctx.unpool(values, where.contiguous(), pool.kernel_size, pool.stride, pool.padding,
                              list(x.shape[2:]))

        rescaled = (unpool(grad * (y_max - y0), indices) + unpool(grad * (y - y_max), indices0)).div_(delta_in)
        near = nearly_equal(delta_in)  # delta_in is only a shape below
        if near is not None:  # MaxPool's own backward there
            rescaled = torch.where(near, scatter_sum(grad, indices, delta_in), rescaled)
        return rescaled, None, None, None, None, None, None, None


def nearly_equal(delta: Tensor) -> Tensor | None:
    """Where |delta| < EPSILON (the plain gradient's places), or None if nowhere: one reduction in the common case,
    no boolean tensor (bool masks cost several float passes on the CPU). Leaves |delta| in ``delta``."""
    distance = delta.abs_()
    if distance.numel() == 0 or distance.amin() >= EPSILON:
        return None
    return distance < EPSILON


def model_state(model: nn.Module) -> tuple:
    """What a recorded forward pass of the model depends on: each parameter's and buffer's storage and in-place
    version (an optimiser step or ``load_state_dict`` changes it) and each module's identity."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return tuple((t.data_ptr(), t._version) for t in tensors), tuple(map(id, model.modules()))


class BaselinePass:
    """The hooked calls of the last baselines' gradient-free forward pass, reused by the next chunk or call while the
    baselines and the model are the same: an analyzer explaining batch after batch against one baseline runs it once.
    Holds the baselines' activations (for a shared baseline, one image's) until the analyzer is dropped."""

    def __init__(self):
        self.key, self.baselines, self.calls = None, None, None

    def lookup(self, model: nn.Module, baselines: Tensor) -> dict | None:
        key = (model_state(model), baselines.shape, baselines.dtype, baselines.device)
        if key == self.key and torch.equal(baselines, self.baselines):
            return self.calls
        self.key, self.baselines, self.calls = key, baselines.clone(), None
        return None

    def store(self, calls: dict) -> None:
        self.calls = calls


class _RescaleHooks:
    """Forward (pre-)hooks on every activation and MaxPool of a model, in two passes per chunk of samples.

    ``record(baselines)``: a forward pass of the distinct baselines without gradients, keeping each hooked call's
    input and output (a module called several times, as torchvision's BasicBlock's ReLU, per call), or the record
    of the same pass kept in ``BaselinePass``. ``rescale(which)``: in the forward pass of the samples, each hooked
    call's output gets the Rescale backward against the recorded call of baseline ``which[i]`` for sample i (a
    shared baseline's record, a batch of one, broadcasts). The baselines are never differentiated.

    While hooked, in-place activations run out of place (their input stays intact for the rule, without a copy)
    and MaxPools return their indices (no second pooling to find them); ``remove`` restores both.
    """

    def __init__(self, model: nn.Module, sum_overlaps: bool):
        self.sum_overlaps = sum_overlaps
        self.handles, self.restore = [], []
        self.inputs: dict[int, Tensor] = {}
        self.recorded: dict[int, list[tuple[Tensor, ...]]] = {}
        self.used: dict[int, int] = {}  # recorded calls of each module used so far in this pass of the samples
        self.recording = True
        self.which: Tensor | None = None  # None: one shared baseline, whose record broadcasts
        for module in model.modules():
            if isinstance(module, ELEMENTWISE_TYPES):
                self._set(module, "inplace", False)
                self.handles.append(module.register_forward_pre_hook(self._keep_input))
                self.handles.append(module.register_forward_hook(self._elementwise))
            elif type(module) in MAXPOOL_UNPOOL:
                self._set(module, "return_indices", True)
                self.handles.append(module.register_forward_hook(self._maxpool))

    def _set(self, module: nn.Module, attribute: str, value: bool) -> None:
        if getattr(module, attribute, value) != value:
            self.restore.append((module, attribute, getattr(module, attribute)))
            setattr(module, attribute, value)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for module, attribute, value in self.restore:
            setattr(module, attribute, value)

    def record(self, model: nn.Module, baselines: Tensor, kept: BaselinePass) -> None:
        self.recorded = kept.lookup(model, baselines)
        if self.recorded is None:
            self.recorded, self.recording = {}, True
            with torch.no_grad():
                run_model(model, baselines)
            kept.store(self.recorded)

    def rescale(self, which: Tensor | None) -> None:
        """``which``: each sample's baseline in the record, None for one shared baseline."""
        self.used, self.recording, self.which = {}, False, which

    def check_all_used(self) -> None:
        if any(self.used.get(key, 0) != len(calls) for key, calls in self.recorded.items()):
            raise RuntimeError("the model called its activations differently for the baselines than for the "
                               "samples (control flow that depends on the input): DeepLIFT needs one graph for both")

    def _keep_input(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        self.inputs[id(module)] = inputs[0]

    def _baseline_call(self, module: nn.Module) -> tuple[Tensor, ...]:
        calls = self.recorded.get(id(module), [])
        index = self.used.get(id(module), 0)
        if index == len(calls):
            raise RuntimeError(f"{type(module).__name__} ran for the samples but not for the baselines: DeepLIFT "
                               "needs the same graph for both")
        self.used[id(module)] = index + 1
        if self.which is None:
            return calls[index]
        return tuple(t.index_select(0, self.which) for t in calls[index])

    def _elementwise(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        x = self.inputs.pop(id(module))
        if self.recording:
            self.recorded.setdefault(id(module), []).append((x, output.clone()))
            return None
        x0, y0 = self._baseline_call(module)
        with torch.no_grad():  # (y - y0) / (x - x0), 0 where |x - x0| < EPSILON: few passes, in place
            delta_in = x - x0
            multiplier = torch.sub(output, y0).div_(delta_in)
            near = nearly_equal(delta_in)
            passthrough = None
            if near is not None:
                multiplier.masked_fill_(near, 0.0)
                passthrough = near.to(multiplier.dtype)
        return _Rescale.apply(x, output, [output.detach()], multiplier, passthrough)

    def _maxpool(self, module: nn.Module, inputs: tuple[Tensor, ...], output: tuple[Tensor, Tensor]) -> Tensor:
        y, indices = output
        x = inputs[0]
        if self.recording:
            self.recorded.setdefault(id(module), []).append((x, y.clone(), indices))
            return y
        x0, y0, indices0 = self._baseline_call(module)
        _, unpool = MAXPOOL_UNPOOL[type(module)]
        return _MaxPoolRescale.apply(x, y, indices, x0, y0, indices0, None if self.sum_overlaps else unpool, module)


def target_rows(target: Target, n: int):
    """The part of the user's target for samples start..stop-1 (checked against the batch size n up front)."""
    if isinstance(target, Tensor) and target.dim() == 1 and target.shape[0] != n:
        raise ValueError(f"target has shape {tuple(target.shape)} but the batch has {n} samples: give one class "
                         f"per sample (shape ({n},)), a single int, or None for the top class")

    def rows(start: int, stop: int) -> Target:
        return target[start:stop] if isinstance(target, Tensor) and target.dim() == 1 else target

    return rows


def deeplift_multipliers(
    model: nn.Module, x: Tensor, baselines: Tensor, which: Tensor, target: Target, batch_size: int,
    sum_overlaps: bool = False, desc: str = "DeepLIFT", kept: BaselinePass | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The DeepLIFT multipliers of the target logit for each pair (x[i], baselines[which[i]]), ``batch_size``
    samples per forward/backward (after a gradient-free forward of the distinct baselines they use, or its record
    in ``kept``); returns (multipliers, output on x, resolved target)."""
    n = x.shape[0]
    rows = target_rows(target, n)
    kept = BaselinePass() if kept is None else kept
    multipliers, outputs, resolved = [], [], []
    hooks = _RescaleHooks(model, sum_overlaps)
    try:
        starts = range(0, n, batch_size)
        for start in tqdm(starts, desc=desc, leave=False, disable=None if len(starts) > 1 else True):
            stop = min(start + batch_size, n)
            used, local = torch.unique(which[start:stop], return_inverse=True)
            hooks.record(model, baselines.index_select(0, used), kept)
            hooks.rescale(None if len(used) == 1 else local)
            samples = x[start:stop].detach().requires_grad_(True)
            with torch.enable_grad():
                output = run_model(model, samples)
                chunk_target = resolve_target(rows(start, stop), output)
                (grad,) = torch.autograd.grad(output, samples, grad_outputs=one_hot_at(output, chunk_target))
            hooks.check_all_used()
            multipliers.append(grad)
            outputs.append(output.detach())
            resolved.append(chunk_target)
    finally:
        hooks.remove()
    return torch.cat(multipliers), torch.cat(outputs), torch.cat(resolved)


def distinct_baselines(baseline: Baseline, x: Tensor) -> tuple[Tensor, Tensor]:
    """(baselines, which): one baseline when every sample has the same one (None = zeros, a number, an image that
    broadcasts over the batch), else one per sample; sample i's is ``baselines[which[i]]``."""
    n = x.shape[0]
    resolved = resolve_baseline(baseline, x)  # checks the shape
    shared = not isinstance(baseline, Tensor) or baseline.dim() < x.dim() or baseline.shape[0] == 1
    if shared:
        return resolved[:1].contiguous(), torch.zeros(n, dtype=torch.long, device=x.device)
    return resolved, torch.arange(n, device=x.device)


class _RescaleAnalyzer(Analyzer):
    """What DeepLIFT and DeepLIFTShap share: the chunk size, the MaxPool choice, the kept baseline pass and the
    model check."""

    def __init__(self, model: nn.Module, batch_size: int, sum_overlaps: bool):
        super().__init__(model)
        self.batch_size = check_batch_size(batch_size)
        self.sum_overlaps = bool(sum_overlaps)
        self.baseline_pass = BaselinePass()

    def _check_model(self) -> None:
        check_deeplift_model(self.model)


class DeepLIFT(_RescaleAnalyzer):
    """(x - baseline) times the DeepLIFT Rescale multipliers (see the module docstring); equals Captum's DeepLift.

    ``baseline``: None (zeros), a number, or a tensor broadcastable to the input. At most ``batch_size``
    samples go through the model at once (and before them, their baselines: one image when they share it). ``sum_overlaps``: add up
    the MaxPool shares of overlapping windows (exact summation-to-delta) instead of keeping one as Captum does.
    """

    def __init__(self, model: nn.Module, baseline: Baseline = None, batch_size: int = 32, sum_overlaps: bool = False):
        super().__init__(model, batch_size, sum_overlaps)
        check_baseline(baseline)
        self.baseline = baseline

    def _attribute(self, x, target):
        baselines, which = distinct_baselines(self.baseline, x)
        kept = self.baseline_pass if len(baselines) == 1 else None  # one baseline per sample: nothing to reuse
        multipliers, output, resolved = deeplift_multipliers(
            self.model, x, baselines, which, target, self.batch_size, self.sum_overlaps, kept=kept)
        return (x - baselines.index_select(0, which)) * multipliers, output, resolved


class DeepLIFTShap(_RescaleAnalyzer):
    """The mean of DeepLIFT over a set of baselines (Lundberg & Lee 2017); equals Captum's DeepLiftShap.

    ``baselines``: a tensor (B, *sample_shape) with B >= 1, e.g. a sample of training images. The N x B
    (input, baseline) pairs go through the model ``batch_size`` pairs at a time, after the (at most B) baselines
    those pairs use; ``sum_overlaps`` as in DeepLIFT.
    """

    def __init__(self, model: nn.Module, baselines: Tensor, batch_size: int = 32, sum_overlaps: bool = False):
        super().__init__(model, batch_size, sum_overlaps)
        self.baselines = check_baseline_set(baselines)

    def _attribute(self, x, target):
        baselines = checked_against_input(self.baselines, x)
        n, b = x.shape[0], baselines.shape[0]
        inputs = x.repeat_interleave(b, dim=0)  # pair (i, j) at row i * b + j, as Captum orders them
        which = torch.arange(b, device=x.device).repeat(n)
        if isinstance(target, Tensor) and target.dim() == 1:
            target_rows(target, n)
            target = target.repeat_interleave(b)
        multipliers, output, resolved = deeplift_multipliers(
            self.model, inputs, baselines, which, target, self.batch_size, self.sum_overlaps, desc="DeepLIFTShap",
            kept=self.baseline_pass)
        references = baselines.index_select(0, which)
        attribution = ((inputs - references) * multipliers).view(n, b, *x.shape[1:]).mean(dim=1)
        return attribution, output[::b], resolved[::b]


def check_baseline_set(baselines: Tensor) -> Tensor:
    """A set of baselines must be a finite tensor with a leading set dimension of at least one."""
    if not isinstance(baselines, Tensor):
        raise TypeError(f"baselines must be a Tensor (B, *sample_shape), got {type(baselines).__name__}")
    if baselines.dim() < 2 or baselines.shape[0] < 1:
        raise ValueError(f"baselines must have shape (B, *sample_shape) with B >= 1, got {tuple(baselines.shape)}")
    if not torch.isfinite(baselines).all():
        raise ValueError("baselines contain NaN or Inf values: give finite reference inputs")
    return baselines.detach()


def checked_against_input(baselines: Tensor, x: Tensor) -> Tensor:
    """The baseline set on x's device and dtype, after checking each baseline has a sample's shape."""
    if baselines.shape[1:] != x.shape[1:]:
        raise ValueError(f"baselines have sample shape {tuple(baselines.shape[1:])} but the input's samples have "
                         f"shape {tuple(x.shape[1:])}: give baselines of shape (B, {', '.join(map(str, x.shape[1:]))})")
    return baselines.to(device=x.device, dtype=x.dtype)
