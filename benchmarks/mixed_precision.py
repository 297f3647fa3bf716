"""HAWQ-V2 mixed-precision weights (refold's `quantize` with bits=mixed) vs uniform int8, uniform int4,
uniform bits at the same size and random allocations at the same size, on a small trained ResNet.

    python benchmarks/mixed_precision.py [--avg-bits 5,6,7] [--train-steps 800] [--heldout 1000]
                                         [--calib-batches 8] [--batch 32] [--hessian-iterations 100]
                                         [--random 10] [--time-repeats 3] [--threads 1] [--quick]

Model: transformers ResNetForImageClassification(ResNetConfig(depths=[1, 1], hidden_sizes=[16, 32],
embedding_size=16, num_labels=10)) (bottleneck blocks: 8 convs and the classifier, 4,416 weights),
wrapped to return the logits, *trained* (--train-steps AdamW steps, one-cycle lr 3e-3, batch 64,
seed 0, one torch thread whatever --threads) on a synthetic 10-class task: 32x32 renderings of the
digits 0-9 (PIL's default font at random size, position, ink and paper, plus noise), so that its
Hessian is that of a trained model (a random one's has negative traces, which HAWQ clips to 0).
The comparisons of a 4/8 allocation with uniform-a swing with the model: a model trained with two
threads (numerically different weights, the same recipe) had hawq 4+8 beat uniform-5 and uniform-6
and still lose to uniform-7. Eval mode; BN kept (refold quantizes
the convs, BN stays float after them).

Data: --calib-batches x --batch labelled calibration images (seed 2); refold calibrates activations
(minmax) on all of them and HAWQ estimates its Hessian traces on the first four (the pass keeps
four batches), with their labels, so the loss is the task's cross-entropy. Held-out: --heldout
labelled images (seed 3), the same for every variant (paired).

Allocations compared (choices 4 and 8 bits, per output channel symmetric weights, as HAWQ's
bit_choices="4+8"), at each --avg-bits a:

  int8 / int4      every layer at 8 / 4 bits
  uniform-a        every layer at a bits: the uniform allocation of the same size (in refold:
                   bits=mixed with bit_choices="a", which can only choose it)
  hawq 4+8         Quantize(bits="mixed", bit_choices="4+8", avg_bits=a)
  hawq 4..8        the same with bit_choices="4+5+6+7+8" (an extra: can reach uniform-a itself)
  random           --random allocations of 4/8 bits of about HAWQ's size: drawn uniformly, without
                   replacement, from every 4/8 allocation (all 2^layers enumerated) within the
                   budget whose size is within a window of HAWQ's (the smallest of +-1, 2, 5, 10,
                   20, 50% of the 4->8 swing holding --random of them; the window is printed)
  best 4/8         the lowest weight-only error of all 4/8 allocations within the budget
                   (exhaustive; HAWQ's rank among them is printed)

Two settings:

  weight-only   the torch module's weights fake-quantized with refold's own quantizer
                (params.weight_params / quantize_weight, per output channel, b bits), activations
                float: every allocation, HAWQ's and the random ones alike, in the same setting.
  W8A8 (refold) the whole pipeline from `refold.optimize(module, (x,), passes=[Quantize(...)])`:
                uint8 activations (minmax) and the allocation's weights (profile ort), for int8,
                int4, uniform-a and HAWQ (refold cannot be handed a fixed allocation).

Measured: output (logits) MSE against the float model on the held-out images, top-1 agreement with
the float model and accuracy against the labels; the bits HAWQ chose per layer (with its Hessian
traces) and HAWQ's own objective (sum over layers of Tr(H_i)/n_i * ||Q_b(W_i) - W_i||^2, from the
traces it reported) for its pick and for the exhaustive best, which tells a proxy that misranks
from a search that misses; the Hutchinson steps taken (st["hessian_steps"]) and the quantize
pass's time (PassRecord.seconds) with bits=mixed (4+8) and with int8, the two run alternately
--time-repeats times (medians, and the median of the paired differences: mostly the trace
estimate). MSE ratios come with a 95% paired bootstrap interval over the held-out images.
One torch thread by default: on this 2-core machine shared with other jobs, 2 threads made the
same pass take 2 s to 45 s from run to run (OpenMP threads contending), 1 thread 1.8-1.9 s.

Targets, per avg_bits: mixed (hawq 4+8) MSE <= uniform-a's (the uniform allocation of the same
size), in both settings; mixed MSE < the median of the random allocations' (weight-only). A target
line reads OK or MISS where the 95% bootstrap interval of the MSE ratio lies on one side of 1, else
"unresolved" with the side of the point estimate.

--quick: 150 training steps, 200 held-out images, 4 calibration batches of 16, 20 Hessian steps,
5 random allocations, avg_bits 6 only.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "src"))

SIZE = 32
BOOT = 2000
WINDOWS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


# --------------------------------------------------------------------------------------------
# data and model

def digits(n: int, seed: int):
    """``n`` labelled 3x32x32 digit images, normalised to [-1, 1]."""
    import torch
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    xs = np.empty((n, 3, SIZE, SIZE), np.float32)
    ys = rng.integers(0, 10, n)
    fonts = {s: ImageFont.load_default(size=s) for s in range(14, 27)}
    for i in range(n):
        paper, ink, s = int(rng.integers(150, 256)), int(rng.integers(0, 100)), int(rng.integers(14, 27))
        img = Image.new("L", (SIZE, SIZE), paper)
        ImageDraw.Draw(img).text((int(rng.integers(0, SIZE - s * 0.6)), int(rng.integers(-2, SIZE - s))),
                                 str(ys[i]), fill=ink, font=fonts[s])
        a = np.asarray(img, np.float32) + rng.normal(0, 8, (SIZE, SIZE))
        xs[i] = ((np.clip(a, 0, 255) / 255 - 0.5) / 0.5)[None]
    return torch.from_numpy(xs), torch.from_numpy(ys)


def build(steps: int, n_train: int):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.ResNetConfig(depths=[1, 1], hidden_sizes=[16, 32], embedding_size=16, num_labels=10)
    model = tf.ResNetForImageClassification(cfg)
    x, y = digits(n_train, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the trained weights depend on the thread count: the same model whatever --threads
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[idx]).logits, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    torch.set_num_threads(threads)

    from models import Logits

    return Logits(model.eval()).eval()


def forward(fn, x, size: int = 250) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch.cat([fn(x[i:i + size]) for i in range(0, len(x), size)]).double().numpy()


# --------------------------------------------------------------------------------------------
# weight-only fake quantization of the torch module

class FakeQuant:
    """The module with its quantized layers' weights swapped for b-bit fake-quantized ones."""

    def __init__(self, module, layers: dict[str, str]):
        import torch

        from refold.passes.quantize.params import quantize_weight, weight_params

        self.module = copy.deepcopy(module)
        params = dict(self.module.named_parameters())
        self.params = {k: params[v] for k, v in layers.items()}
        self.cache = {}
        for k, p in self.params.items():
            w = p.detach().numpy().copy()
            for b in range(2, 9):
                s, _ = weight_params(w, 0, b)  # conv [Cout, ...], linear [out, in]: axis 0
                q = quantize_weight(w, s, 0, b).astype(np.float32) * s.reshape([-1] + [1] * (w.ndim - 1))
                self.cache[k, b] = torch.from_numpy(q)

    def run(self, alloc: dict[str, int], x) -> np.ndarray:
        import torch

        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.cache[k, alloc[k]])
        return forward(self.module, x)


# --------------------------------------------------------------------------------------------
# refold

def quantize(module, example, calib, **kw):
    import refold
    from refold.passes import Quantize

    gm, report = refold.optimize(module, (example,), passes=[Quantize(data=calib, **kw)])
    rec = report.record("quantize")
    return gm, rec.stats, rec.seconds


# --------------------------------------------------------------------------------------------
# measures

def errors(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Per held-out image: mean squared logit error."""
    return ((ref - got) ** 2).mean(1)


def boot_ratio(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval of MSE(a) / MSE(b) over the held-out images."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (BOOT, len(a)))
    r = np.sort(a[idx].mean(1) / np.maximum(b[idx].mean(1), 1e-300))
    return float(r[int(0.025 * BOOT)]), float(r[int(0.975 * BOOT) - 1])


def short(name: str) -> str:
    for a, b in (("p_m_resnet_", ""), ("encoder_stages_", "s"), ("_layers_0_layer_", ".conv"),
                 ("_layers_0_shortcut", ".shortcut"), ("_convolution_weight", ""), ("embedder_embedder", "stem"),
                 ("p_m_classifier_1_weight", "classifier")):
        name = name.replace(a, b)
    return name


def verdict(ratio: float, lo: float, hi: float, strict: bool = False) -> str:
    """OK / MISS where the 95% interval of the MSE ratio lies on one side of 1, else unresolved
    (with the point estimate's side)."""
    ok = ratio < 1 if strict else ratio <= 1
    if (hi < 1 if strict else hi <= 1):
        return "OK"
    if (lo >= 1 if strict else lo > 1):
        return "MISS"
    return f"unresolved ({'OK' if ok else 'MISS'} at the point estimate)"


def boot_ratio_median(a: np.ndarray, many: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval of MSE(a) / median over rows of ``many`` of their MSEs."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (BOOT, len(a)))
    med = np.median(np.stack([m[idx].mean(1) for m in many]), axis=0)
    r = np.sort(a[idx].mean(1) / np.maximum(med, 1e-300))
    return float(r[int(0.025 * BOOT)]), float(r[int(0.975 * BOOT) - 1])


# --------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--avg-bits", default="5,6,7")
    ap.add_argument("--train-steps", type=int, default=800)
    ap.add_argument("--train", type=int, default=6000, help="training images")
    ap.add_argument("--heldout", type=int, default=1000)
    ap.add_argument("--calib-batches", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32, help="calibration batch size")
    ap.add_argument("--hessian-iterations", type=int, default=100)
    ap.add_argument("--random", type=int, default=10, help="random allocations per avg_bits")
    ap.add_argument("--time-repeats", type=int, default=3, help="alternating int8 / mixed pass timings")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="smoke run: see the docstring")
    args = ap.parse_args()
    if args.quick:
        args.train_steps, args.train, args.heldout, args.calib_batches, args.batch = 150, 2000, 200, 4, 16
        args.hessian_iterations, args.random, args.avg_bits = 20, 5, "6"
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    avg_bits = [int(a) for a in args.avg_bits.split(",")]

    t0 = time.perf_counter()
    model = build(args.train_steps, args.train)
    train_s = time.perf_counter() - t0
    cx, cy = digits(args.calib_batches * args.batch, seed=2)
    calib = [(cx[i:i + args.batch], cy[i:i + args.batch]) for i in range(0, len(cx), args.batch)]
    hx, hy = digits(args.heldout, seed=3)
    ref = forward(model, hx)
    labels = hy.numpy()
    example = cx[:1]
    print(f"trained {args.train_steps} steps in {train_s:.0f} s; float held-out accuracy "
          f"{100 * (ref.argmax(1) == labels).mean():.1f}%", flush=True)

    def measure(got: np.ndarray) -> dict:
        return {"err": errors(ref, got), "agree": float((got.argmax(1) == ref.argmax(1)).mean()),
                "acc": float((got.argmax(1) == labels).mean())}

    # -- refold: uniform int8 / int4 (W8A8 / W4A8) ---------------------------------------------
    full: dict[str, dict] = {}
    stats: dict[str, dict] = {}
    gm, st, _ = quantize(model, example, calib)
    full["int8"] = measure(forward(gm, hx))
    gm, st, _ = quantize(model, example, calib, weights="int4")
    full["int4"] = measure(forward(gm, hx))
    weights = None
    timing = {}
    for a in avg_bits:
        for tag, choices in (("hawq 4+8", "4+8"), ("hawq 4..8", "4+5+6+7+8"), (f"uniform-{a}", str(a))):
            gm, st, _ = quantize(model, example, calib, bits="mixed", bit_choices=choices, avg_bits=a,
                                 hessian_iterations=args.hessian_iterations)
            full[f"{tag} @{a}"] = measure(forward(gm, hx))
            stats[f"{tag} @{a}"] = st
        pairs = []  # int8 and mixed passes alternating, the order swapping each time
        for i in range(args.time_repeats):
            t = {}
            for kind in (("int8", "mixed") if i % 2 == 0 else ("mixed", "int8")):
                kw = {} if kind == "int8" else {"bits": "mixed", "bit_choices": "4+8", "avg_bits": a,
                                                    "hessian_iterations": args.hessian_iterations}
                t[kind] = quantize(model, example, calib, **kw)[2]
            pairs.append((t["mixed"], t["int8"]))
        timing[a] = (pairs, stats[f"hawq 4+8 @{a}"]["hessian_steps"])
        weights = weights or list(stats[f"hawq 4+8 @{a}"]["weight_bits"])
        print(f"  avg_bits {a}: refold runs done", flush=True)

    # -- weight-only: every allocation in the same setting -------------------------------------
    by_value = {"p_" + n.replace(".", "_"): n for n, _ in model.named_parameters()}
    missing = [w for w in weights if w not in by_value]
    if missing:
        raise SystemExit(f"cannot map refold's weight names to parameters: {missing}")
    fq = FakeQuant(model, {w: by_value[w] for w in weights})
    sizes = {w: fq.params[w].numel() for w in weights}
    total = sum(sizes.values())
    if len(weights) > 16:
        raise SystemExit(f"{len(weights)} layers: too many to enumerate the 4/8 allocations")
    t0 = time.perf_counter()
    every = []  # (size in bits, alloc, per-image errors) for all 2^L 4/8 allocations
    for bits in itertools.product((4, 8), repeat=len(weights)):
        alloc = dict(zip(weights, bits))
        every.append((sum(sizes[w] * b for w, b in alloc.items()), alloc, errors(ref, fq.run(alloc, hx))))
    enum_s = time.perf_counter() - t0
    wo: dict[str, dict] = {}
    uni = {b: errors(ref, fq.run({w: b for w in weights}, hx)) for b in sorted({4, 8, *avg_bits})}
    rng = np.random.default_rng(0)
    rand_info, rank_info = {}, {}
    for a in avg_bits:
        budget = a * total
        for tag in ("hawq 4+8", "hawq 4..8"):
            wo[f"{tag} @{a}"] = errors(ref, fq.run(stats[f"{tag} @{a}"]["weight_bits"], hx))
        h_alloc = stats[f"hawq 4+8 @{a}"]["weight_bits"]
        h_size = sum(sizes[w] * h_alloc[w] for w in weights)
        feasible = [e for e in every if e[0] <= budget]
        for win in WINDOWS:
            near = [e for e in feasible if abs(e[0] - h_size) <= win * 4 * total]
            if len(near) >= args.random:
                break
        picks = [near[i] for i in rng.choice(len(near), size=min(args.random, len(near)), replace=False)]
        mses = [float(e[2].mean()) for e in picks]
        rand_info[a] = {"mses": mses, "window": win, "candidates": len(near), "picks": picks,
                        "avg": [e[0] / total for e in picks], "median": statistics.median(mses)}
        best = min(feasible, key=lambda e: e[2].mean())
        h_mse = float(wo[f"hawq 4+8 @{a}"].mean())
        rank_info[a] = {"best": best, "rank": 1 + sum(1 for e in feasible if e[2].mean() < h_mse),
                        "of": len(feasible), "h_size": h_size}

    # -- print --------------------------------------------------------------------------------
    from refold.passes.quantize.hawq import quantization_error

    originals = {w: dict(model.named_parameters())[by_value[w]].detach().numpy().copy() for w in weights}
    qerr = {(w, b): quantization_error(originals[w], b, 0) for w in weights for b in (4, 8)}

    def objective(a):
        """HAWQ-V2's sum of Omega_i(b_i), with the traces refold reported at avg_bits a."""
        tr = stats[f"hawq 4+8 @{a}"]["hessian_trace"]
        return lambda alloc: sum(max(tr[w], 0.0) / sizes[w] * qerr[w, alloc[w]] for w in weights)

    print(f"\nResNet (transformers, bottleneck, depths [1,1], hidden [16,32], embedding 16, 10 labels), trained "
          f"{args.train_steps} steps on synthetic 32x32 digits; {len(weights)} quantized layers, {total} weights")
    print(f"held-out {args.heldout} images; calibration {args.calib_batches} x {args.batch} labelled images "
          f"(Hessian on the first 4 batches); torch threads {torch.get_num_threads()}")
    print(f"float accuracy {100 * (ref.argmax(1) == labels).mean():.1f}%; float logit mean square "
          f"{float((ref ** 2).mean()):.3g}")
    hdr = (f"{'allocation':<16} {'avg bits':>8} {'wo MSE':>10} {'wo agree':>8} {'W8A8 MSE':>10} "
           f"{'W8A8 agree':>10} {'W8A8 acc':>8}")
    print("\n" + hdr)
    print("-" * len(hdr))

    def row(name, avg, wo_res, fu):
        cells = [f"{name:<16}", f"{avg:>8.2f}"]
        if wo_res is None:
            cells.append(f"{'-':>10} {'-':>8}")
        else:
            cells.append(f"{wo_res[0].mean():>10.4g} {100 * wo_res[1]:>7.1f}%")
        if fu is None:
            cells.append(f"{'-':>10} {'-':>10} {'-':>8}")
        else:
            cells.append(f"{fu['err'].mean():>10.4g} {100 * fu['agree']:>9.1f}% {100 * fu['acc']:>7.1f}%")
        print(" ".join(cells))

    def wo_row_err(alloc):
        """Weight-only: per-image errors and top-1 agreement with float."""
        got = fq.run(alloc, hx)
        return errors(ref, got), float((got.argmax(1) == ref.argmax(1)).mean())

    row("int8", 8.0, wo_row_err({w: 8 for w in weights}), full["int8"])
    row("int4", 4.0, wo_row_err({w: 4 for w in weights}), full["int4"])
    for a in avg_bits:
        print(f"-- avg_bits {a} (budget {a * total / 8:.0f} bytes of weights)")
        row(f"uniform-{a}", float(a), wo_row_err({w: a for w in weights}), full[f"uniform-{a} @{a}"])
        for tag in ("hawq 4+8", "hawq 4..8"):
            alloc = stats[f"{tag} @{a}"]["weight_bits"]
            row(tag, sum(sizes[w] * alloc[w] for w in weights) / total, wo_row_err(alloc), full[f"{tag} @{a}"])
        r = rand_info[a]
        h48 = stats[f"hawq 4+8 @{a}"]["weight_bits"]
        for i, (e, m) in enumerate(sorted(zip(r["picks"], r["mses"]), key=lambda t: t[1])):
            row(f"random {i + 1}" + (" *" if e[1] == h48 else ""), e[0] / total, wo_row_err(e[1]), None)
        b = rank_info[a]["best"]
        row("best 4/8" + (" *" if b[1] == h48 else ""), b[0] / total, wo_row_err(b[1]), None)
        print(f"   random: {len(r['picks'])} of {r['candidates']} allocations within +-{100 * r['window']:.0f}% "
              f"of the 4->8 swing of HAWQ's size and the budget; median MSE {r['median']:.4g}, range "
              f"[{min(r['mses']):.4g}, {max(r['mses']):.4g}]")
        k = rank_info[a]
        print(f"   hawq 4+8 ranks {k['rank']} of {k['of']} 4/8 allocations within the budget by weight-only MSE "
              f"(* : the same allocation as hawq 4+8; best 4/8: the lowest weight-only MSE of them all)")
        obj = objective(a)
        feasible = [e for e in every if e[0] <= a * total]
        argmin = min(feasible, key=lambda e: obj(e[1]))
        print(f"   HAWQ's objective (its traces): hawq 4+8 pick {obj(h48):.4g}, best 4/8 {obj(b[1]):.4g}, "
              f"uniform-4 {obj({w: 4 for w in weights}):.4g}; the objective's own minimum within the budget "
              f"{obj(argmin[1]):.4g} ({'= hawq 4+8 pick' if argmin[1] == h48 else 'NOT hawq 4+8 pick'})")

    print("\nbits per layer (hawq 4+8 | hawq 4..8), Hessian trace (hawq 4+8 run), weights")
    hdr = f"{'layer':<20} {'weights':>7} " + " ".join(f"{'@' + str(a) + ' trace':>11} {'bits':>6}" for a in avg_bits)
    print(hdr)
    print("-" * len(hdr))
    for w in weights:
        cells = [f"{short(w):<20}", f"{sizes[w]:>7}"]
        for a in avg_bits:
            s1, s2 = stats[f"hawq 4+8 @{a}"], stats[f"hawq 4..8 @{a}"]
            cells.append(f"{s1['hessian_trace'][w]:>11.4g} {s1['weight_bits'][w]:>2}|{s2['weight_bits'][w]:<3}")
        print(" ".join(cells))

    print("\nHessian trace estimate (hawq 4+8): Hutchinson steps; quantize pass time with bits=mixed and with "
          "int8, run alternately")
    for a in avg_bits:
        pairs, steps = timing[a]
        m, i8 = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        d = statistics.median(p[0] - p[1] for p in pairs)
        print(f"  avg_bits {a}: {steps} Hutchinson steps (limit {args.hessian_iterations}); pass {m:.2f} s vs int8 "
              f"{i8:.2f} s, paired difference +{d:.2f} s (median of {len(pairs)}; mixed runs "
              + ", ".join(f"{p[0]:.2f}" for p in pairs) + ")")
    print(f"weight-only enumeration: {len(every)} allocations in {enum_s:.1f} s")

    print()
    for a in avg_bits:
        h = wo[f"hawq 4+8 @{a}"]
        u = uni[a]
        ratio = h.mean() / u.mean()
        lo, hi = boot_ratio(h, u)
        print(f"{verdict(ratio, lo, hi)}  @{a} weight-only: mixed (hawq 4+8) MSE {h.mean():.4g} <= "
              f"uniform-{a} {u.mean():.4g} (ratio {ratio:.2f}, 95% [{lo:.2f}, {hi:.2f}])")
        hf, uf = full[f"hawq 4+8 @{a}"]["err"], full[f"uniform-{a} @{a}"]["err"]
        ratio = hf.mean() / uf.mean()
        lo, hi = boot_ratio(hf, uf)
        print(f"{verdict(ratio, lo, hi)}  @{a} W8A8: mixed (hawq 4+8) MSE {hf.mean():.4g} <= "
              f"uniform-{a} {uf.mean():.4g} (ratio {ratio:.2f}, 95% [{lo:.2f}, {hi:.2f}])")
        r = rand_info[a]
        ratio = h.mean() / r["median"]
        lo, hi = boot_ratio_median(h, [e[2] for e in r["picks"]])
        print(f"{verdict(ratio, lo, hi, strict=True)}  @{a} weight-only: mixed (hawq 4+8) MSE {h.mean():.4g} < "
              f"random median {r['median']:.4g} (ratio {ratio:.2f}, 95% [{lo:.2f}, {hi:.2f}])")
        h2 = wo[f"hawq 4..8 @{a}"]
        print(f"info  @{a} hawq 4..8 weight-only MSE {h2.mean():.4g} ({h2.mean() / u.mean():.2f}x uniform-{a}); "
              f"W8A8 {full[f'hawq 4..8 @{a}']['err'].mean():.4g} ({full[f'hawq 4..8 @{a}']['err'].mean() / uf.mean():.2f}x)")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
