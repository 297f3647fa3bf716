"""refold IR -> a trainable ``torch.fx.GraphModule``.

Parameters come back as ``nn.Parameter`` (the same tensors, ``requires_grad`` kept) under their
original dotted names, buffers as buffers, so ``state_dict()`` keys match the source module's.
Inputs and outputs keep the source's pytree structure; buffer mutations are written back.
"""
from __future__ import annotations

from typing import Any

import numpy as np
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


def _numel(x) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else int(x.size)


def _rebuild(struct: Any, inputs: list) -> Any:
    if isinstance(struct, TensorArg):
        x = inputs[struct.index]
        if struct.scalar and isinstance(x, (torch.Tensor, np.ndarray)) and _numel(x) == 1:
            return x.item()  # a number (a symbolic size) a runner carried as a 1-element array
        return x
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
    state: list[tuple[str, Any, str, bool]] = []  # (name, tensor, kind, persistent)
    for v in g.inputs:
        env[id(v)] = graph.placeholder(v.name)
    for v, targets in _targets(g, model.meta.get("torch.aliases") or {},
                               model.meta.get("torch.originals") or ()).items():
        if v.kind == "submodule":
            root.add_module(targets[0], v.meta["torch.module"])
        elif v.kind == "param":
            t = v.const.torch()
            t = t if isinstance(t, torch.nn.Parameter) else torch.nn.Parameter(
                t, requires_grad=v.meta.get("requires_grad", True))
            state += [(target, t, "param", True) for target in targets]  # tied: one Parameter
        else:
            # a buffer keeps its persistence; a constant (lifted or made by a pass) is a
            # non-persistent buffer: it moves with .to() and is not in the state_dict
            persistent = v.kind == "buffer" and "torch.target" in v.meta and \
                v.meta.get("torch.persistent", True) is not False
            state += [(target, v.const.torch(), "buffer", persistent) for target in targets]
        names[id(v)] = targets[0]
    for target, t, kind, persistent in state:
        _assign(root, target, t, kind, persistent)
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
    # GraphModule copies only what the graph reads, every tensor as a persistent buffer: register
    # each name again, tied and unread names too, buffers with their persistence
    for target, t, kind, persistent in state:
        _assign(gm, target, t, kind, persistent)
    gm.graph.lint()
    return gm


def exported_node_count(model: Model) -> int:
    """How many call nodes the GraphModule built from ``model`` has (core ops lowered to ATen, one
    ``getitem`` per output of a multi-output op): what ``gm.graph`` shows a user."""
    gm = to_graph_module(model)
    return sum(1 for n in gm.graph.nodes if n.op.startswith("call_"))


def _targets(g, aliases: dict[str, list[str]] | None = None, originals=()) -> dict[Value, list[str]]:
    """Attribute names for constants, the first the one the graph reads: each keeps its source
    name (``torch.target``) and the names tied to it (``aliases``: first name -> the others).

    Values the graph reads claim names first. Where several claim one source name (an original
    and rewritten copies, or copies of a tied weight), each of its tied names goes to the value
    read in that name's module, the rest in order; a value left with no name gets ``_folded``
    appended. Originals nothing reads any more, and ``originals`` (the source's parameters and
    buffers) passes removed, keep the names still free (the source's tensors), or are dropped.
    Constants refold made (no source name) are ``_refold_const.<name>``.
    """
    groups: dict[str, list[str]] = {}
    for first, rest in (aliases or {}).items():
        for n in (first, *rest):
            groups[n] = [first, *rest]
    outs = {id(v) for v in g.outputs}
    used = [v for v in g.initializers.values() if v._uses or id(v) in outs]
    unused = [v for v in g.initializers.values() if not (v._uses or id(v) in outs)]
    present = {id(v) for v in g.initializers.values()}
    unused += [v for v in originals if id(v) not in present]
    by_name: dict[str, list[Value]] = {}
    for v in used:
        by_name.setdefault(v.meta.get("torch.target") or f"_refold_const.{v.name}", []).append(v)
    taken: set[str] = set()
    out: dict[Value, list[str]] = {}

    def claim(v: Value, name: str) -> None:
        taken.add(name)
        out.setdefault(v, []).append(name)

    for target, vals in by_name.items():
        names = [n for n in groups.get(target, [target]) if n not in taken]
        if target in names:  # the source name first
            names.remove(target)
            names.insert(0, target)
        if len(vals) > 1 and len(names) > 1:
            for n in list(names):
                module = n.rpartition(".")[0]
                readers = [v for v in vals if any(_in_module(p, module) for p in _reader_modules(v))]
                if len(readers) == 1:
                    claim(readers[0], n)
                    names.remove(n)
        for v in vals:
            if v not in out and names:
                claim(v, names.pop(0))
        for n in names:  # tied names nobody claimed stay with the first value
            claim(vals[0], n)
        for v in vals:
            if v not in out:
                name = target
                while name in taken:
                    name += "_folded"
                claim(v, name)
    for v in unused:
        target = v.meta.get("torch.target") or f"_refold_const.{v.name}"
        for n in groups.get(target, [target]):
            if n not in taken:
                claim(v, n)
    return out


def _reader_modules(v: Value) -> list[str]:
    """The innermost module path of each node that reads ``v``."""
    paths = []
    for node in v.users:
        stack = node.meta.get("nn_module_stack")
        if stack:
            entry = list(stack.values())[-1]
            paths.append(entry[0] if isinstance(entry, tuple) else str(entry))
    return paths


def _in_module(path: str, module: str) -> bool:
    return bool(module) and (path == module or path.endswith("." + module))


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
