"""Public path of the LRP rules (``from xai.rules import EpsilonRule``); they live in ``xai.lrp.rules``."""
from xai.lrp.rules import (AlphaBetaRule, ConstantRule, EpsilonRule, FlatRule, GammaRule, GateRule, LayerNormRule,
                           LinearRule, NormRule, PassRule, ProductRule, Rule, SoftmaxRule, UniformRule, WSquareRule,
                           ZBoxRule, ZeroRule, ZPlusRule, stabilize)

__all__ = ["AlphaBetaRule", "ConstantRule", "EpsilonRule", "FlatRule", "GammaRule", "GateRule", "LayerNormRule",
           "LinearRule", "NormRule", "PassRule", "ProductRule", "Rule", "SoftmaxRule", "UniformRule", "WSquareRule",
           "ZBoxRule", "ZPlusRule", "ZeroRule", "stabilize"]
