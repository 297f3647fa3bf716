"""Conv+BN folding, side by side in one run, on a ResNet-18 and a MobileNetV2 (1x3x224x224, CPU).

    python benchmarks/conv_bn.py [--repeats 5] [--iters 20]

1. Inference latency: torch eager (eval) vs torch.fx.experimental.optimization.fuse vs refold
   Deploy. Every iteration runs all three, in rotating order; the reported ratio is the median of
   the per-iteration refold / fx-fuse ratios (repeats x iters pairs).
2. Training step (forward + backward + SGD) with frozen BN statistics: Eval mode (BN kept, eval)
   vs refold Tune mode; time per step and peak RSS, each mode in its own process.
3. ONNX Runtime latency of the ONNX export (BN kept) before and after `refold run -p fuse-conv-bn`,
   with ORT's own graph optimizations off and on (ORT fuses Conv+BN itself when they are on).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from models import build  # noqa: E402

X_SHAPE = (1, 3, 224, 224)


def interleaved(fns: dict, x, iters: int) -> dict[str, list[float]]:
    """Time each variant once per iteration, rotating the order, so drift hits all alike."""
    names = list(fns)
    times = {k: [] for k in names}
    with torch.no_grad():
        for k in names:
            for _ in range(3):
                fns[k](x)
        for i in range(iters):
            for k in names[i % len(names):] + names[: i % len(names)]:
                t0 = time.perf_counter()
                fns[k](x)
                times[k].append(time.perf_counter() - t0)
    return times


def inference(name: str, repeats: int, iters: int) -> None:
    import torch.fx.experimental.optimization as fxopt

    import refold

    model = build(name)
    x = torch.randn(X_SHAPE)
    fx_fused = fxopt.fuse(model)
    gm, report = refold.optimize(model, (x,), passes=["fuse-conv-bn"])
    st = report.passes[0].stats
    diff = (gm(x) - model(x)).abs().max().item()
    rows = interleaved({"eager": model, "fx fuse": fx_fused, "refold deploy": gm}, x, repeats * iters)
    ratio = statistics.median(a / b for a, b in zip(rows["refold deploy"], rows["fx fuse"]))
    print(f"{name}: folded {st['folded']} BN (left {len(st['not_folded'])}); max |refold - eager| {diff:.1e}")
    for k, v in rows.items():
        print(f"  {k:<14} {statistics.median(v) * 1000:7.2f} ms")
    print(f"  refold deploy / fx fuse: median of per-iteration ratios {ratio:.3f} over {repeats * iters} "
          f"interleaved iterations (target <= 1.00)")


TRAIN = r"""
import resource, statistics, sys, time, torch
sys.path.insert(0, sys.argv[1])
from models import build
import refold
from refold.passes import FuseConvBN
name, mode, steps = sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
model = build(name)
x = torch.randn(8, 3, 224, 224)
y = torch.randint(0, 1000, (8,))
if mode == "tune":
    model, _ = refold.optimize(model, (x[:1],), passes=[FuseConvBN(mode="tune")], check=False)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
ts = []
for i in range(steps + 2):
    t0 = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    if i >= 2:
        ts.append(time.perf_counter() - t0)
print(statistics.median(ts), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, loss.item())
"""


def training(name: str, steps: int) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    out = {}
    for mode in ("eval", "tune"):
        res = subprocess.run([sys.executable, "-c", TRAIN, here, name, mode, str(steps)],
                             capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(res.stderr[-1500:])
        t, gb, loss = map(float, res.stdout.split()[-3:])
        out[mode] = (t, gb, loss)
    (te, me, le), (tt, mt, lt) = out["eval"], out["tune"]
    print(f"{name} training step (batch 8, BN statistics frozen): Eval {te * 1000:.0f} ms, peak RSS "
          f"{me:.2f} GB; Tune {tt * 1000:.0f} ms, peak RSS {mt:.2f} GB; time ratio tune/eval "
          f"{tt / te:.2f}, memory ratio {mt / me:.2f}; final losses {le:.5f} / {lt:.5f}")


def onnx_runtime(name: str, iters: int, folder: str) -> None:
    import onnxruntime as ort

    from refold import cli

    model = build(name)
    x = torch.randn(X_SHAPE)
    src, dst = os.path.join(folder, f"{name}.onnx"), os.path.join(folder, f"{name}.fused.onnx")
    torch.onnx.export(model, (x,), src, dynamo=False, opset_version=17, input_names=["x"],
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    with open(os.devnull, "w") as devnull:
        stdout, sys.stdout = sys.stdout, devnull
        try:
            code = cli.main(["run", src, "-p", "fuse-conv-bn", "-o", dst])
        finally:
            sys.stdout = stdout
    assert code == 0
    import onnx

    n_bn = [sum(n.op_type == "BatchNormalization" for n in onnx.load(p).graph.node) for p in (src, dst)]
    feeds = {"x": x.numpy()}
    for level_name, level in (("off", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                              ("on", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)):
        runs = {}
        for tag, path in (("before", src), ("after", dst)):
            so = ort.SessionOptions()
            so.graph_optimization_level = level
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            runs[tag] = lambda _x, s=sess: s.run(None, feeds)
        times = interleaved(runs, None, iters)
        ratio = statistics.median(a / b for a, b in zip(times["after"], times["before"]))
        print(f"{name} ONNX Runtime (graph optimizations {level_name}; BatchNormalization {n_bn[0]} -> "
              f"{n_bn[1]}): before {statistics.median(times['before']) * 1000:.2f} ms, after refold "
              f"{statistics.median(times['after']) * 1000:.2f} ms, median paired ratio {ratio:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--train-steps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as folder:
        for name in ("resnet18", "mobilenetv2"):
            inference(name, args.repeats, args.iters)
            training(name, args.train_steps)
            onnx_runtime(name, args.repeats * args.iters, folder)


if __name__ == "__main__":
    main()
