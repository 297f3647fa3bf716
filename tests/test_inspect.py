"""refold diff, refold report / run --report, refold.inspect: diffs with provenance and the HTML
viewer driven in headless Chromium."""
import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import browser
import refold
import zoo
from refold import cli
from refold.inspect.diff import diff


@pytest.fixture(scope="module")
def cls_pair(tmp_path_factory):
    src = zoo.ppocr_path("cls")
    out = str(tmp_path_factory.mktemp("cls") / "cls.fused.onnx")
    assert cli.main(["run", src, "-p", "fuse-conv-bn", "-o", out, "--no-check"]) == 0
    return src, out


def test_diff_ppocr_cls_fuse_conv_bn_lists_bn_and_convs_with_provenance(cls_pair, capsys):
    src, out = cls_pair
    capsys.readouterr()
    assert cli.main(["diff", src, out, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    bn = [r for r in d["removed"] if r["op"] == "BatchNormalization"]
    assert len(bn) == 35 and all(r["rule"] == "fuse-conv-bn" for r in bn)
    convs = [c for c in d["changed"] if c["op"] == "Conv"]
    assert len(convs) == 35 and all(c["rule"] == "fuse-conv-bn" for c in convs)
    assert all(any(s.startswith("BatchNormalization") for s in c["sources"]) for c in convs)
    assert all(any("constant" in w for w in c["what"]) for c in convs)  # the folded weights
    assert d["ops_delta"]["BatchNormalization"] == {"a": 35, "b": 0, "delta": -35}
    assert d["parameters_delta"] < 0
    assert cli.main(["diff", src, out]) == 0
    text = capsys.readouterr().out
    assert "removed by fuse-conv-bn" in text and "[fuse-conv-bn from" in text


def test_diff_of_a_model_with_itself_is_empty(cls_pair):
    d = diff(refold.load(cls_pair[0]), refold.load(cls_pair[0]))
    assert d.changed == [] and d.added == [] and d.removed == [] and d.unchanged == len(d.a.nodes)


def test_diff_sees_an_edited_attribute_and_weight(tmp_path):
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="c", strides=[1, 1]),
                           helper.make_node("Relu", ["y"], ["z"], name="r")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [w])
    a = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    b = onnx.ModelProto()
    b.CopyFrom(a)
    b.graph.node[0].attribute[0].ints[:] = [2, 2]
    b.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.full((2, 3, 1, 1), 2, np.float32), "w"))
    d = diff(refold.load(a), refold.load(b))
    (c,) = d.changed
    assert c.a == "c" and any("strides" in x for x in c.what) and any("constant 'w' changed" in x for x in c.what)


def test_torch_graph_diff_and_report_html():
    model, inputs = zoo.tiny_hf_model("gpt2")
    model.config.use_cache = False
    gm, report = refold.optimize(model, inputs, passes=["layernorm-to-rmsnorm"], atol=1e-5, rtol=1e-5)
    d = report.diff()
    removed = [r for r in d.removed if r["op"] == "aten.layer_norm.default" or r["op"] == "core.layer_norm"]
    # four LayerNorms become zero-mean LayerNorm kernels without bias (the fastest exact RMSNorm on
    # torch CPU); the fifth, whose output is the graph output, keeps its bias and stays as it was
    assert len(removed) == 4 and all(r["rule"] == "layernorm-to-rmsnorm" for r in removed)
    page = report.to_html()
    assert page.startswith("<!DOCTYPE html>") and "layernorm-to-rmsnorm" in page
    assert "<script src" not in page and "http://" not in page.replace("http://www.w3.org", "")


def test_inspect_is_callable_and_renders_in_notebooks(cls_pair):
    v = refold.inspect(cls_pair[0])
    assert "<iframe srcdoc=" in v._repr_html_() and len(v.a.nodes) == 258
    from refold.inspect.diff import diff as d2  # the submodules stay importable

    assert d2 is diff


def test_run_report_writes_html_and_bad_destination_is_clean(tmp_path, capsys):
    out, html = tmp_path / "o.onnx", tmp_path / "r.html"
    assert cli.main(["run", "example:tiny_cnn", "-p", "fuse-conv-bn", "-o", str(out), "--report", str(html)]) == 0
    page = html.read_text()
    assert '"passes":[{"name":"raise-to-core"' in page and '{"name":"fuse-conv-bn"' in page
    code = cli.main(["report", "example:tiny_cnn", str(out), "-o", str(tmp_path / "missing" / "r.html")])
    assert code == 6 and not os.path.exists(tmp_path / "missing")
    assert capsys.readouterr().err.count("\n") == 1
    assert cli.main(["diff", "example:tiny_cnn", str(tmp_path / "nope.onnx")]) in (2, 3)


# -- the viewer in headless Chromium -------------------------------------------------------------

@pytest.fixture(scope="module")
def gpt2_report(hf_onnx, tmp_path_factory):
    src = hf_onnx("gpt2")
    folder = tmp_path_factory.mktemp("gpt2_report")
    out, html = folder / "rms.onnx", folder / "report.html"
    assert cli.main(["run", src, "-p", "layernorm-to-rmsnorm", "-o", str(out), "--atol", "1e-5", "--rtol", "1e-5",
                     "--report", str(html)]) == 0
    return src, str(out), str(html)


def test_gpt2_report_renders_both_sides_and_click_shows_details(gpt2_report, tmp_path):
    src, out, html = gpt2_report
    a, b = refold.load(src), refold.load(out)
    driver = browser.chrome(tmp_path)
    try:
        browser.open_page(driver, html)
        counts = driver.execute_script(
            "return ['a','b'].map(s => [document.getElementById('pane-'+s).dataset.nodeCount,"
            " document.querySelectorAll('#pane-'+s+' g.node').length])")
        assert counts == [[str(len(a.graph)), len(a.graph)], [str(len(b.graph)), len(b.graph)]]
        removed = driver.execute_script("return document.querySelectorAll('#pane-a g.node.removed').length")
        assert removed == 5  # the five LayerNormalization nodes
        driver.execute_script("document.querySelector('#pane-a g.node.removed')"
                              ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
        details = driver.find_element("id", "details").text
        assert "LayerNormalization" in details and "removed by" in details and "layernorm-to-rmsnorm" in details
        # an added node on the right carries its provenance
        driver.execute_script("document.querySelector('#pane-b g.node.added')"
                              ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
        assert "provenance" in driver.find_element("id", "details").text
        # the pass table
        assert "layernorm-to-rmsnorm" in driver.find_element("id", "summary").text
        # search: Enter selects a match in a pane
        box = driver.find_element("id", "search")
        box.send_keys("SimplifiedLayer" if "Simplified" in open(html).read() else "Sqrt")
        found = driver.find_element("id", "found").text
        assert found.endswith("found") and int(found.split()[0]) > 0
        shot = tmp_path / "gpt2_report.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000
    finally:
        driver.quit()


def test_big_graph_is_grouped_and_groups_open(tmp_path):
    n = 1500
    nodes = [helper.make_node("Relu" if i % 2 else "Neg", [f"v{i}"], [f"v{i + 1}"], name=f"/blk{i // 100}/op{i}")
             for i in range(n)]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info(f"v{n}", TensorProto.FLOAT, [4])])
    path = tmp_path / "chain.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    html = tmp_path / "chain.html"
    html.write_text(refold.inspect(str(path)).to_html())
    driver = browser.chrome(tmp_path)
    try:
        browser.open_page(driver, str(html))
        shown = driver.execute_script("return document.querySelectorAll('#pane-a g.node').length")
        groups = driver.execute_script("return document.querySelectorAll('#pane-a g.node.group').length")
        # name scopes of 100 nodes each: as many open as keep the boxes under 400, the rest closed
        assert shown <= 400 and groups >= 10 and shown == groups + 100 * (15 - groups)
        driver.execute_script("document.querySelector('#pane-a g.node.group')"
                              ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
        assert driver.execute_script("return document.querySelectorAll('#pane-a g.node').length") == shown + 99
    finally:
        driver.quit()
