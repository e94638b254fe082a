"""The evaluate stage: pixel flipping in MoRF and LeRF order -> per-sample curves, AUCs, AOPC and SRG; and the
attributions' complexity (sparseness, entropy)."""
from dataclasses import dataclass, replace
from math import prod

from omegaconf import DictConfig
from torch import Tensor, nn

METRICS = ("srg", "auc_morf", "auc_lerf", "aopc_morf")
#: Logged as complexity/<name>: how concentrated each attribution is (no forward pass; evaluation.complexity).
COMPLEXITY_METRICS = ("sparseness", "entropy")


def complexity_scores(attribution: Tensor) -> dict[str, Tensor]:
    """Per-sample Sparseness (Gini index, higher = sparser) and Complexity (entropy, lower = simpler)."""
    from evaluation import Complexity, Sparseness

    return {"sparseness": Sparseness()(None, attribution, attribution).scores,
            "entropy": Complexity()(None, attribution, attribution).scores}


@dataclass
class Scores:
    """Per-sample results of one batch (first dimension = sample)."""

    curve_morf: Tensor  # (N, steps + 1), column 0 = unperturbed
    curve_lerf: Tensor
    auc_morf: Tensor  # (N,)
    auc_lerf: Tensor
    aopc_morf: Tensor
    srg: Tensor  # AUC(LeRF) - AUC(MoRF), higher is better


#: Without ``evaluation.batch_size``: at most this many perturbed inputs per forward pass (all 32x32 digits of a
#: batch's curves at once) and at most CHUNK_VALUES input values, 111 photos of 3x224x224 (the activations of a
#: ResNet-18 on 111 photos take about 1.5 GB).
MAX_CHUNK = 512
CHUNK_VALUES = 2**24


class Faithfulness:
    """``evaluation.SymmetricRelevanceGain`` over the configured ``PixelFlipping``."""

    def __init__(self, cfg: DictConfig):
        from evaluation import PixelFlipping

        if cfg.name != "pixel_flipping":
            raise ValueError(f"evaluation={cfg.name} is unknown; available: pixel_flipping")
        if cfg.steps is not None and cfg.features_in_step is not None:
            raise ValueError(f"evaluation.steps={cfg.steps} and evaluation.features_in_step={cfg.features_in_step}: "
                             "give one (steps: that many steps whatever the image size; features_in_step: that many "
                             "pixels per step)")
        baseline = cfg.baseline if isinstance(cfg.baseline, str) else float(cfg.baseline)
        self.metric = PixelFlipping(
            features_in_step=cfg.features_in_step,
            steps=cfg.steps,  # neither given: PixelFlipping's 32 steps
            baseline=baseline,
            unit=cfg.unit,
            softmax=cfg.softmax,
            batch_size=cfg.batch_size or MAX_CHUNK,  # None: sized per input shape (chunk_size) at the first call
            progress=True,  # a bar within a batch when its perturbed inputs take more than one chunk
        )
        self.fixed_chunk = cfg.batch_size is not None

    def chunk_size(self, shape: tuple[int, ...]) -> int:
        """Perturbed inputs per forward pass: ``evaluation.batch_size``, or as many as hold CHUNK_VALUES values."""
        return self.metric.batch_size if self.fixed_chunk else max(1, min(MAX_CHUNK, CHUNK_VALUES // prod(shape)))

    def plan(self, shape: tuple[int, ...], samples: int) -> str:
        """The forward passes that scoring ``samples`` inputs of ``shape`` (C, H, W) takes, in words."""
        steps = self.metric.steps_for(shape)
        passes = samples * (1 + 2 * steps)
        return (f"scoring: {samples} samples x (1 unperturbed + 2 orders x {steps} steps) = {passes} forward passes, "
                f"in chunks of {self.chunk_size(shape)} inputs")

    def __call__(self, model: nn.Module, x: Tensor, attribution: Tensor, target: Tensor, seed: int) -> Scores:
        """Score one batch; ``seed`` feeds a random baseline, so a resumed batch repeats its draws."""
        from evaluation import SymmetricRelevanceGain

        metric = replace(self.metric, seed=seed, batch_size=self.chunk_size(tuple(x.shape[1:])))
        result = SymmetricRelevanceGain(metric)(model, x, attribution, target)
        return Scores(
            curve_morf=result.morf.curve,
            curve_lerf=result.lerf.curve,
            auc_morf=result.morf.auc,
            auc_lerf=result.lerf.auc,
            aopc_morf=result.morf.aopc,
            srg=result.srg,
        )
