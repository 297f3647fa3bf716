"""A 5,000-node before/after report: time from navigation to the viewer being drawn, in headless
Chromium, median of several page loads (target < 5 s).

    python benchmarks/report_large.py [--layers 52] [--runs 5]

The graph is GPT-2 geometry exported to ONNX with folding off (about 95 nodes per layer, so 52
layers give ~5,000 nodes), before and after `layernorm-to-rmsnorm`, so the diff is real. Needs
Debian's chromium and chromium-driver, and selenium.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))
from layernorm_rmsnorm import _First  # noqa: E402  the first output of a transformers model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=52)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    import torch
    import transformers as tf

    import browser
    from refold import cli
    from refold.api import load

    torch.manual_seed(0)
    cfg = tf.GPT2Config(n_layer=args.layers, n_embd=64, n_head=2, vocab_size=128, n_positions=64)
    model = _First(tf.GPT2Model(cfg)).eval()
    with tempfile.TemporaryDirectory() as d:
        src, out, html = (os.path.join(d, n) for n in ("a.onnx", "b.onnx", "report.html"))
        torch.onnx.export(model, (torch.randint(0, 128, (1, 16)),), src, dynamo=False, opset_version=17,
                          input_names=["x"], do_constant_folding=False)
        t = time.perf_counter()
        with open(os.devnull, "w") as devnull:
            stdout, sys.stdout = sys.stdout, devnull
            try:
                code = cli.main(["run", src, "-p", "layernorm-to-rmsnorm", "-o", out, "--report", html])
            finally:
                sys.stdout = stdout
        assert code == 0
        n_a, n_b = len(load(src).graph), len(load(out).graph)
        print(f"graphs: {n_a} nodes before, {n_b} after; refold run + report: {time.perf_counter() - t:.2f} s, "
              f"HTML {os.path.getsize(html) / 2**20:.1f} MiB")
        times, inner = [], []
        for i in range(args.runs):
            driver = browser.chrome(type("P", (), {"__truediv__": lambda s, x: os.path.join(d, f"{x}{i}")})())
            try:
                t = time.perf_counter()
                browser.open_page(driver, html, timeout=60)
                times.append(time.perf_counter() - t)
                inner.append(int(driver.execute_script("return document.body.dataset.renderMs")))
                shown = driver.execute_script("return ['a','b'].map(s => document.getElementById('pane-'+s).dataset.rendered)")
            finally:
                driver.quit()
        print(f"open + render in headless Chromium: median {statistics.median(times):.2f} s over {args.runs} loads "
              f"(min {min(times):.2f}, max {max(times):.2f}); viewer script alone median {statistics.median(inner)} ms; "
              f"boxes drawn per side {shown} (grouped by name scope); target < 5 s")


if __name__ == "__main__":
    main()
