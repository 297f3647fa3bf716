"""TVM kernels for refold's fused blocks, side by side with torch: untuned and MetaSchedule-tuned on
this machine's CPU (llvm), and the GPU table (``--target cuda``) on a machine with an NVIDIA GPU.

    python benchmarks/tvm_kernels.py [--iters 20] [--quick]            # untuned, CPU
    python benchmarks/tvm_kernels.py --iters 10 --tune-trials 64        # + tuned, CPU (minutes)
    python benchmarks/tvm_kernels.py --target cuda [--iters 20]         # GPU table (needs a GPU)
    python benchmarks/tvm_kernels.py --quick --iters 5 --e2e            # + end to end on CPU

``--quick`` takes small shapes (and, on a GPU, small models) so the whole script smoke-runs fast
(seconds; about a minute with ``--tune-trials 8``); its numbers say nothing about speed. The 64-trial
run takes about 4 minutes on 2 cores (tuning about 85 s + 70 s, the untuned linear+gelu's timing most
of the rest). Every kernel is built into a temporary cache folder,
removed at the end.

**Untuned table (CPU).** For each block type (conv+bias+relu at a ResNet stage shape, linear+gelu
at a GPT-2 MLP shape, layer norm and RMS norm at GPT-2 width, an elementwise chain), built from a
tiny module through refold's own path (capture, raise, partition, codegen):

  1. build time cold (empty kernel cache) and cached (the second build loads the library), in
     one process, so the ratio is paired;
  2. correctness: the kernel against the block's ops run by torch (max abs error);
  3. time per call, kernel vs torch eager on the same inputs, interleaved, medians. The kernels
     are **not tuned**: this measures where untuned code stands, it is not a speed claim.

**Tuned table (CPU, ``--tune-trials N``).** conv+bias+relu (1x64x56x56, 3x3, 64->64) and
linear+gelu (1x128x768 -> 3072) tuned by MetaSchedule (``cached_build(..., tune_trials=N,
shapes=...)``, N measured candidates, at exactly those sizes) into a fresh cache: tuning wall time
(the untuned build excluded: it is built first), max abs and relative error of the tuned kernel
against the block's ops in torch, and time per call of the tuned kernel, the untuned one
(``kernel.generic``) and torch eager, interleaved, medians, with ratios to torch.

Both CPU tables run on one thread: ``TVM_NUM_THREADS=1`` (set before TVM is imported) and
``torch.set_num_threads(1)``.

**GPU table (``--target cuda``).** Exits 2 with one line where torch sees no CUDA GPU (or TVM was
built without CUDA). fp32 throughout, TF32 off in torch (the kernels are checked at 1e-4). Kernels
are the dlight-scheduled CUDA ones (``build_block(target="cuda")``), untuned.

  1. norms: LayerNorm and RMSNorm at GPT-2-small width (128 tokens x 768) and a large one (4096
     tokens x 4096): achieved bandwidth = bytes read + written / time per call, as a fraction of
     the device's HBM peak (a table by device name: H100 SXM 3.35 TB/s, H100 PCIe 2.0, H200 4.8,
     A100 80GB 2.0, A100 40GB 1.555) and of a measured device-to-device copy (``copy_`` of a 1 GiB
     buffer, read + write). Time per call two ways: wall time over back-to-back calls between
     ``torch.cuda.synchronize()`` (launch overhead included: small shapes are launch-bound), and
     device time of the kernels alone (CUDA kernel records of ``torch.profiler``; n/a where it
     sees none). Goal: >= 80% of peak, judged on device time where there is one.
  2. fused conv+bias+relu and linear+gelu kernels against torch eager of the same ops, same shapes
     as the CPU tables; goal: >= 1.0x (torch time / kernel time).
  3. end to end: GPT-2-small (transformers ``GPT2Model``, 12 layers, width 768, 12 heads, random
     weights, batch 1, 128 tokens) and ResNet-50 (torchvision's layout written below, random
     weights and BatchNorm statistics, 1x3x224x224): ``refold.compile(..., target="cuda")`` against
     torch eager and ``torch.compile``, each warmed up, median over ``--iters`` calls; kernels and
     fallbacks counted.

The GPU table has not been run: no machine with a GPU was lent where this script was written.
"""
from __future__ import annotations

import argparse
import collections
import copy
import os
import statistics
import sys
import tempfile
import time

os.environ["TVM_NUM_THREADS"] = "1"  # before TVM is imported: CPU kernels on one thread, like torch here

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))
sys.path.insert(0, HERE)  # benchmarks/models.py

from refold.errors import one_line  # noqa: E402

F = torch.nn.functional

# HBM peak, bytes/s, by device name (upper-cased): the first row whose words are all in the name
HBM_PEAK = [
    (("H200",), 4.8e12, "H200"),
    (("H100", "PCIE"), 2.0e12, "H100 PCIe"),
    (("H100", "NVL"), 3.9e12, "H100 NVL"),
    (("H100",), 3.35e12, "H100 SXM"),
    (("A100", "80GB"), 2.0e12, "A100 80GB"),
    (("A100",), 1.555e12, "A100 40GB"),
]
GOAL_BANDWIDTH = 0.80
GOAL_SPEEDUP = 1.0


class _Wrap(torch.nn.Module):
    def __init__(self, fn, mods):
        super().__init__()
        self.mods = torch.nn.ModuleList(mods)
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _block(fn, x, kind):
    """The first block of ``kind`` in ``fn`` captured at ``x`` (capture, raise, partition), and its
    inputs (constants as tensors, ``x`` for the activation); (None, None) when none."""
    import refold
    from refold.lowering import partition
    from refold.passes.raise_core import RaiseToCore

    m = refold.load(_Wrap(fn, []).eval(), (x,))
    RaiseToCore().call(m)
    block = next((b for b in partition(m) if b.kind == kind), None)
    if block is None:
        return None, None
    return block, [v.const.torch() if v.const is not None else x for v in block.inputs]


def _median_time(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _interleaved(fns, iters: int) -> list[float]:
    """Seconds per call of each of ``fns`` (CPU): per round a median of 3 calls each, in turn;
    the median over ``iters`` rounds."""
    times = [[] for _ in fns]
    with torch.no_grad():
        for _ in range(iters):
            for fn, ts in zip(fns, times):
                ts.append(_median_time(fn, 3))
    return [statistics.median(ts) for ts in times]


def _errors(got, ref) -> tuple[float, float]:
    """(max abs error, that over max |ref|)."""
    err = float((got.float() - ref.float()).abs().max())
    return err, err / max(float(ref.float().abs().max()), 1e-30)


# ---------------------------------------------------------------------------------------------- CPU


def untuned_table(args, cache: str) -> None:
    from refold.codegen import cached_build

    c, hw, d = (16, 16, 64) if args.quick else (64, 56, 768)
    tokens = 8 if args.quick else 128
    conv = torch.nn.Conv2d(c, c, 3, padding=1)
    lin = torch.nn.Linear(d, 4 * d)
    ln = torch.nn.LayerNorm(d)
    rms = torch.nn.RMSNorm(d)
    blocks = [
        ("conv+bias+relu", lambda x: F.relu(conv(x)), torch.randn(1, c, hw, hw), "conv_bias_act"),
        ("linear+gelu", lambda x: F.gelu(lin(x)), torch.randn(1, tokens, d), "linear_act"),
        ("layer_norm", lambda x: ln(x), torch.randn(1, tokens, d), "norm"),
        ("rms_norm", lambda x: rms(x), torch.randn(1, tokens, d), "norm"),
        ("elementwise", lambda x: torch.sigmoid(x * 1.5 + 0.25) * x, torch.randn(1, tokens, d), "elementwise"),
    ]
    print("\nUntuned kernels, llvm (CPU, 1 thread)")
    print(f"{'block':<40} {'kind':<14} {'cold s':>7} {'cached s':>9} {'cached/cold':>11} {'max err':>9} "
          f"{'kernel ms':>10} {'torch ms':>9} {'kernel/torch':>12}")
    for label, fn, x, kind in blocks:
        block, ins = _block(fn, x, kind)
        if block is None:
            print(f"{label:<16} no {kind} block found")
            continue
        t = time.perf_counter()
        _, hit = cached_build(block, "llvm", folder=cache)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        kernel2, hit2 = cached_build(block, "llvm", folder=cache)
        warm = time.perf_counter() - t
        with torch.no_grad():  # the block's own ops in torch eager (the reference) against the kernel
            err, _ = _errors(kernel2(*ins), block.reference(ins))
        label = f"{label} ({'+'.join(n.op for n in block.nodes)})"[:40]
        km, tm = (s * 1e3 for s in _interleaved([lambda: kernel2(*ins), lambda: block.reference(ins)], args.iters))
        print(f"{label:<40} {kind:<14} {cold:>7.2f} {warm:>9.3f} {warm / cold:>11.3f} {err:>9.2g} "
              f"{km:>10.3f} {tm:>9.3f} {km / tm:>12.2f}" + ("" if hit2 and not hit else "  (cache not hit!)"))


def _fused_cases(quick: bool):
    """conv+bias+relu at a ResNet stage shape and linear+gelu at a GPT-2 MLP shape (small with
    ``quick``): (label, shape, fn, input, block kind)."""
    c, hw, tokens, d = (16, 16, 8, 64) if quick else (64, 56, 128, 768)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c, c, 3, padding=1)
    lin = torch.nn.Linear(d, 4 * d)
    return [
        ("conv+bias+relu", f"1x{c}x{hw}x{hw} 3x3 {c}->{c}", lambda x: F.relu(conv(x)), torch.randn(1, c, hw, hw),
         "conv_bias_act"),
        ("linear+gelu", f"1x{tokens}x{d} -> {4 * d}", lambda x: F.gelu(lin(x)), torch.randn(1, tokens, d), "linear_act"),
    ]


def tuned_table(args, cache: str) -> None:
    """MetaSchedule-tuned vs untuned vs torch eager, at one ResNet and one GPT-2 shape."""
    from refold.codegen import cached_build

    cases = _fused_cases(args.quick)
    print(f"\nMetaSchedule-tuned kernels, llvm (CPU, 1 thread: TVM_NUM_THREADS=1, torch.set_num_threads(1)); "
          f"{args.tune_trials} trials each; times interleaved, median of {args.iters}")
    print(f"{'block':<16} {'shape':<24} {'schedule':<26} {'tune s':>7} {'max err':>9} {'rel err':>9} "
          f"{'tuned ms':>9} {'untuned ms':>10} {'torch ms':>9} {'tuned/torch':>11} {'untuned/torch':>13} "
          f"{'tuned/untuned':>13}")
    notes = []
    for label, shape, fn, x, kind in cases:
        block, ins = _block(fn, x, kind)
        if block is None:
            print(f"{label:<16} no {kind} block found")
            continue
        shapes = {v.name: tuple(t.shape) for v, t in zip(block.inputs, ins)}
        cached_build(block, "llvm", folder=cache)  # the untuned kernel first: the tuning time below is tuning's
        t = time.perf_counter()
        try:
            kernel, hit = cached_build(block, "llvm", folder=cache, tune_trials=args.tune_trials, shapes=shapes)
        except Exception as e:  # a tuning failure is a row, not the end of the table
            print(f"{label:<16} {shape:<24} tuning failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        tune_s = time.perf_counter() - t
        static = tuple(tuple(t.shape) for t in ins)
        if hit:
            notes.append(f"{label}: the tuned kernel came from the cache (the tuning time is a load)")
        if kernel.static != static or kernel.generic is None:
            notes.append(f"{label}: tuned for {kernel.static}, called with {static}: the calls below run the untuned kernel")
        untuned = kernel.generic
        with torch.no_grad():
            ref = block.reference(ins)
            err, rel = _errors(kernel(*ins), ref)
            _, u_rel = _errors(untuned(*ins), ref)
        if rel > 1e-4 or u_rel > 1e-4:
            notes.append(f"{label}: relative error tuned {rel:.2g}, untuned {u_rel:.2g} (above 1e-4)")
        tk, uk, tt = (s * 1e3 for s in _interleaved(
            [lambda: kernel(*ins), lambda: untuned(*ins), lambda: block.reference(ins)], args.iters))
        if tk > uk:
            notes.append(f"{label}: the tuned kernel is slower than the untuned one ({tk:.3f} vs {uk:.3f} ms)")
        print(f"{label:<16} {shape:<24} {kernel.schedule:<26} {tune_s:>7.1f} {err:>9.2g} {rel:>9.2g} "
              f"{tk:>9.3f} {uk:>10.3f} {tt:>9.3f} {tk / tt:>11.2f} {uk / tt:>13.2f} {tk / uk:>13.3f}")
    for n in notes:
        print(f"  note: {n}")


# ---------------------------------------------------------------------------------------------- GPU


def _peak(name: str) -> tuple[float | None, str]:
    upper = name.upper()
    for words, peak, label in HBM_PEAK:
        if all(w in upper for w in words):
            return peak, label
    return None, "unknown"


def _gpu_interleaved(fns, iters: int, calls: int) -> list[float]:
    """Seconds per call of each of ``fns`` (GPU): warmed up, then per round ``calls`` back-to-back
    calls each between ``torch.cuda.synchronize()`` (every stream), in turn; median over rounds."""
    with torch.no_grad():
        for fn in fns:
            for _ in range(3):
                fn()
        torch.cuda.synchronize()
        times = [[] for _ in fns]
        for _ in range(iters):
            for fn, ts in zip(fns, times):
                torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(calls):
                    fn()
                torch.cuda.synchronize()
                ts.append((time.perf_counter() - t) / calls)
    return [statistics.median(ts) for ts in times]


def _device_seconds(fn, calls: int = 20) -> float | None:
    """Seconds per call the GPU spends in kernels (CUPTI kernel records through torch.profiler:
    any kernel, TVM's too), launch gaps excluded; None where the profiler gives none."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with torch.no_grad():
            fn()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(calls):
                    fn()
                torch.cuda.synchronize()
        total = sum(e.duration_ns() for e in prof.profiler.kineto_results.events()
                    if e.device_type() == torch.autograd.DeviceType.CUDA and str(e.activity_type()) == "kernel")
        return total / calls / 1e9 if total > 0 else None
    except Exception:
        return None


def _copy_bandwidth(iters: int) -> float:
    """Bytes/s of a device-to-device ``copy_`` of a 1 GiB fp32 buffer (read + write counted)."""
    n = 2**28
    src = torch.empty(n, device="cuda").uniform_()
    dst = torch.empty_like(src)
    (t,) = _gpu_interleaved([lambda: dst.copy_(src)], max(iters, 5), 5)
    return 2 * n * 4 / t  # the buffers go with this frame


def _nbytes(ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _cuda_kernel(block, cache: str):
    from refold.codegen import cached_build

    kernel, _ = cached_build(block, "cuda", folder=cache)
    if kernel.func is None:
        raise RuntimeError("the CUDA kernel did not load (no GPU runtime in TVM?)")
    return kernel


def _pct(x) -> str:
    return f"{x:.0%}" if x is not None else "n/a"


def _us(x) -> str:
    return f"{x * 1e6:.1f}" if x is not None else "n/a"


def norms_table(args, cache: str, peak: float | None, copy_bw: float) -> None:
    shapes = [(1, 128, 768), (1, 1024, 1024)] if args.quick else [(1, 128, 768), (1, 4096, 4096)]
    print(f"\nNorm kernels (dlight, fp32): achieved bandwidth = bytes read + written / time; goal >= "
          f"{GOAL_BANDWIDTH:.0%} of HBM peak. 'wall': back-to-back calls between syncs (launches included); "
          f"'dev': kernel time alone (profiler)")
    print(f"{'block':<11} {'shape':<15} {'MB':>7} {'rule':<17} {'max err':>8} {'wall us':>8} {'GB/s':>7} "
          f"{'of peak':>7} {'of copy':>7} {'dev us':>7} {'dev GB/s':>8} {'dev/peak':>8} {'dev/copy':>8} "
          f"{'torch us':>8} {'torch dev/peak':>14} {'goal':>5}")
    for name in ("layer_norm", "rms_norm"):
        for shape in shapes:
            d = shape[-1]
            torch.manual_seed(0)
            mod = torch.nn.LayerNorm(d) if name == "layer_norm" else torch.nn.RMSNorm(d)
            with torch.no_grad():
                for p in mod.parameters():
                    p.copy_(torch.randn_like(p))
            label = f"{name:<11} {'x'.join(map(str, shape)):<15}"
            try:
                block, ins = _block(lambda x: mod(x), torch.randn(*shape), "norm")
                if block is None:
                    print(f"{label} no norm block found")
                    continue
                kernel = _cuda_kernel(block, cache)
                ins = [t.to("cuda") for t in ins]
                with torch.no_grad():
                    ref = block.reference(ins)
                    got = kernel(*ins)
                err, _ = _errors(got, ref)
                nbytes = _nbytes(ins) + _nbytes([got])
                calls = 200 if nbytes < 2**24 else 20
                kt, tt = _gpu_interleaved([lambda: kernel(*ins), lambda: block.reference(ins)], args.iters, calls)
                kd, td = _device_seconds(lambda: kernel(*ins)), _device_seconds(lambda: block.reference(ins))
            except Exception as e:
                print(f"{label} failed: {one_line(e, 150)}")
                continue
            bw = nbytes / kt
            dbw = nbytes / kd if kd else None
            judged = dbw if dbw is not None else bw
            goal = "n/a" if peak is None else ("met" if judged / peak >= GOAL_BANDWIDTH else "no")
            print(f"{label} {nbytes / 1e6:>7.2f} {kernel.schedule:<17} {err:>8.1e} {_us(kt):>8} {bw / 1e9:>7.0f} "
                  f"{_pct(bw / peak if peak else None):>7} {_pct(bw / copy_bw):>7} {_us(kd):>7} "
                  f"{(f'{dbw / 1e9:.0f}' if dbw else 'n/a'):>8} {_pct(dbw / peak if dbw and peak else None):>8} "
                  f"{_pct(dbw / copy_bw if dbw else None):>8} {_us(tt):>8} "
                  f"{_pct(nbytes / td / peak if td and peak else None):>14} {goal:>5}")


def fused_table(args, cache: str) -> None:
    cases = _fused_cases(args.quick)
    print(f"\nFused kernels (dlight, fp32) vs torch eager of the same ops (fp32, TF32 off); goal >= "
          f"{GOAL_SPEEDUP:.1f}x (torch time / kernel time)")
    print(f"{'block':<16} {'shape':<24} {'rule':<10} {'max err':>8} {'rel err':>8} {'kernel us':>9} {'torch us':>9} "
          f"{'speedup':>7} {'dev kernel us':>13} {'dev torch us':>12} {'dev speedup':>11} {'goal':>5}")
    for label, shape, fn, x, kind in cases:
        row = f"{label:<16} {shape:<24}"
        try:
            block, ins = _block(fn, x, kind)
            if block is None:
                print(f"{row} no {kind} block found")
                continue
            kernel = _cuda_kernel(block, cache)
            ins = [t.to("cuda") for t in ins]
            with torch.no_grad():
                err, rel = _errors(kernel(*ins), block.reference(ins))
            kt, tt = _gpu_interleaved([lambda: kernel(*ins), lambda: block.reference(ins)], args.iters, 50)
            kd, td = _device_seconds(lambda: kernel(*ins)), _device_seconds(lambda: block.reference(ins))
        except Exception as e:
            print(f"{row} failed: {one_line(e, 150)}")
            continue
        dsp = td / kd if kd and td else None
        judged = dsp if dsp is not None else tt / kt
        print(f"{row} {kernel.schedule:<10} {err:>8.1e} {rel:>8.1e} {_us(kt):>9} {_us(tt):>9} {tt / kt:>6.2f}x "
              f"{_us(kd):>13} {_us(td):>12} {(f'{dsp:.2f}x' if dsp else 'n/a'):>11} "
              f"{('met' if judged >= GOAL_SPEEDUP else 'no'):>5}")


class _LastHidden(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, ids):
        return self.m(ids).last_hidden_state


class _Bottleneck(torch.nn.Module):
    """torchvision's ResNet-50 bottleneck (stride on the 3x3)."""

    def __init__(self, cin, width, stride):
        from models import conv_bn

        super().__init__()
        cout = 4 * width
        self.body = torch.nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3, stride),
                                        conv_bn(width, cout, 1, act=False))
        self.down = conv_bn(cin, cout, 1, stride, act=False) if stride != 1 or cin != cout else torch.nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


class _ResNet50(torch.nn.Module):
    def __init__(self, classes=1000):
        from models import conv_bn

        super().__init__()
        self.stem = torch.nn.Sequential(conv_bn(3, 64, 7, 2), torch.nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for width, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(n):
                blocks.append(_Bottleneck(cin, width, stride if i == 0 else 1))
                cin = 4 * width
        self.blocks = torch.nn.Sequential(*blocks)
        self.fc = torch.nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def _models(quick: bool):
    """(name, input description, module, example input) for the end-to-end rows."""
    import transformers as tf

    torch.manual_seed(0)
    layers, seq, size = (2, 32, 64) if quick else (12, 128, 224)
    gpt2 = _LastHidden(tf.GPT2Model(tf.GPT2Config(n_layer=layers, n_embd=768, n_head=12)).eval()).eval()
    ids = torch.randint(0, gpt2.m.config.vocab_size, (1, seq))
    resnet = _ResNet50()
    g = torch.Generator().manual_seed(1)
    for mod in resnet.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            with torch.no_grad():
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return [(f"GPT-2-small ({layers} layers)", f"ids 1x{seq}", gpt2, ids),
            ("ResNet-50", f"1x3x{size}x{size}", resnet.eval(), torch.randn(1, 3, size, size))]


def e2e_table(args, cache: str, target: str = "cuda", device: str = "cuda", select: str = "kernels") -> None:
    import refold

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def median_ms(fn, iters):
        with torch.no_grad():
            for _ in range(3):
                fn()
            sync()
            times = []
            for _ in range(iters):
                t = time.perf_counter()
                fn()
                sync()
                times.append(time.perf_counter() - t)
        return statistics.median(times) * 1e3

    print(f"\nEnd to end, fp32 (TF32 off), median of {args.iters} calls after warm-up: refold.compile(target="
          f"'{target}', select='{select}') vs torch eager vs torch.compile (ratios: other / refold, > 1 means "
          f"refold is faster)")
    print(f"{'model':<26} {'input':<14} {'kernels':>7} {'fallbacks':>9} {'compile s':>9} {'max err':>8} "
          f"{'refold ms':>9} {'eager ms':>8} {'t.compile ms':>12} {'eager/refold':>12} {'t.compile/refold':>16}")
    reasons = []
    for name, what, model, x in _models(args.quick):
        row = f"{name:<26} {what:<14}"
        try:
            t = time.perf_counter()
            fast = refold.compile(model, (x,), target=target, cache_dir=cache, select=select)
            compile_s = time.perf_counter() - t
            eager = copy.deepcopy(model).to(device).eval()
            xd = x.to(device)
            with torch.no_grad():
                ref = eager(xd)
                err, _ = _errors(fast(xd), ref)
            rt = median_ms(lambda: fast(xd), args.iters)
            et = median_ms(lambda: eager(xd), args.iters)
        except Exception as e:
            print(f"{row} failed: {one_line(e, 150)}")
            continue
        try:
            torch._dynamo.reset()
            compiled = torch.compile(eager)
            ct = median_ms(lambda: compiled(xd), args.iters)  # the warm-up compiles
            ct_s, ratio = f"{ct:.3f}", f"{ct / rt:.2f}"
        except Exception as e:
            ct_s, ratio = "failed", "n/a"
            reasons.append(f"{name}: torch.compile failed: {one_line(e, 150)}")
        print(f"{row} {fast.kernels:>7} {len(fast.fallbacks):>9} {compile_s:>9.1f} {err:>8.1e} {rt:>9.3f} {et:>8.3f} "
              f"{ct_s:>12} {et / rt:>12.2f} {ratio:>16}")
        for why, n in collections.Counter(fast.fallbacks.values()).most_common(5):
            reasons.append(f"{name}: {n} fallback(s): {why[:150]}")
    for r in reasons:
        print(f"  note: {r}")


def cuda_main(args) -> int:
    if not torch.cuda.is_available():
        print("tvm_kernels.py --target cuda: no CUDA GPU here (torch.cuda.is_available() is False); "
              "the GPU table needs a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    from refold.codegen import require_tvm

    tvm = require_tvm()
    if not tvm.runtime.enabled("cuda"):
        print(f"tvm_kernels.py --target cuda: TVM {tvm.__version__} here was built without CUDA; "
              "the GPU table needs a CUDA-enabled TVM", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 against fp32: the kernels are checked at 1e-4
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(0)
    peak, label = _peak(name)
    copy_bw = _copy_bandwidth(args.iters)
    torch.cuda.empty_cache()
    from refold.codegen.cubin import nvcc_path

    print(f"refold TVM kernels on cuda: {name} (HBM peak {f'{peak / 1e12:.3g} TB/s' if peak else 'unknown'}, as "
          f"{label}; measured copy_ {copy_bw / 1e12:.3g} TB/s = {_pct(copy_bw / peak if peak else None)} of peak); "
          f"torch {torch.__version__}, TVM {tvm.__version__}, nvcc {nvcc_path() or 'none (TVM compiles at load)'}")
    if args.tune_trials:
        print("  note: --tune-trials applies to the CPU tables; the CUDA kernels here are dlight's, untuned")
    with tempfile.TemporaryDirectory(prefix="refold-kernels-") as cache:
        os.environ["REFOLD_KERNEL_CACHE"] = cache
        norms_table(args, cache, peak, copy_bw)
        fused_table(args, cache)
        e2e_table(args, cache)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="small shapes: a smoke run, not a measurement")
    ap.add_argument("--tune-trials", type=int, default=0, metavar="N",
                    help="also the MetaSchedule-tuned table (CPU), N measured candidates per kernel (e.g. 64)")
    ap.add_argument("--target", choices=("llvm", "cuda"), default="llvm",
                    help="llvm: the CPU tables; cuda: the GPU table (needs an NVIDIA GPU)")
    ap.add_argument("--e2e", action="store_true", help="CPU: also the end-to-end table (GPT-2-small, ResNet-50), "
                    "with every kernel and with select='fastest'")
    args = ap.parse_args()
    if args.target == "cuda":
        return cuda_main(args)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="refold-kernels-") as cache:
        os.environ["REFOLD_KERNEL_CACHE"] = cache
        print(f"refold TVM kernels on llvm (CPU); torch {torch.__version__}")
        untuned_table(args, cache)
    if args.tune_trials:
        with tempfile.TemporaryDirectory(prefix="refold-tuned-") as fresh:  # nothing built before
            tuned_table(args, fresh)
    if args.e2e:
        with tempfile.TemporaryDirectory(prefix="refold-kernels-") as cache:
            for select in ("kernels", "fastest"):
                e2e_table(args, cache, target="llvm", device="cpu", select=select)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
