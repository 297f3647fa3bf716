"""One row of ``benchmarks/zoo.py``, run in its own process: build the model, then each pass
through refold's public API, one JSON line per event to the result file (so a crash or a kill
keeps what finished).

Per pass the line says ``status``: ok, declined (the pass left the model alone and said why),
n/a (nothing for it to act on: no BatchNorm, no LayerNorm), FAILED (a crash, an exact pass that
is not exact, a compiled model whose outputs differ), or skipped (capture failed); ``reason`` /
``error`` in one line, ``figures`` with the numbers.

Rows: ``name`` is the torch module, ``name@ts`` / ``name@dynamo`` its ONNX export by the
TorchScript-based / dynamo exporter (BatchNorm kept: PRESERVE / optimize=False), and the
ONNX-native models (PP-OCR, the light model zoo) are files. In ONNX rows the float reference is
ONNX Runtime on the file before refold touched it.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
import warnings

import numpy as np

PASSES = ("capture", "fuse-conv-bn", "layernorm-to-rmsnorm", "quantize", "prune", "compile")
EXACT_TOL = 1e-3  # held-out outputs of an exact pass / of compiled kernels: max |diff| / max(1, max |ref|)
ORACLE_TOL = 1e-4
N_CALIB, N_HELDOUT = 8, 3
TP_TIMEOUT = 30.0  # Torch-Pruning's group search can run for ever (Llama): the peer gets this long


class Declined(Exception):
    """The pass (or the capture before it) left the model alone, with this reason."""


class Row:
    """What every pass of one row needs: the model as refold gets it, inputs, the reference."""

    def __init__(self, row: str, workdir: str):
        import torch

        import zoo_models

        self.row, self.workdir = row, workdir
        self.variant = row.split("@", 1)[1] if "@" in row else "torch"
        t0 = time.perf_counter()
        self.case = zoo_models.build(row)
        self.build_s = time.perf_counter() - t0
        if self.case.module is None:
            self.variant = "onnx"
        self.example = self.case.sample(1, 0)
        self.calib = [self.case.sample(1, 1000 + i) for i in range(N_CALIB)]
        self.heldout = [self.case.sample(1, 2000 + i) for i in range(N_HELDOUT)]
        self.params = sum(p.numel() for p in self.case.module.parameters()) if self.case.module is not None else None
        self.path = self.case.onnx_path
        self.input_names: list[str] = []
        self.export_s = None
        if self.variant in ("ts", "dynamo"):
            self.path = self._export()
        if self.path is not None:
            self.input_names = onnx_inputs(self.path)
        self.src = self.case.module if self.variant == "torch" else self.path
        self._ref = None

    @property
    def ref(self) -> list[list[np.ndarray]]:
        """The float outputs on the held-out inputs, computed at first use: after refold's capture
        has registered the cache classes as pytrees, so caches flatten as in its GraphModules."""
        import torch

        if self._ref is None:
            with torch.no_grad():
                self._ref = [self.float_outputs(x) for x in self.heldout]
        return self._ref

    # ---- the model as refold gets it
    def _export(self) -> str:
        import torch

        wrapped = Flat(self.case.module)
        path = os.path.join(self.workdir, f"model.{self.variant}.onnx")
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if self.variant == "ts":  # PRESERVE: no eval peephole, so BatchNorm stays
                    torch.onnx.export(wrapped, self.example, path, dynamo=False, opset_version=17,
                                      input_names=[f"x{i}" for i in range(len(self.example))],
                                      training=torch.onnx.TrainingMode.PRESERVE)
                else:  # optimize=False keeps BatchNorm
                    torch.onnx.export(wrapped, self.example, path, dynamo=True, optimize=False)
        except Exception as e:  # noqa: BLE001 - the exporter's failure, not refold's
            raise Declined(f"torch.onnx.export ({self.variant}) failed: {one_line(e)}") from None
        self.export_s = time.perf_counter() - t0
        return path

    def feeds(self, x: tuple):
        """Inputs as the model at hand takes them: a tuple of tensors, or a feed dict."""
        if self.path is None or self.variant == "torch":
            return x
        return {n: t.numpy() for n, t in zip(self.input_names, x)}

    def float_outputs(self, x: tuple) -> list[np.ndarray]:
        if self.variant == "torch":
            return leaves(self.case.module(*x))
        return ort_run(self.path, self.feeds(x))

    def outputs(self, model, x: tuple) -> list[np.ndarray]:
        """Outputs of what refold gave back: a GraphModule, a ModelProto or a compiled model."""
        import torch

        if isinstance(model, str) or hasattr(model, "SerializeToString"):  # a file / ModelProto: ORT
            return ort_run(model, self.feeds(x))
        with torch.no_grad():
            return leaves(model(*x))

    def optimize(self, passes):
        import refold

        probe = None if self.variant == "torch" else [self.feeds(self.example)]
        return refold.optimize(self.src, self.example if self.variant == "torch" else None, passes=passes, probe=probe)

    def heldout_error(self, model) -> dict:
        """Max abs error on the held-out inputs, and normalised by max(1, max |reference|)."""
        worst, scale, note = 0.0, 1.0, ""
        for x, ref in zip(self.heldout, self.ref):
            got = self.outputs(model, x)
            if len(got) != len(ref):
                note = f"{len(got)} outputs vs {len(ref)}: first compared"
                got, ref = got[:1], ref[:1]
            for a, b in zip(got, ref):
                if a.shape != b.shape:
                    return {"heldout_error": f"shape {a.shape} vs {b.shape}"}
                worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0)
                scale = max(scale, float(np.max(np.abs(b))) if b.size else 0.0)
        out = {"heldout_abs": worst, "heldout_nerr": worst / scale}
        if note:
            out["heldout_note"] = note
        return out

    def sqnr(self, model) -> float:
        """Output SQNR (dB) of the first output against the float model, over the held-out inputs."""
        sig = noise = 0.0
        for x, ref in zip(self.heldout, self.ref):
            got = self.outputs(model, x)[0].astype(np.float64)
            sig += float(np.sum(ref[0] ** 2))
            noise += float(np.sum((got - ref[0]) ** 2))
        return round(10 * np.log10(sig / noise), 2) if noise > 0 else float("inf")


class Flat:
    """A module returning its outputs' tensors as a flat tuple (caches off): what the ONNX
    exporters take."""

    def __new__(cls, module):
        import torch

        class _Flat(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m
                if hasattr(getattr(m, "config", None), "use_cache"):
                    m.config.use_cache = False

            def forward(self, *args):
                out = [t for t in torch.utils._pytree.tree_leaves(self.m(*args)) if isinstance(t, torch.Tensor)]
                return out[0] if len(out) == 1 else tuple(out)
        return _Flat(module).eval()


def leaves(out) -> list[np.ndarray]:
    import torch

    return [t.detach().float().numpy() if t.is_floating_point() else t.detach().numpy()
            for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def onnx_inputs(path: str) -> list[str]:
    import onnx

    m = onnx.load(path, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits]


_SESSIONS: dict = {}


def ort_run(model, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    key = model if isinstance(model, str) else id(model)
    if key not in _SESSIONS:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = int(os.environ.get("ZOO_THREADS", "1"))
        src = model if isinstance(model, str) else model.SerializeToString()
        _SESSIONS[key] = (ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]), model)
    return [np.asarray(o) for o in _SESSIONS[key][0].run(None, feeds)]


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]


def top_codes(reasons: dict) -> str:
    """'no-partner 3, not-raised 1': the reason codes of a pass's skip dict, most common first."""
    from collections import Counter

    counts = Counter(getattr(r, "code", None) or str(r)[:60] for r in reasons.values())
    return ", ".join(f"{c} {n}" for c, n in counts.most_common(3))


def first_reason(reasons: dict) -> str:
    return str(next(iter(reasons.values())))[:200] if reasons else ""


def check_figures(rec) -> dict:
    return {"max_abs": rec.max_abs, "max_rel": rec.max_rel, "pass_s": round(rec.seconds, 3)}


# --------------------------------------------------------------------------------------------
# the passes

def p_capture(r: Row) -> dict:
    out, rep = r.optimize([])
    fig = {"nodes": sum(1 for _ in rep.model.graph.all_nodes()) if rep.model is not None else None,
           "params": r.params, "export_s": r.export_s}
    if r.variant in ("ts", "dynamo"):  # the export's own fidelity, for the record
        import torch

        with torch.no_grad():
            ex = leaves(r.case.module(*r.heldout[0]))
        got = r.ref[0]
        fig["export_abs"] = max((float(np.max(np.abs(a - b))) for a, b in zip(got, ex) if a.shape == b.shape),
                                default=None)
    fig.update(r.heldout_error(out))
    if "heldout_error" in fig or fig["heldout_nerr"] > EXACT_TOL:
        raise AssertionError(f"refold's round trip changes the outputs: {fig.get('heldout_error') or fig['heldout_abs']}")
    return {"status": "ok", "figures": fig}


def p_fuse_conv_bn(r: Row) -> dict:
    out, rep = r.optimize(["fuse-conv-bn"])
    rec = rep.record("fuse-conv-bn")
    st = rec.stats
    fig = {"folded": st.get("folded", 0), "not_folded": len(st.get("not_folded") or {}), **check_figures(rec)}
    fig.update(r.heldout_error(out))
    _exact(fig)
    if st.get("folded", 0):
        reason = f"left {fig['not_folded']}: {top_codes(st['not_folded'])}" if fig["not_folded"] else ""
        return {"status": "ok", "figures": fig, "reason": reason}
    if not st.get("not_folded"):
        return {"status": "n/a", "reason": "no BatchNorm", "figures": fig}
    return {"status": "declined", "reason": f"{top_codes(st['not_folded'])}: {first_reason(st['not_folded'])}",
            "figures": fig}


def p_layernorm(r: Row) -> dict:
    out, rep = r.optimize(["layernorm-to-rmsnorm"])
    rec = rep.record("layernorm-to-rmsnorm")
    st = rec.stats
    why = st.get("not_converted") or {}
    fig = {"converted": st.get("converted", 0), "layer_norms": st.get("layer_norms", 0),
           "emitted": str(st.get("emitted", ""))[:80], **check_figures(rec)}
    fig.update(r.heldout_error(out))
    _exact(fig)
    if st.get("converted"):
        left = f"left {len(why)}: {top_codes(why)}" if why else ""
        return {"status": "ok", "figures": fig, "reason": left}
    if not st.get("layer_norms"):
        return {"status": "n/a", "reason": "no LayerNorm", "figures": fig}
    return {"status": "declined", "reason": f"{top_codes(why)}: {first_reason(why)}" if why else
            "none converted (no reason given)", "figures": fig}


def _exact(fig: dict) -> None:
    if "heldout_error" in fig:
        raise AssertionError(f"output changed shape: {fig['heldout_error']}")
    if fig["heldout_nerr"] > EXACT_TOL:
        raise AssertionError(f"not exact on held-out inputs: max abs {fig['heldout_abs']:.3g} "
                             f"(normalised {fig['heldout_nerr']:.3g})")


def p_quantize(r: Row) -> dict:
    from refold.passes import Quantize

    data = [r.feeds(x) for x in r.calib]
    out, rep = r.optimize([Quantize(calibration="minmax", data=data)])
    rec = rep.record("quantize")
    st = rec.stats
    fig = {"quantized": st.get("quantized", 0), "worst_layer_sqnr_db": st.get("worst_sqnr_db"),
           "pass_s": round(rec.seconds, 3), "max_abs": rec.max_abs}
    fig["sqnr_db"] = r.sqnr(out)
    if r.path is not None:
        fig.update(ort_quantize(r))
    if not st.get("quantized"):
        return {"status": "n/a", "reason": "nothing quantized", "figures": fig}
    return {"status": "ok", "figures": fig}


def ort_quantize(r: Row) -> dict:
    """ONNX Runtime's quantize_static on the same file and the same calibration data (QDQ,
    per-channel int8 weights, uint8 activations, MinMax: what refold's profile=ort does)."""
    import logging

    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, feeds):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    dst = os.path.join(r.workdir, "ort.int8.onnx")
    logging.disable(logging.WARNING)
    t0 = time.perf_counter()
    try:
        quantize_static(r.path, dst, Reader([r.feeds(x) for x in r.calib]), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        return {"ort_sqnr_db": r.sqnr(dst), "ort_s": round(time.perf_counter() - t0, 3)}
    except Exception as e:  # noqa: BLE001 - the peer failing is a figure, not refold's failure
        return {"ort_error": one_line(e)}
    finally:
        logging.disable(logging.NOTSET)


def p_prune(r: Row) -> dict:
    out, rep = r.optimize(["prune:ratio=0.3"])
    rec = rep.record("prune")
    st = rec.stats
    why = st.get("not_pruned") or {}
    fig = {k: st.get(k) for k in ("groups", "prunable", "pruned_groups", "channels_removed", "heads_removed",
                                  "params_before", "params_after", "macs_before", "macs_after")}
    fig.update(pass_s=round(rec.seconds, 3), max_abs=rec.max_abs)
    shapes = r.heldout_error(out)  # pruning changes outputs; only their shapes must stay
    if "heldout_error" in shapes:
        raise AssertionError(f"pruned model's output changed shape: {shapes['heldout_error']}")
    if not all(np.isfinite(a).all() for a in r.outputs(out, r.heldout[0])):
        raise AssertionError("pruned model's outputs are not finite")
    if st.get("pruned_groups"):
        fig.update(oracle(r, rep.model))
        if fig.get("oracle_nerr") is not None and fig["oracle_nerr"] > ORACLE_TOL:
            raise AssertionError(f"pruned model differs from the zeroing oracle: max abs {fig['oracle_abs']:.3g} "
                                 f"(normalised {fig['oracle_nerr']:.3g})")
    if r.variant == "torch":
        fig.update(torch_pruning(r, out))
    if st.get("pruned_groups"):
        return {"status": "ok", "figures": fig, "reason": f"left {len(why)}: {top_codes(why)}" if why else ""}
    if not st.get("groups"):
        return {"status": "n/a", "reason": "no channel groups", "figures": fig}
    return {"status": "declined", "reason": f"{top_codes(why)}: {first_reason(why)}" if why else "nothing pruned",
            "figures": fig}


def oracle(r: Row, pruned) -> dict:
    """Zero, in the original model, every slice the pass removed (the same plan: per-layer L1 at
    ratio 0.3 over the same groups); the pruned model must give the same outputs."""
    try:
        import refold
        from refold.passes.analysis.channels import ChannelGraph
        from refold.passes.prune import Prune, importance, untie_constants, zero_units
        from refold.passes.raise_core import RaiseToCore
        from refold.runtime import runner_for
        from refold.runtime.shapes import infer_shapes
    except ImportError as e:
        return {"oracle": f"not offered by this refold ({e})"}
    m = refold.load(r.src, r.example if r.variant == "torch" else None)
    RaiseToCore().call(m)
    if m.source == "onnx":
        infer_shapes(m, probe=True)
    untie_constants(m)
    p = Prune(ratio=0.3)
    cands = [(g, importance(m, g, p.importance)) for g in ChannelGraph(m).groups if g.prunable and g.units > 1]
    for g, units in p._plan(cands):
        if len(units):
            zero_units(m, g, units)
    worst, scale = 0.0, 1.0
    for x in r.heldout[:2]:
        feeds = r.feeds(x)
        ref, got = runner_for(m).run(feeds), runner_for(pruned).run(feeds)
        for k in ref:
            a, b = (np.asarray(t.detach() if hasattr(t, "detach") else t, np.float64) for t in (got[k], ref[k]))
            if a.shape != b.shape:
                return {"oracle_abs": float("inf"), "oracle_nerr": float("inf")}
            worst = max(worst, float(np.max(np.abs(a - b))) if a.size else 0.0)
            scale = max(scale, float(np.max(np.abs(b))) if b.size else 0.0)
    return {"oracle_abs": worst, "oracle_nerr": worst / scale}


def torch_pruning(r: Row, refold_gm) -> dict:
    """Torch-Pruning (the peer) on the same module: per-layer L1 at ratio 0.3, the layers that
    write the outputs kept; params and MACs by the same counters as refold's GraphModule."""
    import copy

    import torch

    out = {}
    try:
        out["refold_params"], out["refold_macs"] = n_params(refold_gm), macs(refold_gm, r.example)
        out["base_params"], out["base_macs"] = r.params, macs(r.case.module, r.example)
    except Exception as e:  # noqa: BLE001
        out["count_error"] = one_line(e)
    try:
        import torch_pruning as tp
    except ImportError:
        return {**out, "tp_error": "torch-pruning not installed"}
    model = copy.deepcopy(r.case.module)
    import signal

    def give_up(*_):
        raise TimeoutError(f"Torch-Pruning still running after {TP_TIMEOUT:.0f}s (its dependency-group search)")
    old = signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, TP_TIMEOUT)
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MetaPruner(model, r.example, importance=tp.importance.MagnitudeImportance(p=1),
                                          pruning_ratio=0.3, global_pruning=False,
                                          ignored_layers=output_layers(model, r.example),
                                          output_transform=first_tensor)
            pruner.step()
        out["tp_s"] = round(time.perf_counter() - t0, 3)
        out["tp_params"], out["tp_macs"] = n_params(model), macs(model, r.example)
        with torch.no_grad():
            got, want = leaves(model(*r.heldout[0])), r.ref[0]
        out["tp_same_shape"] = len(got) >= 1 and got[0].shape == want[0].shape
    except Exception as e:  # noqa: BLE001 - the peer failing is a figure, not refold's failure
        out["tp_error"] = one_line(e)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return out


def output_layers(model, example) -> list:
    """The Linear / Conv layers that write the outputs (whose storage an output shares), and the
    last one to run: what a pruner must keep for the outputs to keep their shape."""
    import torch

    ran, hooks = [], []
    for m in model.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            hooks.append(m.register_forward_hook(lambda mod, i, o: ran.append((mod, o))))
    try:
        with torch.no_grad():
            outs = [t for t in torch.utils._pytree.tree_leaves(model(*example)) if isinstance(t, torch.Tensor)]
    finally:
        for h in hooks:
            h.remove()
    ptrs = {t.untyped_storage().data_ptr() for t in outs}
    keep = [m for m, o in ran if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() in ptrs]
    if ran and ran[-1][0] not in keep:
        keep.append(ran[-1][0])
    return list(dict.fromkeys(keep))


def first_tensor(out):
    """The first tensor of a model's outputs (ModelOutput, caches, dicts): what Torch-Pruning traces."""
    import torch

    return next(t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor))


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def macs(module, example) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(*example)
    return int(fc.get_total_flops() // 2)


def p_compile(r: Row) -> dict:
    import torch

    import refold

    t0 = time.perf_counter()
    fast = refold.compile(r.src, r.example)
    fig = {"compile_s": round(time.perf_counter() - t0, 3), "kernels": fast.kernels,
           "fallbacks": len(fast.fallbacks)}
    if fast.fallbacks:
        fig["fallback_top"] = top_codes({k: v.split(":")[0][:60] for k, v in fast.fallbacks.items()})

    class Call:  # the compiled model takes torch tensors, like the module
        def __call__(self, *x):
            with torch.no_grad():
                return fast(*x)
    fig.update(r.heldout_error(Call()))
    if "heldout_error" in fig or fig["heldout_nerr"] > EXACT_TOL:
        raise AssertionError(f"compiled outputs differ from the float model: "
                             f"{fig.get('heldout_error') or format(fig['heldout_abs'], '.3g')}")
    return {"status": "ok" if fast.kernels else "declined", "figures": fig,
            "reason": "" if fast.kernels else "no block became a kernel"}


STEPS = {"capture": p_capture, "fuse-conv-bn": p_fuse_conv_bn, "layernorm-to-rmsnorm": p_layernorm,
         "quantize": p_quantize, "prune": p_prune, "compile": p_compile}


def run_row(row: str, passes: list[str], result_path: str) -> int:
    """Run ``passes`` on ``row``, one JSON line per event to ``result_path``."""
    import sys

    import torch

    from refold.errors import UnsupportedError

    torch.set_num_threads(int(os.environ.get("ZOO_THREADS", "1")))
    if os.environ.get("ZOO_TIMEOUT"):  # a hang leaves every thread's stack in the stderr tail
        import faulthandler

        faulthandler.dump_traceback_later(max(10.0, float(os.environ["ZOO_TIMEOUT"]) - 15), exit=False)
    warnings.filterwarnings("ignore")
    f = open(result_path, "a", buffering=1)

    def emit(**kw):
        f.write(json.dumps(kw, default=str) + "\n")
        f.flush()

    workdir = tempfile.mkdtemp(prefix="zoo-row-")
    emit(event="start", step="build")
    try:
        r = Row(row, workdir)
    except Declined as e:
        emit(event="row", family=None, status="declined", reason=str(e))
        return 0
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        emit(event="row", status="FAILED", error=one_line(e), traceback=traceback.format_exc()[-3000:])
        return 0
    emit(event="row", status="ok", family=r.case.family, variant=r.variant, note=r.case.note,
         build_s=round(r.build_s, 3), params=r.params)
    captured = True
    for name in passes:
        if not captured:
            emit(event="pass", step=name, status="skipped", reason="capture failed")
            continue
        emit(event="start", step=name)
        t0 = time.perf_counter()
        try:
            res = STEPS[name](r)
        except (UnsupportedError, Declined) as e:
            res = {"status": "declined", "reason": one_line(e)}
        except Exception as e:  # noqa: BLE001 - a crash is this row's result
            print(f"--- {row} {name}", file=sys.stderr)
            traceback.print_exc()
            res = {"status": "FAILED", "error": one_line(e), "traceback": traceback.format_exc()[-3000:]}
        res["seconds"] = round(time.perf_counter() - t0, 3)
        emit(event="pass", step=name, **res)
        if name == "capture" and res["status"] != "ok":
            captured = False
    emit(event="done")
    return 0
