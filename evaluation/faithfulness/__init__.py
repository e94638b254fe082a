"""Faithfulness: does removing what the attribution ranks high change the model's output the most?

Perturbation curves (pixel flipping, region perturbation, their symmetric relevance gain, deletion/insertion), ROAD
with its noisy linear imputation, faithfulness correlation and infidelity; the baselines and scores they share."""
from evaluation.faithfulness.baselines import NAMED_BASELINES, make_baseline
from evaluation.faithfulness.deletion_insertion import CurveResult, Deletion, Insertion
from evaluation.faithfulness.faithfulness_correlation import FaithfulnessCorrelation, FaithfulnessCorrelationResult
from evaluation.faithfulness.imputation import noisy_linear_imputation
from evaluation.faithfulness.infidelity import Infidelity
from evaluation.faithfulness.perturbation_curve import PerturbationResult
from evaluation.faithfulness.perturbation_metric import PerturbationMetric
from evaluation.faithfulness.pixel_flipping import PixelFlipping
from evaluation.faithfulness.region_perturbation import RegionPerturbation
from evaluation.faithfulness.road import ROAD, ROADResult
from evaluation.faithfulness.scores import aopc, auc, symmetric_relevance_gain
from evaluation.faithfulness.symmetric_relevance_gain import SymmetricRelevanceGain, SymmetricRelevanceResult

__all__ = [
    "CurveResult",
    "Deletion",
    "FaithfulnessCorrelation",
    "FaithfulnessCorrelationResult",
    "Infidelity",
    "Insertion",
    "NAMED_BASELINES",
    "PerturbationMetric",
    "PerturbationResult",
    "PixelFlipping",
    "ROAD",
    "ROADResult",
    "RegionPerturbation",
    "SymmetricRelevanceGain",
    "SymmetricRelevanceResult",
    "aopc",
    "auc",
    "make_baseline",
    "noisy_linear_imputation",
    "symmetric_relevance_gain",
]
