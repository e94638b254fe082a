"""Explanations are taken on logits: remove a trailing softmax from a model."""
from torch import nn

SOFTMAX_TYPES = (nn.Softmax, nn.LogSoftmax, nn.Softmin)


def strip_softmax(model: nn.Module) -> nn.Module:
    """Replace a final Softmax/LogSoftmax (at the end of nested Sequentials) by Identity, in place; returns the model.

    A model without one is returned unchanged, so calling this defensively is safe.
    """
    container, last = model, None
    while isinstance(container, nn.Sequential) and len(container) > 0:
        last_name = list(container._modules)[-1]
        last = container._modules[last_name]
        if isinstance(last, SOFTMAX_TYPES):
            container._modules[last_name] = nn.Identity()
            return model
        container = last
    if isinstance(model, SOFTMAX_TYPES):
        raise ValueError("the model is only a softmax; there is nothing left to explain")
    return model
