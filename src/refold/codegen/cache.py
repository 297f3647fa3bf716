"""An on-disk cache of built kernels: a second compile of the same block builds nothing.

The key is the block's structure (ops, attributes, which inputs are constants, the inputs'
shapes and dtypes, symbolic dims by name), the target and the TVM version; weights are kernel
arguments, not part of the code, so two models with the same layer shapes share kernels.
A kernel is a shared library (``export_library``) plus a JSON of what calling it needs.

>>> kernel, hit = cached_build(block, "llvm")   # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import os

from refold.codegen.tvm_block import Kernel, build_block, require_tvm
from refold.lowering.partition import Block


def cache_dir() -> str:
    """``REFOLD_KERNEL_CACHE``, else ~/.cache/refold/kernels."""
    return os.environ.get("REFOLD_KERNEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "refold", "kernels")


def block_key(block: Block, target: str) -> str:
    tvm = require_tvm()
    index = {id(v): f"in{i}" for i, v in enumerate(block.inputs)}
    parts = [f"target={target}", f"tvm={tvm.__version__}"]
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


def cached_build(block: Block, target: str = "llvm", *, cache: bool = True,
                 folder: str | None = None) -> tuple[Kernel, bool]:
    """(kernel, whether it came from the cache). Only CPU (llvm) kernels are cached as libraries;
    ``folder`` is the cache's root (default ``cache_dir()``)."""
    tvm = require_tvm()
    if not cache or target != "llvm":
        return build_block(block, target), False
    key = block_key(block, target)
    folder = os.path.join(folder or cache_dir(), key[:2])
    lib_path, meta_path = os.path.join(folder, key + ".so"), os.path.join(folder, key + ".json")
    if os.path.exists(lib_path) and os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        module = tvm.runtime.load_module(lib_path)
        dims = {k: tuple(v) for k, v in meta["dims"].items()}
        kernel = Kernel(block, module[meta["func"]], meta["out_shape"], meta["out_dtype"], dims, "", module,
                        meta["func"])
        kernel.files = (lib_path, meta_path)
        return kernel, True
    kernel = build_block(block, target)
    os.makedirs(folder, exist_ok=True)
    tmp = f"{lib_path}.{os.getpid()}.so"
    kernel.module.export_library(tmp)
    os.replace(tmp, lib_path)  # readers never see half a library
    meta = {"func": kernel.func_name, "out_shape": kernel.out_shape, "out_dtype": kernel.out_dtype,
            "dims": {k: list(v) for k, v in kernel.dims.items()}, "block": block.name}
    with open(meta_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(meta, f)
    os.replace(meta_path + ".tmp", meta_path)
    kernel.files = (lib_path, meta_path)
    return kernel, False
