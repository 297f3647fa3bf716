"""ZeroQ data-free calibration: inputs distilled from the BatchNorm statistics, on ONNX and torch
graphs, with BN still present or folded away by refold; and its errors."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import refold
import zoo
from refold import cli
from refold.errors import UnsupportedError
from refold.passes import FuseConvBN, PassManager, Quantize
from refold.passes.quantize.zeroq import _statistics_loss, bn_targets
from refold.passes.raise_core import RaiseToCore
from refold.runtime.ort import OrtRunner
from refold.runtime.torch_runner import TorchRunner


def _decisions(proto, crops):
    r = OrtRunner(proto)
    return [int(next(iter(r.run({"x": zoo.cls_input(img)}).values())).argmax())
            for c in crops for img in (c, c[::-1, ::-1].copy())]


def test_ppocr_cls_keeps_its_orientation_decisions_with_no_data(tmp_path):
    src = zoo.ppocr_path("cls")
    saved = tmp_path / "distilled.npz"
    proto, report = refold.optimize(src, passes=[Quantize(calibration="zeroq", zeroq_batch=8,
                                                          zeroq_iterations=150, zeroq_shape="3x48x192",
                                                          zeroq_save=str(saved))])
    zq = report.record("quantize").stats["zeroq"]
    assert zq["loss_best"] * 10 <= zq["loss_start"], zq  # the BN-statistics loss falls 10x
    test = zoo.text_crops(12, seed=5)
    expected = [0, 1] * len(test)
    float_right = sum(a == b for a, b in zip(_decisions(onnx.load(src), test), expected))
    quant_right = sum(a == b for a, b in zip(_decisions(proto, test), expected))
    assert quant_right >= float_right - 1, (quant_right, float_right)
    assert _decisions(proto, [zoo.text_crop()]) == [0, 1]
    with np.load(saved) as f:  # the batch, for reuse as --data
        assert f["x"].shape == (8, 3, 48, 192) and np.isfinite(f["x"]).all()
    out = tmp_path / "again.onnx"
    assert cli.main(["run", src, "-p", "quantize", "--data", str(saved), "-o", str(out), "--quiet"]) == 0


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
            torch.nn.Conv2d(8, 16, 1), torch.nn.BatchNorm2d(16))
        self.head = torch.nn.Linear(16, 4)
        g = torch.Generator().manual_seed(0)
        for m in self.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # statistics as if trained
                m.running_mean.uniform_(-1, 1, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
                m.weight.data.uniform_(0.5, 1.5, generator=g)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def test_folded_batchnorms_keep_their_statistics_and_give_the_same_loss():
    net = _Net().eval()
    x = torch.randn(4, 3, 12, 12)
    before, after = refold.load(net, (x,)), refold.load(net, (x,))
    RaiseToCore().call(before)
    PassManager([FuseConvBN()], check=False).run(after)
    assert not any(n.op == "batch_norm" for n in after.graph)
    t_before, t_after = bn_targets(before), bn_targets(after)
    assert len(t_before) == len(t_after) == 3

    def loss(model, targets):
        vals = TorchRunner(model).run({model.graph.inputs[0].name: x}, capture=list(targets))
        ref = {k: {s: torch.as_tensor(a, dtype=torch.float32) for s, a in t.items()} for k, t in targets.items()}
        return sum(float(_statistics_loss(vals[k].detach(), ref[k])) for k in targets)

    # the loss measured at a folded conv's output, in BN-input units, is the loss at the BN input
    assert np.isclose(loss(before, t_before), loss(after, t_after), rtol=1e-4)


def test_zeroq_on_a_torch_module_after_fuse_conv_bn():
    net = _Net().eval()
    x = torch.randn(2, 3, 12, 12)
    gm, report = refold.optimize(net, (x,), passes=[FuseConvBN(), Quantize(calibration="zeroq", zeroq_batch=4,
                                                                          zeroq_iterations=40)])
    st = report.record("quantize").stats
    assert st["quantized"] == 4 and st["zeroq"]["loss_best"] < st["zeroq"]["loss_start"]
    with torch.no_grad():
        y, ref = gm(x), net(x)
    assert torch.isfinite(y).all() and 0 < (y - ref).abs().max() < 0.2 * ref.abs().max()


def test_zeroq_needs_batchnorm_and_float_inputs(tmp_path):
    lin = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    with pytest.raises(UnsupportedError, match="BatchNorm statistics"):
        refold.optimize(lin, (torch.randn(2, 4),), passes=[Quantize(calibration="zeroq", zeroq_iterations=2)])
    model, inputs = zoo.tiny_hf_model("bert")
    with pytest.raises(UnsupportedError):  # token ids: nothing to distil (and no BN)
        refold.optimize(zoo.last_hidden(model).eval(), inputs, passes=[Quantize(calibration="zeroq")])
    out = tmp_path / "q.onnx"
    src = str(tmp_path / "lin.onnx")
    torch.onnx.export(lin, (torch.randn(2, 4),), src, dynamo=False, input_names=["x"])
    assert cli.main(["run", src, "-p", "quantize:calibration=zeroq", "-o", str(out)]) != 0
    assert not out.exists()


def test_zeroq_from_the_command_line_on_an_onnx_export(tmp_path):
    net = _Net().eval()
    src, out, saved = tmp_path / "net.onnx", tmp_path / "q.onnx", tmp_path / "batch.npz"
    torch.onnx.export(net, (torch.randn(1, 3, 12, 12),), str(src), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
                      training=torch.onnx.TrainingMode.PRESERVE)  # keep the BatchNormalization nodes
    assert cli.main(["run", str(src), "-p", f"quantize:calibration=zeroq,zeroq_iterations=20,zeroq_batch=4,"
                     f"zeroq_shape=3x12x12,zeroq_save={saved}", "-o", str(out), "--quiet"]) == 0
    proto = onnx.load(str(out))
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) > 0
    with np.load(saved) as f:
        assert f["x"].shape == (4, 3, 12, 12)
