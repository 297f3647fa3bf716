"""One fused block -> one TVM kernel.

The block's core ops are written as one Relax function marked ``Primitive`` and called from
``main``; ``LegalizeOps`` + ``FuseTIR`` then leave exactly one TIR PrimFunc in destination-passing
style ``(inputs..., out)`` (../shared/TVM_NOTES.md), built for the target and called with torch
tensors (DLPack, no copy). Symbolic batch / sequence / H / W dims stay symbolic: one kernel serves
every size.

    relu(conv(x, W, b))  ->  PrimFunc conv_bias_act_0(x, W, b, out)

>>> kernel = build_block(block, target="llvm")   # doctest: +SKIP
>>> y = kernel(x, w, b)                          # doctest: +SKIP
"""
from __future__ import annotations

import os
from typing import Any

from refold.codegen.cubin import ARCH, compile_cubin, install_hook, nvcc_path
from refold.errors import UnsupportedError
from refold.ir.graph import CORE, Node
from refold.lowering.partition import Block

TVM_HINT = "TVM is not installed: pip install 'refold[tvm]'"


def require_tvm():
    """``tvm``, or one clear error naming the extra to install."""
    # kernels run between torch ops: TVM's workers sleep when a kernel ends instead of spinning,
    # which on a small machine starves the torch threads that run next (set it to override)
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    try:
        import tvm
    except ImportError:
        raise UnsupportedError(TVM_HINT) from None
    return tvm


class Kernel:
    """A built block: call it with the block's inputs (torch tensors, in ``block.inputs``
    order); it returns the block's output."""

    def __init__(self, block: Block, func, out_shape, out_dtype: str, dims: dict[str, Any], source: str,
                 module=None, func_name: str = ""):
        self.block = block
        self.func = func
        self.module = module  # the built library (what the cache exports)
        self.func_name = func_name
        self.out_shape = out_shape
        self.out_dtype = out_dtype
        self.dims = dims  # symbolic dim name -> (input index, axis) that sets it
        self.source = source
        self._shapes: dict[tuple, list[int]] = {}
        self.schedule = ""  # the dlight rule that scheduled a GPU kernel
        self.binary = b""  # the cubin a CUDA kernel carries ("" when the GPU compiles it at load)
        self.static: tuple | None = None  # a tuned kernel: the only input shapes it serves
        self.generic: Kernel | None = None  # ... and the kernel for every other shape
        self.equal: list[tuple[int, int, int, int]] = []  # (i, a, j, b): input i's dim a equals input
        # j's dim b (j = -1: equals b), as the kernel takes it
        self.files: tuple[str, ...] = ()  # where the cache keeps it (library, metadata)

    def _shape_of(self, shapes: list[tuple]) -> list[int]:
        """The output shape for these input shapes: the block's core ops run on meta tensors."""
        key = tuple(shapes)
        if key not in self._shapes:
            import torch

            meta = [torch.empty(s, dtype=v.dtype.torch() if v.dtype else torch.float32, device="meta")
                    for v, s in zip(self.block.inputs, shapes)]
            self._shapes[key] = list(self.block.reference(meta).shape)
        return self._shapes[key]

    def __call__(self, *args):
        import torch

        if self.func is None:
            raise UnsupportedError(f"block {self.block.name}: its CUDA kernel runs on a GPU; this machine has none")
        args = [a.contiguous() for a in args]  # kernels take compact arrays
        if any(args[i].shape[a] != (args[j].shape[b] if j >= 0 else b) for i, a, j, b in self.equal):
            return self.block.reference(args)  # sizes the kernel took as equal differ: the ops in torch
        if self.static is not None and tuple(tuple(a.shape) for a in args) != self.static:
            if self.generic is None:
                raise UnsupportedError(f"block {self.block.name}: tuned for {self.static}, called with other shapes")
            return self.generic(*args)
        sizes = {name: args[i].shape[ax] for name, (i, ax) in self.dims.items()}
        if any(d is None for d in self.out_shape):  # a dim no input names: the ops' own answer
            shape = self._shape_of([tuple(a.shape) for a in args])
        else:
            shape = [d if isinstance(d, int) else sizes[d] for d in self.out_shape]
        out = torch.empty(shape, dtype=getattr(torch, self.out_dtype), device=args[0].device)
        if out.is_cuda:  # launch on torch's current stream, ordered with the torch ops around it
            import tvm_ffi

            with tvm_ffi.use_torch_stream():
                self.func(*args, out)
        else:
            self.func(*args, out)
        return out


def build_block(block: Block, target: str = "llvm", *, cubin: bool | None = None,
                cubin_folder: str | None = None, tune_trials: int = 0,
                shapes: dict[str, tuple] | None = None) -> Kernel:
    """Build ``block`` into one kernel for ``target`` (``llvm``, or ``cuda``: CUDA C, and its cubin
    for sm_90 when ``cubin`` is true or, by default, when nvcc is found; cubins cached under
    ``cubin_folder``). ``tune_trials``: MetaSchedule search of that many measured candidates,
    for the inputs' sizes in ``shapes`` (value name -> shape); the kernel then serves those only."""
    tvm = require_tvm()
    from tvm import relax, tirx

    if len(block.outputs) != 1:
        raise UnsupportedError(f"block {block.name}: {len(block.outputs)} outputs (one kernel writes one)")
    static = static_shapes(block, shapes) if tune_trials else None
    syms: dict[str, Any] = {}
    dims: dict[str, tuple[int, int]] = {}
    equal: list[tuple[int, int, int, int]] = []  # (i, axis, j, axis) taken equal: checked per call
    params, names, infos = [], [], []
    env: dict[int, Any] = {}
    alias = _broadcast_aliases(block) if static is None else {}
    shared = set(alias.values())  # names standing for several unknowns: each further place is checked
    for i, v in enumerate(block.inputs):
        shape = []
        for ax, d in enumerate(v.shape or ()):
            if static is not None:
                d = static[i][ax]
            if isinstance(d, int) and d >= 0:
                shape.append(d)
            else:
                # unknown: a size of its own, except the leading (batch) axis, one for all inputs
                d = d if _named(d) else ("batch" if ax == 0 else f"in{i}_{ax}")
                d = alias.get(d, d)
                if isinstance(d, int):  # taken as the fixed size it meets: checked per call
                    equal.append((i, ax, -1, d))
                    shape.append(d)
                    continue
                if d not in syms:
                    syms[d] = tirx.Var(_ident(d), "int64")
                    dims[d] = (i, ax)
                elif d in shared and (i, ax) != dims[d]:
                    equal.append((*dims[d], i, ax))
                shape.append(syms[d])
        if v.shape is None or v.dtype is None:
            raise UnsupportedError(f"block {block.name}: input '{v.name}' has no known type")
        info = relax.TensorType(shape, v.dtype.numpy().name)
        var = relax.Var(_ident(v.name), info)
        params.append(var)
        names.append(_ident(v.name))
        infos.append(info)
        env[id(v)] = var
    bb = relax.BlockBuilder()
    with bb.function(block.name, params, attrs={"Primitive": True}):
        with bb.dataflow():
            for n in block.nodes:
                out = _emit(bb, relax, n, [env.get(id(u)) if u is not None else None for u in n.inputs])
                env[id(n.outputs[0])] = bb.emit(out)
            result = bb.emit_output(env[id(block.outputs[0])])
        bb.emit_func_output(result)
    mod = bb.get()
    gv = mod.get_global_var(block.name)
    outer = relax.BlockBuilder(mod)
    args = [relax.Var(name, info) for name, info in zip(names, infos)]
    with outer.function("main", args):
        outer.emit_func_output(outer.emit(relax.Call(gv, args)))
    mod = relax.transform.FuseTIR()(relax.transform.LegalizeOps()(outer.get()))
    prims = [g.name_hint for g, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)]
    if len(prims) != 1:
        raise UnsupportedError(f"block {block.name}: {len(prims)} kernels, not one ({', '.join(prims)})")
    tgt = tvm.target.Target({"kind": target} if target == "llvm" else
                            {"kind": "cuda", "arch": ARCH, "max_shared_memory_per_block": 49152,
                             "max_threads_per_block": 1024, "thread_warp_size": 32})
    schedule = ""
    if tune_trials:
        from refold.codegen.tune import tune

        if syms:
            raise UnsupportedError(f"block {block.name}: tuning needs the sizes of {', '.join(syms)} (example inputs)")
        check_can_tune(target)

        mod, records = tune(mod, prims[0], tgt, tune_trials)
        schedule = f"MetaSchedule ({records} measured)"
    elif target == "cuda":
        mod, schedule = _gpu_schedule(tvm, mod, tgt)
    lib = tvm.compile(mod, target=tgt)
    source = _device_source(lib.mod) if target != "llvm" else ""
    binary = b""
    if target == "cuda" and (cubin or (cubin is None and nvcc_path())):
        binary = compile_cubin(source, tgt.arch, folder=cubin_folder)  # compiles here, or fails here
    if target == "cuda" and gpu_present():
        install_hook(tgt.arch, cubin_folder)  # the runtime loads the cubin above instead of compiling
    func = _function(lib.mod.imports[0], prims[0], target)
    out = block.outputs[0]
    out_shape = [d if isinstance(d, int) and d >= 0 else (d if d in syms else None) for d in out.shape]
    kernel = Kernel(block, func, out_shape, out.dtype.numpy().name, dims, source, lib.mod.imports[0], prims[0])
    kernel.schedule = schedule
    kernel.static = tuple(static) if static is not None else None
    kernel.equal = equal
    kernel.binary = binary
    return kernel


def static_shapes(block: Block, shapes: dict[str, tuple] | None) -> list[tuple]:
    """Each input's shape at the sizes in ``shapes`` (value name -> shape), its own where absent:
    the shapes a tuned kernel is built for."""
    return [tuple(shapes[v.name]) if shapes and v.name in shapes else tuple(v.shape or ()) for v in block.inputs]


def check_can_tune(target: str) -> None:
    """Tuning times candidates where they run: a CUDA kernel needs the GPU."""
    if target != "llvm" and not gpu_present():
        raise UnsupportedError(f"tuning {target} kernels times them on a GPU; this machine has none")


def _broadcast_aliases(block: Block) -> dict[str, str | int]:
    """Unknown dims that meet at the same (right-aligned) axis of an elementwise op's operands
    (or a matmul's batch axes, or its contraction), each mapped to one name, or to the fixed
    size one of them meets: TVM must prove two sizes broadcast, and distinct unknowns it cannot.
    The kernel then takes them as equal and checks it on every call."""
    import networkx as nx

    g = nx.Graph()
    for n in block.nodes:
        if n.op not in ("add", "sub", "mul", "div", "matmul") or len(n.inputs) != 2 or None in n.inputs:
            continue
        a, b = (tuple(u.shape or ()) for u in n.inputs)
        pairs = list(zip(reversed(a), reversed(b)))
        if n.op == "matmul":  # batch dims broadcast; a's columns meet b's rows
            pairs = list(zip(reversed(a[:-2]), reversed(b[:-2]))) + ([(a[-1], b[-2])] if len(a) and len(b) > 1 else [])
        for x, y in pairs:
            if _named(x) and (_named(y) or (isinstance(y, int) and y > 1)) and x != y:
                g.add_edge(x, y)
            elif _named(y) and isinstance(x, int) and x > 1:
                g.add_edge(y, x)
    out = {}
    for part in nx.connected_components(g):
        sizes = {d for d in part if isinstance(d, int)}
        if len(sizes) > 1:
            continue  # two different fixed sizes: nothing to assume, TVM decides
        rep = sizes.pop() if sizes else min(part)  # an unknown that meets a fixed size is that size
        out.update({d: rep for d in part if isinstance(d, str)})
    return out


def _named(d) -> bool:
    return isinstance(d, str) and d not in ("?", "")


def gpu_present() -> bool:
    """Whether CUDA kernels can run here (torch sees a GPU)."""
    import torch

    return torch.cuda.is_available()


def _function(module, name: str, target: str):
    """The kernel's entry point; None for a CUDA kernel on a machine without a GPU (TVM's
    CUDA runtime needs the driver)."""
    return module[name] if target == "llvm" or gpu_present() else None


GPU_RULES = ("Matmul", "GEMV", "Reduction", "GeneralReduction", "Fallback")


def _gpu_schedule(tvm, mod, target):
    """dlight's default GPU rules tried one at a time (``ApplyDefaultSchedule`` changes its input
    and stops at the first rule that raises): the module scheduled by the first that applies."""
    from tvm.s_tir import dlight as dl

    for name in GPU_RULES:
        trial = tvm.ir.load_json(tvm.ir.save_json(mod))  # a copy: the rule edits what it is given
        try:
            with target:
                scheduled = dl.ApplyDefaultSchedule(getattr(dl.gpu, name)())(trial)
        except Exception:
            continue
        funcs = [f for f in scheduled.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
        if funcs and all(f.attrs is not None and f.attrs.get("tirx.is_scheduled", False) for f in funcs):
            return scheduled, name
    raise UnsupportedError("no dlight GPU rule schedules this block")


def _device_source(module) -> str:
    """The device code (CUDA C) among the built library's imports."""
    stack = [module]
    while stack:
        m = stack.pop()
        if m.kind == "cuda":
            return m.inspect_source()
        stack.extend(m.imports)
    return ""


def _ident(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name) or "v"


def _emit(bb, relax, n: Node, ins: list):
    """One core op as Relax (an op outside the table is an UnsupportedError: the block falls
    back to torch)."""
    R = relax.op
    a = n.attrs
    if n.domain != CORE:
        raise UnsupportedError(f"{n.label()}: {n.qualified_op} has no TVM lowering")
    if n.op == "conv":
        w = n.inputs[1]
        k = len(w.shape) - 2
        if k != 2:
            raise UnsupportedError(f"{n.label()}: {k}-d convolution has no TVM lowering here")
        pads = list(a.get("pads") or [0] * 4)
        y = R.nn.conv2d(ins[0], ins[1], strides=a.get("strides") or [1, 1], padding=[pads[0], pads[1], pads[2], pads[3]],
                        dilation=a.get("dilations") or [1, 1], groups=a.get("group", 1))
        if len(ins) > 2 and ins[2] is not None:
            y = R.add(y, R.reshape(ins[2], (1, -1, 1, 1)))
        return y
    if n.op == "linear":
        y = R.matmul(ins[0], R.permute_dims(ins[1]))
        return R.add(y, ins[2]) if len(ins) > 2 and ins[2] is not None else y
    if n.op == "gemm":
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise UnsupportedError(f"{n.label()}: gemm with transA / alpha / beta has no TVM lowering here")
        y = R.matmul(ins[0], R.permute_dims(ins[1]) if a.get("transB", 0) else ins[1])
        return R.add(y, ins[2]) if len(ins) > 2 and ins[2] is not None else y
    if n.op == "matmul":
        return R.matmul(ins[0], ins[1])
    binary = {"add": R.add, "sub": R.subtract, "mul": R.multiply, "div": R.divide}
    if n.op in binary:
        return binary[n.op](ins[0], ins[1])
    unary = {"relu": R.nn.relu, "sigmoid": R.sigmoid, "tanh": R.tanh, "sqrt": R.sqrt, "silu": R.nn.silu}
    if n.op in unary:
        return unary[n.op](ins[0])
    if n.op == "gelu":
        return R.nn.gelu_tanh(ins[0]) if a.get("approximate") == "tanh" else R.nn.gelu(ins[0])
    if n.op == "hardswish":  # x * clip(x + 3, 0, 6) / 6
        x = ins[0]
        return R.divide(R.multiply(x, R.clip(R.add(x, relax.const(3.0, "float32")), 0, 6)), relax.const(6.0, "float32"))
    if n.op in ("layer_norm", "rms_norm"):
        rank = len(n.inputs[0].shape)
        axes = list(range(a.get("axis", -1) % rank, rank))
        eps = float(a.get("epsilon", 1e-5))
        if n.op == "rms_norm":
            return R.nn.rms_norm(ins[0], ins[1], axes=axes, epsilon=eps)
        beta = ins[2] if len(ins) > 2 and ins[2] is not None else relax.const(0.0, "float32")
        return R.nn.layer_norm(ins[0], ins[1], beta, axes=axes, epsilon=eps)
    if n.op in ("quantize_linear", "dequantize_linear"):
        return _qdq(relax, n, ins)
    raise UnsupportedError(f"{n.label()}: core.{n.op} has no TVM lowering yet")


def _qdq(relax, n: Node, ins: list):
    """dequantize: (x - zp) * scale; quantize: saturate(round(x / scale) + zp); per tensor or per
    channel along ``axis`` (block-wise scales stay with torch)."""
    if n.attrs.get("block_size", 0):
        raise UnsupportedError(f"{n.label()}: block-wise {n.op} has no TVM lowering here")
    x, scale = n.inputs[0], n.inputs[1]
    rank = len(x.shape)
    axis = n.attrs.get("axis", 1) % rank if rank and scale.shape and len(scale.shape) == 1 and scale.shape[0] != 1 else -1
    if n.op == "dequantize_linear":
        zp = ins[2] if len(ins) > 2 and ins[2] is not None else relax.const(0, x.dtype.numpy().name)
        return relax.op.dequantize(ins[0], ins[1], zp, axis=axis, out_dtype=scale.dtype.numpy().name)
    zdtype = n.inputs[2].dtype.numpy().name if len(ins) > 2 and ins[2] is not None else "uint8"
    zp = ins[2] if len(ins) > 2 and ins[2] is not None else relax.const(0, zdtype)
    return relax.op.quantize(ins[0], ins[1], zp, axis=axis, out_dtype=zdtype)

