"""layernorm-to-rmsnorm: Pre-LN transformers become Pre-RMSNorm exactly; Post-LN is refused with
reasons; already-RMSNorm models are a no-op."""
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import refold
import zoo
from refold import cli
from refold.frontends.onnx.importer import load_onnx
from refold.passes import LayerNormToRMSNorm, PassManager


def hf(name):
    m, inp = zoo.tiny_hf_model(name)
    if hasattr(m.config, "use_cache"):
        m.config.use_cache = False
    return m, inp


def count(gm, what):
    return sum(what in str(n.target) for n in gm.graph.nodes)


@pytest.mark.parametrize("name", ["gpt2", "vit"])
@pytest.mark.parametrize("compress", [False, True])
def test_pre_ln_torch_models_convert_every_layernorm(name, compress):
    model, inputs = hf(name)
    gm, report = refold.optimize(model, inputs, passes=[LayerNormToRMSNorm(compress=compress)], atol=1e-5, rtol=1e-5)
    st = report.record("layernorm-to-rmsnorm").stats
    assert st["converted"] == st["layer_norms"] == 5 and st["not_converted"] == {}
    if compress:
        assert count(gm, "layer_norm") == 0 and count(gm, "rms_norm") == 0 and st["emitted"] == "crms_norm"
    else:  # torch CPU: LayerNorm's kernel on the zero-mean stream is the fastest exact RMSNorm
        assert st["emitted"].startswith("layer_norm") and count(gm, "rms_norm") == 0
        lns = [n for n in gm.graph.nodes if n.target == torch.ops.aten.layer_norm.default]
        # four biases folded into the next linear; the last LayerNorm feeds the output, keeps its bias
        # and stays as it was (now on a zero-mean stream)
        assert len(lns) == 5 and sum(n.args[3] is None for n in lns) == 4 and st["rewrites"] == 4
    torch.testing.assert_close(gm(*inputs)[0], model(*inputs)[0], atol=1e-5, rtol=1e-5)
    if compress:  # the stream is stored in d-1 coordinates: every writer lost one output feature
        d = model.config.hidden_size
        widths = {tuple(p.shape) for p in gm.parameters()}
        assert (99, d - 1) in widths or (1, 17, d - 1) in widths, widths
    torch.export.export(gm, inputs)
    again = PassManager([LayerNormToRMSNorm(compress=compress)], check=False).run(refold.load(gm, inputs))
    rec = again.record("layernorm-to-rmsnorm")
    assert rec.modified is False  # idempotent
    assert rec.stats.get("already_zero_mean", 0) == (0 if compress else 5)


def test_layer_norm_kernel_on_zero_mean_stream_is_the_rms_norm():
    """The torch form's premise, with the tolerance it holds to: on a zero-mean fp32 stream
    aten.layer_norm equals aten.rms_norm to a few ulps of the largest output (it only subtracts the
    stream's rounding-level mean)."""
    aten = torch.ops.aten
    g = torch.Generator().manual_seed(0)
    for shape, scale in (((2, 128, 768), 1.0), ((1, 197, 768), 30.0), ((4, 7, 32), 1e-3)):
        x = torch.randn(shape, generator=g) * scale
        x = x - x.mean(-1, keepdim=True)
        w = torch.randn(shape[-1], generator=g)
        ln = aten.layer_norm(x, [shape[-1]], w, None, 1e-5)
        rms = aten.rms_norm(x, [shape[-1]], w, 1e-5)
        torch.testing.assert_close(ln, rms, atol=1e-5, rtol=1e-5)
        # measured: at most 1.4 ulps of the largest output
        assert (ln - rms).abs().max() <= 4 * torch.finfo(torch.float32).eps * ln.abs().max()


@pytest.mark.parametrize("name", ["gpt2", "vit"])
@pytest.mark.parametrize("compress", [False, True])
def test_pre_ln_onnx_exports_convert_through_the_cli(name, compress, hf_onnx, tmp_path, capsys):
    src = hf_onnx(name)
    out, rep = tmp_path / "rms.onnx", tmp_path / "r.json"
    spec = "layernorm-to-rmsnorm" + (":compress=true" if compress else "")
    code = cli.main(["run", src, "-p", spec, "-o", str(out), "--atol", "1e-5", "--rtol", "1e-5", "--json", str(rep)])
    assert code == 0, capsys.readouterr().err
    st = next(p for p in json.loads(rep.read_text())["passes"] if p["name"] == "layernorm-to-rmsnorm")["stats"]
    assert st["converted"] == 5 and st["not_converted"] == {} and st["compressed"] is compress
    proto = onnx.load(str(out))
    assert not any(n.op_type == "LayerNormalization" for n in proto.graph.node)
    import onnxruntime as ort

    feed = {"input": np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)} if name == "vit" \
        else {"input": np.arange(8, dtype=np.int64)[None] % 50}
    before = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    after = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=0)
    if compress:
        widths = {tuple(i.dims)[-1] for i in proto.graph.initializer if "_centered" in i.name}
        assert widths == {31} or 31 in {tuple(i.dims)[0] for i in proto.graph.initializer if "_centered" in i.name}


@pytest.mark.parametrize("compress", [False, True])
def test_post_ln_bert_refused_per_layernorm(compress):
    model, inputs = hf("bert")
    gm, report = refold.optimize(model, inputs, passes=[LayerNormToRMSNorm(compress=compress)], atol=1e-5, rtol=1e-5)
    rec = report.record("layernorm-to-rmsnorm")
    # The embedding LayerNorm's output is the residual stream (Post-LN placement); every encoder
    # LayerNorm reads a Post-LN stream. Nothing changes, and each has its reason.
    assert rec.modified is False and rec.stats["converted"] == 0 and len(rec.stats["not_converted"]) == 5
    assert all("Post-LN" in why for why in rec.stats["not_converted"].values())
    # every LayerNorm but the last (read by nothing but the graph output) writes the stream itself
    assert sum("Post-LN placement" in why for why in rec.stats["not_converted"].values()) == 4
    codes = [why.code for why in rec.stats["not_converted"].values()]  # typed, not text to search
    assert codes.count("post-ln") == 4 and set(codes) <= {"post-ln", "stream-not-zero-mean"}, codes
    assert count(gm, "layer_norm") == 5
    torch.testing.assert_close(gm(*inputs)[0], model(*inputs)[0], atol=0, rtol=0)


def test_llama_is_already_rmsnorm():
    model, inputs = hf("llama")
    gm, report = refold.optimize(model, inputs, passes=["layernorm-to-rmsnorm"])
    rec = report.record("layernorm-to-rmsnorm")
    assert rec.modified is False and rec.stats["layer_norms"] == 0 and rec.stats["not_converted"] == {}
    torch.testing.assert_close(gm(*inputs)[0], model(*inputs)[0], atol=0, rtol=0)


# -- hand-made Pre-LN blocks: decomposed forms and raw-stream readers --------------------------

rng = np.random.default_rng(0)


def pre_ln_block(decomposed_opset18=False, stream_is_output=False, gelu_writer=False):
    """x -> h = x@We + pos;  y = h + (LN(h) @ W1 + b1);  out = LN(y) @ Wo."""
    d = 8
    inits = [numpy_helper.from_array(rng.standard_normal((4, d)).astype(np.float32), "We"),
             numpy_helper.from_array(rng.standard_normal((1, 3, d)).astype(np.float32), "pos"),
             numpy_helper.from_array(rng.standard_normal((d, d)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal(d).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((d, 2)).astype(np.float32), "Wo"),
             numpy_helper.from_array((rng.standard_normal(d) + 1).astype(np.float32), "g"),
             numpy_helper.from_array(rng.standard_normal(d).astype(np.float32), "beta"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    nodes = [helper.make_node("MatMul", ["x", "We"], ["e"]), helper.make_node("Add", ["e", "pos"], ["h"])]

    def ln(inp, out, tag):
        if not decomposed_opset18:
            return [helper.make_node("LayerNormalization", [inp, "g", "beta"], [out], axis=-1, name=tag)]
        return [helper.make_node("ReduceMean", [inp, "axes"], [f"{tag}_m"], keepdims=1),
                helper.make_node("Sub", [inp, f"{tag}_m"], [f"{tag}_d"]),
                helper.make_node("Pow", [f"{tag}_d", "two"], [f"{tag}_sq"]),
                helper.make_node("ReduceMean", [f"{tag}_sq", "axes"], [f"{tag}_v"], keepdims=1),
                helper.make_node("Add", [f"{tag}_v", "eps"], [f"{tag}_ve"]),
                helper.make_node("Sqrt", [f"{tag}_ve"], [f"{tag}_s"]),
                helper.make_node("Div", [f"{tag}_d", f"{tag}_s"], [f"{tag}_n"]),
                helper.make_node("Mul", [f"{tag}_n", "g"], [f"{tag}_ng"]),
                helper.make_node("Add", [f"{tag}_ng", "beta"], [out], name=tag)]

    nodes += ln("h", "n1", "ln1")
    nodes += [helper.make_node("MatMul", ["n1", "W1"], ["f"]), helper.make_node("Add", ["f", "b1"], ["fb"])]
    if gelu_writer:
        nodes.append(helper.make_node("Tanh", ["fb"], ["fw"]))
    nodes.append(helper.make_node("Add", ["h", "fw" if gelu_writer else "fb"], ["y"]))
    nodes += ln("y", "n2", "ln2")
    nodes.append(helper.make_node("MatMul", ["n2", "Wo"], ["out"]))
    outs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    if stream_is_output:
        outs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          outs, initializer=inits)
    return load_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))


@pytest.mark.parametrize("decomposed", [False, True])
def test_block_converts_in_both_forms(decomposed):
    m = pre_ln_block(decomposed_opset18=decomposed)
    rec = PassManager([LayerNormToRMSNorm()], atol=1e-5, rtol=1e-5).run(m).record("layernorm-to-rmsnorm")
    assert rec.stats["converted"] == 2, rec.stats
    assert not any(n.op == "layer_norm" for n in m.graph)


def test_raw_stream_reader_and_nonlinear_writer_refused():
    m = pre_ln_block(stream_is_output=True)
    rec = PassManager([LayerNormToRMSNorm()], atol=1e-5, rtol=1e-5).run(m).record("layernorm-to-rmsnorm")
    assert rec.stats["converted"] == 0
    assert all("graph output" in why or "also read by" in why for why in rec.stats["not_converted"].values())
    m = pre_ln_block(gelu_writer=True)
    rec = PassManager([LayerNormToRMSNorm()], atol=1e-5, rtol=1e-5).run(m).record("layernorm-to-rmsnorm")
    assert rec.stats["converted"] == 1  # ln1 reads x@We + pos; ln2 reads a Tanh writer
    assert "not linear" in list(rec.stats["not_converted"].values())[0]


@pytest.mark.parametrize("decomposed", [False, True])
def test_block_compresses_in_both_forms(decomposed):
    m = pre_ln_block(decomposed_opset18=decomposed)
    rec = PassManager([LayerNormToRMSNorm(compress=True)], atol=1e-5, rtol=1e-5).run(m).record("layernorm-to-rmsnorm")
    assert rec.stats["converted"] == 2 and rec.stats["compressed"], rec.stats
    assert [n.op for n in m.graph if n.op.endswith("norm")] == ["crms_norm", "crms_norm"]
    (we,) = [v for k, v in m.graph.initializers.items() if k.startswith("We")]
    assert we.shape == (4, 7)  # the stream holds 7 of 8 coordinates


def test_crms_norm_reference_matches_layer_norm_of_the_full_vector():
    from refold.ir.ops import evaluate

    x = torch.randn(3, 5, 16)
    x = x - x.mean(-1, keepdim=True)
    g = torch.randn(16)
    (y,) = evaluate("crms_norm", [x[..., :-1], g], {"epsilon": 1e-6})  # statistics in fp32, as LayerNorm's
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x, (16,), g, None, 1e-6), atol=1e-5, rtol=1e-5)


def test_compress_refused_when_a_layernorm_must_stay():
    # ln2 reads a Tanh writer and stays; ln1 could convert, but its stream feeds ln2 too, which
    # could not read d-1 coordinates: CRMSNorm converts neither, plain RMSNorm converts ln1.
    m = pre_ln_block(gelu_writer=True)
    rec = PassManager([LayerNormToRMSNorm(compress=True)], atol=1e-5, rtol=1e-5).run(m).record("layernorm-to-rmsnorm")
    assert rec.stats["converted"] == 0
    assert any("also read by" in why for why in rec.stats["not_converted"].values()), rec.stats


def test_ppocr_rec_layernorms_recognised_and_refused_with_reason():
    m = load_onnx(zoo.ppocr_path("rec"))
    m.graph.inputs[0].shape = zoo.PPOCR_SHAPES["rec"]
    rec = PassManager([LayerNormToRMSNorm()], atol=1e-5, rtol=1e-5).run(m).record("layernorm-to-rmsnorm")
    # its 5 written-out LayerNorms are found; the stream they read starts at a Swish output
    assert rec.stats["layer_norms"] == 5 and rec.stats["converted"] == 0
    assert all("not linear" in why for why in rec.stats["not_converted"].values())


def test_target_ort_emits_simplified_layer_normalization(hf_onnx, tmp_path, capsys):
    out = tmp_path / "ort.onnx"
    assert cli.main(["run", hf_onnx("gpt2"), "-p", "layernorm-to-rmsnorm:target=ort", "-o", str(out),
                     "--atol", "1e-5", "--rtol", "1e-5"]) == 0
    proto = onnx.load(str(out))
    simplified = [n for n in proto.graph.node if n.op_type == "SimplifiedLayerNormalization"]
    # ONNX Runtime registers SimplifiedLayerNormalization in the default domain
    assert len(simplified) == 5 and all(n.domain == "" for n in simplified)
    import onnxruntime as ort

    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


def test_auto_below_opset_23_writes_the_rms_form_onnx_runtime_fuses(hf_onnx, tmp_path, capsys):
    """Below opset 23 the RMSNorm is written out, as Pow/ReduceMean/Add/Sqrt/Div/Mul: the pattern
    ONNX Runtime fuses into SimplifiedLayerNormalization (x*x in place of Pow is left unfused)."""
    import onnxruntime as ort

    out, rep = tmp_path / "auto.onnx", tmp_path / "r.json"
    assert cli.main(["run", hf_onnx("gpt2"), "-p", "layernorm-to-rmsnorm", "-o", str(out),
                     "--atol", "1e-5", "--rtol", "1e-5", "--json", str(rep)]) == 0, capsys.readouterr().err
    st = next(p for p in json.loads(rep.read_text())["passes"] if p["name"] == "layernorm-to-rmsnorm")["stats"]
    assert st["emitted"].startswith("decomposed rms_norm")
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version < 23
    assert sum(n.op_type == "Pow" and "rms_norm" in n.name for n in proto.graph.node) == 5
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    assert fused.count("SimplifiedLayerNormalization") == 5 and "Sqrt" not in fused


# -- target=rms: the RMSNorm op in every world; target=auto follows the torch module's device ---------

@pytest.mark.parametrize("compress", [False, True])
def test_target_rms_torch_gpt2_has_aten_rms_norm(compress):
    model, inputs = hf("gpt2")
    spec = "layernorm-to-rmsnorm:target=rms" + (",compress=true" if compress else "")
    for passes in ([spec], [LayerNormToRMSNorm(target="rms", compress=compress)]):
        gm, report = refold.optimize(model, inputs, passes=passes, atol=1e-5, rtol=1e-4)
        st = report.record("layernorm-to-rmsnorm").stats
        assert st["converted"] == 5 and st["not_converted"] == {}
        assert st["emitted"] == ("crms_norm as aten.rms_norm" if compress else "aten.rms_norm")
        rms = [n for n in gm.graph.nodes if n.target == torch.ops.aten.rms_norm.default]
        assert len(rms) == 5 and count(gm, "layer_norm") == 0
        # with compress each rms_norm reads the d-vector recovered from the d-1 stored coordinates
        assert all(n.args[1] == [model.config.hidden_size] for n in rms)
        torch.testing.assert_close(gm(*inputs)[0], model(*inputs)[0], atol=1e-5, rtol=1e-4)
    torch.export.export(gm, inputs)  # exportable onward, rms_norm and all
    again = PassManager([LayerNormToRMSNorm(target="rms", compress=compress)], check=False).run(refold.load(gm, inputs))
    assert again.record("layernorm-to-rmsnorm").modified is False  # idempotent


class PreLNBlock(torch.nn.Module):
    """h = wte[ids] + wpe;  h = h + fc(LN1(h));  out = LN2(h)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.wte, self.wpe = torch.nn.Embedding(10, 8), torch.nn.Parameter(torch.randn(1, 4, 8, generator=g))
        self.ln1, self.fc, self.ln2 = torch.nn.LayerNorm(8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, ids):
        h = self.wte(ids) + self.wpe
        h = h + self.fc(self.ln1(h))
        return self.ln2(h)


IDS = torch.tensor([[1, 2, 3, 4]])


def test_torch_import_records_the_module_device():
    from types import SimpleNamespace

    from refold.frontends.torch.importer import _source_device

    assert refold.load(PreLNBlock().eval(), (IDS,)).meta["torch.device"] == "cpu"
    ep = SimpleNamespace(state_dict={"w": torch.empty(2, device="meta")})
    assert _source_device(ep, []) == "meta"  # the weights' device, as a CUDA module's says "cuda"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_target_auto_follows_the_device_the_module_is_on(device):
    """auto: a CUDA module gets aten.rms_norm (one fused GPU kernel); a CPU module the LayerNorm
    kernel on the zero-mean stream (measured faster there). The device is faked: no GPU here."""
    from refold.frontends.torch.exporter import to_graph_module

    model = PreLNBlock().eval()
    m = refold.load(model, (IDS,))
    m.meta["torch.device"] = device
    report = PassManager([LayerNormToRMSNorm()], atol=1e-5, rtol=1e-4).run(m)
    st = report.record("layernorm-to-rmsnorm").stats
    gm = to_graph_module(report.model)
    if device == "cuda":
        assert st["emitted"].startswith("aten.rms_norm") and st["converted"] == 2
        assert count(gm, "rms_norm") == 2 and count(gm, "layer_norm") == 0
    else:
        assert st["emitted"] == "layer_norm (fastest exact form on torch CPU)"
        assert count(gm, "rms_norm") == 0 and count(gm, "layer_norm") == 2
    torch.testing.assert_close(gm(IDS), model(IDS), atol=1e-5, rtol=1e-4)


GOLDEN_FORWARD = {
    # CPU auto: LN1 runs as a bias-free LayerNorm on the zero-mean stream (its bias folded into fc);
    # LN2 feeds the output, so its bias has nowhere to go and it stays the LayerNorm it was
    "auto": """
        layer_norm_default = torch.ops.aten.layer_norm.default(add_tensor, [8], ln1_weight, None, 1e-05);  ln1_weight = None
        linear_default = torch.ops.aten.linear.default(layer_norm_default, fc_weight, fc_bias);  layer_norm_default = fc_weight = fc_bias = None
        layer_norm_default_1 = torch.ops.aten.layer_norm.default(add_tensor_1, [8], ln2_weight, ln2_bias, 1e-05);  add_tensor_1 = ln2_weight = ln2_bias = None
    """,
    # rms: both are aten.rms_norm; LN2's bias stays an add after it
    "rms": """
        rms_norm_default = torch.ops.aten.rms_norm.default(add_tensor, [8], ln1_weight, 1e-05);  ln1_weight = None
        linear_default = torch.ops.aten.linear.default(rms_norm_default, fc_weight, fc_bias);  rms_norm_default = fc_weight = fc_bias = None
        rms_norm_default_1 = torch.ops.aten.rms_norm.default(add_tensor_1, [8], ln2_weight, 1e-05);  add_tensor_1 = ln2_weight = None
        add_tensor_2 = torch.ops.aten.add.Tensor(rms_norm_default_1, ln2_bias);  rms_norm_default_1 = ln2_bias = None
    """,
}


@pytest.mark.parametrize("target", sorted(GOLDEN_FORWARD))
def test_golden_graph_module_per_target(target):
    model = PreLNBlock().eval()
    gm, report = refold.optimize(model, (IDS,), passes=[LayerNormToRMSNorm(target=target)], atol=1e-5, rtol=1e-4)
    norm_lines = [ln.strip() for ln in gm.code.splitlines() if "norm" in ln and "=" in ln and "self." not in ln]
    expected = [ln.strip() for ln in GOLDEN_FORWARD[target].strip().splitlines()]
    assert norm_lines == expected
    assert report.record("layernorm-to-rmsnorm").max_abs <= 1e-5
    torch.testing.assert_close(gm(IDS), model(IDS), atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def gpt2_opset23(tmp_path_factory):
    """A tiny GPT-2 ONNX export converted to opset 23 (where RMSNormalization exists)."""
    path = str(tmp_path_factory.mktemp("opset23") / "gpt2.onnx")
    zoo.export_hf_onnx("gpt2", path)
    proto = onnx.version_converter.convert_version(onnx.load(path), 23)
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return path


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("opset", [23, 17])
def test_target_rms_onnx(opset, compress, gpt2_opset23, hf_onnx, tmp_path, capsys):
    """opset 23: RMSNormalization (with compress, on the d-vector Concat recovers); below it the
    written-out form, as auto writes it. Both run in ONNX Runtime and equal the original."""
    import onnxruntime as ort

    src = gpt2_opset23 if opset == 23 else hf_onnx("gpt2")
    out, rep = tmp_path / "rms.onnx", tmp_path / "r.json"
    spec = "layernorm-to-rmsnorm:target=rms" + (",compress=true" if compress else "")
    assert cli.main(["run", src, "-p", spec, "-o", str(out), "--atol", "1e-5", "--rtol", "1e-4",
                     "--json", str(rep)]) == 0, capsys.readouterr().err
    rows = json.loads(rep.read_text())["passes"]
    st = next(p for p in rows if p["name"] == "layernorm-to-rmsnorm")["stats"]
    assert st["converted"] == 5 and st["compressed"] is compress
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == opset
    ops = [n.op_type for n in proto.graph.node]
    assert "LayerNormalization" not in ops
    if opset == 23:
        assert ops.count("RMSNormalization") == 5 and st["emitted"].endswith("RMSNormalization")
        assert ops.count("Neg") == (5 if compress else 0)
    else:
        assert "RMSNormalization" not in ops
        assert st["emitted"] == ("crms_norm" if compress else "decomposed rms_norm (ORT fuses it)")
        assert sum(n.op_type == "Pow" and "rms_norm" in n.name for n in proto.graph.node) == (0 if compress else 5)
    feed = {"input": np.arange(8, dtype=np.int64)[None] % 50}
    before = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    after = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(after, before, atol=1e-5, rtol=1e-4)


def test_target_rms_is_a_listed_choice(capsys):
    assert cli.main(["passes", "layernorm-to-rmsnorm"]) == 0
    assert "target=auto|ort|rms" in capsys.readouterr().out
    LayerNormToRMSNorm(target="rms", compress=True).validate()  # CRMSNorm runs as the RMSNorm op: allowed
