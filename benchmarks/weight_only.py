"""Weight-only int4 on a Llama-shaped decoder with planted outlier input channels: one scale per
output channel (RTN, oc), blocks of input channels within each output channel (oc32 / oc64 / oc128:
blocks along K, MatMulNBits), blocks of output channels within each input channel (ic32 / ic64 /
ic128: AdaDim's per-IC, blocks along N, DequantizeLinear + MatMul) and AdaDim's choice per layer
(auto): output error, file size and ONNX Runtime CPU latency against float, in one run.

    python benchmarks/weight_only.py [--layers 4] [--seq 64] [--iters 40] [--threads 1] [--quick]
                                     [--keep DIR]

Model: transformers LlamaForCausalLM from a small config (hidden 256, 4 layers, 8 heads, no GQA,
intermediate 688, vocab 1000), random weights (seed 0), exported with torch.onnx (opset 17, dynamic
batch and sequence, logits out).

Planted outliers, function-preserving: in every layer, each of the seven linear layers gets 4 input
channels (chosen at random, per layer input) whose weight columns are multiplied by a factor drawn
from [20, 50], and the activations feeding those channels are divided by the same factor where they
are made: the RMSNorm gains before q/k/v and gate/up, v_proj's output rows before o_proj (no GQA,
so o_proj's input channel i is v's output channel i), up_proj's output rows before down_proj
(silu(gate) * up is linear in up). The float logits are unchanged (the max relative change is
printed); the weights now have the outlier input channels real LLMs have once their activation
outliers are smoothed into the weights.

Variants (each from the same float file, with refold.optimize):

  oc         quantize:weight_only=true,weights=int4,group=oc     one scale per output channel (RTN)
  oc32..128  ...,group=oc32 (oc64, oc128)                         per output channel, blocks of 32
                                                                   input channels (along K)
  ic32..128  ...,group=ic32 (ic64, ic128)                         per input channel, blocks of 32
                                                                   output channels (along N: AdaDim)
  auto       ...,group=auto with calibration data                 per layer, lowest output error (an
                                                                   oc grouping within 1% of the best)
  auto-dq    auto, profile=tensorrt                                the same weights, every one as
                                                                   blocked DequantizeLinear + MatMul

profile=ort (the default) writes every MatMul grouped oc / oc32.. as com.microsoft.MatMulNBits (4-bit
weights in ORT's fused kernel; one scale per output channel is one block spanning K); ic groupings
have no MatMulNBits form and are written as int4 DequantizeLinear (block_size along N, opset 21) +
MatMul, which ORT runs as written: the weight is dequantized on every run. "ic32, DQ folded" and
"auto, DQ folded" are the same files in a session with session.disable_quant_qdq=1, where ORT's
constant folding dequantizes them once at load (int4 on disk, float in memory, float MatMul). Also measured, error only: the same groupings applied with refold's quantizer to the torch
model's nn.Linear weights before planting (no outliers), to show what each costs on a plain model.

Measured: logits error against float on held-out sequences (relative MSE, SQNR in dB, next-token
top-1 agreement), the size of each file on disk, and ORT CPU latency (graph optimizations on,
allow_spinning=0, --threads intra-op threads) at the prefill length --seq and at one token, every
iteration running every model in rotating order, each as a block of runs lasting >= ~30 ms (a block's
time is the median of its runs); latency is the median over iterations, the ratio to float the
median of per-iteration ratios with its 10th-90th percentile spread.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "src"))

PLANTED = 4  # outlier input channels per linear layer input
FOLDED = ("ic32", "auto")  # also timed with session.disable_quant_qdq=1 (ORT folds DequantizeLinear at load)
FACTOR = (20.0, 50.0)


def build(layers: int, seed: int = 0, planted: bool = True):
    """The float decoder, with outliers planted (function-preserving); and the largest relative
    change of the logits that planting made (rounding only)."""
    import numpy as np
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=layers, num_attention_heads=8,
                         num_key_value_heads=8, vocab_size=1000, max_position_embeddings=512, use_cache=False,
                         tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    model = tf.LlamaForCausalLM(cfg).eval()
    if not planted:
        return model, cfg, 0.0
    ids = torch.randint(0, cfg.vocab_size, (2, 32))
    with torch.no_grad():
        before = model(ids).logits
    rng = np.random.default_rng(seed)

    def plant(readers, writer_rows=None, gain=None, width=256):
        ch = rng.choice(width, PLANTED, replace=False)
        f = torch.from_numpy(rng.uniform(*FACTOR, PLANTED).astype(np.float32))
        with torch.no_grad():
            if gain is not None:
                gain[ch] /= f
            if writer_rows is not None:  # a linear layer's output rows write the channels
                writer_rows[ch] /= f[:, None]
            for lin in readers:
                lin.weight[:, ch] *= f

    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        plant([a.q_proj, a.k_proj, a.v_proj], gain=layer.input_layernorm.weight)
        plant([a.o_proj], writer_rows=a.v_proj.weight)
        plant([m.gate_proj, m.up_proj], gain=layer.post_attention_layernorm.weight)
        plant([m.down_proj], writer_rows=m.up_proj.weight, width=cfg.intermediate_size)
    with torch.no_grad():
        after = model(ids).logits
    change = float(((after - before).abs().max() / before.abs().max()))
    return model, cfg, change


class Logits(__import__("torch").nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, ids):  # an explicit mask: without one transformers probes for packed sequences (aten::diff)
        return self.m(input_ids=ids, attention_mask=__import__("torch").ones_like(ids)).logits


def export(model, path: str, seq: int) -> None:
    import torch

    ids = torch.randint(0, 1000, (1, seq))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Logits(model).eval(), (ids,), path, dynamo=False, opset_version=17,
                          input_names=["input_ids"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}})


def token_batches(n: int, seq: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(0, 1000, (1, seq), dtype=np.int64)} for _ in range(n)]


def quantize(src: str, dst: str, calib: list, **options) -> dict:
    import onnx

    import refold
    from refold.passes import Quantize

    t0 = time.perf_counter()
    proto, report = refold.optimize(src, passes=[Quantize(weight_only=True, weights="int4", **options)],
                                    check=False)
    seconds = time.perf_counter() - t0
    onnx.save(proto, dst)
    st = report.record("quantize").stats
    chosen: dict[str, int] = {}
    for g in st["weight_groups"].values():
        chosen[str(g)] = chosen.get(str(g), 0) + 1
    ops: dict[str, int] = {}
    for n in proto.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"seconds": seconds, "groups": chosen, "chosen": {k: str(g) for k, g in st["weight_groups"].items()},
            "measure": st["error_measure"], "nbits": st["matmul_nbits"],
            "dq": st["dequantize"], "errors": st["group_errors"], "ops": ops}


def session(path: str, threads: int, fold_dq: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if fold_dq:  # ORT's constant folding then dequantizes constant weights once, at load: float MatMul
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def accuracy(sessions: dict, heldout: list) -> dict[str, dict]:
    import numpy as np

    sig, err, agree, steps = {k: 0.0 for k in sessions}, {k: 0.0 for k in sessions}, {k: 0 for k in sessions}, 0
    for feeds in heldout:
        ref = np.asarray(sessions["float"].run(None, feeds)[0], np.float64)
        steps += ref[..., 0].size
        for k, s in sessions.items():
            got = np.asarray(s.run(None, feeds)[0], np.float64)
            sig[k] += float((ref ** 2).sum())
            err[k] += float(((ref - got) ** 2).sum())
            agree[k] += int((ref.argmax(-1) == got.argmax(-1)).sum())
    return {k: {"rel_mse": err[k] / sig[k], "sqnr_db": 10 * math.log10(sig[k] / err[k]) if err[k] > 0 else math.inf,
                "agree": agree[k] / steps} for k in sessions}


TORCH_GROUPINGS = ["oc", "oc32", "ic32"]  # applied to torch Linear weights [N, K] with refold's quantizer


def torch_accuracy(model, heldout: list, names: list[str]) -> dict:
    """Logits error of ``model`` with every linear weight int4-quantized in place (no ONNX)."""
    import copy

    import torch

    from refold.passes.quantize.groups import Layout, group_axis, quantize_grouped

    linear = Layout(weight=1, ic=1, oc=0, act=0)  # nn.Linear: W [N, K]

    out = {}
    with torch.no_grad():
        ref = [Logits(model)(torch.from_numpy(f["input_ids"])).double() for f in heldout]
    for name in names:
        m = copy.deepcopy(model)
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, torch.nn.Linear):
                    axis, block = group_axis(name, linear)
                    g = quantize_grouped(mod.weight.numpy(), axis, block, bits=4)
                    mod.weight.copy_(torch.from_numpy(g.dequantized()))
            sig = err = 0.0
            agree = steps = 0
            for f, r in zip(heldout, ref):
                got = Logits(m)(torch.from_numpy(f["input_ids"])).double()
                sig += float((r ** 2).sum())
                err += float(((r - got) ** 2).sum())
                agree += int((r.argmax(-1) == got.argmax(-1)).sum())
                steps += r[..., 0].numel()
        out[name] = {"rel_mse": err / sig, "sqnr_db": 10 * math.log10(sig / err), "agree": agree / steps}
    return out


def latency(sessions: dict, feeds: dict, iters: int) -> dict:
    names = list(sessions)
    for k in names:
        for _ in range(3):
            sessions[k].run(None, feeds)
    t0 = time.perf_counter()
    sessions["float"].run(None, feeds)
    reps = max(1, math.ceil(0.03 / (time.perf_counter() - t0)))  # a block of runs takes >= ~30 ms
    times = {k: [] for k in names}
    for i in range(iters):
        for k in names[i % len(names):] + names[:i % len(names)]:
            block = []
            for _ in range(reps):
                t0 = time.perf_counter()
                sessions[k].run(None, feeds)
                block.append(time.perf_counter() - t0)
            times[k].append(statistics.median(block))
    out = {}
    for k in names:
        r = sorted(a / b for a, b in zip(times[k], times["float"]))
        pct = lambda q: r[min(len(r) - 1, max(0, round(q * (len(r) - 1))))]  # noqa: E731
        out[k] = {"ms": statistics.median(times[k]) * 1000, "ratio": statistics.median(r), "p10": pct(0.1),
                  "p90": pct(0.9)}
    out["_reps"] = reps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64, help="prefill length for latency, held-out and calibration")
    ap.add_argument("--calib", type=int, default=16, help="calibration sequences for group=auto")
    ap.add_argument("--heldout", type=int, default=16)
    ap.add_argument("--iters", type=int, default=40, help="paired latency iterations per shape")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 layers, seq 32, 4 calib / held-out, 5 iters")
    ap.add_argument("--keep", default=None, help="keep the models in this folder")
    args = ap.parse_args()
    if args.quick:
        args.layers, args.seq, args.calib, args.heldout, args.iters = 2, 32, 4, 4, 5
    import onnxruntime as ort
    import torch

    torch.set_num_threads(max(1, args.threads))
    folder = args.keep or tempfile.mkdtemp(prefix="refold-bench-weight-only-")
    os.makedirs(folder, exist_ok=True)
    start = time.perf_counter()
    try:
        model, cfg, change = build(args.layers)
        src = os.path.join(folder, "float.onnx")
        export(model, src, args.seq)
        calib = token_batches(args.calib, args.seq, seed=1)
        heldout = token_batches(args.heldout, args.seq, seed=2)
        variants = {g: dict(group=g) for g in ("oc", "oc32", "oc64", "oc128", "ic32", "ic64", "ic128")}
        variants.update({"auto": dict(group="auto", data=calib),
                         "auto-dq": dict(group="auto", data=calib, profile="tensorrt")})
        paths, info = {"float": src}, {}
        for name, kw in variants.items():
            paths[name] = os.path.join(folder, f"{name}.onnx")
            info[name] = quantize(src, paths[name], calib, **kw)
        sizes = {k: os.path.getsize(p) / 1024 for k, p in paths.items()}
        sessions = {k: session(p, args.threads) for k, p in paths.items()}
        for k in FOLDED:  # the same files, DequantizeLinear folded by ORT at load
            paths[f"{k}, DQ folded"] = paths[k]
            sizes[f"{k}, DQ folded"], info[f"{k}, DQ folded"] = sizes[k], info[k]
            sessions[f"{k}, DQ folded"] = session(paths[k], args.threads, fold_dq=True)
        acc = accuracy(sessions, heldout)
        clean = build(args.layers, planted=False)[0]
        extra = {f"{k}, no outliers": v for k, v in torch_accuracy(clean, heldout, TORCH_GROUPINGS).items()}
        acc.update(extra)
        lat = {f"1x{args.seq}": latency(sessions, heldout[0], args.iters),
               "1x1": latency(sessions, {"input_ids": heldout[0]["input_ids"][:, :1]}, args.iters)}
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    print(f"Llama-shaped decoder: hidden 256, {args.layers} layers, 8 heads, intermediate 688, vocab 1000, random "
          f"weights; {PLANTED} outlier input channels x U{FACTOR} planted per linear input (float logits change "
          f"{change:.1e} relative, rounding)")
    print(f"ONNX Runtime {ort.__version__} CPU, {args.threads} intra-op thread(s), graph optimizations on; "
          f"held-out {args.heldout} x 1x{args.seq} random tokens; calibration {args.calib} x 1x{args.seq}")
    shapes = list(lat)
    hdr = (f"{'variant':<20} {'file KB':>8} {'x float':>7} {'rel MSE':>9} {'SQNR dB':>8} {'top-1':>6} "
           + " ".join(f"{'ms ' + s:>9} {'x float [p10,p90]':>19}" for s in shapes) + "  groups / ops")
    print(hdr)
    print("-" * len(hdr))
    for name in ["float", *variants, *(f"{k}, DQ folded" for k in FOLDED), *extra]:
        a, size, i = acc[name], sizes.get(name), info.get(name)
        cells = [f"{name:<20}", f"{size:>8.0f}" if size else f"{'-':>8}",
                 f"{size / sizes['float']:>7.3f}" if size else f"{'-':>7}",
                 f"{a['rel_mse']:>9.2e}" if name != "float" else f"{'0':>9}",
                 f"{a['sqnr_db']:>8.1f}" if name != "float" else f"{'inf':>8}", f"{100 * a['agree']:>5.1f}%"]
        for s in shapes:
            t = lat[s].get(name)
            cells.append(f"{t['ms']:>9.3f} {t['ratio']:>5.2f} [{t['p10']:.2f},{t['p90']:.2f}]" if t else
                         f"{'-':>9} {'-':>19}")
        if i:
            note = (", ".join(f"{g} {c}" for g, c in sorted(i["groups"].items())) + "; " + ", ".join(
                f"{o} {c}" for o, c in sorted(i["ops"].items()) if o in ("MatMulNBits", "MatMul", "DequantizeLinear", "Gemm")))
        else:
            note = "" if name in paths else "torch, refold's quantizer on each nn.Linear: error only"
        print(" ".join(cells) + "  " + note)
    a = info["auto"]
    print(f"auto chose by {a['measure']} error; quantize took {a['seconds']:.1f} s (oc {info['oc']['seconds']:.1f} s)")
    kinds: dict[str, dict[str, int]] = {}  # projection -> chosen group -> layers
    for node, g in a["chosen"].items():
        proj = next((p for p in node.split("/") if p.endswith("proj") or p == "lm_head"), node)
        kinds.setdefault(proj, {})
        kinds[proj][g] = kinds[proj].get(g, 0) + 1
    print("auto per projection: " + "; ".join(f"{p} " + ", ".join(f"{g} {c}" for g, c in sorted(gs.items()))
                                             for p, gs in kinds.items()))
    gains = []  # per layer: best oc grouping's error / auto's choice's
    for node, e in a["errors"].items():
        k_best = min(v for g, v in e.items() if g.startswith("oc"))
        gains.append(k_best / e[a["chosen"][node]])
    print(f"auto's choice vs the best MatMulNBits grouping, per layer output error: median {statistics.median(gains):.2f}x "
          f"lower, min {min(gains):.2f}x, max {max(gains):.2f}x")
    worst = sorted(a["errors"].items(), key=lambda kv: -kv[1]["oc"])[:3]
    for node, e in worst:
        print(f"  {node}: " + ", ".join(f"{g} {v:.3g}" for g, v in e.items()))
    print(f"latency blocks: {lat[shapes[0]]['_reps']} runs ({shapes[0]}), {lat['1x1']['_reps']} runs (1x1); "
          f"{args.iters} paired iterations each")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
