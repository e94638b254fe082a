"""One ranking across metrics that disagree (LATEC, Klein et al. 2024): rank the methods on each metric in its own
direction, then order them by their mean rank."""
from typing import Mapping, Optional

import pandas as pd

from evaluation.complexity import Complexity, Sparseness
from evaluation.faithfulness import (ROAD, Deletion, FaithfulnessCorrelation, Infidelity, Insertion,
                                     SymmetricRelevanceGain)
from evaluation.localisation import (AttributionLocalisation, PointingGame, RelevanceMassAccuracy,
                                     RelevanceRankAccuracy)
from evaluation.randomisation import ModelParameterRandomisation, RandomLogit
from evaluation.robustness import AvgSensitivity, LocalLipschitzEstimate, MaxSensitivity


#: The metrics that declare their direction (``higher_is_better``), by class name.
DIRECTED_METRICS: dict[str, type] = {metric.__name__: metric for metric in (
    AttributionLocalisation, AvgSensitivity, Complexity, Deletion, FaithfulnessCorrelation, Infidelity, Insertion,
    LocalLipschitzEstimate, MaxSensitivity, ModelParameterRandomisation, PointingGame, RandomLogit,
    RelevanceMassAccuracy, RelevanceRankAccuracy, ROAD, Sparseness, SymmetricRelevanceGain)}


def metric_direction(name: str) -> bool:
    """Whether a higher score is better, as the metric class of that name in ``evaluation`` declares."""
    metric = DIRECTED_METRICS.get(name)
    if metric is None:
        raise ValueError(f"{name!r} is not a metric of evaluation with a declared direction "
                         f"({', '.join(sorted(DIRECTED_METRICS))}); pass directions={{name: True (higher is better) "
                         "or False}")
    return bool(metric.higher_is_better)


def rank_methods(scores: Mapping[str, Mapping[str, float]],
                 directions: Optional[Mapping[str, bool]] = None) -> pd.DataFrame:
    """``{method: {metric: score}}`` -> a table indexed by method, best first: the scores, ``<metric> rank`` (1 =
    best on that metric, ties share the mean rank) and ``mean rank``. A method without a score for some metric is
    ranked on the metrics it has."""
    table = pd.DataFrame.from_dict({m: dict(s) for m, s in scores.items()}, orient="index")
    if table.empty:
        raise ValueError("rank_methods needs at least one method with at least one metric score")
    given = dict(directions or {})
    higher = {metric: given[metric] if metric in given else metric_direction(metric) for metric in table.columns}
    ranks = pd.DataFrame({f"{metric} rank": table[metric].rank(ascending=not higher[metric], method="average")
                          for metric in table.columns})
    result = pd.concat([table, ranks], axis=1)
    result["mean rank"] = ranks.mean(axis=1)
    return result.sort_values(["mean rank", *ranks.columns]).rename_axis("method")
