"""Code generation: each fused block (``lowering/``) built into one TVM kernel."""
from __future__ import annotations

from refold.codegen.cache import cache_dir, cached_build
from refold.codegen.tvm_block import Kernel, build_block, require_tvm

__all__ = ["Kernel", "build_block", "cache_dir", "cached_build", "require_tvm"]
