"""torch -> IR -> GraphModule: same outputs, same gradients, exportable again, readable state_dict."""
import pytest
import torch

import refold
import zoo
from refold.errors import UnsupportedError
from refold.frontends.torch.exporter import to_graph_module
from refold.frontends.torch.importer import import_module


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8, 4)
        self.register_buffer("scale", torch.tensor(0.5), persistent=False)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return {"logits": self.head(y.mean((2, 3))) * self.scale, "features": y}


def model_and_inputs(name):
    if name == "cnn":
        torch.manual_seed(0)
        m = SmallCNN().eval()
        zoo._randomize_bn(m)
        return m, (torch.randn(2, 3, 16, 16),)
    m, inp = zoo.tiny_hf_model(name)
    if hasattr(m.config, "use_cache"):
        m.config.use_cache = False
    return m, inp


def leaves(out):
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("name", ["gpt2", "bert", "vit", "llama", "resnet", "mobilenetv2", "cnn"])
def test_roundtrip_outputs_gradients_export(name):
    model, inputs = model_and_inputs(name)
    gm = to_graph_module(import_module(model, inputs))
    want, got = model(*inputs), gm(*inputs)
    assert type(got) is type(want)  # pytree structure kept (ModelOutput, dict, ...)
    for a, b in zip(leaves(want), leaves(got)):
        assert (a - b).abs().max().item() <= 1e-6
    # gradients reach every trainable parameter, and equal eager's
    sum(t.float().sum() for t in leaves(want)).backward()
    sum(t.float().sum() for t in leaves(got)).backward()
    ours = dict(gm.named_parameters())
    theirs = {k: p for k, p in model.named_parameters() if p.requires_grad}
    assert set(theirs) <= set(ours)
    for k, p in theirs.items():
        assert isinstance(ours[k], torch.nn.Parameter) and ours[k].requires_grad
        if p.grad is None:
            assert ours[k].grad is None or not ours[k].grad.abs().any()
            continue
        torch.testing.assert_close(ours[k].grad, p.grad, atol=1e-5, rtol=1e-5)
    # state_dict names map back to the source module's
    assert set(model.state_dict()) <= set(gm.state_dict()) | {k for k, _ in model.named_buffers()}
    torch.export.export(gm, inputs)


def test_parameters_are_not_copied():
    model, inputs = model_and_inputs("cnn")
    ir = import_module(model, inputs)
    w = next(v for v in ir.graph.initializers.values() if v.meta.get("torch.target") == "conv.weight")
    assert w.const.torch().data_ptr() == model.conv.weight.data_ptr()


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a tensor's value
            return x * 2
        return x - 1


def test_data_dependent_control_flow_is_reported():
    with pytest.raises(UnsupportedError) as e:
        import_module(DataDependent(), (torch.randn(3),))
    msg = str(e.value)
    assert "torch.export(strict=False)" in msg and "torch.export(strict=True)" in msg
    assert "torch.fx.symbolic_trace" in msg and "\n" not in msg


def test_optimize_with_no_passes_returns_equal_module():
    model, inputs = model_and_inputs("cnn")
    gm, report = refold.optimize(model, inputs, passes=[])
    assert report.rewrites == 0 and report.passes == []
    torch.testing.assert_close(gm(*inputs)["logits"], model(*inputs)["logits"], atol=0, rtol=0)


def test_optimize_runs_checked_passes_on_torch_graphs():
    model, inputs = model_and_inputs("cnn")
    gm, report = refold.optimize(model, inputs, passes=["cse", "dce"])
    assert report.check_engine == "torch" and all(r.max_abs == 0 for r in report.passes)
    torch.testing.assert_close(gm(*inputs)["features"], model(*inputs)["features"])


@pytest.mark.parametrize("name", ["gpt2", "bert", "vit", "llama", "resnet", "mobilenetv2", "cnn"])
def test_raise_to_core_then_back_to_aten(name):
    model, inputs = model_and_inputs(name)
    gm, report = refold.optimize(model, inputs, passes=["raise-to-core", "cse", "dce"], atol=1e-5, rtol=1e-5)
    rec = report.passes[0]
    assert rec.stats["raised"] > 0, rec.stats
    core_ops = {n.op for n in rec_model(report).graph if n.domain == "core"}
    expected = {"gpt2": {"layer_norm", "gemm"}, "bert": {"layer_norm", "linear"}, "vit": {"layer_norm", "conv"},
                "llama": {"rms_norm", "linear", "silu"}, "resnet": {"conv", "batch_norm", "relu"},
                "mobilenetv2": {"conv", "batch_norm"}, "cnn": {"conv", "batch_norm", "linear"}}[name]
    assert expected <= core_ops, core_ops
    for a, b in zip(leaves(model(*inputs)), leaves(gm(*inputs))):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    torch.export.export(gm, inputs)
    # still trainable after lowering core ops back to ATen
    sum(t.float().sum() for t in leaves(gm(*inputs))).backward()
    assert all(p.grad is not None for n, p in gm.named_parameters() if "weight" in n and "embed" not in n
               and "wte" not in n and "wpe" not in n and "position" not in n and "cls_token" not in n)


def rec_model(report):
    return report.model


def test_node_meta_keeps_module_stack_and_traces():
    model, inputs = model_and_inputs("cnn")
    ir = import_module(model, inputs)
    conv = next(n for n in ir.graph if n.op == "conv2d")
    assert "conv" in str(conv.meta["nn_module_stack"]) and conv.meta.get("stack_trace")


def test_pt2_loads_through_torch_export(tmp_path):
    model, inputs = model_and_inputs("cnn")
    torch.export.save(torch.export.export(model, inputs), str(tmp_path / "m.pt2"))
    gm = to_graph_module(refold.load(str(tmp_path / "m.pt2")))
    torch.testing.assert_close(gm(*inputs)["logits"], model(*inputs)["logits"])


def test_torchscript_refused_without_trust(tmp_path):
    from refold.errors import SecurityError

    model, inputs = model_and_inputs("cnn")
    torch.jit.trace(model.conv, inputs).save(str(tmp_path / "ts.pt"))
    with pytest.raises(SecurityError, match="TorchScript archive"):
        refold.load(str(tmp_path / "ts.pt"))


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_code_refused_and_state_dict_explained(tmp_path):
    from refold.errors import SecurityError

    torch.save({"x": _Evil()}, str(tmp_path / "evil.pt"))
    with pytest.raises(SecurityError, match="holds more than weights"):
        refold.load(str(tmp_path / "evil.pt"))
    torch.save(SmallCNN().state_dict(), str(tmp_path / "sd.pt"))
    with pytest.raises(UnsupportedError, match="weights only, no graph"):
        refold.load(str(tmp_path / "sd.pt"))


def test_example_script_runs():
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "examples", "optimize_torch_cnn.py")
    res = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "torch.export of the result: ok" in res.stdout and "raise-to-core" in res.stdout


def test_torchscript_with_trust_and_exported_program_objects(tmp_path):
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    torch.jit.trace(m, (x,)).save(str(tmp_path / "ts.pt"))
    gm = to_graph_module(refold.load(str(tmp_path / "ts.pt"), (x,), trust_code=True))
    out = gm(x)
    torch.testing.assert_close(out[0] if isinstance(out, (tuple, list)) else out, m(x))
    gm = to_graph_module(refold.load(torch.export.export(m, (x,))))
    torch.testing.assert_close(gm(x), m(x))
