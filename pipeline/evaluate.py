"""The evaluate stage: pixel flipping in MoRF and LeRF order -> per-sample curves, AUCs, AOPC and SRG."""
from dataclasses import dataclass, replace

from omegaconf import DictConfig
from torch import Tensor, nn

METRICS = ("srg", "auc_morf", "auc_lerf", "aopc_morf")


@dataclass
class Scores:
    """Per-sample results of one batch (first dimension = sample)."""

    curve_morf: Tensor  # (N, steps + 1), column 0 = unperturbed
    curve_lerf: Tensor
    auc_morf: Tensor  # (N,)
    auc_lerf: Tensor
    aopc_morf: Tensor
    srg: Tensor  # AUC(LeRF) - AUC(MoRF), higher is better


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
            batch_size=cfg.batch_size,
            progress=True,  # a bar within a batch when its perturbed inputs take more than one chunk
        )

    def plan(self, shape: tuple[int, ...], samples: int) -> str:
        """The forward passes that scoring ``samples`` inputs of ``shape`` (C, H, W) takes, in words."""
        steps = self.metric.steps_for(shape)
        passes = samples * (1 + 2 * steps)
        return (f"scoring: {samples} samples x (1 unperturbed + 2 orders x {steps} steps) = {passes} forward passes, "
                f"in chunks of {self.metric.batch_size} inputs")

    def __call__(self, model: nn.Module, x: Tensor, attribution: Tensor, target: Tensor, seed: int) -> Scores:
        """Score one batch; ``seed`` feeds a random baseline, so a resumed batch repeats its draws."""
        from evaluation import SymmetricRelevanceGain

        result = SymmetricRelevanceGain(replace(self.metric, seed=seed))(model, x, attribution, target)
        return Scores(
            curve_morf=result.morf.curve,
            curve_lerf=result.lerf.curve,
            auc_morf=result.morf.auc,
            auc_lerf=result.lerf.auc,
            aopc_morf=result.morf.aopc,
            srg=result.srg,
        )
