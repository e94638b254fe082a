"""Explanation methods for image classifiers on plain torch."""
from xai.analyzer import Analyzer, analyze
from xai.errors import UnsupportedModelError
from xai.explanation import Explanation
from xai.gradient import Gradient, InputTimesGradient
from xai.softmax import strip_softmax

__all__ = [
    "Analyzer",
    "Explanation",
    "Gradient",
    "InputTimesGradient",
    "UnsupportedModelError",
    "analyze",
    "strip_softmax",
]
