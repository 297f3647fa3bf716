"""Lowering: the IR partitioned into fused blocks, each to become one kernel (``codegen/``)."""
from __future__ import annotations

from refold.lowering.partition import BLOCKS, Block, partition

__all__ = ["BLOCKS", "Block", "partition"]
