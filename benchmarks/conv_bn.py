"""Conv+BN folding, side by side in one run, on a ResNet-18 and a MobileNetV2 (1x3x224x224, CPU).

    python benchmarks/conv_bn.py [--repeats 5] [--iters 20] [--train-steps 40] [--memory-steps 3]
                                [--parts inference,training,ort] [--models resnet18,mobilenetv2] [--threads N]

1. Inference latency: torch eager (eval) vs torch.fx.experimental.optimization.fuse vs refold
   Deploy. Every iteration runs all three, in rotating order; the reported ratio is the median of
   the per-iteration refold / fx-fuse ratios (repeats x iters pairs).
2. Training step (forward + backward + SGD) with frozen BN statistics: Eval mode (BN kept, eval)
   vs refold Tune mode. Time: both models in one process, steps alternating (the order swapping
   every pair), --train-steps pairs (40) after two warm-up pairs; the ratio is the median of the
   per-pair tune/eval ratios, with its 95% bootstrap interval, quartiles and range. Memory: each mode alone in its own
   process, the peak RSS of its training steps (the high-water mark reset after the setup).
3. ONNX Runtime latency of the ONNX export (BN kept) before and after `refold run -p fuse-conv-bn`,
   with ORT's own graph optimizations off and on (ORT fuses Conv+BN itself when they are on).
"""
from __future__ import annotations

import argparse
import os
import random
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
    st = report.record("fuse-conv-bn").stats  # passes[0] is the raise-to-core step it requires
    diff = (gm(x) - model(x)).abs().max().item()
    rows = interleaved({"eager": model, "fx fuse": fx_fused, "refold deploy": gm}, x, repeats * iters)
    ratio = statistics.median(a / b for a, b in zip(rows["refold deploy"], rows["fx fuse"]))
    print(f"{name}: folded {st['folded']} BN (left {len(st['not_folded'])}); max |refold - eager| {diff:.1e}")
    for k, v in rows.items():
        print(f"  {k:<14} {statistics.median(v) * 1000:7.2f} ms")
    print(f"  refold deploy / fx fuse: median of per-iteration ratios {ratio:.3f} over {repeats * iters} "
          f"interleaved iterations (target <= 1.00)")


MEMORY = r"""
import gc, resource, sys, torch
sys.path.insert(0, sys.argv[1])
from models import build
import refold
from refold.passes import FuseConvBN
name, mode, steps = sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]))
torch.manual_seed(0)
model = build(name)
x = torch.randn(8, 3, 224, 224)
y = torch.randint(0, 1000, (8,))
if mode == "tune":
    model, _ = refold.optimize(model, (x[:1],), passes=[FuseConvBN(mode="tune")], check=False)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
gc.collect()

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 2**20  # kB -> GB

try:  # reset the peak RSS, so the setup (capture, rewrite) does not count
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before, how = status("VmRSS"), "VmHWM"
except OSError:
    before, how = status("VmRSS"), "ru_maxrss"
for i in range(steps):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
peak = status("VmHWM") if how == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(peak, peak - before, how)
"""


def _train_step(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> float:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()
    return step


def training(name: str, steps: int, memory_steps: int) -> None:
    """Eval and Tune training steps alternating in one process (order swapping each pair), paired
    ratios; memory from one process per mode (peak RSS of the training steps alone)."""
    import refold
    from refold.passes import FuseConvBN

    torch.manual_seed(0)
    x = torch.randn(8, 3, 224, 224)
    y = torch.randint(0, 1000, (8,))
    eval_model = build(name)  # built twice from the same seeds: the two never share a tensor
    tune_model, _ = refold.optimize(build(name), (x[:1],), passes=[FuseConvBN(mode="tune")], check=False)
    steps_of = {"eval": _train_step(eval_model, x, y), "tune": _train_step(tune_model, x, y)}
    times: dict[str, list[float]] = {"eval": [], "tune": []}
    losses: dict[str, list[float]] = {"eval": [], "tune": []}
    for i in range(steps + 2):
        for k in (("eval", "tune") if i % 2 == 0 else ("tune", "eval")):
            t0 = time.perf_counter()
            losses[k].append(steps_of[k]())
            if i >= 2:  # two warm-up pairs
                times[k].append(time.perf_counter() - t0)
    r = sorted(t / e for t, e in zip(times["tune"], times["eval"]))
    q1, med, q3 = (statistics.quantiles(r, n=4) if len(r) > 1 else r * 3)
    rng = random.Random(0)  # a 95% bootstrap interval of the median ratio
    boot = sorted(statistics.median(rng.choices(r, k=len(r))) for _ in range(2000))
    lo, hi = boot[49], boot[1949]
    here = os.path.dirname(os.path.abspath(__file__))
    mem = {}
    for mode in ("eval", "tune"):
        res = subprocess.run([sys.executable, "-c", MEMORY, here, name, mode, str(memory_steps),
                              str(torch.get_num_threads())],
                             capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(res.stderr[-1500:])
        peak, extra, how = res.stdout.split()[-3:]
        mem[mode] = (float(peak), float(extra), how)
    (pe, xe, how), (pt, xt, _) = mem["eval"], mem["tune"]
    print(f"{name} training step (batch 8, BN statistics frozen, {torch.get_num_threads()} threads), {steps} "
          f"Eval/Tune pairs alternating in one process: Eval {statistics.median(times['eval']) * 1000:.0f} ms, Tune "
          f"{statistics.median(times['tune']) * 1000:.0f} ms; tune/eval per pair: median {med:.3f} "
          f"[95% CI {lo:.3f}-{hi:.3f}; IQR {q1:.3f}-{q3:.3f}; range {r[0]:.3f}-{r[-1]:.3f}]; first-step losses "
          f"{losses['eval'][0]:.5f} / {losses['tune'][0]:.5f}")
    print(f"  memory, each mode alone in its own process ({memory_steps} steps, {how} reset after setup): "
          f"peak RSS Eval {pe:.2f} GB, Tune {pt:.2f} GB (ratio {pt / pe:.2f}); above the RSS before the "
          f"first step: Eval {xe:.2f} GB, Tune {xt:.2f} GB (ratio {xt / xe:.2f})")


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
    ap.add_argument("--train-steps", type=int, default=40, help="Eval/Tune step pairs, interleaved")
    ap.add_argument("--memory-steps", type=int, default=3, help="steps per memory process")
    ap.add_argument("--parts", default="inference,training,ort", help="which of the three to run")
    ap.add_argument("--models", default="resnet18,mobilenetv2")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch intra-op threads (fewer is steadier on a machine others share)")
    args = ap.parse_args()
    parts = args.parts.split(",")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            if "inference" in parts:
                inference(name, args.repeats, args.iters)
            if "training" in parts:
                training(name, args.train_steps, args.memory_steps)
            if "ort" in parts:
                onnx_runtime(name, args.repeats * args.iters, folder)


if __name__ == "__main__":
    main()
