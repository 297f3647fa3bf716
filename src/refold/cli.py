"""The ``refold`` command line.

Exit codes: 0 ok, 2 usage, 3 invalid or unreadable model, 4 unsupported construct (or a pass that
failed its check), 5 refused for security, 6 output not writable, 130 interrupted, 141 output pipe
closed (``refold show --graph | head``), 143 terminated.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from contextlib import nullcontext

from refold import errors
from refold.errors import RefoldError, Terminated, UsageError
from refold.ir.gcpause import gc_paused

EPILOG = ("exit codes: 0 ok, 2 usage, 3 invalid or unreadable model, 4 unsupported construct or "
          "failed pass check, 5 refused for security, 6 output not writable, 130 interrupted, "
          "141 output pipe closed, 143 terminated")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="refold", description="Graph rewriting for neural networks: show, rewrite "
                "and check ONNX models.", epilog=EPILOG)
    p.add_argument("--debug", action="store_true", help="print a traceback on errors")
    p.add_argument("--version", action="version", version="refold 0.1.0")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("show", help="summarize a model: interface, op histogram, parameters",
                       description="Summarize a model. MODEL is an ONNX path or example:NAME.",
                       epilog=EPILOG)
    s.add_argument("model", metavar="MODEL")
    s.add_argument("--graph", action="store_true", help="also print the text IR, one line per node")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--groups", action="store_true", help="also list the channel dependency groups (what "
                   "`prune` can remove together, or why not)")
    s.add_argument("--kernels", action="store_true", help="also list the fused blocks and which nodes each holds; "
                   "MODEL a folder `refold compile` wrote: which became TVM kernels and why the others run in torch")
    s.add_argument("--html", metavar="OUT", help="also write the graph viewer (kernels marked with --kernels)")
    s.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    r = sub.add_parser("run", help="run passes on a model and write the result",
                       description="Run passes in order, verifying the graph and checking outputs "
                       "numerically after each, then write OUT atomically.", epilog=EPILOG)
    r.add_argument("model", metavar="MODEL")
    r.add_argument("-p", "--pass", dest="passes", action="append", metavar="PASS",
                   help="a pass from `refold passes`, options after a colon "
                        "(fuse-conv-bn:affine=true); repeatable; default: infer-shapes, "
                        "fold-constants, cse, dce")
    r.add_argument("-o", "--output", required=True, metavar="OUT", help="where to write the model")
    r.add_argument("--no-check", action="store_true", help="skip the numeric check")
    r.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default 1e-4)")
    r.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (default 1e-4)")
    r.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="value for a symbolic input dim in probe inputs (default 1)")
    r.add_argument("--check-limit-mb", type=float, default=512,
                   help="skip the numeric check above this many MiB of weights (default 512)")
    r.add_argument("--external-data", choices=("auto", "yes", "no"), default="auto",
                   help="store weights in a .data file beside OUT (auto: if the input did, or if "
                        "over 1.8 GB)")
    r.add_argument("--data", metavar="PATH", help="calibration data for passes that take it (quantize): an "
                   ".npz with one array per graph input, first axis the samples, or a folder of .npz "
                   "files, one batch each")
    r.add_argument("--json", metavar="FILE", help="also write the per-pass report as JSON")
    r.add_argument("--quiet", action="store_true", help="no progress bars (there are none when stderr is not a terminal)")
    r.add_argument("--report", metavar="HTML", help="also write an HTML before/after viewer with the pass table")
    r.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    d = sub.add_parser("diff", help="compare two models node by node, with refold's provenance",
                       description="Pair the nodes of A and B (by name, by refold provenance, by "
                       "structure) and list what was removed, changed and added, with parameter "
                       "and op-count deltas.", epilog=EPILOG)
    d.add_argument("a", metavar="A")
    d.add_argument("b", metavar="B")
    d.add_argument("--json", action="store_true", help="print the whole diff as JSON")
    d.add_argument("--limit", type=int, default=50, help="rows per section in the text output (default 50)")
    d.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    rp = sub.add_parser("report", help="write a self-contained HTML before/after viewer of A and B",
                        description="Write one HTML file (no network needed) showing A and B side "
                        "by side, changed nodes highlighted and linked.", epilog=EPILOG)
    rp.add_argument("a", metavar="A")
    rp.add_argument("b", metavar="B")
    rp.add_argument("-o", "--output", required=True, metavar="OUT", help="the HTML file to write")
    rp.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    ps = sub.add_parser("passes", help="list the passes; with NAME, its options",
                        description="List the passes refold can run; with NAME, what it requires "
                        "and its options (types, allowed values, defaults).", epilog=EPILOG)
    ps.add_argument("name", nargs="?", metavar="NAME")
    ps.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    c = sub.add_parser("compile", help="build a TVM kernel for each fused block of an ONNX model",
                       description="Partition the model into fused blocks, build each into one TVM kernel "
                       "(checked against the reference; a block that fails falls back to torch), and write "
                       "the model, the kernels and plan.json to a folder refold.load_compiled reads.",
                       epilog=EPILOG)
    c.add_argument("model", metavar="MODEL")
    c.add_argument("--target", choices=("llvm", "cuda"), default="llvm")
    c.add_argument("-o", "--output", required=True, metavar="DIR", help="the folder to write")
    c.add_argument("--tune-trials", type=int, default=0, metavar="N",
                   help="tune each kernel with MetaSchedule, N measured candidates (at the --dim sizes)")
    c.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="the size of a symbolic input dim to check and tune at (repeatable)")
    c.add_argument("--select", choices=("kernels", "fastest"), default="kernels",
                   help="fastest: leave out a kernel slower than its block's ops in torch (timed at the --dim sizes)")
    c.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


def cmd_show(args) -> int:
    from refold.api import is_compiled_folder, kernel_map, load, resolve_path
    from refold.inspect.summary import format_kernels, format_summary, summarize
    from refold.ir.printer import format_model

    compiled = is_compiled_folder(args.model)
    rows = None
    if args.kernels or compiled:  # a compiled folder: its kernels are what there is to show
        m, rows = kernel_map(args.model if compiled else resolve_path(args.model))
    else:
        m = load(args.model)
    s = summarize(m)
    groups = _groups(m) if args.groups else None
    if args.json:
        if groups is not None:
            s["groups"] = [g.to_dict() for g in groups]
        if rows is not None:
            s["kernels"] = rows
        print(json.dumps(s, indent=2))
    else:
        print(format_summary(s))
        if groups is not None:
            print(f"\nchannel groups: {len(groups)}, prunable {sum(g.prunable for g in groups)}")
            for g in groups:
                print("  " + g.describe())
        if rows is not None:
            print()
            print(format_kernels(rows))
    if args.html:
        from refold.inspect.view import View

        View(m, title=f"refold: {os.path.basename(os.path.normpath(args.model))}").save(args.html)
    if args.graph:
        print()
        print(format_model(m))
    return 0


def _groups(model) -> list:
    """The dependency groups of a copy of ``model`` raised to core ops."""
    from refold.passes.analysis.channels import ChannelGraph
    from refold.passes.prune import untie_constants
    from refold.passes.raise_core import RaiseToCore
    from refold.runtime.shapes import infer_shapes

    RaiseToCore().call(model)
    if model.source == "onnx":
        infer_shapes(model, probe=True)
    untie_constants(model)
    return ChannelGraph(model).groups


def _dims(specs: list[str]) -> dict[str, int]:
    out = {}
    for spec in specs:
        name, sep, val = spec.rpartition("=")
        if not sep or not name or not val.isdigit() or int(val) < 1:
            raise UsageError(f"--dim expects NAME=N with N >= 1, got '{spec}'")
        out[name] = int(val)
    return out


def cmd_run(args) -> int:
    from refold.api import (
        DEFAULT_PIPELINE,
        OptimizeReport,
        load,
        resolve_path,
        snapshot_of,
    )
    from refold.ir.fileio import write_text_atomic
    from refold.frontends.onnx.save import save_onnx
    from refold.passes import PassManager, get_pass

    from refold.ir.fileio import check_writable

    passes = [get_pass(p) for p in (args.passes or DEFAULT_PIPELINE)]
    dims = _dims(args.dim)
    for dest, what in ((args.output, "output"), (args.json, "--json"), (args.report, "--report")):
        if dest:
            check_writable(dest, what)  # before any work, not after it
    data = _calibration_data(args.data) if args.data else None
    takes_data = [p for p in passes if hasattr(p, "data")]
    if data is not None and not takes_data:
        raise UsageError("--data given, but none of the passes takes calibration data")
    for p in takes_data:
        p.data = data if p.data is None else p.data
    model = load(args.model)
    symbolic = {d for v in model.graph.inputs if v.shape for d in v.shape if isinstance(d, str)}
    unknown = sorted(set(dims) - symbolic)
    if unknown:
        raise UsageError(f"--dim {', '.join(unknown)}: not a symbolic input dim of {args.model}; "
                         f"its symbolic dims: {', '.join(sorted(symbolic)) or 'none'}")
    from refold.frontends import written_node_count
    from refold.ir.progress import StepBar, silenced

    with silenced() if args.quiet else nullcontext(), StepBar("pass") as bar:
        pm = PassManager(passes, check=not args.no_check, atol=args.atol, rtol=args.rtol, dims=dims,
                         check_limit_bytes=int(args.check_limit_mb * 2**20),
                         count=written_node_count, progress=bar if bar.enabled else None)
        report = pm.run(model, OptimizeReport(before=snapshot_of(model) if args.report else None))
    ext = {"auto": None, "yes": True, "no": False}[args.external_data]
    save_onnx(model, args.output, external_data=ext)
    try:  # all outputs or none: a report that cannot be written takes the model back
        if args.report:  # the file as written, against the file as read: both in ONNX terms
            from refold.inspect.html import render

            write_text_atomic(args.report, render(report.before, load(args.output), report=report,
                                                  titles=(args.model, args.output),
                                                  title=f"refold run {args.model}"))
        if args.json:
            write_text_atomic(args.json, json.dumps(report.to_dict(), indent=2, default=str))
    except BaseException:
        for path in (args.output, args.output + ".data", args.report):
            if path and os.path.exists(path):
                os.unlink(path)
        raise
    print(f"{resolve_path(args.model)} -> {args.output}")
    print(report.format())
    return 0


def _calibration_data(path: str):
    """Batches from an .npz (one array per input, first axis the samples: one sample a batch) or
    a folder of .npz files (each a batch). Checked now; read lazily, file by file."""
    import numpy as np

    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".npz"))
        if not files:
            raise UsageError(f"--data {path}: no .npz files in the folder")

        def batches():
            for f in files:
                with np.load(f, allow_pickle=False) as z:
                    yield {k: z[k] for k in z.files}

        return _Batches(batches, len(files))
    if not os.path.isfile(path):
        raise UsageError(f"--data {path}: no such file or folder")
    try:
        with np.load(path, allow_pickle=False) as z:
            lengths = {k: z[k].shape[0] if z[k].ndim else 0 for k in z.files}
    except (OSError, ValueError) as e:
        raise UsageError(f"--data {path}: not a readable .npz ({e})") from None
    if not lengths or len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise UsageError(f"--data {path}: every array needs the same number of samples on its first "
                         f"axis, got {lengths}")
    n = next(iter(lengths.values()))

    def samples():
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        for i in range(n):
            yield {k: a[i:i + 1] for k, a in arrays.items()}

    return _Batches(samples, n)


class _Batches:
    """A re-iterable stream of feed dicts with a known length."""

    def __init__(self, make, n: int):
        self.make, self.n = make, n

    def __iter__(self):
        return iter(self.make())

    def __len__(self) -> int:
        return self.n


def cmd_diff(args) -> int:
    from refold.api import load
    from refold.inspect.diff import diff

    d = diff(load(args.a), load(args.b), titles=(args.a, args.b))
    print(json.dumps(d.to_dict(), indent=2, default=str) if args.json else d.format(limit=args.limit))
    return 0


def cmd_report(args) -> int:
    from refold.api import load
    from refold.ir.fileio import check_writable, write_text_atomic
    from refold.inspect.html import render

    check_writable(args.output)
    write_text_atomic(args.output, render(load(args.a), load(args.b), titles=(args.a, args.b)))
    print(f"{args.a} vs {args.b} -> {args.output}")
    return 0


def cmd_compile(args) -> int:
    from refold.api import compile as compile_model
    from refold.api import check_compiled_output, resolve_path, save_compiled

    check_compiled_output(args.output)  # before any build
    src = resolve_path(args.model)
    compiled = compile_model(src, target=args.target, tune_trials=args.tune_trials, dims=_dims(args.dim),
                             select=args.select)
    summary = save_compiled(compiled, args.output)
    print(f"{src} -> {args.output}: {summary['kernels']} kernels ({args.target}), "
          f"{len(compiled.fallbacks)} blocks in torch")
    for name, why in compiled.fallbacks.items():
        print(f"  {name}: {why}")
    return 0


def cmd_passes(args) -> int:
    from refold.passes import PASSES, describe

    if args.name:
        print(describe(args.name))
        return 0

    width = max(len(n) for n in PASSES)
    for name, cls in sorted(PASSES.items()):
        print(f"{name:<{width}}  {cls.description}")
    return 0


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    old = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        args = _parser().parse_args(argv)
        if args.cmd is None:
            _parser().print_help()
            return errors.EXIT_USAGE
        with gc_paused():  # a short-lived job: cycles are freed when it ends
            rc = {"show": cmd_show, "run": cmd_run, "passes": cmd_passes, "diff": cmd_diff,
                  "report": cmd_report, "compile": cmd_compile}[args.cmd](args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return rc
    except RefoldError as e:
        if debug:
            traceback.print_exc()
        print(f"refold: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `refold show --graph | head`: the reader left; so do we, quietly
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return errors.EXIT_PIPE
    except KeyboardInterrupt:
        print("refold: interrupted; nothing was written", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    except Terminated:
        print("refold: terminated; nothing was written", file=sys.stderr)
        return errors.EXIT_TERMINATED
    except MemoryError:
        print("refold: error: out of memory", file=sys.stderr)
        return errors.EXIT_INVALID
    except Exception as e:  # a bug in refold: still one line unless --debug
        if debug:
            traceback.print_exc()
        print(f"refold: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
              f" (rerun with --debug for a traceback)", file=sys.stderr)
        return 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
