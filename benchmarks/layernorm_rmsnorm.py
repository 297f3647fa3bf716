"""LayerNorm -> RMSNorm: latency before and after on GPT-2-small and ViT-Base geometry (random
weights), ONNX Runtime CPU and torch eager, paired and interleaved in one run.

    python benchmarks/layernorm_rmsnorm.py [--iters 40] [--seq 128]

ONNX Runtime runs the converted model with com.microsoft SimplifiedLayerNormalization
(`layernorm-to-rmsnorm:target=ort`), at its default optimization level.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
from conv_bn import interleaved  # noqa: E402


def models(seq: int):
    import transformers as tf

    torch.manual_seed(0)
    gpt2 = tf.GPT2Model(tf.GPT2Config(n_layer=12, n_embd=768, n_head=12)).eval()
    vit = tf.ViTModel(tf.ViTConfig(), add_pooling_layer=False).eval()  # ViT-Base/16, 224x224
    return {"GPT-2 small": (gpt2, torch.randint(0, 50257, (1, seq))),
            "ViT-Base": (vit, torch.randn(1, 3, 224, 224))}


class _First(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    import onnxruntime as ort

    import refold
    from refold import cli

    for name, (model, x) in models(args.seq).items():
        use_cache = getattr(model.config, "use_cache", None)
        if use_cache is not None:
            model.config.use_cache = False  # torch.export: no cache object in the outputs
        gm, report = refold.optimize(model, (x,), passes=["layernorm-to-rmsnorm"], atol=1e-4, rtol=1e-4)
        st = report.passes[0].stats
        t = interleaved({"before": model, "after": gm}, x, args.iters)
        r = statistics.median(a / b for a, b in zip(t["after"], t["before"]))
        if st["not_converted"]:
            print("  not converted, e.g.:", next(iter(st["not_converted"].values())))
        print(f"{name} torch eager ({st['converted']}/{st['layer_norms']} LayerNorms converted): before "
              f"{statistics.median(t['before']) * 1e3:.2f} ms, after {statistics.median(t['after']) * 1e3:.2f} ms, "
              f"median paired ratio {r:.3f}")

        if use_cache is not None:
            model.config.use_cache = use_cache
        with tempfile.TemporaryDirectory() as d:
            src, dst = os.path.join(d, "m.onnx"), os.path.join(d, "rms.onnx")
            # a fresh wrapper is in training mode, and the exporter restores that mode recursively
            torch.onnx.export(_First(model).eval(), (x,), src, dynamo=False, opset_version=17, input_names=["x"])
            with open(os.devnull, "w") as devnull:
                out, sys.stdout = sys.stdout, devnull
                try:
                    code = cli.main(["run", src, "-p", "layernorm-to-rmsnorm:target=ort", "-o", dst,
                                     "--atol", "1e-4", "--rtol", "1e-4", "--json", dst + ".json"])
                finally:
                    sys.stdout = out
            assert code == 0
            import json

            ost = json.load(open(dst + ".json"))["passes"][0]["stats"]
            feeds = {"x": x.numpy()}
            sess = {k: ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for k, p in
                    (("before", src), ("after", dst))}
            t = interleaved({k: (lambda _x, s=s: s.run(None, feeds)) for k, s in sess.items()}, None, args.iters)
            r = statistics.median(a / b for a, b in zip(t["after"], t["before"]))
            print(f"{name} ONNX Runtime ({ost['converted']}/{ost['layer_norms']} converted): before "
                  f"{statistics.median(t['before']) * 1e3:.2f} ms, after "
                  f"{statistics.median(t['after']) * 1e3:.2f} ms, median paired ratio {r:.3f} (target <= 0.95)")


if __name__ == "__main__":
    main()
