"""Faithfulness of attributions on plain torch: pixel flipping, region perturbation, SRG, and Quantus's metrics."""
from evaluation.baselines import NAMED_BASELINES, make_baseline
from evaluation.perturbation_curve import PerturbationResult
from evaluation.perturbation_metric import PerturbationMetric
from evaluation.pixel_flipping import PixelFlipping
from evaluation.region_perturbation import RegionPerturbation
from evaluation.scores import aopc, auc, symmetric_relevance_gain
from evaluation.symmetric_relevance_gain import SymmetricRelevanceGain, SymmetricRelevanceResult

__all__ = [
    "NAMED_BASELINES",
    "PerturbationMetric",
    "PerturbationResult",
    "PixelFlipping",
    "RegionPerturbation",
    "SymmetricRelevanceGain",
    "SymmetricRelevanceResult",
    "aopc",
    "auc",
    "make_baseline",
    "symmetric_relevance_gain",
]
