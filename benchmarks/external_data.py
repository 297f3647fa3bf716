"""A model with more than 2 GiB of external weights through refold with bounded memory: peak RSS and
time of each job in its own fresh process, side by side with ``onnx.load`` + ``onnx.save``.

    python benchmarks/external_data.py [--gb 2.2] [--dir /tmp/refold-bench-external] [--repeats 1]
                                       [--no-check] [--clean]

The model (a chain of MatMul / Add / Relu over 4096 x 4096 fp32 weights, ``--gb`` GiB of them, in
one external data file, plus small foldable constant subgraphs, a duplicated subexpression, a
duplicated small constant and a dead node, so fold-constants, cse and dce all have work) is written
tensor by tensor, never all in memory, into ``--dir`` and reused from there by later runs.

Jobs, each a fresh ``python`` process (peak RSS = that process's ``ru_maxrss``):

  refold         refold.load -> PassManager([fold-constants, cse, dce], check=False) -> refold.save
  refold+check   the same with the numeric check on (ONNX Runtime by path, limit raised)
  ort by path    refold.load, then only OrtRunner (by path) on the probe inputs: ORT's own share
                 is its peak minus the RSS it started from
  onnx.load+save onnx.load(path) + onnx.save(model, out, save_as_external_data=True)

Targets: refold's peak RSS under 1.5 GB (weights stay on disk until save copies their byte ranges).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

D = 4096  # weight matrices are D x D float32 (64 MiB each)
PASSES = ("fold-constants", "cse", "dce")


# --------------------------------------------------------------------------------------------
# the model, written tensor by tensor

def model_path(folder: str, gb: float) -> str:
    return os.path.join(folder, f"big-{gb:g}gib.onnx")


def make_model(folder: str, gb: float) -> str:
    """Write the model unless a complete copy is already in ``folder``; return its path.

    Each weight is generated, appended to the data file and dropped before the next one, so at
    most one 64 MiB matrix is in memory; the ModelProto only holds external references.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    path = model_path(folder, gb)
    data_name = os.path.basename(path) + ".data"
    done = path + ".complete"
    if os.path.exists(done) and os.path.exists(path) and os.path.exists(os.path.join(folder, data_name)):
        return path
    os.makedirs(folder, exist_ok=True)
    for p in (path, os.path.join(folder, data_name), done):
        if os.path.exists(p):
            os.remove(p)
    n = max(1, round(gb * 2**30 / (D * D * 4)))
    rng = np.random.default_rng(0)
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    t0 = time.perf_counter()
    with open(os.path.join(folder, data_name), "xb") as f:

        def external(name: str, arr: np.ndarray) -> None:
            pad = (-f.tell()) % 4096
            if pad:
                f.write(b"\0" * pad)
            offset = f.tell()
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            arr.tofile(f)
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=arr.shape)
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(arr.nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)

        inits.append(helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]))
        inits.append(helper.make_tensor("half_copy", TensorProto.FLOAT, [], [0.5]))  # cse: same constant
        prev = "x"
        for i in range(n):
            w = rng.standard_normal((D, D), dtype=np.float32)
            w *= np.float32(1.0 / math.sqrt(D))
            external(f"w{i}", w)
            del w
            weight = f"w{i}"
            if i == 0:  # a constant subgraph over a big weight: too big to fold, left alone unread
                nodes.append(helper.make_node("Transpose", ["w0"], ["w0_t"], name="transpose_w0", perm=[1, 0]))
                weight = "w0_t"
            external(f"bias_raw{i}", rng.standard_normal(D, dtype=np.float32))
            # fold-constants: bias = bias_raw * 0.5 is computed once and stored
            nodes.append(helper.make_node("Mul", [f"bias_raw{i}", "half"], [f"bias{i}"], name=f"bias_scale{i}"))
            nodes.append(helper.make_node("MatMul", [prev, weight], [f"mm{i}"], name=f"matmul{i}"))
            nodes.append(helper.make_node("Add", [f"mm{i}", f"bias{i}"], [f"add{i}"], name=f"add{i}"))
            if i % 8 == 3:  # cse: the same Relu twice, averaged
                nodes.append(helper.make_node("Relu", [f"add{i}"], [f"relu{i}"], name=f"relu{i}"))
                nodes.append(helper.make_node("Relu", [f"add{i}"], [f"relu{i}_dup"], name=f"relu{i}_dup"))
                nodes.append(helper.make_node("Add", [f"relu{i}", f"relu{i}_dup"], [f"sum{i}"], name=f"sum{i}"))
                nodes.append(helper.make_node("Mul", [f"sum{i}", "half_copy"], [f"h{i}"], name=f"avg{i}"))
            else:
                nodes.append(helper.make_node("Relu", [f"add{i}"], [f"h{i}"], name=f"relu{i}"))
            if i % 8 == 5:  # dce: computed, never read
                nodes.append(helper.make_node("Neg", [f"add{i}"], [f"dead{i}"], name=f"dead{i}"))
            if i % 8 == 6:  # cse: "half" and "half_copy" (same value) both still read after folding
                nodes.append(helper.make_node("Mul", [f"h{i}", "half"], [f"h{i}_half"], name=f"halve{i}"))
                nodes.append(helper.make_node("Add", [f"h{i}_half", f"h{i}_half"], [f"h{i}_back"],
                                              name=f"double{i}"))
                prev = f"h{i}_back"
            else:
                prev = f"h{i}"
        f.flush()
        os.fsync(f.fileno())
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, D])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, D])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10,
                          producer_name="refold-bench")
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    open(done, "w").close()
    print(f"generated {path} in {time.perf_counter() - t0:.1f}s")
    return path


# --------------------------------------------------------------------------------------------
# the jobs (each runs in a fresh process: `external_data.py --job NAME SRC OUT`)

def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _watch_ort(info: dict):
    """Record every ONNX Runtime session the check opens (by path or not, RSS before and after),
    and sample RSS every 10 ms while no runner holds a session: refold's own peak with the check
    on. Returns the function that stops the sampler."""
    import threading

    import refold.runtime.ort as ort_mod

    opened, closed = ort_mod.OrtRunner._session, ort_mod.OrtRunner.close
    state = {"live": 0, "stop": False}
    info.update(sessions=[], own_peak=_rss())

    def session(self, capture):
        if capture in self._sessions:
            return self._sessions[capture]
        fresh = not self._sessions
        state["live"] += fresh
        before = _rss()
        try:
            sess = opened(self, capture)
        except BaseException:
            state["live"] -= fresh
            raise
        info["sessions"].append({"by_path": self.by_path, "rss_before": before, "rss_after": _rss()})
        return sess

    def close(self):
        held = bool(getattr(self, "_sessions", None))
        closed(self)
        state["live"] -= held

    def sample():
        while not state["stop"]:
            if state["live"] == 0:
                rss = _rss()
                if state["live"] == 0:
                    info["own_peak"] = max(info["own_peak"], rss)
            time.sleep(0.01)

    ort_mod.OrtRunner._session, ort_mod.OrtRunner.close = session, close
    t = threading.Thread(target=sample, daemon=True)
    t.start()

    def stop():
        state["stop"] = True
        t.join()

    return stop


def job_refold(src: str, out: str, check: bool) -> dict:
    import refold
    from refold.passes import PassManager, get_pass

    t0 = time.perf_counter()
    model = refold.load(src)
    size = model.weight_bytes()
    info: dict = {}
    if check:
        watch = _watch_ort(info)
    pm = PassManager([get_pass(p) for p in PASSES], check=check, check_limit_bytes=2 * size + (1 << 30))
    report = pm.run(model)
    refold.save(report.model, out)
    if check:
        watch()
    info.update(seconds=time.perf_counter() - t0, peak=_peak(), report=report.format(),
                nodes=sum(1 for _ in report.model.graph))
    return info


def job_ort(src: str, out: str) -> dict:
    import refold
    from refold.runtime.ort import OrtRunner
    from refold.runtime.probe import probe_inputs

    model = refold.load(src)
    base = _rss()
    t0 = time.perf_counter()
    runner = OrtRunner(model)
    runner.run(probe_inputs(model))
    info = {"seconds": time.perf_counter() - t0, "by_path": runner.by_path, "rss_before": base,
            "peak": _peak(), "rss_open": _rss()}
    runner.close()
    return info


def job_peer(src: str, out: str) -> dict:
    import onnx

    t0 = time.perf_counter()
    m = onnx.load(src)
    onnx.save(m, out, save_as_external_data=True, location=os.path.basename(out) + ".data")
    return {"seconds": time.perf_counter() - t0, "peak": _peak()}


def job_verify(src: str, out: str) -> dict:
    """Source and refold's output on the same input in ONNX Runtime (one session at a time)."""
    import numpy as np
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((1, D)).astype(np.float32)
    want = ort.InferenceSession(src).run(None, {"x": x})[0]
    got = ort.InferenceSession(out).run(None, {"x": x})[0]
    return {"max_abs": float(np.abs(want - got).max()), "peak": _peak(), "seconds": 0.0}


JOBS = {"refold": lambda s, o: job_refold(s, o, False), "refold+check": lambda s, o: job_refold(s, o, True),
        "ort by path": job_ort, "onnx.load+save": job_peer, "verify": job_verify}


def run_job(name: str, src: str, out: str) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--job", name, src, out],
                       check=False, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"job '{name}' failed (rc {p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
    info = json.loads(p.stdout.strip().splitlines()[-1])
    info["wall"] = wall
    return info


# --------------------------------------------------------------------------------------------

def gb(b: float) -> str:
    return f"{b / 1e9:.2f} GB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.2, help="GiB of weights in the model (default 2.2)")
    ap.add_argument("--dir", default="/tmp/refold-bench-external",
                    help="cache folder for the generated model (reused when present)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-check", action="store_true", help="skip the refold+check and ORT jobs")
    ap.add_argument("--clean", action="store_true", help="delete the generated model afterwards")
    ap.add_argument("--job", nargs=3, metavar=("NAME", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job:
        name, src, out = args.job
        print(json.dumps(JOBS[name](src, out)))
        return

    folder = os.path.abspath(args.dir)
    src = make_model(folder, args.gb)
    data = os.path.getsize(src + ".data")
    print(f"model: {src}: {data / 2**30:.2f} GiB ({data / 1e9:.2f} GB) of external data")
    jobs = ["refold", "onnx.load+save"] if args.no_check else ["refold", "refold+check", "ort by path",
                                                               "onnx.load+save"]
    results: dict[str, list[dict]] = {j: [] for j in jobs}
    work = os.path.join(folder, "out")
    refold_out = None
    try:
        for _ in range(args.repeats):
            for j in jobs:
                shutil.rmtree(work, ignore_errors=True)
                os.makedirs(work)
                out = os.path.join(work, "out.onnx")
                results[j].append(run_job(j, src, out))
                if j == "refold" and refold_out is None:  # keep one refold output to verify
                    refold_out = os.path.join(folder, "refold-out")
                    shutil.rmtree(refold_out, ignore_errors=True)
                    os.rename(work, refold_out)
        shutil.rmtree(work, ignore_errors=True)

        def med(j: str, k: str) -> float:
            return statistics.median(r[k] for r in results[j])

        print(f"\n{'job':<16} {'peak RSS':>10} {'time (work)':>12} {'time (process)':>15}")
        for j in jobs:
            print(f"{j:<16} {gb(med(j, 'peak')):>10} {med(j, 'seconds'):>11.1f}s {med(j, 'wall'):>14.1f}s")
        r, p = "refold", "onnx.load+save"
        print(f"\nrefold / onnx.load+save: peak RSS {med(r, 'peak') / med(p, 'peak'):.2f}x, "
              f"time {med(r, 'wall') / med(p, 'wall'):.2f}x (process) "
              f"{med(r, 'seconds') / med(p, 'seconds'):.2f}x (work); "
              f"refold peak {gb(max(x['peak'] for x in results[r]))} (target < 1.5 GB)")
        if not args.no_check:
            c, o = results["refold+check"][-1], results["ort by path"][-1]
            ort_share = o["peak"] - o["rss_before"]
            sess = c.get("sessions", [])
            print(f"refold+check: peak {gb(c['peak'])} with ONNX Runtime in the same process; "
                  f"{len(sess)} ORT session(s), all by path: {all(s['by_path'] for s in sess)}; "
                  f"refold's own peak (sampled while no session is held) {gb(c['own_peak'])}, "
                  f"RSS as each session opened: max {gb(max((s['rss_before'] for s in sess), default=0))}")
            print(f"ONNX Runtime alone (by path, one session + one run): peak {gb(o['peak'])} from "
                  f"{gb(o['rss_before'])} after refold.load -> ORT's share {gb(ort_share)}; "
                  f"by_path={o['by_path']}")
            print("refold+check's report:\n" + c["report"])
        v = run_job("verify", src, os.path.join(refold_out, "out.onnx"))
        print(f"\nrefold's output vs the source in ONNX Runtime: max |diff| {v['max_abs']:.3g}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if refold_out:
            shutil.rmtree(refold_out, ignore_errors=True)
        if args.clean:
            for p in (src, src + ".data", src + ".complete"):
                if os.path.exists(p):
                    os.remove(p)


if __name__ == "__main__":
    main()
