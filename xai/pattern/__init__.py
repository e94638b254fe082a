"""PatternNet and PatternAttribution (Kindermans et al., ICLR 2018): patterns fitted from data (``fit``), kept and
matched to a model (``patterns``), and the analyzers that back-project with them (``analyzers``)."""
from xai.pattern.analyzers import PatternAttribution, PatternNet
from xai.pattern.fit import fit_patterns
from xai.pattern.patterns import LayerPattern, Patterns

__all__ = ["LayerPattern", "PatternAttribution", "PatternNet", "Patterns", "fit_patterns"]
