"""Layer-wise relevance propagation: the engine (``engine``), its rules (``rules``), rule presets by layer kind
(``composites``), BatchNorm merging and affine layers (``canonize``) and the check that refuses what it cannot
explain (``model_check``)."""
from xai.lrp.engine import LRP

__all__ = ["LRP"]
