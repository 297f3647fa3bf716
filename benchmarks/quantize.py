"""refold's `quantize` pass vs ONNX Runtime's `quantize_static`, side by side in one run.

    python benchmarks/quantize.py [--models rec,bert] [--methods minmax,entropy,percentile]
                                  [--samples 32,512] [--cap-gb 10] [--iters 40] [--threads 1]
                                  [--heldout 16] [--seq 128] [--quick] [--keep DIR]

Models (each tool gets the same float file):

  rec   PP-OCRv4 rec (rapidocr's ONNX, real weights), input 1x3x48x320. The file ships at opset 12
        with every weight in a Constant node, so both tools would quantize per tensor (opset 12 has
        no per-channel DequantizeLinear) and quantize_static would see no initializers at all (it
        then quantizes weights as activations). It is raised to opset 13 (onnx.version_converter)
        and put through ORT's recommended `quant_pre_process` (Constants become initializers, BN
        folded); outputs unchanged. Calibration / held-out data: text crops rendered with PIL at
        48x320, normalised as (x/255 - 0.5)/0.5.
  bert  transformers BertModel, 4 layers, hidden 128, 4 heads, FFN 512, vocab 30522, random
        weights, exported with torch.onnx (opset 17), input ids 1 x --seq (random tokens between
        [CLS] and [SEP]); `quant_pre_process` as well.
  det   PP-OCRv4 det at 1x3x320x320 (text pages rendered with PIL), prepared like rec (optional).

Both tools: QDQ, per-channel int8 weights, uint8 activations (quantize_static with
QuantFormat.QDQ, per_channel=True, activation_type=QUInt8, weight_type=QInt8 and otherwise its
defaults; refold with profile=ort), the same calibration method and the same stream of samples
(one sample per batch).

Measured:

  1. calibration (+ quantization) of every (tool, method, sample count) in its own fresh process
     under an address-space cap (RLIMIT_AS, --cap-gb): wall time (data generation excluded) and
     peak RSS (VmHWM of that process; the parent also polls it, so a run that dies at the cap
     still gets a lower bound). A run that hits the cap is reported as such.
  2. output SQNR against the float model on --heldout held-out inputs (for rec also the share
     of time steps whose arg-max character agrees with the float model's).
  3. ORT CPU latency of both quantized models (graph optimizations on, where QDQ fuses;
     session.intra_op.allow_spinning=0; --threads intra-op threads), float model alongside,
     every iteration runs all three in rotating order, each as a block of runs lasting >= ~30 ms
     (a block's time is the median of its runs, so a preempted run does not count); the ratio is
     the median of per-iteration refold / quantize_static ratios, with its 10th-90th percentile
     spread.

Targets (from the issue): latency ratio <= 1.0; SQNR >= quantize_static's; peak RSS at the
largest sample count <= 0.25x quantize_static's (entropy, percentile) and within 10% of refold's
own at the smallest.
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
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
METHODS = ("minmax", "entropy", "percentile")
MEM_WORDS = ("MemoryError", "bad_alloc", "bad allocation", "Failed to allocate", "Cannot allocate memory",
             "out of memory", "Unable to allocate", "std::length_error")


# --------------------------------------------------------------------------------------------
# data: deterministic streams, regenerated identically in every process

def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


WORDS = ["Hello", "refold", "2026", "graph", "rewrite", "quantize", "text", "crop", "ONNX", "model",
         "kernel", "layer", "norm", "batch", "tensor", "scale", "invoice", "total", "Street", "No.42",
         "Amount:", "$17.95", "Zürich", "delivery", "ORDER", "qty", "12/03/2025", "Tel.", "page", "#"]


def text_line(rng, width: int = 320, height: int = 48):
    """One rec crop: a few words, dark on light, varied size, position, ink and paper."""
    import numpy as np
    from PIL import Image, ImageDraw

    words = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 6))))
    paper = int(rng.integers(200, 256))
    ink = int(rng.integers(0, 80))
    img = Image.new("RGB", (width, height), (paper, paper, int(max(0, paper - rng.integers(0, 30)))))
    ImageDraw.Draw(img).text((int(rng.integers(2, 16)), int(rng.integers(2, 14))), words, fill=(ink, ink, ink),
                             font=_font(int(rng.integers(18, 32))))
    a = np.asarray(img).astype(np.float32)
    a += rng.normal(0, 4, a.shape).astype(np.float32)  # scanner noise
    return np.clip(a, 0, 255)


def text_page(rng, size: int = 320):
    """One det input: several lines of text at random places on a page."""
    import numpy as np
    from PIL import Image, ImageDraw

    paper = int(rng.integers(210, 256))
    img = Image.new("RGB", (size, size), (paper, paper, paper))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 10))):
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 4))))
        ink = int(rng.integers(0, 90))
        d.text((int(rng.integers(0, size - 80)), int(rng.integers(0, size - 30))), words, fill=(ink, ink, ink),
               font=_font(int(rng.integers(14, 30))))
    return np.asarray(img).astype(np.float32)


def normalise(img):
    x = img.transpose(2, 0, 1) / 255.0
    return ((x - 0.5) / 0.5)[None].astype("float32")


def det_normalise(img):
    import numpy as np

    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    return ((img.transpose(2, 0, 1) / 255.0 - mean) / std)[None].astype("float32")


def batches(spec: dict, n: int, seed: int):
    """``n`` feed dicts (one sample each) for the model described by ``spec``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for _ in range(n):
        if spec["kind"] == "rec":
            yield {spec["input"]: normalise(text_line(rng))}
        elif spec["kind"] == "det":
            yield {spec["input"]: det_normalise(text_page(rng))}
        else:
            seq = spec["seq"]
            ids = rng.integers(1000, spec["vocab"], size=(1, seq), dtype=np.int64)
            ids[0, 0], ids[0, -1] = 101, 102  # [CLS] ... [SEP]
            yield {spec["input"]: ids}


class Timed:
    """Wraps a generator and adds up the time spent producing items (excluded from wall time)."""

    def __init__(self, it):
        self.it, self.spent, self.count = iter(it), 0.0, 0

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.spent += time.perf_counter() - t0
            self.count += 1


# --------------------------------------------------------------------------------------------
# models

def _pre_process(src: str, dst: str) -> str:
    """ORT's recommended pre-processing; symbolic shape inference fails on dynamic PP-OCR dims."""
    import contextlib
    import io
    import logging

    from onnxruntime.quantization.shape_inference import quant_pre_process

    quiet = io.StringIO()  # symbolic shape inference prints what it cannot infer
    logging.disable(logging.WARNING)
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    try:  # in the work folder: a failed symbolic pass leaves sym_shape_infer_temp.onnx + data in the cwd
        with contextlib.chdir(os.path.dirname(dst)), contextlib.redirect_stdout(quiet), \
                contextlib.redirect_stderr(quiet):
            try:
                quant_pre_process(src, dst)
                return "quant_pre_process"
            except Exception:  # noqa: BLE001 - any failure of symbolic shape inference: skip it
                quant_pre_process(src, dst, skip_symbolic_shape=True)
                return "quant_pre_process(skip_symbolic_shape=True)"
    finally:
        logging.disable(logging.NOTSET)


def prepare(kind: str, folder: str, seq: int) -> dict:
    """Write the float model both tools quantize; return its spec (path, input, data kind)."""
    import onnx

    path = os.path.join(folder, f"{kind}.float.onnx")
    if kind in ("rec", "det"):
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import zoo

        m = onnx.load(zoo.ppocr_path(kind))
        raw = os.path.join(folder, f"{kind}.opset13.onnx")
        onnx.save(onnx.version_converter.convert_version(m, 13), raw)
        how = _pre_process(raw, path)
        shape = (1, 3, 48, 320) if kind == "rec" else (1, 3, 320, 320)
        spec = {"kind": kind, "path": path, "input": m.graph.input[0].name, "shape": shape,
                "title": f"PP-OCRv4 {kind} (real weights), input {'x'.join(map(str, shape))}, opset 12 -> 13, {how}"}
    else:
        import torch
        import transformers as tf

        torch.manual_seed(0)
        cfg = tf.BertConfig(num_hidden_layers=4, hidden_size=128, num_attention_heads=4, intermediate_size=512)
        model = tf.BertModel(cfg, add_pooling_layer=False).eval()

        class LastHidden(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, ids):
                return self.m(input_ids=ids).last_hidden_state

        raw = os.path.join(folder, "bert.raw.onnx")
        ids = torch.randint(0, cfg.vocab_size, (1, seq))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(LastHidden(model).eval(), (ids,), raw, dynamo=False, opset_version=17,
                              input_names=["input_ids"], output_names=["last_hidden_state"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                            "last_hidden_state": {0: "batch", 1: "seq"}})
        how = _pre_process(raw, path)
        spec = {"kind": "bert", "path": path, "input": "input_ids", "shape": (1, seq), "seq": seq,
                "vocab": cfg.vocab_size,
                "title": f"BERT encoder (transformers, 4 layers, hidden 128, 4 heads, random weights), "
                         f"input ids 1x{seq}, opset 17, {how}"}
    return spec


# --------------------------------------------------------------------------------------------
# one calibration run, in its own process

def _status_kb(pid: int | str, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def child(job: dict) -> None:
    cap = int(job["cap_gb"] * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import logging

    logging.disable(logging.WARNING)  # quantize_static's "consider pre-processing" lines
    import numpy as np  # noqa: F401
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    spec, n, method = job["spec"], job["samples"], job["method"]
    data = Timed(batches(spec, n, job["seed"]))
    out: dict = {}
    if job["tool"] == "refold":
        import onnx

        import refold

        base = _status_kb("self", "VmRSS")
        t0 = time.perf_counter()
        proto, report = refold.optimize(spec["path"], passes=[refold.passes.Quantize(
            calibration=method, profile="ort", data=data)])
        onnx.save(proto, job["out"])
        wall = time.perf_counter() - t0
        st = report.record("quantize").stats
        out = {"quantized": st.get("quantized"), "per_channel": st.get("per_channel"),
               "worst_layer_sqnr_db": st.get("worst_sqnr_db"), "bias_kept_float": len(st.get("bias_kept_float", {})),
               "notes": st.get("notes", [])}
    else:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        class Reader(CalibrationDataReader):
            def __init__(self, it):
                self.it = it

            def get_next(self):
                return next(self.it, None)

        cm = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[method]
        base = _status_kb("self", "VmRSS")
        t0 = time.perf_counter()
        quantize_static(spec["path"], job["out"], Reader(data), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=cm)
        wall = time.perf_counter() - t0
    out.update(wall_s=wall - data.spent, gen_s=data.spent, seen=data.count, base_rss_mb=base / 1024,
               peak_rss_mb=_status_kb("self", "VmHWM") / 1024)
    print("RESULT " + json.dumps(out), flush=True)


def run_child(job: dict, timeout: float) -> dict:
    """Run one calibration in a fresh process; classify a death at the memory cap."""
    folder = os.path.dirname(job["out"])
    tag = os.path.splitext(os.path.basename(job["out"]))[0]
    err_path, out_path = os.path.join(folder, tag + ".stderr"), os.path.join(folder, tag + ".stdout")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH", "")]),
               REFOLD_PROGRESS="0")
    t0 = time.perf_counter()
    with open(out_path, "w") as fo, open(err_path, "w") as fe:
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--_child", json.dumps(job)],
                             stdout=fo, stderr=fe, env=env, cwd=folder)
        hwm = 0
        while p.poll() is None:
            hwm = max(hwm, _status_kb(p.pid, "VmHWM") or 0)
            if time.perf_counter() - t0 > timeout:
                p.kill()
                p.wait()
                return {"status": "timeout", "peak_rss_mb": hwm / 1024, "elapsed_s": time.perf_counter() - t0}
            time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    with open(out_path) as fo, open(err_path) as fe:
        stdout, stderr = fo.read(), fe.read()
    for line in stdout.splitlines():
        if line.startswith("RESULT ") and p.returncode == 0:
            res = json.loads(line[7:])
            res.update(status="ok", elapsed_s=elapsed)
            return res
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    mem = [ln for ln in lines if any(w in ln for w in MEM_WORDS)]
    capped = p.returncode < 0 or bool(mem)
    if mem:  # ORT's message is long: keep from the memory words on
        ln = mem[-1]
        why = ln[min(ln.find(w) for w in MEM_WORDS if w in ln):][:160]
    elif p.returncode < 0:
        why = f"killed by signal {-p.returncode}"
    else:
        why = (lines[-1] if lines else f"exit code {p.returncode}")[:200]
    return {"status": "cap" if capped else "error", "peak_rss_mb": hwm / 1024, "elapsed_s": elapsed,
            "why": why, "stderr": err_path}


# --------------------------------------------------------------------------------------------
# evaluation: SQNR and latency, in this process

def session(path: str, threads: int, opt_path: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if opt_path:
        so.optimized_model_filepath = opt_path
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def sqnr(spec: dict, paths: dict[str, str], heldout: int, threads: int) -> dict[str, dict]:
    import numpy as np

    sess = {k: session(p, threads) for k, p in paths.items()}
    sig = {k: 0.0 for k in paths}
    err = {k: 0.0 for k in paths}
    agree = {k: 0 for k in paths}
    steps = 0
    for feeds in batches(spec, heldout, seed=10_000):
        ref = np.asarray(sess["float"].run(None, feeds)[0], np.float64)
        steps += ref[..., 0].size
        for k, s in sess.items():
            if k == "float":
                continue
            got = np.asarray(s.run(None, feeds)[0], np.float64)
            sig[k] += float((ref ** 2).sum())
            err[k] += float(((ref - got) ** 2).sum())
            agree[k] += int((ref.argmax(-1) == got.argmax(-1)).sum())
    return {k: {"sqnr_db": 10 * math.log10(sig[k] / err[k]) if err[k] > 0 else math.inf,
                "agree": agree[k] / steps} for k in paths if k != "float"}


def op_summary(path: str) -> str:
    """What ORT made of the model: int8 kernels vs float ones left behind, Q/DQ still run."""
    import collections

    import onnx

    c = collections.Counter(n.op_type for n in onnx.load(path, load_external_data=False).graph.node)
    int8 = sum(v for k, v in c.items() if k.startswith("QLinear") or k in (
        "MatMulIntegerToFloat", "ConvInteger", "MatMulInteger", "QGemm", "QAttention", "DynamicQuantizeMatMul",
        "QEmbedLayerNormalization"))
    flt = sum(c[k] for k in ("Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm",
                             "NchwcConv"))
    return f"{int8} int8 kernels, {flt} float conv/matmul, {c['QuantizeLinear']} Q + {c['DequantizeLinear']} DQ"


def latency(spec: dict, paths: dict[str, str], iters: int, threads: int, folder: str) -> dict:
    sess, ops = {}, {}
    for k, p in paths.items():
        opt = os.path.join(folder, f"{os.path.basename(p)}.ortopt.onnx")
        session(p, threads, opt)  # just to see the optimized graph
        ops[k] = op_summary(opt)
        sess[k] = session(p, threads)
    feeds = next(batches(spec, 1, seed=20_000))
    names = list(sess)
    times = {k: [] for k in names}
    for k in names:
        for _ in range(5):
            sess[k].run(None, feeds)
    t0 = time.perf_counter()
    sess["float"].run(None, feeds)
    reps = max(1, math.ceil(0.03 / (time.perf_counter() - t0)))  # a block of runs takes >= ~30 ms
    for i in range(iters):
        for k in names[i % len(names):] + names[: i % len(names)]:
            block = []
            for _ in range(reps):
                t0 = time.perf_counter()
                sess[k].run(None, feeds)
                block.append(time.perf_counter() - t0)
            times[k].append(statistics.median(block))  # robust to a preempted run or two
    r = sorted(a / b for a, b in zip(times["refold"], times["ort"]))

    def pct(q):
        return r[min(len(r) - 1, max(0, round(q * (len(r) - 1))))]

    return {"ms": {k: statistics.median(v) * 1000 for k, v in times.items()}, "ratio": statistics.median(r),
            "p10": pct(0.1), "p90": pct(0.9), "ops": ops, "iters": iters, "reps": reps}


# --------------------------------------------------------------------------------------------
# the table

def fmt_rss(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["status"] == "ok":
        return f"{r['peak_rss_mb']:.0f}"
    if r["status"] == "cap":
        return f">{r['peak_rss_mb']:.0f} CAP"
    return r["status"].upper()


def fmt_time(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["status"] == "ok":
        return f"{r['wall_s']:.1f}"
    return f"({r['elapsed_s']:.0f})"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("OK" if ok else "MISS")


def report(spec: dict, method_rows: dict, samples: list[int], cap_gb: float, threads: int) -> None:
    lo, hi = samples[0], samples[-1]
    print()
    print(f"== {spec['title']}")
    lat_any = next((m["lat"] for m in method_rows.values() if m.get("lat")), None)
    if lat_any:
        print(f"   float model: {lat_any['ms']['float']:.2f} ms ({lat_any['ops']['float']}); ORT CPU, graph "
              f"optimizations on, {threads} intra-op thread(s), allow_spinning=0; calibration cap {cap_gb:g} GB "
              f"address space")
    hdr = (f"   {'method':<10} {'tool':<7} " + " ".join(f"{'calib s@' + str(n):>11}" for n in samples) + " "
           + " ".join(f"{'RSS MB@' + str(n):>11}" for n in samples) + " "
           + " ".join(f"{'SQNR dB@' + str(n):>11}" for n in samples)
           + (f" {'agree @n':>11}" if spec["kind"] == "rec" else "") + f" {'latency ms':>10}")
    print(hdr)
    print("   " + "-" * (len(hdr) - 3))
    for method, m in method_rows.items():
        for tool, label in (("refold", "refold"), ("ort", "ORT")):
            runs = m["runs"][tool]
            cells = [fmt_time(runs.get(n)) for n in samples] + [fmt_rss(runs.get(n)) for n in samples]
            cells += [f"{m['sqnr'][tool][n]['sqnr_db']:.2f}" if n in m["sqnr"][tool] else "-" for n in samples]
            line = f"   {method:<10} {label:<7} " + " ".join(f"{c:>11}" for c in cells)
            if spec["kind"] == "rec":
                n_ok = m["eval_n"].get(tool)
                a = m["sqnr"][tool].get(n_ok) if n_ok else None
                cell = f"{100 * a['agree']:.1f}% @{n_ok}" if a else "-"
                line += f" {cell:>11}"
            lat = m.get("lat")
            line += f" {lat['ms'][tool]:>10.2f}" if lat else f" {'-':>10}"
            print(line)
        # targets
        checks = []
        lat = m.get("lat")
        if lat:
            checks.append(f"latency refold/ORT {lat['ratio']:.2f} [p10 {lat['p10']:.2f}, p90 {lat['p90']:.2f}, "
                          f"{lat['iters']} paired blocks of {lat['reps']}] (<= 1.0: {verdict(lat['ratio'] <= 1.0)})")
        common = [n for n in samples if n in m["sqnr"]["refold"] and n in m["sqnr"]["ort"]]
        if common:
            n = common[-1]
            d = m["sqnr"]["refold"][n]["sqnr_db"] - m["sqnr"]["ort"][n]["sqnr_db"]
            checks.append(f"SQNR refold-ORT @{n}: {d:+.2f} dB (>= 0: {verdict(d >= 0)})")
        r_hi, o_hi, r_lo = m["runs"]["refold"].get(hi), m["runs"]["ort"].get(hi), m["runs"]["refold"].get(lo)
        if r_hi and r_hi["status"] == "ok" and o_hi:
            if o_hi["status"] == "ok":
                ratio = r_hi["peak_rss_mb"] / o_hi["peak_rss_mb"]
                txt = f"{ratio:.2f}"
            elif o_hi["status"] == "cap":  # ORT's peak is at least what it reached: an upper bound
                bound = r_hi["peak_rss_mb"] / max(o_hi["peak_rss_mb"], 1)
                ratio = bound if bound <= 0.25 else None
                txt = f"< {bound:.2f} (ORT hit the {cap_gb:g} GB cap at {o_hi['peak_rss_mb']:.0f} MB RSS)"
            else:
                ratio, txt = None, f"n/a (ORT {o_hi['status']})"
            need = method in ("entropy", "percentile")
            checks.append(f"RSS@{hi} refold/ORT {txt}" + (f" (<= 0.25: {verdict(ratio <= 0.25 if ratio is not None else None)})"
                                                        if need else " (no target for minmax)"))
        if r_hi and r_lo and r_hi["status"] == "ok" and r_lo["status"] == "ok" and hi != lo:
            g = r_hi["peak_rss_mb"] / r_lo["peak_rss_mb"]
            checks.append(f"refold RSS@{hi}/@{lo} {g:.2f} (<= 1.10: {verdict(g <= 1.10)})")
        for c in checks:
            print(f"   {'':<10} {'':<7} {c}")
        if lat:
            print(f"   {'':<10} {'':<7} ORT's optimized graphs: refold: {lat['ops']['refold']}; ORT: {lat['ops']['ort']}")
        for tool in ("refold", "ort"):
            for n, r in m["runs"][tool].items():
                if r["status"] != "ok":
                    print(f"   {'':<10} {'':<7} {tool}@{n}: {r['status']} after {r['elapsed_s']:.0f} s: {r.get('why', '')}")
        info = m["runs"]["refold"].get(hi) or {}
        if info.get("status") == "ok":
            print(f"   {'':<10} {'':<7} refold@{hi}: {info['quantized']} nodes quantized, per_channel="
                  f"{info['per_channel']}, {info['bias_kept_float']} biases kept float, worst layer SQNR "
                  f"{info['worst_layer_sqnr_db']} dB; baseline RSS before calibration {info['base_rss_mb']:.0f} MB "
                  f"(ORT's {((m['runs']['ort'].get(lo) or {}).get('base_rss_mb') or float('nan')):.0f} MB)")


# --------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="rec,bert", help="comma list of rec, bert, det")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--samples", default="32,512", help="calibration sample counts (one sample per batch)")
    ap.add_argument("--cap-gb", type=float, default=10.0, help="address-space cap of each calibration process")
    ap.add_argument("--iters", type=int, default=60,
                    help="paired latency iterations per method (each a block of runs per model, >= ~30 ms)")
    ap.add_argument("--threads", type=int, default=1, help="ORT intra-op threads when timing")
    ap.add_argument("--heldout", type=int, default=16, help="held-out inputs for SQNR")
    ap.add_argument("--seq", type=int, default=64, help="BERT sequence length (64: quantize_static needs ~4 GB "
                    "for entropy / percentile at 512 samples, ~2x that at 128)")
    ap.add_argument("--timeout", type=float, default=3600, help="per calibration process, seconds")
    ap.add_argument("--quick", action="store_true", help="smoke run: samples 4,16, 5 iterations, 4 held-out")
    ap.add_argument("--keep", default=None, help="keep the models and logs in this folder")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        child(json.loads(args._child))
        return
    if args.quick:
        args.samples, args.iters, args.heldout = "4,16", 5, 4
    samples = sorted(int(s) for s in args.samples.split(","))
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"--methods: {m} is not one of {', '.join(METHODS)}")
    folder = args.keep or tempfile.mkdtemp(prefix="refold-bench-quantize-")
    os.makedirs(folder, exist_ok=True)
    start = time.perf_counter()
    print(f"refold quantize vs onnxruntime quantize_static; models {args.models}, methods {','.join(methods)}, "
          f"samples {','.join(map(str, samples))}; work folder {folder}", flush=True)
    try:
        for kind in [k.strip() for k in args.models.split(",") if k.strip()]:
            spec = prepare(kind, folder, args.seq)
            rows = {}
            for method in methods:
                m = {"runs": {"refold": {}, "ort": {}}, "sqnr": {"refold": {}, "ort": {}}, "eval_n": {}}
                for n in samples:
                    for tool in ("refold", "ort"):
                        out = os.path.join(folder, f"{kind}.{method}.{n}.{tool}.onnx")
                        job = {"tool": tool, "spec": spec, "samples": n, "method": method, "seed": 0,
                               "out": out, "cap_gb": args.cap_gb}
                        r = run_child(job, args.timeout)
                        m["runs"][tool][n] = r
                        print(f"  {kind} {method:<10} {tool:<6} n={n:<4} {r['status']:<6} "
                              f"wall {r.get('wall_s', r['elapsed_s']):7.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB"
                              + (f"  ({r.get('why', '')})" if r["status"] != "ok" else ""), flush=True)
                        if r["status"] == "ok":
                            m["eval_n"][tool] = n
                # SQNR of every model that came out; latency on the largest count both reached
                for n in samples:
                    paths = {"float": spec["path"]}
                    for tool in ("refold", "ort"):
                        if m["runs"][tool][n]["status"] == "ok":
                            paths[tool] = os.path.join(folder, f"{kind}.{method}.{n}.{tool}.onnx")
                    if len(paths) > 1:
                        for tool, v in sqnr(spec, paths, args.heldout, args.threads).items():
                            m["sqnr"][tool][n] = v
                both = [n for n in samples if all(m["runs"][t][n]["status"] == "ok" for t in ("refold", "ort"))]
                if both:
                    n = both[-1]
                    paths = {"float": spec["path"], "ort": os.path.join(folder, f"{kind}.{method}.{n}.ort.onnx"),
                             "refold": os.path.join(folder, f"{kind}.{method}.{n}.refold.onnx")}
                    m["lat"] = latency(spec, paths, args.iters, args.threads, folder)
                    m["lat_n"] = n
                rows[method] = m
            report(spec, rows, samples, args.cap_gb, args.threads)
            sys.stdout.flush()
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
