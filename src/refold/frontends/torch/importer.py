"""torch.export (ATen, training IR) -> refold IR.

Parameters, buffers and constant tensors become constant Values that wrap the module's own tensors
(no copies) and keep their kind and state_dict name. Tensor arguments become node inputs; the rest
of each call's arguments is kept as a structure with ``TensorArg(i)`` placeholders, so any FX node
round-trips. ``getitem`` on multi-output ops becomes output indices.
"""
from __future__ import annotations

import contextlib
import dataclasses
import operator
import re
import warnings
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
    """Placeholder in a node's argument structure for its ``index``-th input Value; ``scalar``
    where that value is a Python number, not a tensor (a symbolic size, ``sym_size(x, 0)``)."""

    index: int
    scalar: bool = False

    def __repr__(self) -> str:
        return f"TensorArg({self.index}{', scalar=True' if self.scalar else ''})"


def _dim(d) -> int | str:
    """A static size as an int (a SymInt the export specialised, such as conv's 3 input channels,
    prints as '3'); a symbolic one as its name."""
    if isinstance(d, int) or not hasattr(d, "node"):
        return int(d)
    text = str(d)
    return int(text) if text.lstrip("-").isdigit() else text


def _fake_type(val) -> tuple[DType | None, tuple | None]:
    if isinstance(val, torch.Tensor):
        shape = tuple(_dim(d) for d in val.shape)
        try:
            return DType.from_torch(val.dtype), shape
        except KeyError:
            return None, shape
    return None, None


AUTO = "auto"  # dynamic_shapes default: every dim of every tensor input Dim.AUTO


def pins_shapes(dynamic_shapes) -> bool:
    """Whether ``dynamic_shapes`` asks for the example's shapes exactly (None, False, {} or ())."""
    return dynamic_shapes is None or dynamic_shapes is False or \
        (isinstance(dynamic_shapes, (dict, tuple, list)) and not dynamic_shapes)


def _auto_shapes(args: tuple, kwargs: dict):
    """``Dim.AUTO`` for every dim of every tensor input (torch.export keeps a dim static where the
    model needs it to be), or None when no input has a dim."""
    from torch.utils._pytree import tree_leaves

    sc = torch.export.ShapesCollection()
    seen: set[int] = set()
    for t in tree_leaves((args, kwargs)):
        if isinstance(t, torch.Tensor) and t.dim() and id(t) not in seen:
            seen.add(id(t))
            sc[t] = {i: torch.export.Dim.AUTO for i in range(t.dim())}
    return sc if seen else None


def _has_unit_dim(args: tuple, kwargs: dict) -> bool:
    from torch.utils._pytree import tree_leaves

    return any(isinstance(t, torch.Tensor) and 1 in t.shape for t in tree_leaves((args, kwargs)))


def _shape_plans(args: tuple, kwargs: dict, dynamic_shapes) -> list[tuple[Any, bool, str]]:
    """The (dynamic_shapes, size-oblivious, label) tries for one export mode, best first."""
    if pins_shapes(dynamic_shapes):
        return [(None, False, "static shapes")]
    if not (isinstance(dynamic_shapes, str) and dynamic_shapes == AUTO):
        return [(dynamic_shapes, False, "the given dynamic_shapes")]
    auto = _auto_shapes(args, kwargs)
    if auto is None:
        return [(None, False, "static shapes")]
    plans = []
    if _has_unit_dim(args, kwargs):
        # torch.export pins dims of size 1 (0/1 specialization); size-oblivious tracing keeps them
        # dynamic (a batch of 1 in the example still serves any batch)
        plans.append((auto, True, "dynamic dims (size-oblivious)"))
    plans.append((auto, False, "dynamic dims"))
    plans.append((None, False, "static shapes"))
    return plans


def _export(model, args, kwargs, strict: bool, dynamic_shapes, oblivious: bool):
    ctx = contextlib.nullcontext()
    if oblivious:
        import torch.fx.experimental._config as fx_config

        ctx = fx_config.patch(backed_size_oblivious=True)
    with ctx:
        return torch.export.export(model, tuple(args), kwargs, strict=strict, dynamic_shapes=dynamic_shapes)


def register_output_types(model: torch.nn.Module) -> bool:
    """Register the pytree types a transformers model returns (its ``Cache`` classes), the way
    transformers' own torch.export exporter does; False where this transformers has no such hook."""
    hf = next((m for m in model.modules() if type(m).__module__.startswith("transformers.")), None)
    if hf is None:
        return False
    try:
        from transformers.exporters.exporter_dynamo import register_cache_pytrees_for_model
    except ImportError:
        return False
    try:
        register_cache_pytrees_for_model(hf)
    except Exception:
        return False
    return True


_UNKNOWN_TYPE = re.compile(r"Found <class '([\w.]+)'> in output, which is not a known type|"
                           r"unrecognized type UserDefinedObjectVariable\((\w+)\) at output")


def _unregistered_cache(failures: list[str]) -> str | None:
    """The name of a cache class the model returned that pytree does not know, if that failed it."""
    for f in failures:
        m = _UNKNOWN_TYPE.search(f)
        if m:
            name = (m.group(1) or m.group(2)).rsplit(".", 1)[-1]
            if name.endswith("Cache"):
                return name
    return None


@contextlib.contextmanager
def _no_cache(model: torch.nn.Module):
    """``config.use_cache = False`` on every submodule with a config, restored afterwards."""
    configs = {id(c): c for m in model.modules() if hasattr(c := getattr(m, "config", None), "use_cache")}
    saved = {k: c.use_cache for k, c in configs.items()}
    try:
        for c in configs.values():
            c.use_cache = False
        yield bool(configs)
    finally:
        for k, c in configs.items():
            c.use_cache = saved[k]


def capture(model: torch.nn.Module, args: tuple, kwargs: dict | None = None, *,
            dynamic_shapes: Any = AUTO, notes: list | None = None):
    """Capture ``model`` as an ExportedProgram, or an FX GraphModule when export cannot.

    Tries torch.export (non-strict, torch's default), then strict export, then
    ``torch.fx.symbolic_trace``. If all fail, the error lists every construct that failed.

    ``dynamic_shapes``: ``"auto"`` (every dim of every tensor input ``Dim.AUTO``: dynamic unless
    the model pins it; dims of size 1 too, traced size-oblivious; static shapes where export
    refuses); None, False, ``{}`` or ``()`` pin every dim to the example's; anything else goes to
    torch.export as it is. Cache types a transformers model returns are registered as pytree nodes;
    where they cannot be, the model is captured with ``config.use_cache=False`` and a line saying
    so is appended to ``notes`` (and warned).
    """
    kwargs = kwargs or {}
    register_output_types(model)
    failures: list[str] = []
    captured = _try_export(model, args, kwargs, dynamic_shapes, failures, notes)
    if captured is not None:
        return captured
    cache = _unregistered_cache(failures)
    if cache is not None:
        with _no_cache(model) as had_config:
            captured = _try_export(model, args, kwargs, dynamic_shapes, failures, notes) if had_config else None
        if captured is not None:
            note = (f"{type(model).__name__}: returns a {cache}, which is not a registered pytree type: "
                    f"captured with config.use_cache=False, so the cache is not in the outputs; to keep "
                    f"it, register {cache} with torch.utils._pytree.register_pytree_node first")
            warnings.warn(note, stacklevel=3)
            if notes is not None:
                notes.append(note)
            return captured
    try:
        gm = torch.fx.symbolic_trace(model)
        return gm, f"torch.fx.symbolic_trace ({'; '.join(dict.fromkeys(failures))})"
    except Exception as e:
        failures.append(f"torch.fx.symbolic_trace: {_first_line(e)}")
    breaks = _graph_breaks(model, args, kwargs)
    detail = "; ".join(list(dict.fromkeys(failures)) + breaks)
    raise UnsupportedError(f"{type(model).__name__}: cannot capture the model ({detail})")


def _try_export(model, args, kwargs, dynamic_shapes, failures: list[str], notes: list | None):
    """The first torch.export (non-strict, then strict) that succeeds, with how; failures noted.
    Falling back to static shapes from ``"auto"`` is said in ``notes`` (and warned)."""
    for strict in (False, True):
        refused = []
        plans = _shape_plans(tuple(args), kwargs, dynamic_shapes)
        for shapes, oblivious, label in plans:
            try:
                ep = _export(model, args, kwargs, strict, shapes, oblivious)
            except Exception as e:  # collect, then try the next way
                refused.append(_first_line(e))
                failures.append(f"torch.export(strict={strict}): {refused[-1]}")
                continue
            if shapes is None and len(plans) > 1:
                note = (f"{type(model).__name__}: captured with static shapes, the example's: "
                        f"torch.export refused dynamic dims ({refused[0]})")
                warnings.warn(note, stacklevel=4)
                if notes is not None:
                    notes.append(note)
            return ep, f"torch.export(strict={strict}, {label})"
    return None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


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
            reasons.append(f"unsupported: {b.reason.splitlines()[0]}{where}")
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
    model.meta["torch.aliases"] = tied_names(ep.state_dict.items())
    # the source's parameters and buffers: the exporter keeps the names of those passes dropped
    model.meta["torch.originals"] = [v for v in g.initializers.values() if v.kind in ("param", "buffer")]
    model.meta["torch.user_inputs"] = [v.name for v in user_inputs]
    model.meta["torch.device"] = _source_device(ep, placeholders)  # passes choosing the fastest kernel read it
    return model


def _source_device(ep, placeholders) -> str:
    """The device type ('cpu', 'cuda', ...) the program's weights live on, else its first input."""
    for t in ep.state_dict.values():
        if isinstance(t, torch.Tensor):
            return t.device.type
    for node in placeholders:
        if isinstance(node.meta.get("val"), torch.Tensor):
            return node.meta["val"].device.type
    return "cpu"


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
            val = a.meta.get("val")
            scalar = val is not None and not isinstance(val, (torch.Tensor, list, tuple))
            return TensorArg(len(inputs) - 1, scalar)
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


def import_module(model: torch.nn.Module, example_inputs, example_kwargs=None, *,
                  dynamic_shapes: Any = AUTO) -> Model:
    """Capture and import an ``nn.Module`` (with example inputs; ``dynamic_shapes`` as in
    :func:`capture`: by default every dim stays dynamic where the model allows)."""
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    notes: list[str] = []
    captured, how = capture(model, tuple(example_inputs), example_kwargs, dynamic_shapes=dynamic_shapes,
                            notes=notes)
    if not hasattr(captured, "graph_signature"):
        raise UnsupportedError(f"{type(model).__name__}: only {how} could capture the model; refold "
                               f"needs torch.export (its FX graph has no ATen ops)")
    m = import_exported(captured, name=type(model).__name__)
    m.meta["torch.captured_by"] = how
    m.meta["torch.notes"] = notes
    m.meta["torch.example_inputs"] = tuple(example_inputs)
    m.meta["torch.example_kwargs"] = dict(example_kwargs or {})
    m.meta["torch.aliases"] = tied_names([*model.named_parameters(remove_duplicate=False),
                                          *model.named_buffers(remove_duplicate=False)],
                                         m.meta.get("torch.aliases"))
    return m


def tied_names(named, known: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Names that share one tensor (tied weights), as first name -> the others, from ``(name,
    tensor)`` pairs, merged with ``known`` groups. The exporter registers the one tensor under all."""
    groups: list[list[str]] = [[first, *rest] for first, rest in (known or {}).items()]
    by_tensor: dict[int, list[str]] = {}
    for name, t in named:
        by_tensor.setdefault(id(t), []).append(name)
    groups += [names for names in by_tensor.values() if len(names) > 1]
    merged: list[list[str]] = []
    for grp in groups:
        hits = [m for m in merged if set(m) & set(grp)]
        new = list(dict.fromkeys([n for m in hits for n in m] + grp))
        merged = [m for m in merged if m not in hits] + [new]
    return {names[0]: names[1:] for names in merged}


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
        raise SecurityError(f"{path}: refused: holds more than weights ({_first_line(e)})") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise InvalidModelError(f"{path}: not a torch file ({_first_line(e)})") from None
    raise UnsupportedError(f"{path}: holds {type(obj).__name__} (weights only, no graph); pass the "
                           f"nn.Module and example inputs to refold.load instead")
