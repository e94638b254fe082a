"""Run any Quantus metric by name on the same model, inputs, targets and attributions as our metrics.

Quantus works on numpy arrays and calls the model through its own wrapper; this adapter converts the tensors,
borrows the model (eval mode, restored after), seeds Quantus's global numpy (and torch) random state for the call
and restores it after, and turns every failure into a ``QuantusMetricError`` that names the metric, so that the
pipeline can log the metrics that work beside ours. Metrics known to be broken in Quantus 0.6.0 are refused up
front (``KNOWN_BROKEN``; reasons from the source, verified in ``/work/shared/reference/faithfulness.md``).
"""
import difflib
import inspect
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from evaluation.common.inputs import check_attribution
from xai.analyzer import Analyzer, check_input, predict
from xai.model_guard import borrowed, model_device
from xai.targets import Target

KNOWN_BROKEN = {
    "Monotonicity": "it perturbs the all-baseline input with the baseline again instead of restoring the original "
    "features, so the input never changes and the result is always True",
    "IROF": "it fails on multi-channel images (its (N,1,H,W) mask is asserted against the (N,C,H,W) input) and its "
    "AUC calls np.trapz, which NumPy 2.4 removed",
    "PointingGame": "it writes NaN (empty mask) and the weights (weighted=True) into a bool array, which stores True: "
    "an empty mask counts as a hit and weighted scores stay 0 or 1; use evaluation.PointingGame",
    "ROAD": "it raises IndexError on RGB inputs with one-channel attributions, only the first batch enters its "
    "result when N > batch_size, and it returns one dataset-level accuracy per percentage, not per-sample scores",
    "SensitivityN": "only the first batch enters its result, and it correlates across samples (one value per "
    "subset size, not per sample), unlike Ancona et al. 2018",
}

# Quantus's defaults that do not suit a per-sample pipeline: we want one score per sample and a quiet log.
ADAPTER_DEFAULTS = {"return_aggregate": False, "disable_warnings": True, "display_progressbar": False}


class QuantusMetricError(RuntimeError):
    """A Quantus metric is unknown, known to be broken, or failed; ``metric`` names it."""

    def __init__(self, metric: str, message: str):
        self.metric = metric
        super().__init__(f"Quantus metric {metric!r}: {message}")


def quantus_metric_names() -> list[str]:
    """The names of all Quantus metric classes (e.g. "Sparseness", "MaxSensitivity")."""
    import quantus

    return sorted(
        name for name, obj in vars(quantus).items()
        if inspect.isclass(obj) and issubclass(obj, quantus.Metric) and obj is not quantus.Metric
    )


def explain_func_for(explainer: Callable[[nn.Module], Analyzer]) -> Callable[..., np.ndarray]:
    """A Quantus ``explain_func`` from a factory of our analyzers, e.g. ``Gradient`` or ``lambda m: LRP(m, ...)``.

    Quantus calls it with the (possibly randomised) model and numpy inputs and targets, and wants numpy back.
    """

    def explain(model: nn.Module, inputs: np.ndarray, targets: Any, **_quantus_kwargs: Any) -> np.ndarray:
        device = model_device(model)
        x = torch.as_tensor(np.asarray(inputs), device=device)
        target = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=device)
        return explainer(model)(x, target).attribution.cpu().numpy()

    return explain


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed numpy's and torch's global generators (Quantus draws from them) and restore their states after."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


class QuantusMetric:
    """``QuantusMetric("Sparseness", **init_kwargs)(model, x, attribution, target) -> Tensor`` with N rows.

    ``init_kwargs`` go to the Quantus class (defaults changed here: ``return_aggregate=False``,
    ``disable_warnings=True``, ``display_progressbar=False``). Curve metrics give (N, points), others (N,).
    """

    def __init__(self, name: str, **init_kwargs: Any):
        import quantus

        if name in KNOWN_BROKEN:
            raise QuantusMetricError(name, f"refused, known to be broken in Quantus 0.6.0: {KNOWN_BROKEN[name]}")
        names = quantus_metric_names()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"available: {', '.join(names)}"
            raise QuantusMetricError(name, f"no such metric in Quantus {quantus.__version__}; {hint}")
        self.name = name
        self.init_kwargs = {**ADAPTER_DEFAULTS, **init_kwargs}
        try:
            self.metric = getattr(quantus, name)(**self.init_kwargs)
        except Exception as error:
            raise QuantusMetricError(name, f"cannot be created with {init_kwargs}: {error}") from error

    def __repr__(self) -> str:
        return f"QuantusMetric({self.name!r}, {self.init_kwargs})"

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        attribution: Tensor,
        target: Target = None,
        *,
        explainer: Callable[[nn.Module], Analyzer] | None = None,
        softmax: bool | None = None,
        batch_size: int = 64,
        seed: int = 0,
        **call_kwargs: Any,
    ) -> Tensor:
        """Scores on ``x.device``. ``explainer`` (e.g. ``Gradient``) is needed by metrics that re-explain perturbed
        inputs or randomised models (robustness, randomisation); ``softmax=None`` keeps the metric's default."""
        check_input(x)
        if x.dim() != 4:
            raise ValueError(f"input must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
        check_attribution(x, attribution)
        device = model_device(model)
        kwargs = dict(call_kwargs)
        if softmax is not None:
            kwargs["softmax"] = softmax
        if explainer is not None:
            kwargs["explain_func"] = explain_func_for(explainer)
        with borrowed(model):
            _, target = predict(model, x.detach().to(device), target)
            try:
                with seeded(seed), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    scores = self.metric(
                        model=model, x_batch=x.detach().cpu().numpy(), y_batch=target.cpu().numpy(),
                        a_batch=attribution.detach().cpu().numpy(), channel_first=True, device=str(device),
                        batch_size=batch_size, **kwargs,
                    )
                result = torch.as_tensor(np.asarray(scores, dtype=np.float64))
            except Exception as error:
                raise QuantusMetricError(self.name, _explain_failure(error)) from error
        if result.dim() == 0 or result.shape[0] != len(x):
            raise QuantusMetricError(
                self.name, f"returned {tuple(result.shape)} values for {len(x)} samples: not a per-sample score"
                " (a dataset-level metric, or return_aggregate=True)"
            )
        return result.to(x.device)


def _explain_failure(error: Exception) -> str:
    message = f"failed with {type(error).__name__}: {error}"
    if isinstance(error, AttributeError) and "trapz" in str(error):
        message += " (Quantus 0.6.0 calls np.trapz, removed in NumPy 2.4: ask for curves, not AUCs, from Quantus)"
    if "explain_func" in str(error):
        message += " (this metric re-explains inputs: pass explainer=, e.g. explainer=xai.Gradient)"
    return message


def evaluate_quantus(
    metrics: Mapping[str, Mapping[str, Any]],
    model: nn.Module,
    x: Tensor,
    attribution: Tensor,
    target: Target = None,
    **call_kwargs: Any,
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Run several Quantus metrics ({name: init kwargs}); one failing does not stop the others.

    Returns (scores by name, error message by name); each failure is also issued as a warning.
    """
    scores, failures = {}, {}
    for name, init_kwargs in metrics.items():
        try:
            scores[name] = QuantusMetric(name, **dict(init_kwargs or {}))(model, x, attribution, target, **call_kwargs)
        except QuantusMetricError as error:
            failures[name] = str(error)
            warnings.warn(str(error), stacklevel=2)
    return scores, failures
