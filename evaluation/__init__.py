"""Metrics of attributions on plain torch, a module or subpackage per property: faithfulness (pixel flipping,
region perturbation, SRG, ROAD, deletion/insertion, faithfulness correlation, infidelity), complexity (sparseness,
entropy), randomisation (model parameters, random logit), robustness (sensitivity, local Lipschitz estimate),
localisation (pointing game, relevance mass and rank); a ranking across them, and Quantus's metrics."""
from evaluation.common.result import MetricResult
from evaluation.complexity import Complexity, Sparseness
from evaluation.faithfulness import (NAMED_BASELINES, ROAD, CurveResult, Deletion, FaithfulnessCorrelation,
                                     FaithfulnessCorrelationResult, Infidelity, Insertion, PerturbationMetric,
                                     PerturbationResult, PixelFlipping, RegionPerturbation, ROADResult,
                                     SymmetricRelevanceGain, SymmetricRelevanceResult, aopc, auc, make_baseline,
                                     noisy_linear_imputation, symmetric_relevance_gain)
from evaluation.localisation import (AttributionLocalisation, PointingGame, RelevanceMassAccuracy,
                                     RelevanceRankAccuracy)
from evaluation.quantus_adapter import KNOWN_BROKEN, QuantusMetric, QuantusMetricError, evaluate_quantus
from evaluation.randomisation import ModelParameterRandomisation, RandomisationResult, RandomLogit
from evaluation.ranking import rank_methods
from evaluation.robustness import AvgSensitivity, LocalLipschitzEstimate, MaxSensitivity

__all__ = [
    "AttributionLocalisation",
    "AvgSensitivity",
    "Complexity",
    "CurveResult",
    "Deletion",
    "FaithfulnessCorrelation",
    "FaithfulnessCorrelationResult",
    "Infidelity",
    "Insertion",
    "KNOWN_BROKEN",
    "LocalLipschitzEstimate",
    "MaxSensitivity",
    "MetricResult",
    "ModelParameterRandomisation",
    "NAMED_BASELINES",
    "PerturbationMetric",
    "PerturbationResult",
    "PixelFlipping",
    "PointingGame",
    "QuantusMetric",
    "QuantusMetricError",
    "ROAD",
    "ROADResult",
    "RandomLogit",
    "RandomisationResult",
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
    "noisy_linear_imputation",
    "rank_methods",
    "symmetric_relevance_gain",
]
