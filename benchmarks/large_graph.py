"""A generated 100k-node ONNX graph: load, DCE + CSE + verify, save. refold vs onnx-ir side by side.

    python benchmarks/large_graph.py [--nodes 100000] [--repeats 3]

Target: refold under 10 s for the whole job on this 2-core machine. onnx-ir (the IR under
onnxscript) runs the same job with its RemoveUnusedNodes + CommonSubexpressionElimination passes.
Each repeat runs both tools back to back (paired); medians and the median ratio are reported.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_graph(n_nodes: int) -> onnx.ModelProto:
    """Steps of 4 nodes: a = x + c; b = x + c (duplicate); y = a * b; Relu(a) (dead)."""
    consts = [numpy_helper.from_array(np.full((1, 8), i, np.float32), f"c{i}") for i in range(16)]
    nodes, prev = [], "x"
    for i in range(n_nodes // 4):
        c = f"c{i % 16}"
        nodes += [helper.make_node("Add", [prev, c], [f"a{i}"], name=f"add_a{i}"),
                  helper.make_node("Add", [prev, c], [f"b{i}"], name=f"add_b{i}"),
                  helper.make_node("Mul", [f"a{i}", f"b{i}"], [f"y{i}"], name=f"mul{i}"),
                  helper.make_node("Relu", [f"a{i}"], [f"dead{i}"], name=f"dead{i}")]
        prev = f"y{i}"
    g = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 8])], initializer=consts)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def run_refold(src: str, dst: str, gc_pause: bool = True, whole_job: bool = False) -> dict:
    """The job refold's way. ``gc_pause``: the library pauses the collector in load and passes;
    ``whole_job``: paused for the whole job, as ``refold run`` does."""
    import gc

    if whole_job:
        gc.disable()
    try:
        return _run_refold(src, dst, gc_pause)
    finally:
        gc.enable()


def _run_refold(src: str, dst: str, gc_pause: bool) -> dict:
    from refold.frontends.onnx.importer import load_onnx
    from refold.frontends.onnx.save import save_onnx
    from refold.ir.verify import verify
    from refold.passes import PassManager, get_pass

    os.environ["REFOLD_GC_PAUSE"] = "1" if gc_pause else "0"
    t = {}
    t0 = time.perf_counter()
    m = load_onnx(src)
    t["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    PassManager([get_pass(p) for p in ("dce", "cse", "dce")], check=False, verify=False).run(m)
    t["passes"] = time.perf_counter() - t0
    os.environ.pop("REFOLD_GC_PAUSE")
    t0 = time.perf_counter()
    verify(m.graph)
    t["verify"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    save_onnx(m, dst, check=False)
    t["save"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    onnx.checker.check_model(dst, full_check=True)
    t["check_model"] = time.perf_counter() - t0
    t["nodes_after"] = len(m.graph)
    return t


def run_onnx_ir(src: str, dst: str) -> dict:
    import onnx_ir as ir
    from onnx_ir.passes.common import CommonSubexpressionEliminationPass, RemoveUnusedNodesPass

    t = {}
    t0 = time.perf_counter()
    m = ir.load(src)
    t["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    RemoveUnusedNodesPass()(m)
    CommonSubexpressionEliminationPass()(m)
    RemoveUnusedNodesPass()(m)
    t["passes"] = time.perf_counter() - t0
    t["verify"] = 0.0  # onnx-ir has no IR verifier; its passes check nothing afterwards
    t0 = time.perf_counter()
    ir.save(m, dst)
    t["save"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    onnx.checker.check_model(dst, full_check=True)
    t["check_model"] = time.perf_counter() - t0
    t["nodes_after"] = len(m.graph)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "large.onnx")
        onnx.save(make_graph(args.nodes), src)
        print(f"graph: {args.nodes} nodes, {os.path.getsize(src) / 1e6:.1f} MB")
        rows = {"refold run": [], "refold library": [], "refold, gc on": [], "onnx-ir": []}
        for _ in range(args.repeats):  # interleaved, so background load falls on every column
            out = os.path.join(d, "refold.onnx")
            rows["refold run"].append(run_refold(src, out, whole_job=True))
            rows["refold library"].append(run_refold(src, out))
            rows["refold, gc on"].append(run_refold(src, out, gc_pause=False))
            rows["onnx-ir"].append(run_onnx_ir(src, os.path.join(d, "onnx_ir.onnx")))
        keys = ["load", "passes", "verify", "save", "check_model"]
        print(f"{'tool':<15} " + " ".join(f"{k:>11}" for k in keys) + f" {'total':>8} {'nodes after':>12}")
        totals = {}
        for tool, runs in rows.items():
            med = {k: statistics.median(r[k] for r in runs) for k in keys}
            tot = [sum(r[k] for k in keys) for r in runs]
            totals[tool] = tot
            print(f"{tool:<15} " + " ".join(f"{med[k]:>10.2f}s" for k in keys)
                  + f" {statistics.median(tot):>7.2f}s {runs[0]['nodes_after']:>12}")
        for tool in ("refold run", "refold library", "refold, gc on"):
            ratios = [a / b for a, b in zip(totals[tool], totals["onnx-ir"])]
            print(f"{tool}: median {statistics.median(totals[tool]):.2f} s (target < 10 s); / onnx-ir "
                  f"median ratio {statistics.median(ratios):.2f} (target <= 0.70) over {args.repeats} paired runs")


if __name__ == "__main__":
    main()
