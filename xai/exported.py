"""Exported graphs (``torch.export``, MLflow's ``pt2`` format) rebuilt as module trees, so every analyzer runs on them.

An exported program's ``.module()`` is an fx ``GraphModule`` of aten ops: ``aten.conv2d(x, weight, bias)`` where the
original model called an ``nn.Conv2d``. LRP assigns rules to layers, CAMs pick a layer by its path, PatternNet fits a
pattern per Linear/Conv and DeepLIFT finds the non-linearities: all of them look for modules. ``from_exported`` turns
each layer op back into the torch.nn module it came from, at the module's original path (the graph's
``nn_module_stack``) and with the exported tensors themselves, so ``rules={"features.0": ...}`` and
``layer="layer4"`` mean what they meant on the original model and the attributions are the same. The other ops
(``add``, ``view``, ``mean``, ...) stay aten calls; the LRP engine knows them by their op name, as their torch forms.
Each block of the original (``layer4``, ``features.3``) is a module again, called on the block's output (the
last op inside it) as an identity, so that hooks on a block see what the block returned, as on the original.
The export's input-shape guards are dropped, which also lets the rebuilt module switch between eval and train mode.
"""
from functools import reduce
from typing import Any, Callable

import torch
from torch import Tensor, fx, nn
from torch.utils import _pytree as pytree

aten = torch.ops.aten


def _conv(kind: type[nn.Module]) -> Callable[[dict], nn.Module]:
    def build(a: dict) -> nn.Module:
        weight = a["weight"]
        groups = a.get("groups", 1)
        return kind(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=a.get("stride", 1),
                    padding=a.get("padding", 0), dilation=a.get("dilation", 1), groups=groups,
                    bias=a.get("bias") is not None)
    return build


def _batch_norm(a: dict) -> nn.Module:
    if a.get("training"):
        raise ValueError("the exported graph normalises with batch statistics (BatchNorm in train mode): export the "
                         "model in eval mode (model.eval() before torch.export.export / mlflow.pytorch.log_model)")
    rank = a["input"].dim()
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
    return kind(a["running_mean"].shape[0], eps=a["eps"], momentum=a["momentum"], affine=a["weight"] is not None)


#: aten op -> the module that computes it, built from the op's arguments by name (tensors are set afterwards).
MODULE_OF_OP: dict[Any, Callable[[dict], nn.Module]] = {
    aten.conv1d: _conv(nn.Conv1d),
    aten.conv2d: _conv(nn.Conv2d),
    aten.conv3d: _conv(nn.Conv3d),
    aten.linear: lambda a: nn.Linear(a["weight"].shape[1], a["weight"].shape[0], bias=a.get("bias") is not None),
    aten.batch_norm: _batch_norm,
    aten.layer_norm: lambda a: nn.LayerNorm(a["normalized_shape"], eps=a.get("eps", 1e-5),
                                            elementwise_affine=a.get("weight") is not None,
                                            bias=a.get("bias") is not None),
    aten.relu: lambda a: nn.ReLU(),
    aten.relu_: lambda a: nn.ReLU(inplace=True),
    aten.gelu: lambda a: nn.GELU(approximate=a.get("approximate", "none")),
    aten.silu: lambda a: nn.SiLU(),
    aten.sigmoid: lambda a: nn.Sigmoid(),
    aten.tanh: lambda a: nn.Tanh(),
    aten.hardtanh: lambda a: nn.Hardtanh(a.get("min_val", -1.0), a.get("max_val", 1.0)),
    aten.leaky_relu: lambda a: nn.LeakyReLU(a.get("negative_slope", 0.01)),
    aten.max_pool2d: lambda a: nn.MaxPool2d(a["kernel_size"], a.get("stride") or None, a.get("padding", 0),
                                            a.get("dilation", 1), ceil_mode=a.get("ceil_mode", False)),
    aten.avg_pool2d: lambda a: nn.AvgPool2d(a["kernel_size"], a.get("stride") or None, a.get("padding", 0),
                                            a.get("ceil_mode", False), a.get("count_include_pad", True),
                                            a.get("divisor_override")),
    aten.adaptive_avg_pool2d: lambda a: nn.AdaptiveAvgPool2d(a["output_size"]),
    aten.dropout: lambda a: nn.Dropout(a.get("p", 0.5)),
    aten.flatten: lambda a: nn.Flatten(a.get("start_dim", 0), a.get("end_dim", -1)),
}
#: The op's tensor arguments that become the module's parameters and buffers (argument name -> attribute name).
TENSOR_ARGUMENTS = {
    aten.conv1d: ("weight", "bias"), aten.conv2d: ("weight", "bias"), aten.conv3d: ("weight", "bias"),
    aten.linear: ("weight", "bias"), aten.layer_norm: ("weight", "bias"),
    aten.batch_norm: ("weight", "bias", "running_mean", "running_var"),
}
#: Calls of the export's own helpers that check the input's shape: not part of the model's computation.
GUARD_MODULES = ("_guards_fn",)


def from_exported(program: "torch.export.ExportedProgram | fx.GraphModule") -> fx.GraphModule:
    """The model of an exported program (or of its ``.module()``) with its layer ops as torch.nn modules, in eval
    mode. Its outputs equal the exported module's; the tensors are shared, not copied."""
    exported = program.module() if isinstance(program, torch.export.ExportedProgram) else program
    if not isinstance(exported, fx.GraphModule):
        raise TypeError(f"from_exported takes a torch.export.ExportedProgram or its .module(), not a "
                        f"{type(exported).__name__}")
    return _Rebuild(exported).module().eval()


class _Rebuild:
    """One pass over the exported graph that copies it into a new graph on a new root module."""

    def __init__(self, exported: fx.GraphModule):
        self.exported = exported
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.nodes: dict[fx.Node, fx.Node] = {}
        self.lifted: dict[str, tuple[Any, tuple]] = {}  # path -> (op, identity of its tensors and settings)
        self.blocks: dict[fx.Node, list[str]] = {}  # new node -> the paths of the original modules it ran in

    def module(self) -> fx.GraphModule:
        for node in self.exported.graph.nodes:
            if node.op == "get_attr" or (node.op == "call_module" and node.target in GUARD_MODULES):
                continue  # tensors are copied where an op that is not lifted reads them (_copy)
            if node.op == "output":
                self.graph.output(self._output(node))
            elif node.op == "call_function" and getattr(node.target, "overloadpacket", None) in MODULE_OF_OP:
                self.nodes[node] = self._lift(node)
            else:
                self.nodes[node] = self.graph.node_copy(node, self._copy)
            if node in self.nodes:
                self.blocks[self.nodes[node]] = [p for p, _ in (node.meta.get("nn_module_stack") or {}).values() if p]
        self._call_blocks()
        return fx.GraphModule(self.root, self.graph, class_name=type(self.exported).__name__)

    def _call_blocks(self) -> None:
        """After the last op of each block, call the block (an identity) on its result; deepest blocks first."""
        blocks = {p for paths in self.blocks.values() for p in paths if p not in self.lifted}
        order = {node: i for i, node in enumerate(self.graph.nodes)}
        for path in sorted(blocks, key=lambda p: -p.count(".")):
            inside = [n for n, paths in self.blocks.items() if path in paths]
            if not isinstance(_get(self.root, path), ExportedBlock) or not inside:
                continue
            last = max(inside, key=lambda n: order.get(n, -1))
            with self.graph.inserting_after(last):
                call = self.graph.call_module(path, (last,))
            last.replace_all_uses_with(call, delete_user_cb=lambda user: user is not call
                                       and path not in self.blocks.get(user, ()))
            outer = self.blocks[last]
            self.blocks[call] = outer[:outer.index(path)]
            order = {node: i for i, node in enumerate(self.graph.nodes)}

    def _copy(self, node: fx.Node) -> fx.Node:
        if node not in self.nodes:  # a get_attr: its tensor moves to the same path in the new root
            self._keep_attribute(node.target)
            self.nodes[node] = self.graph.get_attr(node.target)
        return self.nodes[node]

    def _output(self, node: fx.Node) -> Any:
        leaves = pytree.tree_leaves(node.args[0])
        spec = getattr(self.exported, "_out_spec", None)
        copied = [self._copy(leaf) if isinstance(leaf, fx.Node) else leaf for leaf in leaves]
        return pytree.tree_unflatten(copied, spec) if spec is not None else tuple(copied)

    def _lift(self, node: fx.Node) -> fx.Node:
        op = node.target.overloadpacket
        arguments = self._arguments(node)
        module = MODULE_OF_OP[op](arguments)
        tensors = {name: arguments[name] for name in TENSOR_ARGUMENTS.get(op, ()) if arguments.get(name) is not None}
        for name, tensor in tensors.items():
            if not isinstance(tensor, Tensor):
                raise ValueError(f"the exported graph computes the {name} of {node.name} ({op}) in the graph: "
                                 f"rebuilding a {type(module).__name__} needs it as a parameter or buffer")
            delattr(module, name)
            if isinstance(tensor, nn.Parameter):
                module.register_parameter(name, tensor)
            else:
                module.register_buffer(name, tensor)
        identity = (op, tuple(id(t) for t in tensors.values()), repr(module))
        path = self._path_for(node, module, identity)
        if path not in self.lifted:
            _put(self.root, path, module)
            self.lifted[path] = identity
        source = node.args[0]
        return self.graph.call_module(path, (self._copy(source),))

    def _arguments(self, node: fx.Node) -> dict[str, Any]:
        """The op's arguments by name (defaults left out), with get_attr nodes replaced by their tensors."""
        schema = node.target._schema
        named = dict(zip([a.name for a in schema.arguments], node.args)) | dict(node.kwargs)
        input_node = named[schema.arguments[0].name]
        named["input"] = input_node.meta.get("val") if isinstance(input_node, fx.Node) else input_node
        return {k: (self._tensor(v) if isinstance(v, fx.Node) and k != "input" else v) for k, v in named.items()}

    def _tensor(self, node: fx.Node) -> Any:
        if node.op != "get_attr":
            return node  # computed in the graph: _lift refuses it by name
        return reduce(getattr, node.target.split("."), self.exported)

    def _path_for(self, node: fx.Node, module: nn.Module, identity: tuple) -> str:
        """The original module's path when the op is that module's whole computation, else a new one beside it."""
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        path, kind = stack[-1] if stack else ("", "")
        if path and kind.rsplit(".", 1)[-1] == type(module).__name__:
            if self.lifted.get(path, identity) == identity:
                return path
        beside = path and isinstance(_get(self.root, path), (ExportedBlock, type(None)))  # a block, not a layer
        return f"{path}.{node.name}" if beside else node.name

    def _keep_attribute(self, target: str) -> None:
        """A tensor that an op other than a lifted layer reads (a class token, a scale): put it at the same path."""
        if _get(self.root, target) is not None:
            return
        value = reduce(getattr, target.split("."), self.exported)
        parent_path, _, name = target.rpartition(".")
        parent = _container(self.root, parent_path)
        if isinstance(value, nn.Parameter):
            parent.register_parameter(name, value)
        elif isinstance(value, Tensor):
            parent.register_buffer(name, value)
        else:
            setattr(parent, name, value)


def _get(root: nn.Module, path: str) -> Any:
    value: Any = root
    for part in path.split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


class ExportedBlock(nn.Module):
    """A block of the original model (``layer4``) in the rebuilt one: it holds the block's layers, and the graph calls
    it on the block's output, which it returns unchanged, so that hooks on the block see that output."""

    def forward(self, x: Any) -> Any:
        return x


def _container(root: nn.Module, path: str) -> nn.Module:
    """The module at ``path`` below ``root``, made of blocks where nothing is yet."""
    module = root
    for part in filter(None, path.split(".")):
        child = getattr(module, part, None)
        if child is None:
            child = ExportedBlock()
            module.add_module(part, child)
        module = child
    return module


def _put(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    _container(root, parent_path).add_module(name, module)


__all__ = ["ExportedBlock", "from_exported"]
