"""Metrics of attributions on plain torch: faithfulness (pixel flipping, region perturbation, SRG), complexity
(sparseness, entropy), localisation (pointing game, relevance mass/rank), and Quantus's metrics."""
from evaluation.baselines import NAMED_BASELINES, make_baseline
from evaluation.complexity import Complexity, MetricResult, Sparseness
from evaluation.localisation import (AttributionLocalisation, PointingGame, RelevanceMassAccuracy,
                                     RelevanceRankAccuracy)
from evaluation.perturbation_curve import PerturbationResult
from evaluation.perturbation_metric import PerturbationMetric
from evaluation.pixel_flipping import PixelFlipping
from evaluation.ranking import rank_methods
from evaluation.quantus_adapter import KNOWN_BROKEN, QuantusMetric, QuantusMetricError, evaluate_quantus
from evaluation.region_perturbation import RegionPerturbation
from evaluation.scores import aopc, auc, symmetric_relevance_gain
from evaluation.symmetric_relevance_gain import SymmetricRelevanceGain, SymmetricRelevanceResult

__all__ = [
    "AttributionLocalisation",
    "Complexity",
    "KNOWN_BROKEN",
    "MetricResult",
    "NAMED_BASELINES",
    "PerturbationMetric",
    "PerturbationResult",
    "PixelFlipping",
    "PointingGame",
    "QuantusMetric",
    "QuantusMetricError",
    "RegionPerturbation",
    "RelevanceMassAccuracy",
    "RelevanceRankAccuracy",
    "Sparseness",
    "SymmetricRelevanceGain",
    "SymmetricRelevanceResult",
    "aopc",
    "auc",
    "evaluate_quantus",
    "make_baseline",
    "rank_methods",
    "symmetric_relevance_gain",
]
