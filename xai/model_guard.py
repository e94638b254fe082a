"""Analyzers borrow the user's model; this puts back everything they touch, also after an exception."""
from contextlib import contextmanager
from typing import Iterator

from torch import nn

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


@contextmanager
def borrowed(model: nn.Module) -> Iterator[nn.Module]:
    """Run the model in eval mode with frozen parameters; restore modes, ``requires_grad`` flags and hooks after.

    Eval mode keeps BatchNorm statistics unchanged and Dropout deterministic; frozen parameters
    spare autograd the parameter gradients nobody asked for.
    """
    modules = list(model.modules())
    training = [m.training for m in modules]
    hooks = [{name: dict(getattr(m, name)) for name in _HOOK_DICTS if hasattr(m, name)} for m in modules]
    params = list(model.parameters())
    requires_grad = [p.requires_grad for p in params]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for m, was_training, saved in zip(modules, training, hooks):
            m.training = was_training
            for name, content in saved.items():
                current = getattr(m, name)
                current.clear()
                current.update(content)
        for p, flag in zip(params, requires_grad):
            p.requires_grad_(flag)


def model_device(model: nn.Module):
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    import torch

    return torch.device("cpu")
