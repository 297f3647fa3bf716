"""An on-disk cache of built kernels: a second compile of the same block builds nothing.

The key is the block's structure (ops, attributes, which inputs are constants, the inputs'
shapes and dtypes, symbolic dims by name), the target and the TVM version; weights are kernel
arguments, not part of the code, so two models with the same layer shapes share kernels.
A kernel is a shared library (``export_library``) plus a JSON of what calling it needs; a CUDA
kernel also keeps its CUDA C and cubin (``codegen/cubin.py``).

>>> kernel, hit = cached_build(block, "llvm")   # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import os

from refold.codegen.cubin import ARCH, install_hook, remember
from refold.codegen.tvm_block import Kernel, build_block, gpu_present, require_tvm, static_shapes
from refold.errors import one_line
from refold.ir.fileio import write_bytes_atomic
from refold.lowering.partition import Block


def cache_dir() -> str:
    """``REFOLD_KERNEL_CACHE``, else ~/.cache/refold/kernels."""
    return os.environ.get("REFOLD_KERNEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "refold", "kernels")


def block_key(block: Block, target: str, tuned: str = "") -> str:
    """``tuned``: the tuning budget and the shapes tuned at (a tuned kernel is another entry)."""
    tvm = require_tvm()
    index = {id(v): f"in{i}" for i, v in enumerate(block.inputs)}
    parts = [f"target={target}", f"tvm={tvm.__version__}", f"tuned={tuned}"]
    for i, v in enumerate(block.inputs):
        parts.append(f"in{i}:{v.dtype.name if v.dtype else '?'}{list(v.shape or ())}:{'const' if v.const is not None else 'act'}")
    for k, n in enumerate(block.nodes):
        for j, o in enumerate(n.outputs):
            index[id(o)] = f"n{k}.{j}"
        args = ",".join(index.get(id(u), "?") if u is not None else "-" for u in n.inputs)
        attrs = json.dumps({a: v for a, v in sorted(n.attrs.items())}, default=str, sort_keys=True)
        parts.append(f"{n.domain}.{n.op}({args}){attrs}")
    parts.append(f"out:{index.get(id(block.outputs[0]))}:{list(block.outputs[0].shape or ())}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def cached_build(block: Block, target: str = "llvm", *, cache: bool = True, folder: str | None = None,
                 tune_trials: int = 0, shapes: dict[str, tuple] | None = None) -> tuple[Kernel, bool]:
    """(kernel, whether it came from the cache); ``folder`` is the cache's root (default
    ``cache_dir()``). A CUDA kernel is kept as its library, its CUDA C and its sm_90 cubin; on a
    machine without a GPU it loads as source and cubin only (nothing to call). ``tune_trials``:
    the kernel tuned at the inputs' sizes in ``shapes``, the untuned one beside it for others."""
    tvm = require_tvm()
    root = folder or cache_dir()
    if tune_trials:
        generic, generic_hit = cached_build(block, target, cache=cache, folder=folder)
        static = [list(s) for s in static_shapes(block, shapes)]
        try:
            if not cache:
                kernel, hit = build_block(block, target, tune_trials=tune_trials, shapes=shapes), False
            else:
                kernel, hit = _cached(tvm, block, target, root, block_key(block, target, f"{tune_trials}@{static}"),
                                      lambda: build_block(block, target, tune_trials=tune_trials, shapes=shapes,
                                                          cubin_folder=os.path.join(root, "cubin")))
        except Exception as e:  # tuning failed: the untuned kernel serves every size, and says why
            generic.schedule = f"{generic.schedule or 'untuned'} (tuning failed: {one_line(e, 120)})"
            return generic, generic_hit
        kernel.generic = generic
        return kernel, hit
    if not cache:
        return build_block(block, target), False
    return _cached(tvm, block, target, root, block_key(block, target),
                   lambda: build_block(block, target, cubin_folder=os.path.join(root, "cubin")))


def _cached(tvm, block: Block, target: str, root: str, key: str, build) -> tuple[Kernel, bool]:
    """The cache entry ``key`` loaded, or ``build()`` run and written there."""
    folder = os.path.join(root, key[:2])
    lib_path, meta_path = os.path.join(folder, key + ".so"), os.path.join(folder, key + ".json")
    extra = [os.path.join(folder, key + ext) for ext in (".cu", ".cubin")] if target == "cuda" else []
    if os.path.exists(lib_path) and os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        source, binary = _read(extra[0], "r") if extra else "", _read(extra[1], "rb") if extra else b""
        module = func = None
        if source and binary:
            remember(source, ARCH, binary)
        if target == "llvm" or gpu_present():
            if target == "cuda":
                install_hook(ARCH, os.path.join(root, "cubin"))
            module = tvm.runtime.load_module(lib_path)
            func = module[meta["func"]]
        dims = {k: tuple(v) for k, v in meta["dims"].items()}
        kernel = Kernel(block, func, meta["out_shape"], meta["out_dtype"], dims, source or "", module, meta["func"])
        kernel.schedule, kernel.binary = meta.get("schedule", ""), binary or b""
        kernel.static = tuple(tuple(x) for x in meta["static"]) if meta.get("static") else None
        kernel.equal = [tuple(e) for e in meta.get("equal", [])]
        kernel.files = tuple(p for p in (lib_path, meta_path, *extra) if os.path.exists(p))
        return kernel, True
    kernel = build()
    os.makedirs(folder, exist_ok=True)
    tmp = f"{lib_path}.{os.getpid()}.so"  # export_library writes by path: the same stage-then-rename
    kernel.module.export_library(tmp)
    os.replace(tmp, lib_path)  # readers never see half a library
    if extra:
        write_bytes_atomic(extra[0], kernel.source.encode())
        if kernel.binary:
            write_bytes_atomic(extra[1], kernel.binary)
    meta = {"func": kernel.func_name, "out_shape": kernel.out_shape, "out_dtype": kernel.out_dtype,
            "dims": {k: list(v) for k, v in kernel.dims.items()}, "block": block.name, "schedule": kernel.schedule,
            "static": [list(x) for x in kernel.static] if kernel.static else None,
            "equal": [list(e) for e in kernel.equal]}
    write_bytes_atomic(meta_path, json.dumps(meta).encode())  # last: its presence says the entry is whole
    kernel.files = tuple(p for p in (lib_path, meta_path, *extra) if os.path.exists(p))
    return kernel, False


def _read(path: str, mode: str):
    if not os.path.exists(path):
        return None
    with open(path, mode, **({"encoding": "utf-8"} if mode == "r" else {})) as f:
        return f.read()
