"""Metrics of attributions on plain torch: faithfulness (pixel flipping, region perturbation, SRG, ROAD,
deletion/insertion, faithfulness correlation, infidelity), complexity (sparseness, entropy), randomisation (model
parameters, random logit), robustness (sensitivity, local Lipschitz estimate), localisation (pointing game, relevance
mass and rank), and Quantus's metrics."""
from evaluation.baselines import NAMED_BASELINES, make_baseline
from evaluation.complexity import Complexity, MetricResult, Sparseness
from evaluation.deletion_insertion import CurveResult, Deletion, Insertion
from evaluation.faithfulness_correlation import FaithfulnessCorrelation, FaithfulnessCorrelationResult
from evaluation.imputation import noisy_linear_imputation
from evaluation.infidelity import Infidelity
from evaluation.localisation import (AttributionLocalisation, PointingGame, RelevanceMassAccuracy,
                                     RelevanceRankAccuracy)
from evaluation.perturbation_curve import PerturbationResult
from evaluation.perturbation_metric import PerturbationMetric
from evaluation.pixel_flipping import PixelFlipping
from evaluation.ranking import rank_methods
from evaluation.quantus_adapter import KNOWN_BROKEN, QuantusMetric, QuantusMetricError, evaluate_quantus
from evaluation.randomisation import ModelParameterRandomisation, RandomisationResult, RandomLogit
from evaluation.region_perturbation import RegionPerturbation
from evaluation.robustness import AvgSensitivity, LocalLipschitzEstimate, MaxSensitivity
from evaluation.road import ROAD, ROADResult
from evaluation.scores import aopc, auc, symmetric_relevance_gain
from evaluation.symmetric_relevance_gain import SymmetricRelevanceGain, SymmetricRelevanceResult

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
