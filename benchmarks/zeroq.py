"""ZeroQ (data-free calibration) vs real data vs Gaussian noise, W8A8 with refold's `quantize` pass.

    python benchmarks/zeroq.py [--models cls,mbv2] [--heldout 64] [--calib 32]
                               [--zeroq-batch 32] [--zeroq-iterations 500] [--threads 1] [--quick]

Models:

  cls   PP-OCR mobile v2.0 orientation classifier (rapidocr's ONNX, real weights, BatchNormalization
        kept in the file), input x [N,3,48,192], output the softmax over (upright, rotated).
  mbv2  (optional, not in the default run: it doubles the ZeroQ time) transformers
        MobileNetV2ForImageClassification, depth multiplier 0.35, 2 labels, random weights (seed 0)
        whose BN running statistics are made realistic: they are re-estimated (cumulative average,
        train mode) on 64 text crops of the cls input distribution (half of them rotated), so the
        BN statistics ZeroQ matches are those of real inputs; the linear head is then fitted to the
        orientation on the same crops' pooled features (300 Adam steps), so its decisions mean
        something. A random deep net is chaotic: int8 weights alone cost it most of its SQNR (see the
        w8-only row) and 1e-3 input noise ~17 dB, so its rows say more about the model than the
        calibration. Captured from the torch module with refold.optimize(module, (x,), ...); output
        the logits. About 1 s per ZeroQ step at batch 32 on 2 busy cores: ~8 min at the defaults.

Calibrations, each W8A8 with `Quantize(profile="ort")` (per-channel int8 weights, uint8 activations,
minmax ranges):

  zeroq  calibration="zeroq": --zeroq-batch inputs distilled from the BN statistics in
         --zeroq-iterations Adam steps (defaults 32 / 500: the paper's), zeroq_shape="3x48x192".
  real   --calib real text crops (zoo.text_crops, seed 1), every other one rotated 180 degrees (the
         classifier sees both orientations in use), one crop per batch, normalised by zoo.cls_input.
  noise  --calib inputs of i.i.d. N(0, 1) noise of the same shape, one per batch.

Held-out: --heldout crops (zoo.text_crops, seed 1000, disjoint from the calibration crops), each
upright and rotated (2 x --heldout inputs), the same inputs for every calibration (paired).

Also, as a reference row: weight-only int8 (`Quantize(weight_only=True)`, activations float), the
part of the error no calibration can remove.

Measured, per calibration: wall time of the whole `refold.optimize` call (ZeroQ's includes the
distillation; the data are made before the clock starts), output SQNR against the float model over
the held-out set (for cls also of the centred log-probabilities, i.e. the logits up to a constant,
which the saturated softmax hides), the share of held-out inputs whose arg-max (orientation
decision) agrees with the float model's, upright and rotated separately, and the float decisions'
accuracy. For ZeroQ: the BN-statistics loss at the first step and the best one, and their ratio.
The SQNR differences between calibrations come with a 95% paired bootstrap interval over the
held-out inputs.

Targets: ZeroQ's BN-statistics loss falls >= 10x (start / best). Also checked, as ZeroQ's premise
rather than a set target: ZeroQ's SQNR >= noise's (logit SQNR for cls), OK or MISS where the 95%
interval of the difference lies on one side of 0, else "unresolved"; its gap to real data is
printed.

One torch thread by default (ZeroQ's distillation and the torch model run in torch): on this
2-core machine shared with other jobs, 2 threads made the same torch work 10-40x slower from run to
run (OpenMP threads contending); ONNX Runtime keeps its own default.

--quick: 8 held-out crops, 8 calibration inputs, ZeroQ batch 8 and 40 iterations (a smoke run: its
loss ratio and SQNRs say little).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "src"))

SHAPE = (3, 48, 192)
CALIBRATIONS = ("zeroq", "real", "noise")
ROWS = CALIBRATIONS + ("w8-only",)  # weight-only int8: the error floor that no calibration removes
BOOT = 2000


# --------------------------------------------------------------------------------------------
# data

def rotated(crop: np.ndarray) -> np.ndarray:
    return crop[::-1, ::-1].copy()


def real_inputs(n: int, seed: int) -> list[np.ndarray]:
    """``n`` cls inputs [1,3,48,192], every other crop rotated 180 degrees."""
    import zoo

    return [zoo.cls_input(rotated(c) if i % 2 else c) for i, c in enumerate(zoo.text_crops(n, seed))]


def noise_inputs(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, *SHAPE)).astype(np.float32) for _ in range(n)]


def heldout_inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(upright [n,3,48,192], rotated [n,3,48,192]): the same crops both ways."""
    import zoo

    crops = zoo.text_crops(n, seed)
    up = np.concatenate([zoo.cls_input(c) for c in crops])
    down = np.concatenate([zoo.cls_input(rotated(c)) for c in crops])
    return up, down


# --------------------------------------------------------------------------------------------
# models: each gives a float forward and a quantize function returning a forward

class OnnxCls:
    name = "cls"
    title = "PP-OCR cls (ONNX, real weights)"
    probabilities = True

    def __init__(self):
        import zoo

        from refold.runtime.ort import OrtRunner

        self.path = zoo.ppocr_path("cls")
        self._float = OrtRunner(self.path)

    @staticmethod
    def _run(runner, x: np.ndarray) -> np.ndarray:
        out = runner.run({"x": x})
        return np.asarray(next(iter(out.values())), np.float64)

    def float_forward(self, x: np.ndarray) -> np.ndarray:
        return self._run(self._float, x)

    def quantize(self, **kw):
        import refold
        from refold.passes import Quantize
        from refold.runtime.ort import OrtRunner

        data = kw.pop("data", None)
        feeds = None if data is None else [{"x": a} for a in data]
        t0 = time.perf_counter()
        proto, report = refold.optimize(self.path, passes=[Quantize(profile="ort", data=feeds, **kw)])
        wall = time.perf_counter() - t0
        runner = OrtRunner(proto)
        return (lambda x: self._run(runner, x)), report.record("quantize").stats, wall


class TorchMbv2:
    name = "mbv2"
    title = "MobileNetV2 x0.35 (torch, random weights, BN statistics from text crops)"
    probabilities = False

    def __init__(self, seed: int = 0):
        import torch
        import transformers as tf

        torch.manual_seed(seed)
        cfg = tf.MobileNetV2Config(depth_multiplier=0.35, image_size=SHAPE[1], num_labels=2)
        model = tf.MobileNetV2ForImageClassification(cfg)
        # realistic BN statistics: a cumulative average over real inputs, in train mode
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        x = torch.from_numpy(np.concatenate(real_inputs(64, seed=77)))
        with torch.no_grad():
            for chunk in x.split(16):
                model(chunk)
        model.eval()
        # the head (a random backbone's features): fitted to orientation, so decisions mean something
        with torch.no_grad():
            feats = torch.cat([model.mobilenet_v2(c).pooler_output for c in x.split(16)])
        labels = torch.arange(len(x)) % 2  # real_inputs rotates every other crop
        head = model.classifier
        opt = torch.optim.Adam(head.parameters(), lr=1e-2)
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(head(feats), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()

        from models import Logits

        self.module = Logits(model.eval()).eval()

    def float_forward(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.module(torch.from_numpy(x)).double().numpy()

    def quantize(self, **kw):
        import torch

        import refold
        from refold.passes import Quantize

        kw.pop("zeroq_shape", None)  # the example input gives the shape
        data = kw.pop("data", None)
        feeds = None if data is None else [torch.from_numpy(a) for a in data]
        example = torch.zeros((1, *SHAPE))
        t0 = time.perf_counter()
        gm, report = refold.optimize(self.module, (example,), passes=[Quantize(profile="ort", data=feeds, **kw)])
        wall = time.perf_counter() - t0

        def forward(x):
            with torch.no_grad():
                return gm(torch.from_numpy(x)).double().numpy()
        return forward, report.record("quantize").stats, wall


MODELS = {"cls": OnnxCls, "mbv2": TorchMbv2}


# --------------------------------------------------------------------------------------------
# measures

def batched(fn, x: np.ndarray, size: int = 32) -> np.ndarray:
    return np.concatenate([fn(x[i:i + size]) for i in range(0, len(x), size)])


def per_input(ref: np.ndarray, got: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out input: signal energy, error energy (flattened over the output)."""
    r, g = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    return (r ** 2).sum(1), ((r - g) ** 2).sum(1)


def sqnr(sig: np.ndarray, err: np.ndarray) -> float:
    s, e = float(sig.sum()), float(err.sum())
    return math.inf if e == 0 else 10 * math.log10(s / e)


def centred_log(p: np.ndarray) -> np.ndarray:
    lp = np.log(np.clip(p, 1e-30, None))
    return lp - lp.mean(-1, keepdims=True)


def boot_diff(a: tuple, b: tuple, seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval of SQNR(a) - SQNR(b) (dB), resampling held-out inputs."""
    rng = np.random.default_rng(seed)
    n = len(a[0])
    idx = rng.integers(0, n, (BOOT, n))
    sa = 10 * np.log10(a[0][idx].sum(1) / np.maximum(a[1][idx].sum(1), 1e-300))
    sb = 10 * np.log10(b[0][idx].sum(1) / np.maximum(b[1][idx].sum(1), 1e-300))
    d = np.sort(sa - sb)
    return float(d[int(0.025 * BOOT)]), float(d[int(0.975 * BOOT) - 1])


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISS"


# --------------------------------------------------------------------------------------------

def bench(model, args) -> dict:
    up, down = heldout_inputs(args.heldout, seed=1000)
    x = np.concatenate([up, down])
    n = len(up)
    ref = batched(model.float_forward, x)
    decisions = ref.argmax(-1)
    calib = {"real": real_inputs(args.calib, seed=1), "noise": noise_inputs(args.calib, seed=2)}
    out = {"float_acc_up": float((decisions[:n] == 0).mean()), "float_acc_down": float((decisions[n:] == 1).mean()),
           "rows": {}}
    for name in ROWS:
        if name == "w8-only":
            kw = {"weight_only": True}
        elif name == "zeroq":
            kw = {"calibration": "zeroq", "zeroq_batch": args.zeroq_batch, "zeroq_iterations": args.zeroq_iterations,
                      "zeroq_shape": "x".join(map(str, SHAPE))}
        else:
            kw = {"calibration": "minmax", "data": calib[name]}
        fwd, st, wall = model.quantize(**kw)
        got = batched(fwd, x)
        row = {"wall": wall, "stats": st, "out": per_input(ref, got)}
        if model.probabilities:
            row["logit"] = per_input(centred_log(ref), centred_log(got))
        dec = got.argmax(-1)
        row["agree_up"] = float((dec[:n] == decisions[:n]).mean())
        row["agree_down"] = float((dec[n:] == decisions[n:]).mean())
        row["max_abs"] = float(np.abs(got - ref).max())
        out["rows"][name] = row
        print(f"  [{model.name}] {name}: {wall:.1f} s", flush=True)
    return out


def report(model, res: dict, args) -> list[str]:
    rows = res["rows"]
    n = args.heldout
    print(f"\n{model.title}: held-out {n} crops x (upright, rotated); calibration {args.calib} inputs "
          f"(real, noise), ZeroQ batch {args.zeroq_batch} x {args.zeroq_iterations} iterations")
    print(f"float decisions: upright read as upright {100 * res['float_acc_up']:.1f}%, rotated as rotated "
          f"{100 * res['float_acc_down']:.1f}%")
    logit = model.probabilities
    hdr = (f"{'calibration':<12} {'wall s':>7} {'SQNR dB':>8} " + (f"{'logit SQNR':>10} " if logit else "")
           + f"{'max |err|':>9} {'agree up':>9} {'agree rot':>9}  BN loss start -> best (ratio)")
    print(hdr)
    print("-" * len(hdr))
    for name in ROWS:
        r = rows[name]
        z = r["stats"].get("zeroq")
        bn = (f"{z['loss_start']:.4g} -> {z['loss_best']:.4g} ({z['loss_start'] / z['loss_best']:.1f}x, "
              f"{z['steps']} steps)" if z else "")
        print(f"{name:<12} {r['wall']:>7.1f} {sqnr(*r['out']):>8.2f} "
              + (f"{sqnr(*r['logit']):>10.2f} " if logit else "")
              + f"{r['max_abs']:>9.3g} {100 * r['agree_up']:>8.1f}% {100 * r['agree_down']:>8.1f}%  {bn}")
    key = "logit" if logit else "out"
    what = "logit SQNR" if logit else "SQNR"
    for other in ("real", "noise"):
        for k in (("out", "logit") if logit else ("out",)):
            lo, hi = boot_diff(rows["zeroq"][k], rows[other][k])
            d = sqnr(*rows["zeroq"][k]) - sqnr(*rows[other][k])
            print(f"  zeroq - {other:<5} {'logit SQNR' if k == 'logit' else 'SQNR':<10} {d:+6.2f} dB  "
                  f"(95% paired bootstrap [{lo:+.2f}, {hi:+.2f}])")
    lines = []
    z = rows["zeroq"]["stats"]["zeroq"]
    ratio = z["loss_start"] / z["loss_best"]
    lines.append(f"{verdict(ratio >= 10)}  [{model.name}] ZeroQ BN-statistics loss start/best {ratio:.1f}x "
                 f"(target >= 10x)")
    dz, dn = sqnr(*rows["zeroq"][key]), sqnr(*rows["noise"][key])
    lo, hi = boot_diff(rows["zeroq"][key], rows["noise"][key])
    side = "OK" if lo > 0 else "MISS" if hi < 0 else f"unresolved ({verdict(dz >= dn)} at the point estimate)"
    lines.append(f"{side}  [{model.name}] ZeroQ {what} {dz:.2f} dB >= noise {dn:.2f} dB "
                 f"(difference 95% interval [{lo:+.2f}, {hi:+.2f}]; ZeroQ's premise, not a set target)")
    dr = sqnr(*rows["real"][key])
    lines.append(f"info  [{model.name}] ZeroQ {what} {dz - dr:+.2f} dB against real-data calibration ({dr:.2f} dB); "
                 f"decisions agreement ZeroQ {100 * (rows['zeroq']['agree_up'] + rows['zeroq']['agree_down']) / 2:.1f}% "
                 f"/ real {100 * (rows['real']['agree_up'] + rows['real']['agree_down']) / 2:.1f}% "
                 f"/ noise {100 * (rows['noise']['agree_up'] + rows['noise']['agree_down']) / 2:.1f}%")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cls", help="comma-separated: cls, mbv2")
    ap.add_argument("--heldout", type=int, default=64, help="held-out crops (each also rotated)")
    ap.add_argument("--calib", type=int, default=32, help="real / noise calibration inputs")
    ap.add_argument("--zeroq-batch", type=int, default=32)
    ap.add_argument("--zeroq-iterations", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 8 held-out crops, 8 calibration inputs, ZeroQ batch 8 x 40 iterations")
    args = ap.parse_args()
    if args.quick:
        args.heldout, args.calib, args.zeroq_batch, args.zeroq_iterations = 8, 8, 8, 40
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    lines = []
    for name in args.models.split(","):
        model = MODELS[name.strip()]()
        res = bench(model, args)
        lines += report(model, res, args)
    print()
    for line in lines:
        print(line)
    print(f"torch threads {torch.get_num_threads()}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
