"""CUDA C -> cubin with nvcc, on any machine: no GPU is needed to compile, only to run.

A TVM CUDA library holds CUDA C; TVM's CUDA runtime compiles it when a GPU machine loads it,
through the ``tvm_callback_cuda_compile`` hook. refold compiles every kernel's CUDA C to a cubin
when it builds it (here, no GPU needed: a kernel that does not compile fails the build, not the
GPU run later) and keeps it in an on-disk cache keyed by source, arch and nvcc version;
``install_hook`` makes the runtime take the cubin from that cache, so loading compiles nothing.
nvcc comes from ``CUDA_PATH``, ``PATH`` or the ``nvidia-cuda-nvcc`` wheel
(``pip install 'refold[cuda]'``).

>>> cubin = compile_cubin(kernel.source, "sm_90", folder=cache)   # doctest: +SKIP
>>> install_hook("sm_90", folder=cache)                             # doctest: +SKIP
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile

from refold.errors import UnsupportedError
from refold.ir.fileio import write_bytes_atomic

HOOK = "tvm_callback_cuda_compile"
ARCH = "sm_90"  # what refold builds CUDA kernels for (H100 / H200)
# what TVM's own nvcc path passes, less --use_fast_math: kernels are checked against torch at 1e-4
FLAGS = ["-O3", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
         "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
         "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
         "--expt-relaxed-constexpr", "--expt-extended-lambda"]


@functools.lru_cache(maxsize=None)
def nvcc_path() -> str | None:
    """nvcc from ``CUDA_PATH``, ``PATH``, or the ``nvidia-cuda-nvcc`` wheel; None if none."""
    candidates = []
    if os.environ.get("CUDA_PATH"):
        candidates.append(os.path.join(os.environ["CUDA_PATH"], "bin", "nvcc"))
    candidates.append(shutil.which("nvcc"))
    try:
        import nvidia

        for root in nvidia.__path__:
            candidates += [os.path.join(root, sub, "bin", "nvcc") for sub in sorted(os.listdir(root))]
    except ImportError:
        pass
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@functools.lru_cache(maxsize=None)
def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip().splitlines()[-1] if out.strip() else "unknown"


_known: dict[str, bytes] = {}  # sha256(arch, source) -> cubin, from kernels loaded with one


def remember(source: str, arch: str, binary: bytes) -> None:
    """``binary`` is the cubin of ``source``: the runtime hook answers with it (a kernel folder
    carries its cubins; the machine that loads it need not have nvcc)."""
    _known[_source_key(source, arch)] = binary


def _source_key(source: str, arch: str) -> str:
    return hashlib.sha256(f"{arch}\n{source}".encode()).hexdigest()


def compile_cubin(source: str, arch: str = ARCH, *, folder: str | None = None) -> bytes:
    """The cubin of ``source`` for ``arch``, from the cache under ``folder`` when it is there."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise UnsupportedError("no nvcc to compile CUDA kernels: pip install 'refold[cuda]' (nvidia-cuda-nvcc)")
    key = hashlib.sha256("\n".join([arch, nvcc_version(nvcc), *FLAGS, source]).encode()).hexdigest()[:32]
    path = os.path.join(folder, key[:2], key + ".cubin") if folder else None
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            return f.read()
    with tempfile.TemporaryDirectory(prefix="refold-nvcc-") as tmp:
        src, out = os.path.join(tmp, "kernel.cu"), os.path.join(tmp, "kernel.cubin")
        with open(src, "w", encoding="utf-8") as f:
            f.write(source)
        proc = subprocess.run([nvcc, "--cubin", "-arch", arch, *FLAGS, "-o", out, src], capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            first = next((ln for ln in proc.stdout.splitlines() + proc.stderr.splitlines() if "error" in ln),
                         f"exit {proc.returncode}")
            raise UnsupportedError(f"nvcc failed for {arch}: {first.strip()[:300]}")
        with open(out, "rb") as f:
            binary = f.read()
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_bytes_atomic(path, binary)
    return binary


_installed: dict[str, object] = {}


def install_hook(arch: str = ARCH, folder: str | None = None) -> None:
    """Make TVM's CUDA runtime, which compiles a library's CUDA C when it loads it, take the
    cubin from ``compile_cubin`` (the cache under ``folder`` first): a GPU machine then loads
    what was compiled ahead of time instead of compiling it again. Without nvcc the hook that was
    there before (TVM's NVRTC one) answers. Idempotent."""
    import tvm_ffi

    if _installed.get("key") == (arch, folder):
        return
    before = _installed.get("before") if "key" in _installed else tvm_ffi.get_global_func(HOOK, allow_missing=True)
    if before is None:
        try:
            import tvm.support.nvcc  # noqa: F401  registers TVM's own hook (NVRTC)

            before = tvm_ffi.get_global_func(HOOK, allow_missing=True)
        except ImportError:
            before = None

    def hook(code, *target):
        known = _known.get(_source_key(code, arch))
        if known is not None:  # shipped with the kernel folder
            return bytearray(known)
        if nvcc_path() is None and before is not None:
            return before(code, *target)
        return bytearray(compile_cubin(code, arch, folder=folder))

    tvm_ffi.register_global_func(HOOK, hook, override=True)
    _installed.update(key=(arch, folder), before=before)
