"""Public path of the LRP composites (``from xai.composites import EpsilonGammaBox``); they live in
``xai.lrp.composites``."""
from xai.lrp.composites import (AttnLRP, ByName, ByType, Composite, CPLRP, EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat,
                                EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat, FirstLayer, IndexRange,
                                default_composite)

__all__ = ["AttnLRP", "ByName", "ByType", "CPLRP", "Composite", "EpsilonAlpha2Beta1", "EpsilonAlpha2Beta1Flat",
           "EpsilonGammaBox", "EpsilonPlus", "EpsilonPlusFlat", "FirstLayer", "IndexRange", "default_composite"]
