"""Scalar summaries of perturbation curves (per sample; average over samples for a data set)."""
import torch
from torch import Tensor


def auc(curve: Tensor, fraction: Tensor) -> Tensor:
    """Area under each curve (N, steps + 1) by the trapezoid rule over the flipped fraction x in [0, 1].

    AUC = sum_s (x_{s+1} - x_s) (c_s + c_{s+1}) / 2; its scale is that of the score, whatever the number of steps.
    """
    return torch.trapezoid(curve, fraction.to(curve), dim=-1)


def aopc(curve: Tensor) -> Tensor:
    """Area over the perturbation curve (Samek et al. 2017): 1/(L+1) sum_{k=0}^{L} (c_0 - c_k), per sample."""
    return curve[:, 0] - curve.mean(dim=1)


def symmetric_relevance_gain(auc_lerf: Tensor, auc_morf: Tensor) -> Tensor:
    """SRG = AUC(LeRF) - AUC(MoRF) (Bluecher et al. 2024); higher is better, 0 for a random ranking on average."""
    return auc_lerf - auc_morf
