"""The explain stage: the method and composite configs -> an ``xai`` analyzer.

``method=lrp`` needs a composite. The other methods have no rules: a composite given with them is
ignored (with a warning) and the run is tagged ``composite=none``, so the default composite in
``conf/config.yaml`` does not get in the way of ``method=gradient``.
"""
import math
import warnings
from functools import partial
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pipeline.stages.input_range import composite_bound

CAMS = {"grad_cam": "GradCAM", "grad_cam_plus_plus": "GradCAMPlusPlus", "layer_cam": "LayerCAM", "score_cam": "ScoreCAM"}
#: Methods that explain against a background set of baselines drawn from the data (``background_ids``).
SHAPLEY = {"deeplift_shap": "DeepLIFTShap", "gradient_shap": "GradientSHAP", "expected_gradients": "ExpectedGradients"}
#: Methods that fit a surrogate model on feature groups per sample.
SURROGATES = {"kernel_shap": "KernelSHAP", "lime": "LIME"}
#: Methods that explain with patterns fitted on data once per model (pipeline.stages.patterns).
PATTERN_METHODS = {"pattern_net": "PatternNet", "pattern_attribution": "PatternAttribution"}
METHODS = ("gradient", "input_x_gradient", "smoothgrad", "integrated_gradients", "occlusion", *CAMS, "deeplift",
           *SHAPLEY, *SURROGATES, *PATTERN_METHODS, "lrp")
COMPOSITES = {
    "epsilon_gamma_box": "EpsilonGammaBox",
    "epsilon_plus": "EpsilonPlus",
    "epsilon_plus_flat": "EpsilonPlusFlat",
    "epsilon_alpha2_beta1": "EpsilonAlpha2Beta1",
    "epsilon_alpha2_beta1_flat": "EpsilonAlpha2Beta1Flat",
    "cp_lrp": "CPLRP",  # transformers (model=digits_vit)
    "attn_lrp": "AttnLRP",
}
NO_COMPOSITE = "none"
#: Composite parameters that are rule strengths: a finite number >= 0.
RULE_STRENGTHS = ("epsilon", "gamma", "gamma_linear", "gamma_conv")


def uses_composite(method: str) -> bool:
    return method == "lrp"


def effective_composite(method: DictConfig, composite: DictConfig) -> str:
    """The composite a run really uses: its name for LRP, ``none`` for methods without rules."""
    if uses_composite(method.name):
        if composite.name == NO_COMPOSITE:
            raise ValueError(f"method=lrp needs a composite: choose composite= one of {', '.join(COMPOSITES)}")
        return composite.name
    if composite.name != NO_COMPOSITE:
        warnings.warn(f"method={method.name} has no rules: composite={composite.name} is ignored (tagged composite=none)")
    return NO_COMPOSITE


def background_ids(method: DictConfig, total: int, seed: int) -> list[int]:
    """The dataset indices of a Shapley method's baselines: ``method.baselines`` drawn without replacement, seeded."""
    if method.name not in SHAPLEY:
        return []
    if not 1 <= method.baselines <= total:
        raise ValueError(f"method.baselines={method.baselines} must be in 1..{total} (images of the dataset)")
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(total, generator=generator)[: method.baselines].tolist())


def build_analyzer(model: nn.Module, method: DictConfig, composite: DictConfig, seed: int,
                   background: Optional[torch.Tensor] = None, patterns=None):
    """The analyzer for one batch. ``seed`` feeds stochastic methods, so a resumed batch repeats its draws;
    ``background`` holds the baselines of the Shapley methods, ``patterns`` (``xai.Patterns``) PatternNet's."""
    import xai  # the pipeline imports before every method exists; only the chosen one is needed

    name = method.name
    if name not in METHODS:
        raise ValueError(f"method.name={name} is unknown; available: {', '.join(METHODS)}")
    if name == "gradient":
        return xai.Gradient(model)
    if name == "input_x_gradient":
        return xai.InputTimesGradient(model)
    if name == "smoothgrad":
        return xai.SmoothGrad(
            model, samples=method.samples, noise_level=method.noise_level, seed=seed, fold_batchnorm=method.fold_batchnorm
        )
    if name == "integrated_gradients":
        return xai.IntegratedGradients(model, steps=method.steps, fold_batchnorm=method.fold_batchnorm)
    if name == "occlusion":
        return xai.Occlusion(model, window=method.window, stride=method.stride, baseline=method.baseline,
                             batch_size=method.batch_size)
    if name == "deeplift":
        return xai.DeepLIFT(model, baseline=method.baseline, batch_size=method.batch_size)
    if name == "deeplift_shap":
        return xai.DeepLIFTShap(model, baselines=background, batch_size=method.batch_size)
    if name == "gradient_shap":
        return xai.GradientSHAP(model, baselines=background, samples=method.samples, stdevs=method.stdevs, seed=seed,
                                batch_size=method.batch_size)
    if name == "expected_gradients":
        return xai.ExpectedGradients(model, baselines=background, samples=method.samples, seed=seed,
                                     batch_size=method.batch_size)
    if name in SURROGATES:
        return build_surrogate(model, method, seed)
    if name in PATTERN_METHODS:
        return getattr(xai, PATTERN_METHODS[name])(model, patterns)
    if name == "score_cam":
        return xai.ScoreCAM(model, layer=method.layer, batch_size=method.batch_size)
    if name in CAMS:
        return getattr(xai, CAMS[name])(model, layer=method.layer)
    return xai.LRP(model, composite=build_composite(composite))


def build_surrogate(model: nn.Module, method: DictConfig, seed: int):
    """KernelSHAP or LIME on the configured segmentation (``method.features``: slic with ``segments``, grid with
    ``cell``)."""
    import xai
    from xai.perturbation.features import grid_segments, slic_segments

    if method.features == "slic":
        features = partial(slic_segments, n_segments=method.segments)
    elif method.features == "grid":
        features = partial(grid_segments, cell=method.cell)
    else:
        raise ValueError(f"method.features={method.features} is unknown; available: slic, grid")
    common = dict(features=features, samples=method.samples, baseline=method.baseline, seed=seed,
                  batch_size=method.batch_size)
    if method.name == "lime":
        return xai.LIME(model, kernel_width=method.kernel_width, alpha=method.alpha, **common)
    return xai.KernelSHAP(model, **common)


def build_composite(composite: DictConfig):
    """An ``xai.lrp.composites`` preset from its config (every key but ``name`` is a keyword argument)."""
    import xai.lrp.composites

    name = effective_composite(OmegaConf.create({"name": "lrp"}), composite)
    if name not in COMPOSITES:
        raise ValueError(f"composite={name} is unknown; available: {', '.join(COMPOSITES)}")
    kwargs = {k: v for k, v in OmegaConf.to_container(composite, resolve=True).items() if k != "name"}
    for key in RULE_STRENGTHS:  # the rules would refuse them too, but without the config key
        if key in kwargs and not (math.isfinite(kwargs[key]) and kwargs[key] >= 0):
            raise ValueError(f"composite.{key}={kwargs[key]} must be a finite number >= 0 (composite={name})")
    for bound in ("low", "high"):  # per-channel bounds (a list) become a (1, C, 1, 1) tensor
        if bound in kwargs:
            kwargs[bound] = composite_bound(kwargs[bound], f"composite.{bound}")
    return getattr(xai.lrp.composites, COMPOSITES[name])(**kwargs)
