"""Explanations are taken on logits: remove a trailing softmax from a model."""
import torch
from torch import fx, nn

SOFTMAX_TYPES = (nn.Softmax, nn.LogSoftmax, nn.Softmin)
#: The same as ops of an fx graph (an exported model: xai.from_exported).
SOFTMAX_OPS = (torch.ops.aten.softmax, torch.ops.aten._softmax, torch.ops.aten.log_softmax,
               torch.ops.aten._log_softmax)


def strip_softmax(model: nn.Module) -> nn.Module:
    """Replace a final Softmax/LogSoftmax (at the end of nested Sequentials) by Identity, in place; returns the model.

    A model without one is returned unchanged, so calling this defensively is safe. In an fx graph (an exported
    model) a softmax op or module whose result is the graph's output is taken out of the graph.
    """
    if isinstance(model, fx.GraphModule):
        return _strip_graph_softmax(model)
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


def _strip_graph_softmax(model: fx.GraphModule) -> fx.GraphModule:
    output = next(n for n in reversed(model.graph.nodes) if n.op == "output")
    last = output.args[0]
    is_op = getattr(last, "op", None) == "call_function" and getattr(last.target, "overloadpacket", None) in SOFTMAX_OPS
    is_module = getattr(last, "op", None) == "call_module" and isinstance(model.get_submodule(last.target),
                                                                          SOFTMAX_TYPES)
    if is_op or is_module:
        output.args = (last.args[0],)
        model.graph.erase_node(last)
        model.graph.lint()
        model.recompile()
    return model
