"""Reports tell the truth about the file, and passes leave nothing behind in it.

Every node count refold prints or writes (the text table, ``--json``, the HTML header,
``report.diff()``) is the count of the model as the user gets it: the ONNX file's nodes (Constant
nodes included, subgraphs too), or the GraphModule's call nodes. And a pass that replaces a weight
or a node leaves no initializer, Constant node or value_info that nothing reads.
"""
from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import refold
import zoo
from refold.cli import main
from refold.passes import PASSES


def file_nodes(g: onnx.GraphProto) -> int:
    total = len(g.node)
    for n in g.node:
        for a in n.attribute:
            total += file_nodes(a.g) if a.HasField("g") else 0
            total += sum(file_nodes(sg) for sg in a.graphs)
    return total


def unread(m: onnx.ModelProto) -> dict[str, int]:
    """What nothing in the file reads: initializer bytes, Constant nodes, value_info entries."""
    def reads(g: onnx.GraphProto) -> set[str]:
        out = {o.name for o in g.output}
        for n in g.node:
            out.update(n.input)
            for a in n.attribute:
                subs = ([a.g] if a.HasField("g") else []) + list(a.graphs)
                for sg in subs:
                    out |= reads(sg)
        return out

    g = m.graph
    r = reads(g)
    produced = {o for n in g.node for o in n.output} | {i.name for i in g.input}
    inputs = {i.name for i in g.input}
    return {
        "initializer_bytes": sum(onnx.numpy_helper.to_array(t).nbytes for t in g.initializer
                                 if t.name not in r and t.name not in inputs),
        "constant_nodes": sum(n.op_type == "Constant" and n.output[0] not in r for n in g.node),
        "value_info": sum(v.name not in produced for v in g.value_info),
    }


def cls_calibration(n: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.random((1, 3, 48, 192), dtype=np.float32)} for _ in range(n)]


def test_cli_counts_equal_the_written_file(tmp_path):
    """PP-OCR cls through raise, fold, fuse, prune and quantize: the table, the JSON, the HTML
    header and the report's diff all count the nodes the written file has."""
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.concatenate([b["x"] for b in cls_calibration()]))
    out, js, html = tmp_path / "q.onnx", tmp_path / "r.json", tmp_path / "r.html"
    passes = ["raise-to-core", "fold-constants", "fuse-conv-bn", "prune:ratio=0.3",
              "quantize:calibration=minmax"]
    args = ["run", zoo.ppocr_path("cls"), "-o", str(out), "--json", str(js), "--report", str(html),
            "--data", str(calib)]
    for p in passes:
        args += ["-p", p]
    assert main(args) == 0
    written = file_nodes(onnx.load(str(out)).graph)
    source = file_nodes(onnx.load(zoo.ppocr_path("cls")).graph)
    records = json.loads(js.read_text())["passes"]
    assert records[0]["nodes_before"] == source  # 566: the input file, its 308 Constant nodes too
    assert records[-1]["nodes_after"] == written
    for a, b in zip(records, records[1:]):
        assert a["nodes_after"] == b["nodes_before"]
    data = re.search(r'<script id="refold-data" type="application/json">(.*?)</script>', html.read_text(), re.S)
    sides = json.loads(data.group(1).replace("<\\/", "</"))["sides"]
    assert [s["count"] for s in sides] == [source, written]
    assert main(["show", str(out)]) == 0


def test_show_counts_constant_nodes(capsys):
    assert main(["show", zoo.ppocr_path("cls")]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^nodes\s+566$", text, re.M)  # 258 operators and 308 Constant nodes
    assert re.search(r"onnx\.Constant\s+308", text)


def test_api_counts_and_diff_equal_the_returned_model():
    """refold.optimize on ONNX: the last count is the ModelProto's; report.diff() says so too."""
    passes = ["fuse-conv-bn", refold.passes.Quantize(calibration="minmax", data=cls_calibration())]
    proto, report = refold.optimize(zoo.ppocr_path("cls"), passes=passes)
    assert report.passes[-1].nodes_after == file_nodes(proto.graph)
    d = report.diff()
    assert d.b.node_count == file_nodes(proto.graph)
    assert f"{file_nodes(proto.graph)} nodes" in d.format()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        y = self.b(self.a(x))
        return self.head(y.mean((2, 3))), y.max()


def test_torch_counts_are_graph_module_call_nodes():
    torch.manual_seed(0)
    net = Net().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    gm, report = refold.optimize(net, (torch.randn(2, 3, 16, 16),),
                                 passes=["raise-to-core", "fuse-conv-bn", "prune:ratio=0.3"])
    calls = sum(n.op.startswith("call_") for n in gm.graph.nodes)
    assert report.passes[-1].nodes_after == calls
    assert report.diff().b.node_count == calls


# Every registered pass, on a model where it has work to do: what it replaced is gone from the file.
def _registry_cases():
    cls = lambda hf: zoo.ppocr_path("cls")  # noqa: E731
    gpt2 = lambda hf: hf("gpt2")  # noqa: E731  a Pre-LN transformer, exported to ONNX
    tiny = lambda hf: refold.example_path()  # noqa: E731  dead nodes, duplicates, foldables
    return {
        "dce": [(tiny, "dce")], "cse": [(tiny, "cse")], "fold-constants": [(tiny, "fold-constants")],
        "infer-shapes": [(tiny, "infer-shapes")], "raise-to-core": [(cls, "raise-to-core")],
        "fuse-conv-bn": [(cls, "fuse-conv-bn"), (cls, "fuse-conv-bn:affine=true")],
        "layernorm-to-rmsnorm": [(gpt2, "layernorm-to-rmsnorm"), (gpt2, "layernorm-to-rmsnorm:compress=true")],
        "quantize": [(cls, "quantize"), (cls, "quantize:weight_only=true,weights=int4"),
                     (cls, "quantize:profile=tensorrt")],
        "prune": [(cls, "prune:ratio=0.3")],
    }


CASES = [(name, path, spec) for name, cases in _registry_cases().items() for path, spec in cases]


def test_every_registered_pass_is_covered():
    assert sorted(PASSES) == sorted(_registry_cases())


@pytest.mark.parametrize("name,path,spec", CASES, ids=[c[2] for c in CASES])
def test_nothing_left_behind(name, path, spec, hf_onnx):
    p = refold.passes.get_pass(spec)
    if hasattr(p, "data") and not getattr(p, "weight_only", False):
        p.data = cls_calibration(2)
    proto, report = refold.optimize(path(hf_onnx), passes=[p], check=False)
    assert report.record(name).modified
    assert unread(proto) == {"initializer_bytes": 0, "constant_nodes": 0, "value_info": 0}


def test_quantized_yolo_file_holds_no_float_weights(tmp_path):
    """`refold run yolov8n.onnx -p quantize` wrote 15.4 MB for a 12.2 MB float file: the int8
    weights and all 401 float weights they replaced, read by nothing."""
    import warnings

    import yolo

    net, x = yolo.yolov8(width=0.25)
    src, out = str(tmp_path / "yolo.onnx"), tmp_path / "q.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), src, dynamo=False, opset_version=13, input_names=["x"],
                          output_names=["y"], training=torch.onnx.TrainingMode.PRESERVE)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((4, *x.shape[1:]), dtype=np.float32))
    assert main(["run", src, "-p", "fuse-conv-bn", "-p", "quantize", "--data", str(calib), "-o", str(out)]) == 0
    q = onnx.load(str(out))
    assert unread(q) == {"initializer_bytes": 0, "constant_nodes": 0, "value_info": 0}
    floats = [t.name for t in q.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4]
    assert floats == []  # every conv weight is int8 now
    assert out.stat().st_size < 0.4 * (tmp_path / "yolo.onnx").stat().st_size
