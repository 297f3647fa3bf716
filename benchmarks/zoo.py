"""Every refold pass over the standard zoos: torchvision, transformers, the ONNX world.

    python benchmarks/zoo.py --slice ci                  # a fixed dozen diverse rows, < 10 min on 2 cores
    python benchmarks/zoo.py [--models tv/resnet18,hf/*@ts] [--passes capture,quantize]
                             [--variants torch,onnx,ts,dynamo] [--timeout 600] [--out DIR]
                             [--jobs 1] [--threads 1] [--mem-gb 10] [--resume]
    python benchmarks/zoo.py --summary [--out DIR]      # pass x family table of DIR/zoo.json

Rows (``benchmarks/zoo_models.py``): torchvision's 80 classification models, its segmentation
models and the backbones of its detectors (random weights, BN statistics measured then perturbed,
64-96 px where the model allows); ~30 transformers architectures from tiny configs (encoders,
decoders with their caches, vision transformers, CNNs, Whisper's and T5's encoders); the
YOLOv8-style detector of tests/yolo.py; rapidocr's PP-OCR cls / det / rec ONNX files and the onnx
package's light model zoo (random weights). Every torch model is also a row per ONNX exporter:
``name@ts`` (TorchScript-based, ``dynamo=False``, ``training=PRESERVE`` so BatchNorm stays) and
``name@dynamo`` (``dynamo=True, optimize=False``).

Each row runs in its own process (``benchmarks/zoo_passes.py``) under ``--timeout`` seconds and a
``--mem-gb`` resident-memory cap: a crash, a hang or a blow-up is that row's result and the run
goes on. Per row and pass, through the public API (``refold.optimize`` / ``refold.compile``, the
PassManager's numeric check on):

  capture               torch.export (``refold.optimize(module, x, passes=[])``) or the ONNX file's
                        import; the GraphModule / ModelProto refold gives back must match the float
                        model on held-out inputs
  fuse-conv-bn          exact: max abs / rel error from the report's check, and on 3 held-out inputs
                        (FAILED over 1e-3 of max(1, max |output|)); BNs folded / left and why
  layernorm-to-rmsnorm  exact, the same way; converted / left, with the report's reasons
  quantize              minmax, 8 calibration samples; output SQNR vs float on the held-out inputs;
                        ONNX rows: ORT ``quantize_static`` (QDQ, per-channel, U8 activations, S8
                        weights, MinMax) on the same file and samples, its SQNR beside
  prune                 ``prune:ratio=0.3``: the output keeps its shape and is finite; equals the
                        zeroing oracle (the same plan's slices zeroed in the original, 1e-4); params
                        and MACs before / after; torch rows: Torch-Pruning (MetaPruner, L1, the
                        same ratio, output layers kept) beside, both counted by the same counters
  compile               ``refold.compile(...)`` on llvm; outputs match the float model (1e-3)

Status per cell: ok, n/a (nothing to act on), declined (the pass or capture said why: refold's
UnsupportedError, an exporter that fails), FAILED (crash, an exact pass that is not exact,
compiled outputs that differ, timeout, memory cap), skipped (capture failed). The run exits 1 on
any FAILED. Progress: one line per row as it finishes. ``--out`` (default /tmp/zoo/out) gets
zoo.json, zoo.md and logs/ (each row's stderr; a FAILED cell carries its tail).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
PASSES = ("capture", "fuse-conv-bn", "layernorm-to-rmsnorm", "quantize", "prune", "compile")
CI = ("tv/resnet18", "tv/mobilenet_v3_small", "tv/squeezenet1_1", "tv/resnet18@ts", "tv/resnet18@dynamo", "hf/vit", "hf/gpt2", "hf/bert", "hf/llama-gqa", "hf/gpt2@dynamo", "ppocr/cls", "yolo/yolov8")
BAD = ("FAILED",)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slice", choices=("ci", "all"), default="all")
    ap.add_argument("--models", default="", help="comma-separated row names or globs (tv/*, hf/*@ts)")
    ap.add_argument("--passes", default=",".join(PASSES))
    ap.add_argument("--variants", default="torch,onnx,ts,dynamo", help="torch, onnx (native files), ts, dynamo")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per row")
    ap.add_argument("--mem-gb", type=float, default=10.0, help="resident memory cap per row")
    ap.add_argument("--out", default="/tmp/zoo/out")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per row (torch, ORT, TVM)")
    ap.add_argument("--resume", action="store_true", help="keep the rows DIR/zoo.json has; run the rest")
    ap.add_argument("--summary", action="store_true", help="print the pass x family table of DIR/zoo.json")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    passes = [p for p in args.passes.split(",") if p]
    if args._child:
        import zoo_passes

        return zoo_passes.run_row(args._child, passes, args._result)
    unknown = set(passes) - set(PASSES)
    if unknown:
        ap.error(f"unknown passes {sorted(unknown)}; choose from {', '.join(PASSES)}")
    out_json = os.path.join(args.out, "zoo.json")
    if args.summary:
        with open(out_json) as f:
            print(summary(json.load(f)))
        return 0
    return run(args, passes)


# --------------------------------------------------------------------------------------------
# the run

def run(args, passes: list[str]) -> int:
    import zoo_models

    pieces = zoo_models.optional_pieces()
    print("optional pieces: " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in pieces.items()), flush=True)
    if not pieces["torchvision"]:
        print("note: torchvision missing: the tv/ rows are left out (pip install torchvision==0.28.0 --no-deps)")
    if not pieces["torch-pruning"]:
        print("note: torch-pruning missing: no Torch-Pruning figures beside prune (pip install torch-pruning --no-deps)")
    if not pieces["apache-tvm"] and "compile" in passes:
        print("note: apache-tvm missing: compile cells will say so (pip install 'refold[tvm]')")
    variants = tuple(v for v in args.variants.split(",") if v)
    reg = zoo_models.registry(variants)
    rows = select(reg, args)
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    out_json = os.path.join(args.out, "zoo.json")
    done: dict[str, dict] = {}
    if args.resume and os.path.exists(out_json):
        with open(out_json) as f:
            done = {r["model"]: r for r in json.load(f)["rows"]}
    todo = [r for r in rows if r not in done]
    meta = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:], "pieces": pieces,
            "passes": passes, "threads": args.threads, "jobs": args.jobs, "timeout": args.timeout,
            "git": git_state(), "python": sys.executable}
    print(f"{len(todo)} rows to run ({len(done)} kept), passes: {', '.join(passes)}; "
          f"{args.jobs} job(s) x {args.threads} thread(s), timeout {args.timeout:.0f}s; out: {args.out}", flush=True)
    t0 = time.perf_counter()
    results = dict(done)
    running: list[tuple[str, subprocess.Popen, float, str, str]] = []
    queue = list(todo)
    finished = 0
    while queue or running:
        while queue and len(running) < args.jobs:
            row = queue.pop(0)
            running.append((row, *start_child(row, passes, args)))
        time.sleep(0.2)
        for item in list(running):
            row, proc, started, result_path, err_path = item
            why = None
            if proc.poll() is None:
                if time.perf_counter() - started > args.timeout:
                    why = f"timeout after {args.timeout:.0f}s"
                elif rss_gb(proc.pid) > args.mem_gb:
                    why = f"over the memory cap ({args.mem_gb:g} GB resident)"
                else:
                    continue
                kill_group(proc)
            running.remove(item)
            rec = collect(row, reg[row][0], passes, proc.returncode, why, time.perf_counter() - started,
                          result_path, err_path)
            results[row] = rec
            finished += 1
            print(progress_line(finished, len(todo), rec), flush=True)
            write_outputs(args.out, meta, [results[r] for r in rows if r in results], time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    final = [results[r] for r in rows if r in results]
    write_outputs(args.out, meta, final, wall)
    n_bad = sum(1 for r in final for c in r["passes"].values() if c["status"] in BAD)
    print(f"\n{len(final)} rows in {wall:.0f}s ({wall / max(1, len(todo)):.1f}s per row run); "
          f"{n_bad} FAILED cell(s); {args.out}/zoo.md, zoo.json\n", flush=True)
    print(summary({"meta": meta, "rows": final}))
    return 1 if n_bad else 0


def select(reg: dict, args) -> list[str]:
    if args.models:
        pats = [p.strip() for p in args.models.split(",") if p.strip()]
    elif args.slice == "ci":
        pats = list(CI)
    else:
        return list(reg)
    rows = []
    for p in pats:
        hits = [r for r in reg if fnmatch.fnmatchcase(r, p)]
        if not hits:
            print(f"note: no row matches '{p}' (missing package, or a typo): left out", flush=True)
        rows += [r for r in hits if r not in rows]
    return rows


def start_child(row: str, passes: list[str], args):
    safe = row.replace("/", "_").replace("@", "__")
    result_path = os.path.join(args.out, "logs", safe + ".jsonl")
    err_path = os.path.join(args.out, "logs", safe + ".stderr")
    if os.path.exists(result_path):
        os.remove(result_path)
    threads = str(args.threads)
    env = dict(os.environ, ZOO_THREADS=threads, OMP_NUM_THREADS=threads, TVM_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore",
               REFOLD_KERNEL_CACHE=os.environ.get("REFOLD_KERNEL_CACHE", os.path.join(args.out, "kernels")),
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1", ZOO_TIMEOUT=str(args.timeout))
    with open(err_path, "w") as fe, open(os.devnull, "w") as fo:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--_child", row, "--passes",
                                 ",".join(passes), "--_result", result_path], stdout=fo, stderr=fe, env=env,
                                cwd=HERE, start_new_session=True)
    return proc, time.perf_counter(), result_path, err_path


def rss_gb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def kill_group(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the row's own session: TVM workers go with it
    except OSError:
        proc.kill()
    proc.wait()


def collect(row: str, family: str, passes: list[str], rc: int | None, why: str | None, seconds: float,
            result_path: str, err_path: str) -> dict:
    """The row's record from its JSON lines; whatever it did not finish is accounted for."""
    events = []
    if os.path.exists(result_path):
        with open(result_path) as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
    rec = {"model": row, "family": family, "variant": row.split("@", 1)[1] if "@" in row else "torch",
           "seconds": round(seconds, 1), "passes": {}}
    running = None
    for e in events:
        if e["event"] == "start":
            running = e["step"]
        elif e["event"] == "row":
            rec.update({k: e[k] for k in ("variant", "note", "build_s", "params") if e.get(k) is not None})
            if e["status"] != "ok":  # the build or the export failed: it is the capture cell's result
                rec["passes"]["capture"] = {k: v for k, v in e.items() if k not in ("event", "family")}
                for p in passes:
                    rec["passes"].setdefault(p, {"status": "skipped", "reason": "model not built"})
            running = None
        elif e["event"] == "pass":
            rec["passes"][e["step"]] = {k: v for k, v in e.items() if k not in ("event", "step")}
            running = None
    finished = any(e["event"] == "done" for e in events) or (events and events[-1]["event"] == "row"
                                                             and "capture" in rec["passes"])
    if not finished:
        where = running or "build"
        err = why or f"process died (exit {rc}): {last_line(err_path)}"
        cell = {"status": "FAILED", "error": err, "kind": "timeout" if why and "timeout" in why else "crash"}
        if where == "build" or where not in passes:
            rec["passes"].setdefault("capture", cell)
        else:
            rec["passes"][where] = cell
        for p in passes:
            rec["passes"].setdefault(p, {"status": "skipped", "reason": f"row stopped in {where}"})
    if any(c["status"] in BAD for c in rec["passes"].values()):
        rec["stderr_tail"] = tail(err_path, 40)
    rec["passes"] = {p: rec["passes"][p] for p in passes if p in rec["passes"]}
    return rec


ABBREV = {"ok": "ok", "n/a": "n/a", "declined": "decl", "FAILED": "FAILED", "skipped": "skip"}


def progress_line(i: int, n: int, rec: dict) -> str:
    cells = " ".join(f"{p}={ABBREV.get(c['status'], c['status'])}" for p, c in rec["passes"].items())
    return f"[{i}/{n}] {rec['model']:<44} {rec['seconds']:6.1f}s  {cells}"


def tail(path: str, n: int) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])[-6000:]
    except OSError:
        return ""


def last_line(path: str) -> str:
    lines = [ln for ln in tail(path, 20).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no stderr"


def git_state() -> dict:
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"head": git("rev-parse", "--short", "HEAD"), "dirty": git("status", "--short").splitlines()}


# --------------------------------------------------------------------------------------------
# tables

def cell(p: str, c: dict) -> str:
    s, f = c["status"], c.get("figures") or {}
    if s == "FAILED":
        return "**FAILED**" + (" (timeout)" if c.get("kind") == "timeout" else "")
    if s in ("declined", "skipped"):
        return f"{s}: {(c.get('reason') or '')[:60]}".replace("|", "/")
    if s == "n/a":
        return f"n/a ({c.get('reason', '')})"
    if p == "capture":
        return f"ok {f.get('nodes')} nodes"
    if p == "fuse-conv-bn":
        return f"ok {f.get('folded')} folded" + (f", {f['not_folded']} left" if f.get("not_folded") else "") + \
            f", {num(f.get('max_abs'))}"
    if p == "layernorm-to-rmsnorm":
        return f"ok {f.get('converted')}/{f.get('layer_norms')}, {num(f.get('max_abs'))}"
    if p == "quantize":
        ort = f" (ORT {f['ort_sqnr_db']})" if "ort_sqnr_db" in f else (" (ORT failed)" if "ort_error" in f else "")
        return f"ok {f.get('sqnr_db')} dB{ort}"
    if p == "prune":
        pr, mr = ratio(f.get("params_after"), f.get("params_before")), ratio(f.get("macs_after"), f.get("macs_before"))
        tp = ""
        if "tp_params" in f and f.get("base_params"):
            tp = f" (TP {num(ratio(f['tp_params'], f['base_params']), 2)}x/{num(ratio(f.get('tp_macs'), f.get('base_macs')), 2)}x)"
        elif "tp_error" in f:
            tp = " (TP failed)"
        return f"ok P {num(pr, 2)}x M {num(mr, 2)}x{tp}"
    if p == "compile":
        return f"ok {f.get('kernels')} kernels" + (f", {f['fallbacks']} fb" if f.get("fallbacks") else "")
    return s


def ratio(a, b):
    return a / b if a is not None and b else None


def num(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if digits != 2 else f"{x:.2f}"
    return str(x)


def write_outputs(folder: str, meta: dict, rows: list[dict], wall: float) -> None:
    data = {"meta": {**meta, "wall_s": round(wall, 1)}, "rows": rows}
    tmp = os.path.join(folder, "zoo.json.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, os.path.join(folder, "zoo.json"))
    passes = meta["passes"]
    lines = [f"# refold zoo: {len(rows)} rows, {wall:.0f} s", "",
             f"git {meta['git'].get('head')}, {len(meta['git'].get('dirty', []))} files changed in the work tree; "
             + ", ".join(f"{k} {v or 'missing'}" for k, v in meta["pieces"].items()), "",
             "| model | s | " + " | ".join(passes) + " |", "|---|---:|" + "---|" * len(passes)]
    for r in rows:
        cells = [cell(p, r["passes"][p]) if p in r["passes"] else "" for p in passes]
        lines.append(f"| {r['model']} | {r['seconds']:.0f} | " + " | ".join(cells) + " |")
    bad = [(r, p, c) for r in rows for p, c in r["passes"].items() if c["status"] in BAD]
    if bad:
        lines += ["", "## FAILED", ""]
        lines += [f"- `{r['model']}` {p}: {c.get('error', '')}" for r, p, c in bad]
    flags = quality_flags(rows)
    if flags:
        lines += ["", "## Quality flags (not failures)", ""] + [f"- {x}" for x in flags]
    lines += ["", "## Summary", "", summary(data)]
    with open(os.path.join(folder, "zoo.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def quality_flags(rows: list[dict]) -> list[str]:
    """Results that pass but deserve a look: refold's quantized SQNR well below quantize_static's
    on the same file and data, or below 10 dB; Torch-Pruning keeping more than refold."""
    out = []
    for r in rows:
        f = (r["passes"].get("quantize") or {}).get("figures") or {}
        q, o = f.get("sqnr_db"), f.get("ort_sqnr_db")
        if isinstance(q, (int, float)) and isinstance(o, (int, float)) and q < o - 3:
            out.append(f"`{r['model']}` quantize: refold {q} dB vs quantize_static {o} dB on the same file and data")
        elif isinstance(q, (int, float)) and q < 10:
            out.append(f"`{r['model']}` quantize: output SQNR {q} dB")
    return out


def summary(data: dict) -> str:
    """Pass x family: ok / n/a / declined (top reasons) / FAILED, and the peers' figures."""
    rows = data["rows"]
    fams = list(dict.fromkeys(fam_key(r) for r in rows))
    passes = data["meta"]["passes"]
    out = ["| pass | family | rows | ok | n/a | declined | FAILED | top declined reasons | figures |",
           "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for p in passes:
        for fam in fams:
            cells = [r["passes"][p] for r in rows if fam_key(r) == fam and p in r["passes"]]
            if not cells:
                continue
            n = Counter(c["status"] for c in cells)
            reasons = Counter(short_reason(c.get("reason", "")) for c in cells if c["status"] == "declined")
            top = "; ".join(f"{k} ({v})" for k, v in reasons.most_common(3)).replace("|", "/")
            out.append(f"| {p} | {fam} | {len(cells)} | {n['ok']} | {n['n/a']} | {n['declined']} | {n['FAILED']} | "
                       f"{top} | {figures(p, cells)} |")
    return "\n".join(out)


def fam_key(r: dict) -> str:
    v = r.get("variant", "torch")
    return r["family"] if v in ("torch", "onnx") else f"{r['family']} @{v}"


def short_reason(text: str) -> str:
    """A declined cell's reason, short enough to count: its codes, or the error's first words."""
    import re

    if not text:
        return "?"
    text = re.sub(r"^[A-Za-z]+Error: ", "", text)
    return text.split(":")[0][:70] if re.match(r"^[a-z-]+ \d", text) else text[:70]


def figures(p: str, cells: list[dict]) -> str:
    fs = [c.get("figures") or {} for c in cells if c["status"] == "ok"]

    def med(xs):
        xs = [x for x in xs if isinstance(x, (int, float)) and x == x and abs(x) != float("inf")]
        return f"{statistics.median(xs):.3g}" if xs else "-"
    if p == "quantize":
        both = [f for f in fs if "ort_sqnr_db" in f]
        s = f"SQNR median {med([f.get('sqnr_db') for f in fs])} dB"
        if both:
            s += (f"; ORT rows: refold {med([f['sqnr_db'] for f in both])} vs quantize_static "
                  f"{med([f['ort_sqnr_db'] for f in both])} dB (ORT failed on "
                  f"{sum(1 for c in cells if 'ort_error' in (c.get('figures') or {}))})")
        return s
    if p == "prune":
        pr = [ratio(f.get("params_after"), f.get("params_before")) for f in fs]
        mr = [ratio(f.get("macs_after"), f.get("macs_before")) for f in fs]
        s = f"params {med(pr)}x, MACs {med(mr)}x"
        tp = [f for f in fs if "tp_params" in f and f.get("base_macs")]
        if tp:
            s += (f"; vs Torch-Pruning on {len(tp)}: refold {med([ratio(f['refold_macs'], f['base_macs']) for f in tp])}"
                  f"x MACs, TP {med([ratio(f['tp_macs'], f['base_macs']) for f in tp])}x"
                  f" (TP same output shape {sum(1 for f in tp if f.get('tp_same_shape'))}/{len(tp)})")
        tp_err = sum(1 for c in cells if "tp_error" in (c.get("figures") or {}))
        return s + (f"; TP failed on {tp_err}" if tp_err else "")
    if p in ("fuse-conv-bn", "layernorm-to-rmsnorm"):
        return f"max abs err median {med([f.get('max_abs') for f in fs])}"
    if p == "compile":
        return f"kernels median {med([f.get('kernels') for f in fs])}, compile {med([f.get('compile_s') for f in fs])} s"
    if p == "capture":
        return f"nodes median {med([f.get('nodes') for f in fs])}"
    return ""


if __name__ == "__main__":
    sys.exit(main())
