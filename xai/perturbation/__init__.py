"""Methods that only run the model forward on perturbed copies of the input: Occlusion (sliding windows) and the
surrogate models fitted on feature groups (KernelSHAP, LIME), with the feature groups they switch on and off."""
from xai.perturbation.kernel_shap import KernelSHAP
from xai.perturbation.lime import LIME
from xai.perturbation.occlusion import Occlusion

__all__ = ["KernelSHAP", "LIME", "Occlusion"]
