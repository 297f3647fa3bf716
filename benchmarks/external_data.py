"""`refold run` on a model with 1 GB of external data: peak RSS and time, side by side with
`onnx.load` + `onnx.save` of the same file, each in its own process, paired runs.

    python benchmarks/external_data.py [--gb 1.0] [--repeats 3]

Targets: refold's peak RSS under 1.5 GB; refold's time at most 2x onnx.load + onnx.save.
refold runs its default pipeline (shape inference, constant folding, CSE, DCE) with the verifier;
the numeric check is skipped above its 512 MiB weight limit and the report says so.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PEER = """
import sys, onnx
m = onnx.load(sys.argv[1])
onnx.save(m, sys.argv[2], save_as_external_data=True, location="peer.onnx.data")
"""


def make_model(folder: str, gb: float) -> str:
    """A chain of MatMuls over 64 MiB weight matrices (4096 x 4096 fp32), saved with external data."""
    n = max(1, int(gb * 1024 / 64))
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(n):
        w = rng.standard_normal((4096, 4096), dtype=np.float32) * 0.01
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        prev = f"h{i}"
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4096])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, 4096])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    path = os.path.join(folder, "big.onnx")
    onnx.save(m, path, save_as_external_data=True, location="big.onnx.data", size_threshold=1024)
    return path


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd`` under a tiny Python wrapper that reports the child's own peak RSS."""
    wrapper = ("import resource, subprocess, sys, time; t=time.perf_counter(); "
               "p=subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "dt=time.perf_counter()-t; "
               "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode); "
               "sys.stderr.write(p.stdout + p.stderr)")
    out = subprocess.run([sys.executable, "-c", wrapper] + cmd, capture_output=True, text=True)
    dt, kb, rc = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"{cmd[:4]} failed: {out.stderr.strip()[-800:]}")
    return float(dt), int(kb) / 2**20, out.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder)")
    args = ap.parse_args()
    folder = args.dir or tempfile.mkdtemp(prefix="refold-bench-")
    try:
        src = make_model(folder, args.gb)
        size = os.path.getsize(os.path.join(folder, "big.onnx.data"))
        print(f"model: {size / 2**30:.2f} GiB of external data in {size // (64 << 20)} tensors")
        refold_cmd = [sys.executable, "-m", "refold.cli", "run", src, "-o", os.path.join(folder, "refold.onnx")]
        peer_cmd = [sys.executable, "-c", PEER, src, os.path.join(folder, "peer.onnx")]
        rows = {"refold run": [], "onnx.load+save": []}
        log = ""
        for _ in range(args.repeats):
            dt, gb, log = run_measured(refold_cmd)
            rows["refold run"].append((dt, gb))
            rows["onnx.load+save"].append(run_measured(peer_cmd)[:2])
        print(f"{'':<16} {'median time':>12} {'median peak RSS':>16}")
        for k, v in rows.items():
            print(f"{k:<16} {statistics.median(t for t, _ in v):>11.2f}s "
                  f"{statistics.median(g for _, g in v):>14.2f} GB")
        ratios = [a[0] / b[0] for a, b in zip(rows["refold run"], rows["onnx.load+save"])]
        print(f"time ratio refold / (onnx.load+save): median {statistics.median(ratios):.2f} "
              f"over {args.repeats} paired runs (target <= 2.0); refold peak RSS "
              f"{max(g for _, g in rows['refold run']):.2f} GB (target < 1.5 GB)")
        print("refold's report:\n" + log.strip())
        import onnxruntime as ort

        x = np.random.default_rng(1).standard_normal((1, 4096)).astype(np.float32)
        want = ort.InferenceSession(src).run(None, {"x": x})[0]
        got = ort.InferenceSession(os.path.join(folder, "refold.onnx")).run(None, {"x": x})[0]
        print(f"refold's output model gives the same ONNX Runtime result: {np.array_equal(want, got)}")
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
