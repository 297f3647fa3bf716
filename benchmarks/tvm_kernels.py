"""TVM kernels for refold's fused blocks, on this machine's CPU (llvm), side by side with torch.

    python benchmarks/tvm_kernels.py [--iters 20] [--quick]

For each block type (conv+bias+relu at a ResNet stage shape, linear+gelu at a GPT-2 MLP shape,
layer norm and RMS norm at GPT-2 width, an elementwise chain), built from a tiny module through
refold's own path (capture, raise, partition, codegen):

  1. build time cold (empty kernel cache) and cached (the second build loads the library), in
     one process, so the ratio is paired;
  2. correctness: the kernel against the block's ops run by torch (max abs error);
  3. time per call, kernel vs torch eager on the same inputs, interleaved, medians (torch with
     one thread, like the kernel). The kernels are **not tuned** (no MetaSchedule yet): this
     measures where untuned code stands, it is not a speed claim.

GPU (the issue's second table: bandwidth of the norms, fused blocks vs eager, end to end) needs a
machine with an NVIDIA GPU; this script then takes ``--target cuda``. None was lent here.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))


def _blocks(quick: bool):
    F = torch.nn.functional
    c, hw, d = (16, 16, 64) if quick else (64, 56, 768)
    conv = torch.nn.Conv2d(c, c, 3, padding=1)
    lin = torch.nn.Linear(d, 4 * d)
    ln = torch.nn.LayerNorm(d)
    rms = torch.nn.RMSNorm(d)
    tokens = 8 if quick else 128
    return [
        ("conv+bias+relu", lambda x: F.relu(conv(x)), torch.randn(1, c, hw, hw), "conv_bias_act"),
        ("linear+gelu", lambda x: F.gelu(lin(x)), torch.randn(1, tokens, d), "linear_act"),
        ("layer_norm", lambda x: ln(x), torch.randn(1, tokens, d), "norm"),
        ("rms_norm", lambda x: rms(x), torch.randn(1, tokens, d), "norm"),
        ("elementwise", lambda x: torch.sigmoid(x * 1.5 + 0.25) * x, torch.randn(1, tokens, d), "elementwise"),
    ]


class _Wrap(torch.nn.Module):
    def __init__(self, fn, mods):
        super().__init__()
        self.mods = torch.nn.ModuleList(mods)
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _median_time(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ["REFOLD_KERNEL_CACHE"] = tempfile.mkdtemp(prefix="refold-kernels-")
    import refold
    from refold.codegen import cached_build
    from refold.lowering import partition
    from refold.passes.raise_core import RaiseToCore

    print(f"refold TVM kernels on llvm (CPU, 1 thread, untuned); torch {torch.__version__}")
    print(f"{'block':<40} {'kind':<14} {'cold s':>7} {'cached s':>9} {'cached/cold':>11} {'max err':>9} "
          f"{'kernel ms':>10} {'torch ms':>9} {'kernel/torch':>12}")
    for label, fn, x, kind in _blocks(args.quick):
        module = _Wrap(fn, []).eval()
        m = refold.load(module, (x,))
        RaiseToCore().call(m)
        block = next((b for b in partition(m) if b.kind == kind), None)
        if block is None:
            print(f"{label:<16} no {kind} block found")
            continue
        t = time.perf_counter()
        kernel, hit = cached_build(block, "llvm")
        cold = time.perf_counter() - t
        t = time.perf_counter()
        kernel2, hit2 = cached_build(block, "llvm")
        warm = time.perf_counter() - t
        ins = [v.const.torch() if v.const is not None else x for v in block.inputs]
        with torch.no_grad():  # the block's own ops in torch eager (the reference) against the kernel
            ref_block = block.reference(ins)
            got = kernel2(*ins)
        err = float((got - ref_block).abs().max())
        label = f"{label} ({'+'.join(n.op for n in block.nodes)})"[:40]
        k_times, t_times = [], []
        with torch.no_grad():
            for _ in range(args.iters):  # interleaved
                k_times.append(_median_time(lambda: kernel2(*ins), 3))
                t_times.append(_median_time(lambda: block.reference(ins), 3))
        km, tm = statistics.median(k_times) * 1e3, statistics.median(t_times) * 1e3
        print(f"{label:<40} {kind:<14} {cold:>7.2f} {warm:>9.3f} {warm / cold:>11.3f} {err:>9.2g} "
              f"{km:>10.3f} {tm:>9.3f} {km / tm:>12.2f}" + ("" if hit2 and not hit else "  (cache not hit!)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
