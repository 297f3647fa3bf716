"""torch.export (ATen, training IR) -> refold IR.

Parameters, buffers and constant tensors become constant Values that wrap the module's own tensors
(no copies) and keep their kind and state_dict name. Tensor arguments become node inputs; the rest
of each call's arguments is kept as a structure with ``TensorArg(i)`` placeholders, so any FX node
round-trips. ``getitem`` on multi-output ops becomes output indices.
"""
from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch

from refold.errors import SecurityError, UnsupportedError
from refold.ir.dtypes import DType
from refold.ir.graph import Graph, Model, Node, Value
from refold.ir.tensor import Tensor

ATEN = "aten"
_RANDOM_ATEN = {"dropout", "native_dropout", "rand", "randn", "rand_like", "randn_like", "randint",
                "randint_like", "bernoulli", "multinomial", "normal", "uniform", "randperm",
                "feature_dropout", "alpha_dropout"}
PYFN = "torch.fn"  # any other callable FX called (SymInt arithmetic, higher-order ops, ...)


@dataclasses.dataclass(frozen=True)
class TensorArg:
    """Placeholder in a node's argument structure for its ``index``-th input Value."""

    index: int


def _fake_type(val) -> tuple[DType | None, tuple | None]:
    if isinstance(val, torch.Tensor):
        shape = tuple(int(d) if isinstance(d, int) or not hasattr(d, "node") else str(d)
                      for d in val.shape)
        try:
            return DType.from_torch(val.dtype), shape
        except KeyError:
            return None, shape
    return None, None


def capture(model: torch.nn.Module, args: tuple, kwargs: dict | None = None):
    """Capture ``model`` as an ExportedProgram, or an FX GraphModule when export cannot.

    Tries torch.export (non-strict, torch's default), then strict export, then
    ``torch.fx.symbolic_trace``. If all fail, the error lists every construct that failed.
    """
    kwargs = kwargs or {}
    failures = []
    for strict in (False, True):
        try:
            return torch.export.export(model, tuple(args), kwargs, strict=strict), \
                f"torch.export(strict={strict})"
        except Exception as e:  # collect, then try the next way
            failures.append(f"torch.export(strict={strict}): {_first_line(e)}")
    try:
        gm = torch.fx.symbolic_trace(model)
        return gm, "torch.fx.symbolic_trace"
    except Exception as e:
        failures.append(f"torch.fx.symbolic_trace: {_first_line(e)}")
    breaks = _graph_breaks(model, args, kwargs)
    detail = "; ".join(failures + breaks)
    raise UnsupportedError(f"{type(model).__name__}: cannot capture the model ({detail})")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _graph_breaks(model, args, kwargs) -> list[str]:
    """Every construct dynamo could not trace (torch._dynamo.explain), deduplicated."""
    import contextlib
    import io

    try:
        import torch._dynamo

        torch._dynamo.reset()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ex = torch._dynamo.explain(model)(*args, **kwargs)
        reasons = []
        for b in ex.break_reasons:
            where = ""
            if b.user_stack:
                fr = b.user_stack[-1]
                where = f" at {fr.filename.split('/')[-1]}:{fr.lineno}"
            reasons.append(f"unsupported: {b.reason.splitlines()[0][:160]}{where}")
        return list(dict.fromkeys(reasons))
    except Exception:
        return []


def import_exported(ep, *, name: str = "main") -> Model:
    """An ExportedProgram as a refold Model (source 'torch')."""
    from torch.export.graph_signature import InputKind, OutputKind

    g = Graph(name)
    env: dict[str, Value] = {}
    sig = ep.graph_signature
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    user_inputs = []
    for node, spec in zip(placeholders, sig.input_specs):
        kind = spec.kind
        if kind == InputKind.USER_INPUT:
            dtype, shape = _fake_type(node.meta.get("val"))
            v = g.add_input(node.name, dtype, shape)
            v.meta["torch.placeholder"] = node.name
            user_inputs.append(v)
        elif kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            t = ep.state_dict.get(spec.target) if spec.target in ep.state_dict else ep.constants[spec.target]
            k = {InputKind.PARAMETER: "param", InputKind.BUFFER: "buffer"}.get(kind, "const")
            v = g.add_const(Tensor.from_torch(t), node.name, kind=k)
            v.meta["torch.target"] = spec.target
            v.meta["torch.persistent"] = spec.persistent
            if k == "param":
                v.meta["requires_grad"] = bool(t.requires_grad)
        else:
            raise UnsupportedError(f"{name}: input '{node.name}' of kind {kind.name} is not supported")
        _copy_meta(node, v)
        env[node.name] = v
    mutations = []
    for node in ep.graph.nodes:
        if node.op == "call_function":
            _import_call(g, node, env)
        elif node.op == "get_attr":
            # a higher-order op's body (e.g. an autocast region): carried opaque, exported as is
            obj = ep.graph_module.get_submodule(node.target)
            v = Value(node.name, kind="submodule")
            v.meta["torch.module"], v.meta["torch.target"] = obj, node.target
            g.claim_name(node.name)
            g.initializers[node.name] = v
            env[node.name] = v
        elif node.op == "output":
            outs = node.args[0]
            for spec, arg in zip(sig.output_specs, outs):
                v = env[arg.name] if arg is not None else None
                if spec.kind == OutputKind.USER_OUTPUT:
                    g.outputs.append(v)
                elif spec.kind == OutputKind.BUFFER_MUTATION:
                    mutations.append((spec.target, v))
                else:
                    raise UnsupportedError(f"{name}: output of kind {spec.kind.name} is not supported")
        elif node.op != "placeholder":
            raise UnsupportedError(f"{name}: FX node '{node.name}' with op {node.op} is not supported")
    model = Model(g, opset_imports={}, source="torch")
    mcg = ep.module_call_graph[0].signature if ep.module_call_graph else None
    model.meta["torch.in_spec"] = mcg.in_spec if mcg else None
    model.meta["torch.out_spec"] = mcg.out_spec if mcg else None
    model.meta["torch.mutations"] = mutations
    model.meta["torch.user_inputs"] = [v.name for v in user_inputs]
    return model


def _copy_meta(fx_node, target) -> None:
    for k in ("nn_module_stack", "stack_trace", "torch_fn", "source_fn_stack"):
        if k in fx_node.meta:
            target.meta[k] = fx_node.meta[k]


def _flatten_args(args, kwargs, env) -> tuple[list[Value], Any, Any]:
    inputs: list[Value] = []

    def walk(a):
        if isinstance(a, torch.fx.Node):
            v = env[a.name]
            inputs.append(v)
            return TensorArg(len(inputs) - 1)
        if isinstance(a, (list, tuple)):
            return type(a)(walk(x) for x in a)
        if isinstance(a, dict):
            return {k: walk(x) for k, x in a.items()}
        return a

    return inputs, walk(tuple(args)), walk(dict(kwargs))


def _import_call(g: Graph, node, env) -> None:
    target = node.target
    if target is operator.getitem and isinstance(node.args[0], torch.fx.Node) \
            and env[node.args[0].name].meta.get("torch.multi") is not None:
        parent = env[node.args[0].name].meta["torch.multi"]
        v = parent.outputs[node.args[1]]
        v.name = node.name
        g.claim_name(node.name)
        env[node.name] = v
        return
    inputs, args, kwargs = _flatten_args(node.args, node.kwargs, env)
    val = node.meta.get("val")
    multi = isinstance(val, (list, tuple))
    n_out = len(val) if multi else 1
    if isinstance(target, torch._ops.OpOverload) and target.namespace == ATEN:
        op, domain, overload = target._schema.name.split("::")[1], ATEN, target._overloadname
    else:
        op, domain, overload = getattr(target, "__name__", str(target)), PYFN, ""
    attrs = {"args": args, "kwargs": kwargs}
    n = Node(op, inputs, attrs, domain=domain, overload=overload, name=node.name,
             outputs=[f"{node.name}__{i}" for i in range(n_out)] if multi else [node.name])
    if domain == PYFN:
        n.meta["torch.callable"] = target
    # In-place and output-less ops (add_, copy_, asserts) act through effects: never drop or merge.
    schema = getattr(target, "_schema", None)
    if (schema is not None and (schema.is_mutable or not schema.returns)) or \
            (domain == PYFN and getattr(target, "__module__", "") != "_operator"):
        n.meta["side_effect"] = True
    if domain == ATEN and op in _RANDOM_ATEN:
        n.meta["side_effect"] = True
    _copy_meta(node, n)
    if multi:
        n.meta["torch.returns_sequence"] = type(val).__name__
        for o, ov in zip(n.outputs, val):
            o.dtype, o.shape = _fake_type(ov)
        handle = Value(node.name)
        handle.meta["torch.multi"] = n
        env[node.name] = handle
    else:
        n.outputs[0].dtype, n.outputs[0].shape = _fake_type(val)
        env[node.name] = n.outputs[0]
    g.append(n)


def import_module(model: torch.nn.Module, example_inputs, example_kwargs=None) -> Model:
    """Capture and import an ``nn.Module`` (with example inputs)."""
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    captured, how = capture(model, tuple(example_inputs), example_kwargs)
    if not hasattr(captured, "graph_signature"):
        raise UnsupportedError(f"{type(model).__name__}: only {how} could capture the model; refold "
                               f"needs torch.export (its FX graph has no ATen ops)")
    m = import_exported(captured, name=type(model).__name__)
    m.meta["torch.captured_by"] = how
    m.meta["torch.example_inputs"] = tuple(example_inputs)
    m.meta["torch.example_kwargs"] = dict(example_kwargs or {})
    return m


def load_torch_file(path: str, example_inputs=None, *, trust_code: bool = False) -> Model:
    """Load a saved torch program without running untrusted code.

    ``.pt2``: an ExportedProgram (``torch.export.load``). TorchScript archives contain code and are
    refused unless ``trust_code=True`` (then converted to an ExportedProgram with the example
    inputs). Anything else is read with ``torch.load(weights_only=True)``: a state dict holds no
    graph, so refold asks for the module instead.
    """
    import pickle
    import zipfile

    from refold.errors import InvalidModelError

    if path.endswith(".pt2"):
        try:
            return import_exported(torch.export.load(path))
        except (RuntimeError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise InvalidModelError(f"{path}: not a torch.export archive ({_first_line(e)})") from None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith(("constants.pkl", ".py")) or "/code/" in n for n in names):
            if not trust_code:
                raise SecurityError(f"{path}: is a TorchScript archive, which runs code when loaded; "
                                    f"pass trust_code=True if you trust it")
            if example_inputs is None:
                raise UnsupportedError(f"{path}: converting TorchScript needs example_inputs")
            from torch._export.converter import TS2EPConverter

            ts = torch.jit.load(path)
            return import_exported(TS2EPConverter(ts, tuple(example_inputs)).convert())
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise SecurityError(f"{path}: refused: holds more than weights ({_first_line(e)[:160]})") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise InvalidModelError(f"{path}: not a torch file ({_first_line(e)[:160]})") from None
    raise UnsupportedError(f"{path}: holds {type(obj).__name__} (weights only, no graph); pass the "
                           f"nn.Module and example inputs to refold.load instead")
