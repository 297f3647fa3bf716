"""torch -> refold IR -> GraphModule on GPT-2-small geometry (12 layers, width 768, random weights).

    python benchmarks/torch_roundtrip.py [--repeats 3] [--seq 128]

Side by side in one run, paired: torch.export alone (the capture refold builds on) vs refold import
(capture + IR), and ExportedProgram.module() vs refold's export to a GraphModule.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    import transformers as tf

    from refold.frontends.torch.exporter import to_graph_module
    from refold.frontends.torch.importer import import_exported, import_module

    torch.manual_seed(0)
    cfg = tf.GPT2Config(n_layer=12, n_embd=768, n_head=12, use_cache=False)
    model = tf.GPT2Model(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, args.seq))
    rows = {k: [] for k in ("torch.export", "refold import", "ep.module()", "refold export")}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ep = torch.export.export(model, (ids,))
        rows["torch.export"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ir = import_module(model, (ids,))
        rows["refold import"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ep.module()
        rows["ep.module()"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        gm = to_graph_module(ir)
        rows["refold export"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    import_exported(ep)
    ir_only = time.perf_counter() - t0
    with torch.no_grad():
        diff = (gm(ids).last_hidden_state - model(ids).last_hidden_state).abs().max().item()
    print(f"GPT-2 small geometry: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
          f"{len(ir.graph)} IR nodes, sequence {args.seq}")
    for k, v in rows.items():
        print(f"  {k:<14} median {statistics.median(v):6.2f} s  ({', '.join(f'{x:.2f}' for x in v)})")
    imp = [a / b for a, b in zip(rows["refold import"], rows["torch.export"])]
    exp = [a / b for a, b in zip(rows["refold export"], rows["ep.module()"])]
    print(f"  refold import / torch.export median ratio {statistics.median(imp):.2f}; of which "
          f"ExportedProgram -> IR alone {ir_only:.3f} s")
    print(f"  refold export / ep.module() median ratio {statistics.median(exp):.2f}")
    print(f"  max |GraphModule - eager| = {diff:.1e}")


if __name__ == "__main__":
    main()
