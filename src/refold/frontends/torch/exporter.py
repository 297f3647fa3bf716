"""refold IR -> a trainable ``torch.fx.GraphModule``.

Parameters come back as ``nn.Parameter`` (the same tensors, ``requires_grad`` kept) under their
original dotted names, buffers as buffers, so ``state_dict()`` keys match the source module's.
Inputs and outputs keep the source's pytree structure; buffer mutations are written back.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from refold.errors import UnsupportedError
from refold.frontends.torch.importer import ATEN, PYFN, TensorArg
from refold.ir.graph import CORE, Model, Node, Value


def _assign(root: torch.nn.Module, dotted: str, value, kind: str, persistent=True) -> None:
    *path, leaf = dotted.split(".")
    mod = root
    for p in path:
        if not hasattr(mod, p):
            mod.add_module(p, torch.nn.Module())
        mod = getattr(mod, p)
    if kind == "param":
        mod.register_parameter(leaf, value)
    elif kind == "buffer":
        mod.register_buffer(leaf, value, persistent=persistent is not False)
    else:
        setattr(mod, leaf, value)


def _rebuild(struct: Any, inputs: list) -> Any:
    if isinstance(struct, TensorArg):
        return inputs[struct.index]
    if isinstance(struct, (list, tuple)):
        return type(struct)(_rebuild(x, inputs) for x in struct)
    if isinstance(struct, dict):
        return {k: _rebuild(x, inputs) for k, x in struct.items()}
    return struct


def to_graph_module(model: Model) -> fx.GraphModule:
    """Build the GraphModule for a torch-sourced Model."""
    root = torch.nn.Module()
    graph = fx.Graph()
    env: dict[int, fx.Node] = {}
    g = model.graph
    names = {}
    for v in g.inputs:
        env[id(v)] = graph.placeholder(v.name)
    for v, target in _targets(g).items():
        if v.kind == "submodule":
            root.add_module(target, v.meta["torch.module"])
        elif v.kind == "param":
            t = v.const.torch()
            _assign(root, target, t if isinstance(t, torch.nn.Parameter) else torch.nn.Parameter(
                t, requires_grad=v.meta.get("requires_grad", True)), "param")
        else:
            _assign(root, target, v.const.torch(), v.kind if v.kind == "buffer" else "const",
                    v.meta.get("torch.persistent", True))
        names[id(v)] = target
    for node in g:
        ins = []
        for v in node.inputs:
            if id(v) not in env:
                if id(v) in names:
                    env[id(v)] = graph.get_attr(names[id(v)])
                else:
                    raise UnsupportedError(f"{node.label()}: reads '{v.name}', which is not defined")
            ins.append(env[id(v)])
        if node.domain == CORE:
            from refold.frontends.torch.lower import lower_core_node

            out = lower_core_node(graph, node, ins)
        else:
            out = graph.call_function(_target(node), _rebuild(node.attrs["args"], ins),
                                      _rebuild(node.attrs["kwargs"], ins))
        out.meta.update({k: node.meta[k] for k in ("nn_module_stack", "stack_trace") if k in node.meta})
        if node.meta.get("torch.returns_sequence") or len(node.outputs) > 1:
            for i, o in enumerate(node.outputs):
                env[id(o)] = graph.call_function(__import__("operator").getitem, (out, i))
        else:
            env[id(node.outputs[0])] = out
    for target, v in model.meta.get("torch.mutations", []):
        graph.call_function(torch.ops.aten.copy_.default, (graph.get_attr(target), _env(env, names, graph, v)))
    outs = [_env(env, names, graph, v) for v in g.outputs]
    graph.output(tuple(outs))
    in_spec, out_spec = model.meta.get("torch.in_spec"), model.meta.get("torch.out_spec")
    if in_spec is not None and out_spec is not None:
        from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo

        graph._codegen = _PyTreeCodeGen(_PyTreeInfo(model.meta.get("torch.user_inputs", []), in_spec, out_spec))
    gm = fx.GraphModule(root, graph, class_name=g.name or "RefoldModule")
    gm.graph.lint()
    return gm


def _targets(g) -> dict[Value, str]:
    """Attribute names for constants: each keeps its source name (``torch.target``) where it can.

    Values the graph reads claim names first, in order; a rewritten copy whose original is still
    read gets ``_folded`` appended; an original nothing reads any more yields its name to the copy
    and is dropped if no name is left for it.
    """
    outs = {id(v) for v in g.outputs}
    used = [v for v in g.initializers.values() if v._uses or id(v) in outs]
    unused = [v for v in g.initializers.values() if not (v._uses or id(v) in outs)]
    taken: dict[str, Value] = {}
    out: dict[Value, str] = {}
    for v in used:
        target = v.meta.get("torch.target") or f"_refold_const.{v.name}"
        while target in taken:
            target += "_folded"
        taken[target] = v
        out[v] = target
    for v in unused:
        target = v.meta.get("torch.target") or f"_refold_const.{v.name}"
        if target not in taken:
            taken[target] = v
            out[v] = target
    return out


def _env(env, names, graph, v: Value) -> fx.Node:
    if id(v) not in env:
        env[id(v)] = graph.get_attr(names[id(v)])
    return env[id(v)]


def _target(node: Node):
    if node.domain == ATEN:
        packet = getattr(torch.ops.aten, node.op)
        return getattr(packet, node.overload or "default")
    if node.domain == PYFN:
        return node.meta["torch.callable"]
    raise UnsupportedError(f"{node.label()}: no torch lowering for {node.qualified_op}")
