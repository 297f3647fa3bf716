"""prune: dependency groups over core ops, each checked against the oracle (zeroing a group's
slices in the original == removing them physically), on PP-OCR ONNX files, transformers CNNs and
the couplings Torch-Pruning broke on (../shared/PEERS.md, BAD_INPUTS 22), in both worlds."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import refold
import zoo
from refold import cli
from refold.api import load
from refold.errors import UsageError
from refold.passes import Prune
from refold.passes.analysis.channels import ChannelGraph
from refold.passes.prune import remove_units, untie_constants, zero_units
from refold.passes.raise_core import RaiseToCore
from refold.runtime import runner_for
from refold.runtime.ort import OrtRunner
from refold.runtime.probe import probe_dims, probe_inputs
from refold.runtime.shapes import infer_shapes

F = torch.nn.functional


class Couplings(torch.nn.Module):
    """Every coupling in one net: depthwise and grouped convs, a 1-output-channel conv, a bare
    parameter, cat([x, x]), split offsets, chunk, a residual add, flatten into a linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(16)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)          # depthwise (#126, #179)
        self.grouped = torch.nn.Conv2d(16, 16, 1, groups=4)                 # divisibility (#328)
        self.scale = torch.nn.Parameter(torch.rand(16, 1, 1) + 0.5)         # bare parameter (#184, #356)
        self.one = torch.nn.Conv2d(16, 1, 1)                                # one output channel
        self.from_one = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.a, self.b = torch.nn.Conv2d(6, 8, 1), torch.nn.Conv2d(10, 8, 1)
        self.mix = torch.nn.Conv2d(32, 12, 1)
        self.head = torch.nn.Linear(12 * 4 * 4, 5)                          # flatten (#125, #451)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        y = F.relu(self.bn(self.stem(x)))
        y = y + self.grouped(F.relu(self.dw(y))) * self.scale              # residual add
        s = self.from_one(torch.sigmoid(self.one(y)))
        p, q = y.split([6, 10], 1)                                          # split offsets (#352)
        u, w = torch.cat([self.a(p), self.b(q)], 1).chunk(2, 1)             # chunk (#392)
        z = torch.cat([u + s, u + w, s + w, s], 1)                          # indices into a concat (#415)
        z = F.max_pool2d(F.relu(self.mix(z)), 2)
        return self.head(z.flatten(1))


class Twice(torch.nn.Module):
    """cat([x, x]) (Torch-Pruning#146)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.c1, self.c2 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = F.relu(self.c1(x))
        return self.c2(torch.cat([y, y], 1)).mean((2, 3))


class GroupNormNet(torch.nn.Module):
    """GroupNorm normalises over channel groups (Torch-Pruning#268): its channels stay."""

    def __init__(self):
        super().__init__()
        self.c1, self.gn, self.c2 = torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.c2(F.relu(self.gn(self.c1(x))))


def _prepared(factory):
    m = factory()
    RaiseToCore().call(m)
    if m.source == "onnx":
        infer_shapes(m, probe=True)
    untie_constants(m)
    return m


def _oracle(factory, feeds, max_groups=10, seed=0) -> int:
    """For sampled prunable groups: the zeroed original and the physically pruned model agree."""
    groups = [g for g in ChannelGraph(_prepared(factory)).groups if g.prunable and g.units > 1]
    rng = np.random.default_rng(seed)
    if len(groups) > max_groups:
        groups = [groups[i] for i in sorted(rng.choice(len(groups), max_groups, replace=False))]
    for g in groups:
        units = np.sort(rng.choice(g.units, max(1, g.units // 2), replace=False))
        zeroed, pruned = _prepared(factory), _prepared(factory)
        zero_units(zeroed, ChannelGraph(zeroed).groups[g.index], units)
        gp = ChannelGraph(pruned).groups[g.index]
        remove_units(pruned, {g.index: gp}, {g.index: units})
        ref, got = runner_for(zeroed).run(feeds), runner_for(pruned).run(feeds)
        for k in ref:
            r, o = (np.asarray(t.detach() if hasattr(t, "detach") else t, np.float64) for t in (ref[k], got[k]))
            assert r.shape == o.shape and np.abs(r - o).max() <= 1e-5 * max(1.0, np.abs(r).max()), g.describe()
    return len(groups)


def test_torch_couplings_are_grouped_and_every_group_is_zero_invariant(tmp_path):
    net, x = Couplings().eval(), torch.randn(2, 3, 8, 8)
    groups = ChannelGraph(_prepared(lambda: load(net, (x,)))).groups
    prunable = [g for g in groups if g.prunable]
    assert len(prunable) == 4 and not groups[-1].prunable  # the head's outputs are the graph's
    # the stem's group runs through BN, the depthwise conv, the residual add, the bare parameter,
    # the split and the 1-output conv's input; the grouped conv (4 groups of 4) ties channel j of
    # every group together, so its 16 channels are 4 units of 4 (the groups stay equal)
    stem = next(g for g in prunable if ("p_stem_weight", 0) in g.params)
    assert stem.units == 4 and {("p_scale", 0), ("p_dw_weight", 0), ("p_grouped_weight", 0), ("p_grouped_weight", 1),
                                ("p_one_weight", 1)} <= set(stem.params)
    assert stem.params[("p_stem_weight", 0)][0] == [0, 4, 8, 12]
    one = next(g for g in prunable if ("p_one_weight", 0) in g.params)
    assert one.units == 1  # a 1-output conv is not depthwise (#126): its one channel, which stays
    head = next(g for g in prunable if ("p_head_weight", 1) in g.params)  # through flatten: 4x4 features a channel
    assert head.units == 12 and head.params[("p_head_weight", 1)][1] == list(range(16, 32))
    assert _oracle(lambda: load(net, (x,)), (x,), max_groups=20) == len(prunable) - 1  # all but `one`
    path = str(tmp_path / "couplings.onnx")
    torch.onnx.export(net, (x,), path, dynamo=False, input_names=["x"], output_names=["y"])
    onnx_all = ChannelGraph(_prepared(lambda: load(path))).groups
    onnx_groups = [g for g in onnx_all if g.prunable]
    # torch.onnx writes chunk's sizes as a run-time Shape computation; its equal pieces follow the
    # pruned width, so the groups through it are prunable as in the torch world
    shaped = [g for g in onnx_all if not g.prunable and "shape computation" in str(g.why_not)]
    assert len(onnx_groups) == len(prunable) and not shaped
    assert _oracle(lambda: load(path), {"x": x.numpy()}, max_groups=20) == len(onnx_groups) - 1


def test_cat_of_the_same_tensor_twice_and_groupnorm():
    x = torch.randn(2, 3, 8, 8)
    net = Twice().eval()
    g = next(g for g in ChannelGraph(_prepared(lambda: load(net, (x,)))).groups if g.prunable)
    assert g.units == 8 and g.params[("p_c2_weight", 1)][3] == [3, 11]  # channel c at c and 8 + c
    assert _oracle(lambda: load(net, (x,)), (x,)) == 1
    gn = GroupNormNet().eval()
    groups = ChannelGraph(_prepared(lambda: load(gn, (x,)))).groups
    first = next(g for g in groups if ("p_c1_weight", 0) in g.params)
    assert not first.prunable and first.why_not.code == "no-rule" and "group_norm" in str(first.why_not)


@pytest.mark.parametrize("name", ["cls", "det", "rec"])
def test_ppocr_onnx_groups_are_zero_invariant(name):
    factory = lambda: load(zoo.ppocr_path(name))  # noqa: E731
    m = _prepared(factory)
    feeds = probe_inputs(m, dims=probe_dims(m))
    assert _oracle(factory, feeds, max_groups=6) == 6


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2"])
def test_transformers_cnns_prune_and_train(name):
    model, inputs = zoo.tiny_hf_model(name)
    module = zoo.last_hidden(model).eval()
    assert _oracle(lambda: load(module, inputs), inputs, max_groups=3) == 3
    gm, report = refold.optimize(module, inputs, passes=[Prune(ratio=0.5)])
    st = report.record("prune").stats
    assert st["pruned_groups"] >= 3 and st["params_after"] < 0.7 * st["params_before"]
    with torch.no_grad():
        assert gm(*inputs).shape == module(*inputs).shape
    params = [p for p in gm.parameters() if p.requires_grad]
    assert params
    opt = torch.optim.SGD(params, lr=0.05)
    target = torch.randn_like(gm(*inputs)).detach()
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = ((gm(*inputs) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def _conv_widths(proto) -> dict[str, int]:
    """Output channels of each Conv, by node name (weights in initializers or Constant nodes)."""
    dims = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.attribute[0].name == "value":
            dims[n.output[0]] = tuple(n.attribute[0].t.dims)
    return {n.name: dims[n.input[1]][0] for n in proto.graph.node if n.op_type == "Conv" and n.input[1] in dims}


def test_ppocr_det_pruned_onnx_runs_in_ort_with_round_to(tmp_path):
    src = zoo.ppocr_path("det")
    out, js = tmp_path / "det.pruned.onnx", tmp_path / "r.json"
    assert cli.main(["run", src, "-p", "prune:ratio=0.5,round_to=8", "-o", str(out), "--json", str(js),
                     "--quiet"]) == 0
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    before, after = _conv_widths(onnx.load(src)), _conv_widths(proto)
    shrunk = [(before[k], after[k]) for k in after if k in before and after[k] != before[k]]
    assert len(shrunk) > 30
    for old, new in shrunk:  # kept output channels: a multiple of 8
        assert new % 8 == 0 and new < old, (old, new)
    x = {"x": np.random.default_rng(0).random((1, 3, 96, 96), np.float32)}
    assert next(iter(OrtRunner(proto).run(x).values())).shape == (1, 1, 96, 96)
    import json

    st = next(p for p in json.loads(js.read_text())["passes"] if p["name"] == "prune")["stats"]
    assert st["params_after"] < 0.45 * st["params_before"]


def test_never_removes_every_channel_and_bad_options(capsys):
    x = torch.randn(2, 3, 8, 8)
    net = Twice().eval()
    gm, report = refold.optimize(net, (x,), passes=[Prune(ratio=0.99)])
    assert report.record("prune").stats["channels_removed"] == 7  # 8 channels, one kept
    gm, report = refold.optimize(net, (x,), passes=[Prune(ratio=0.99, keep_min=3)])
    assert report.record("prune").stats["channels_removed"] == 5
    gm, report = refold.optimize(net, (x,), passes=[Prune(ratio=0.5, exclude="conv2d")])
    assert report.record("prune").stats["channels_removed"] == 0
    with pytest.raises(UsageError):
        Prune(ratio=1.0)
    assert cli.main(["run", "example:tiny_cnn", "-p", "prune:ratio=2", "-o", "/tmp/never.onnx"]) == 2
    assert cli.main(["show", "--groups", "example:tiny_cnn"]) == 0
    assert "channel groups:" in capsys.readouterr().out


def test_taylor_importance_uses_the_data_and_macs_are_reported():
    x = torch.randn(4, 3, 8, 8)
    net = Twice().eval()
    with torch.no_grad():  # channel 3 contributes nothing: first to go by w * dL/dw
        net.c1.weight[3] = 0
        net.c1.bias[3] = 0
    data = [(torch.randn(4, 3, 8, 8),) for _ in range(3)]
    gm, report = refold.optimize(net, (x,), passes=[Prune(ratio=0.125, importance="taylor", data=data)])
    st = report.record("prune").stats
    assert st["channels_removed"] == 1 and st["macs_after"] < st["macs_before"]
    kept = dict(gm.named_parameters())
    w = next(v for k, v in kept.items() if v.shape[0] == 7 and v.dim() == 4)
    expected = torch.cat([net.c1.weight[:3], net.c1.weight[4:]])
    assert torch.equal(w.detach(), expected)
    with pytest.raises(UsageError, match="taylor needs data"):
        refold.optimize(net, (x,), passes=[Prune(importance="taylor")])


class DenseNetish(torch.nn.Module):
    """DenseNet's dense block: BN-ReLU-conv layers whose outputs are concatenated onto the input,
    so every layer reads slices of one growing concat; a transition conv and pooling."""

    def __init__(self, growth=6, layers=3):
        super().__init__()
        torch.manual_seed(2)
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        c = 8
        self.norms, self.convs = torch.nn.ModuleList(), torch.nn.ModuleList()
        for _ in range(layers):
            self.norms.append(torch.nn.BatchNorm2d(c))
            self.convs.append(torch.nn.Conv2d(c, growth, 3, padding=1))
            c += growth
        self.trans_bn, self.trans = torch.nn.BatchNorm2d(c), torch.nn.Conv2d(c, 10, 1)
        for bn in [*self.norms, self.trans_bn]:
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        feats = self.stem(x)
        for bn, conv in zip(self.norms, self.convs):
            feats = torch.cat([feats, conv(F.relu(bn(feats)))], 1)
        return F.adaptive_avg_pool2d(self.trans(F.relu(self.trans_bn(feats))), 1).flatten(1)


def test_densenet_concat_groups_in_both_worlds_and_a_resnet50_shaped_onnx_file(tmp_path):
    x = torch.randn(2, 3, 16, 16)
    net = DenseNetish().eval()
    groups = [g for g in ChannelGraph(_prepared(lambda: load(net, (x,)))).groups if g.prunable]
    # the stem and each dense layer: 4 groups, each reaching every later BN and conv through the concat
    assert sorted(g.units for g in groups) == [6, 6, 6, 8]
    stem = next(g for g in groups if g.units == 8)
    assert {("p_trans_bn_weight", 0), ("p_trans_weight", 1), ("p_convs_2_weight", 1)} <= set(stem.params)
    assert _oracle(lambda: load(net, (x,)), (x,)) == 4
    path = str(tmp_path / "dense.onnx")
    torch.onnx.export(net, (x,), path, dynamo=False, input_names=["x"], output_names=["y"])
    assert _oracle(lambda: load(path), {"x": x.numpy()}) == 4
    proto, report = refold.optimize(path, passes=[Prune(ratio=0.5)])
    assert report.record("prune").stats["channels_removed"] == 4 + 3 * 3
    assert OrtRunner(proto).run({"x": x.numpy()})["y"].shape == (2, 10)
    # ResNet-50's widths and bottlenecks (one block a stage), as an ONNX file
    import transformers as tf

    torch.manual_seed(0)
    resnet = tf.ResNetModel(tf.ResNetConfig(depths=[1, 1, 1, 1])).eval()
    rpath = str(tmp_path / "resnet50ish.onnx")
    xr = torch.randn(1, 3, 64, 64)
    torch.onnx.export(zoo.last_hidden(resnet), (xr,), rpath, dynamo=False, input_names=["x"], output_names=["y"])
    proto, report = refold.optimize(rpath, passes=[Prune(ratio=0.5, round_to=8)])
    st = report.record("prune").stats
    assert st["pruned_groups"] >= 8 and st["params_after"] < 0.45 * st["params_before"]
    assert st["macs_after"] < 0.45 * st["macs_before"]
    assert OrtRunner(proto).run({"x": xr.numpy()})["y"].shape == (1, 2048, 2, 2)


@pytest.mark.parametrize("name,heads", [("vit", 2), ("gpt2", 2), ("bert", 2), ("llama", 2)])
def test_attention_heads_and_grouped_query_attention_prune_whole(name, heads):
    # whole heads go together across q, k, v and the output projection (Torch-Pruning#287: the
    # head count must follow); Llama's grouped-query attention prunes whole key/value groups
    # with their query heads (LLM-Pruner#64)
    model, inputs = zoo.tiny_hf_model(name)
    module = zoo.last_hidden(model).eval()
    groups = ChannelGraph(_prepared(lambda: load(module, inputs))).groups
    attn = [g for g in groups if g.prunable and g.units == heads]
    assert len(attn) == 2, [g.describe() for g in groups]  # one per layer
    stream = next(g for g in groups if not g.prunable and g.why_not.code == "no-rule" and g.units == 32)
    assert "normalises" in str(stream.why_not) or "embedding" in str(stream.why_not)
    assert _oracle(lambda: load(module, inputs), inputs, max_groups=4) == 4
    assert all(g.heads for g in attn) and not any(g.heads for g in groups if g not in attn)
    gm, report = refold.optimize(module, inputs, passes=[Prune(ratio=0.5)])
    st = report.record("prune").stats
    assert st["pruned_groups"] == 4 and st["heads_removed"] == 2 and st["macs_after"] < 0.75 * st["macs_before"]
    with torch.no_grad():
        assert gm(*inputs).shape == module(*inputs).shape
    _, report = refold.optimize(module, inputs, passes=[Prune(ratio=0.5, heads=False)])
    assert report.record("prune").stats["heads_removed"] == 0 and report.record("prune").stats["pruned_groups"] == 2


def test_one_key_value_head_keeps_it_and_prunes_query_heads():
    # LLM-Pruner#64: with one KV head, pruning attention was a silent no-op. Here the query heads
    # are the units (each reads the one repeated KV head): they go, the KV head stays, the
    # repeat count shrinks with them, and the oracle holds.
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, num_key_value_heads=1,
                         intermediate_size=64, vocab_size=99)
    cfg._attn_implementation = "eager"
    module = zoo.last_hidden(tf.LlamaModel(cfg).eval())
    ids = (torch.randint(0, 99, (1, 8)),)
    groups = ChannelGraph(_prepared(lambda: load(module, ids))).groups
    heads = next(g for g in groups if g.heads and g.prunable)
    names = {name for name, _ in heads.params}
    assert heads.units == 4 and not any("k_proj" in k or "v_proj" in k for k in names)
    assert _oracle(lambda: load(module, ids), ids) == 2
    gm, report = refold.optimize(module, ids, passes=[Prune(ratio=0.5)])
    assert report.record("prune").stats["heads_removed"] == 2
    with torch.no_grad():
        assert gm(*ids).shape == module(*ids).shape


def test_gpt2_with_tied_embeddings_keeps_the_table_and_prunes_heads():
    import transformers as tf

    torch.manual_seed(0)
    lm = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=99, n_positions=64)).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = lm

        def forward(self, ids):
            return self.m(ids, use_cache=False).logits

    module, ids = Logits().eval(), (torch.randint(0, 99, (1, 8)),)
    assert lm.lm_head.weight is lm.transformer.wte.weight  # tied
    gm, report = refold.optimize(module, ids, passes=[Prune(ratio=0.5)])
    st = report.record("prune").stats
    assert st["heads_removed"] == 1 and st["pruned_groups"] == 2  # one head of two, half the MLP
    shapes = {tuple(p.shape) for p in gm.parameters()}
    assert (99, 32) in shapes  # the tied table: left whole (its width is the normalised residual stream)
    with torch.no_grad():
        assert gm(*ids).shape == (1, 8, 99)
