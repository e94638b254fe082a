"""The metrics a run scores (``evaluation.metrics``): each name -> its MLflow group, its ``evaluation`` class, and
what it needs besides the attribution (an analyzer to re-explain with, ground-truth masks).

Pixel flipping (``srg`` and its AUCs, ``pipeline.stages.evaluate.Faithfulness``) and the attribution's complexity
(``sparseness``, ``entropy``) are scored in every run; ``evaluation.metrics`` adds the others. A metric's
per-sample scores are logged as ``<group>/<name>`` (their mean; NaN samples, e.g. empty masks, left out).
Constructor arguments come from ``evaluation.params.<name>`` (e.g. ``+evaluation.params.road.noise=0.05``).
"""
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn


@dataclass(frozen=True)
class MetricSpec:
    group: str  # faithfulness / randomisation / robustness / complexity / localisation
    cls: str  # the class in ``evaluation``
    needs_analyzer: bool = False  # re-explains (perturbed inputs, randomised models): its explainer = the run's analyzer
    needs_mask: bool = False  # localisation: the dataset must give ground-truth masks


SPECS = {
    "srg": MetricSpec("faithfulness", "SymmetricRelevanceGain"),
    "road": MetricSpec("faithfulness", "ROAD"),
    "deletion": MetricSpec("faithfulness", "Deletion"),
    "insertion": MetricSpec("faithfulness", "Insertion"),
    "faithfulness_correlation": MetricSpec("faithfulness", "FaithfulnessCorrelation"),
    "infidelity": MetricSpec("faithfulness", "Infidelity"),
    "sparseness": MetricSpec("complexity", "Sparseness"),
    "entropy": MetricSpec("complexity", "Complexity"),
    "model_parameter_randomisation": MetricSpec("randomisation", "ModelParameterRandomisation", needs_analyzer=True),
    "random_logit": MetricSpec("randomisation", "RandomLogit", needs_analyzer=True),
    "max_sensitivity": MetricSpec("robustness", "MaxSensitivity", needs_analyzer=True),
    "avg_sensitivity": MetricSpec("robustness", "AvgSensitivity", needs_analyzer=True),
    "local_lipschitz_estimate": MetricSpec("robustness", "LocalLipschitzEstimate", needs_analyzer=True),
    "pointing_game": MetricSpec("localisation", "PointingGame", needs_mask=True),
    "relevance_mass_accuracy": MetricSpec("localisation", "RelevanceMassAccuracy", needs_mask=True),
    "relevance_rank_accuracy": MetricSpec("localisation", "RelevanceRankAccuracy", needs_mask=True),
    "attribution_localisation": MetricSpec("localisation", "AttributionLocalisation", needs_mask=True),
}
#: Scored in every run, whatever ``evaluation.metrics`` says (the curves, regression checks and comparisons use them).
ALWAYS = ("srg", "sparseness", "entropy")
#: Metric keys of the pixel-flipping scores that are not metric classes of their own, and their direction.
PIXEL_FLIPPING_KEYS = {"faithfulness/srg": True, "faithfulness/auc_morf": False, "faithfulness/auc_lerf": True,
                       "faithfulness/aopc_morf": True}

#: Builds the run's analyzer for a model (the original, or a randomised copy).
AnalyzerFactory = Callable[[nn.Module], Any]


def metric_key(name: str) -> str:
    """The MLflow metric key of a metric name, e.g. ``localisation/pointing_game``."""
    return f"{SPECS[name].group}/{name}"


def higher_is_better(key: str) -> bool:
    """The direction of a logged metric key, as its ``evaluation`` class declares it."""
    import evaluation

    if key in PIXEL_FLIPPING_KEYS:
        return PIXEL_FLIPPING_KEYS[key]
    name = key.split("/", 1)[-1]
    if name not in SPECS:
        raise ValueError(f"{key!r} is not a metric the pipeline scores; known: {', '.join(sorted(all_keys()))}")
    return bool(getattr(evaluation, SPECS[name].cls).higher_is_better)


def all_keys() -> list[str]:
    return [*PIXEL_FLIPPING_KEYS, *(metric_key(n) for n in SPECS if n != "srg")]


def configured_metrics(evaluation_cfg: DictConfig) -> dict[str, dict]:
    """The configured metrics beyond those every run scores, in the configured order, each with its
    ``evaluation.params``; names and stray parameters are checked here."""
    names = list(evaluation_cfg.metrics)
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        raise ValueError(f"evaluation.metrics has unknown metric(s) {', '.join(map(str, unknown))}; available: "
                         f"{', '.join(SPECS)}")
    params = OmegaConf.to_container(evaluation_cfg.params, resolve=True) if evaluation_cfg.params else {}
    extra = list(dict.fromkeys(n for n in names if n not in ALWAYS))
    stray = sorted(set(params) - set(extra))
    if stray:
        raise ValueError(f"evaluation.params has parameters for {', '.join(stray)}: only metrics listed in "
                         f"evaluation.metrics take them, and not {', '.join(ALWAYS)} (pixel flipping's are "
                         "evaluation.steps, baseline, unit, softmax)")
    return {n: dict(params.get(n) or {}) for n in extra}


class MetricSuite:
    """The configured extra metrics, built once per run; ``__call__`` scores one batch."""

    def __init__(self, evaluation_cfg: DictConfig, has_masks: bool):
        import evaluation

        self.params = configured_metrics(evaluation_cfg)
        self.names = list(self.params)
        needing_masks = [n for n in self.names if SPECS[n].needs_mask]
        if needing_masks and not has_masks:
            raise ValueError(f"evaluation.metrics={','.join(needing_masks)} need ground-truth masks, which this dataset "
                             "does not have: use dataset=digits_localisation, or dataset=image_folder with "
                             "dataset.mask_path=<folder of masks>, or drop them from evaluation.metrics")
        self.classes = {n: getattr(evaluation, SPECS[n].cls) for n in self.names}
        for name in self.names:  # a bad parameter fails here, before any work
            if SPECS[name].needs_analyzer:
                self._check_names(name)
            else:
                self._build(name, analyzer=None, seed=0)

    def _check_names(self, name: str) -> None:
        try:
            inspect.signature(self.classes[name]).bind_partial(**self.params[name])
        except TypeError as error:
            raise self._bad_params(name, error) from error

    def _bad_params(self, name: str, error: Exception) -> ValueError:
        accepted = [p for p in inspect.signature(self.classes[name]).parameters if p not in ("explainer", "seed")]
        return ValueError(f"evaluation.params.{name}: {error}; {self.classes[name].__name__} takes "
                          f"{', '.join(accepted) or 'no parameters'}")

    def _build(self, name: str, analyzer: Optional[Any], seed: int):
        cls, kwargs = self.classes[name], dict(self.params[name])
        if "seed" in inspect.signature(cls).parameters:
            kwargs.setdefault("seed", seed)
        if SPECS[name].needs_analyzer:
            kwargs["explainer"] = analyzer
        try:
            return cls(**kwargs)
        except TypeError as error:
            raise self._bad_params(name, error) from error

    def __call__(self, model: nn.Module, x: Tensor, attribution: Tensor, target: Tensor, seed: int,
                 analyzer: AnalyzerFactory, mask: Optional[Tensor] = None) -> dict[str, Tensor]:
        """Per-sample scores of one batch by metric name; ``seed`` feeds random metrics, so a resumed batch repeats
        its draws. ``analyzer`` builds the run's analyzer on a model: the explainer of re-explaining metrics."""
        scores = {}
        explainer = analyzer(model) if any(SPECS[n].needs_analyzer for n in self.names) else None
        for name in self.names:
            metric = self._build(name, explainer, seed)
            data = {"mask": mask} if SPECS[name].needs_mask else {}
            scores[name] = metric(model, x, attribution, target, **data).scores
        return scores
