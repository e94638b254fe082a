"""Explanation methods for image classifiers on plain torch."""
from xai.analyzer import Analyzer, analyze
from xai.cam import GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from xai.errors import UnsupportedModelError
from xai.explanation import Explanation
from xai.gradient import Gradient, InputTimesGradient
from xai.heatmap import heatmap, heatmap_grid, overlay
from xai.integrated_gradients import IntegratedGradients
from xai.kernel_shap import KernelSHAP
from xai.lime import LIME
from xai.lrp import LRP
from xai.occlusion import Occlusion
from xai.smoothgrad import SmoothGrad
from xai.softmax import strip_softmax

__all__ = [
    "Analyzer",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "Gradient",
    "InputTimesGradient",
    "IntegratedGradients",
    "KernelSHAP",
    "LIME",
    "LRP",
    "LayerCAM",
    "Occlusion",
    "ScoreCAM",
    "SmoothGrad",
    "UnsupportedModelError",
    "analyze",
    "heatmap",
    "heatmap_grid",
    "overlay",
    "strip_softmax",
]
