"""Explanation methods for image classifiers on plain torch."""
from xai.analyzer import Analyzer, analyze
from xai.cam import GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from xai.errors import UnsupportedModelError
from xai.explanation import Explanation
from xai.exported import from_exported
from xai.gradient import (DeepLIFT, DeepLIFTShap, ExpectedGradients, Gradient, GradientSHAP, InputTimesGradient,
                          IntegratedGradients, SmoothGrad)
from xai.heatmap import heatmap, heatmap_grid, overlay
from xai.lrp import LRP
from xai.perturbation import LIME, KernelSHAP, Occlusion
from xai.pattern import PatternAttribution, PatternNet, Patterns, fit_patterns
from xai.softmax import strip_softmax

__all__ = [
    "Analyzer",
    "DeepLIFT",
    "DeepLIFTShap",
    "ExpectedGradients",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "Gradient",
    "GradientSHAP",
    "InputTimesGradient",
    "IntegratedGradients",
    "KernelSHAP",
    "LIME",
    "LRP",
    "LayerCAM",
    "Occlusion",
    "PatternAttribution",
    "PatternNet",
    "Patterns",
    "ScoreCAM",
    "SmoothGrad",
    "UnsupportedModelError",
    "analyze",
    "fit_patterns",
    "from_exported",
    "heatmap",
    "heatmap_grid",
    "overlay",
    "strip_softmax",
]
