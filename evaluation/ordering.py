"""Rank the features of each sample once, and turn ranks into the step at which each feature is flipped."""
import torch
from torch import Tensor

ORDERS = ("morf", "lerf")


def check_order(order: str) -> None:
    if order not in ORDERS:
        raise ValueError(
            f"unknown order {order!r}: use 'morf' (most relevant first) or 'lerf' (least relevant first)"
        )


def step_of_rank(units: int, per_step: int | None, steps: int | None, what: str) -> Tensor:
    """The 1-based step at which the unit of rank r (0 = flipped first) is flipped, as a LongTensor (units,).

    ``per_step`` flips that many units per step (the last step may flip fewer): ceil(units / per_step) steps.
    ``steps`` spreads the units evenly over that many steps: rank r goes in step floor(r * steps / units) + 1.
    ``what`` names the unit in error messages (e.g. "pixels of a 1x32x32 input").
    """
    if (per_step is None) == (steps is None):
        raise ValueError("give exactly one of a number of features per step and a number of steps")
    count, name = (per_step, "features per step") if per_step is not None else (steps, "steps")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of {name} must be a positive int, got {count!r}")
    if count > units:
        raise ValueError(f"{count} {name} is more than the {units} {what} there are: use at most {units} {name}")
    rank = torch.arange(units)
    if per_step is not None:
        return rank // per_step + 1
    return rank * steps // units + 1


def number_of_steps(step_of: Tensor) -> int:
    return int(step_of[-1])


def flipped_fraction(step_of: Tensor) -> Tensor:
    """The x axis of a curve: fraction of units flipped after 0, 1, ..., steps steps (starts at 0, ends at 1)."""
    counts = torch.bincount(step_of, minlength=number_of_steps(step_of) + 1).cumsum(0)
    return counts.to(torch.float64) / step_of.numel()


def flip_step(relevance: Tensor, order: str, step_of: Tensor) -> Tensor:
    """Sort each sample's units once (stable, so ties keep their index order) and give each unit its flip step.

    ``relevance`` is (N, units); the result is a LongTensor (N, units) on the same device.
    """
    check_order(order)
    ranking = torch.argsort(relevance, dim=1, descending=order == "morf", stable=True)
    step_of = step_of.to(relevance.device)
    return torch.empty_like(ranking).scatter_(1, ranking, step_of.expand_as(ranking))
