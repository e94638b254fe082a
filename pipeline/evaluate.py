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
        baseline = cfg.baseline if isinstance(cfg.baseline, str) else float(cfg.baseline)
        self.metric = PixelFlipping(
            features_in_step=cfg.features_in_step,
            baseline=baseline,
            unit=cfg.unit,
            softmax=cfg.softmax,
            batch_size=cfg.batch_size,
            progress=False,  # the pipeline shows one bar over its batches
        )

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
