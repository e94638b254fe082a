"""Methods that read the backward pass: the plain gradient, its averages over noisy copies (SmoothGrad), paths
(Integrated Gradients) and baseline draws (GradientSHAP, ExpectedGradients), and DeepLIFT's modified backward."""
from xai.gradient.deeplift import DeepLIFT, DeepLIFTShap
from xai.gradient.gradient_shap import ExpectedGradients, GradientSHAP
from xai.gradient.integrated_gradients import IntegratedGradients
from xai.gradient.plain import Gradient, InputTimesGradient
from xai.gradient.smoothgrad import SmoothGrad

__all__ = ["DeepLIFT", "DeepLIFTShap", "ExpectedGradients", "Gradient", "GradientSHAP", "InputTimesGradient",
           "IntegratedGradients", "SmoothGrad"]
