"""The result of an analyzer: what was explained, and how."""
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Explanation:
    """Attribution of each sample for its explained class.

    ``attribution`` has the shape of the input and is detached; ``output`` holds the model's logits
    on the input; ``target`` the explained class of each sample; ``method`` a readable name.
    """

    attribution: Tensor
    output: Tensor
    target: Tensor
    method: str
