"""What the world sends (../shared/BAD_INPUTS.md 1-11, 17): one-line errors with stable exit codes,
nothing written, the input untouched."""
import hashlib
import os
import signal

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from refold import cli, errors
from refold.api import example_path


def digest(folder) -> dict:
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def refold(capsys, *args):
    code = cli.main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def expect_refusal(capsys, tmp_path, model_path, code, *fragments, cmd="run"):
    """Run refold on a bad model: exit ``code``, one stderr line naming it, no output, input intact."""
    before = digest(tmp_path)
    out = tmp_path / "out" / "result.onnx"
    out.parent.mkdir(exist_ok=True)
    args = ["run", model_path, "-o", out] if cmd == "run" else ["show", model_path]
    got, stdout, stderr = refold(capsys, *args)
    assert got == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]
    assert not out.exists() and os.listdir(out.parent) == []
    after = digest(tmp_path)
    after.pop("out/result.onnx", None)
    assert after == before
    return lines[0]


def simple_model(**kw) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                          initializer=[w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], **kw)


def write(tmp_path, model, name="m.onnx") -> str:
    p = tmp_path / name
    p.write_bytes(model.SerializeToString() if isinstance(model, onnx.ModelProto) else model)
    return str(p)


# -- 1. not a model ---------------------------------------------------------------------------

@pytest.mark.parametrize("content,fragment", [
    (b"", "file is empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "looks like a PNG image"),
    (b"PK\x03\x04" + b"\0" * 64, "looks like a zip archive"),
    (b"\x80\x04\x95" + b"\0" * 64, "looks like a Python pickle"),
])
def test_not_an_onnx_file(capsys, tmp_path, content, fragment):
    expect_refusal(capsys, tmp_path, write(tmp_path, content), errors.EXIT_INVALID, "m.onnx", fragment)


def test_truncated_protobuf(capsys, tmp_path):
    data = simple_model().SerializeToString()
    expect_refusal(capsys, tmp_path, write(tmp_path, data[: len(data) // 2]), errors.EXIT_INVALID,
                   "m.onnx", "not a valid ONNX protobuf")


def test_flipped_bits_never_crash(capsys, tmp_path):
    data = bytearray(open(example_path(), "rb").read())
    outcomes = set()
    for pos in range(0, len(data), max(1, len(data) // 120)):
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        p = write(tmp_path, bytes(bad), f"flip{pos}.onnx")
        code, _, err = refold(capsys, "run", p, "-o", tmp_path / f"o{pos}.onnx", "--no-check")
        assert code in (0, errors.EXIT_INVALID, errors.EXIT_UNSUPPORTED), (pos, err)
        if code:
            assert len(err.strip().splitlines()) == 1 and "internal error" not in err
            assert not (tmp_path / f"o{pos}.onnx").exists()
        outcomes.add(code)
    assert errors.EXIT_INVALID in outcomes


# -- 2. versions ------------------------------------------------------------------------------

def test_ir_version_too_new(capsys, tmp_path):
    m = simple_model()
    m.ir_version = onnx.IR_VERSION + 5
    expect_refusal(capsys, tmp_path, write(tmp_path, m), errors.EXIT_UNSUPPORTED, "ir_version")


def test_opset_too_new(capsys, tmp_path):
    m = simple_model()
    m.opset_import[0].version = onnx.defs.onnx_opset_version() + 3
    expect_refusal(capsys, tmp_path, write(tmp_path, m), errors.EXIT_UNSUPPORTED, "opset")


def test_missing_opset_import(capsys, tmp_path):
    m = simple_model()
    del m.opset_import[:]
    expect_refusal(capsys, tmp_path, write(tmp_path, m), errors.EXIT_INVALID, "no opset_import")


# -- 3. unknown domains -----------------------------------------------------------------------

def test_unknown_domain_kept_untouched(capsys, tmp_path):
    m = simple_model()
    m.graph.node.append(helper.make_node("Mystery", ["y"], ["z"], domain="com.vendor", name="mystery",
                                         blob=b"do-not-touch"))
    m.graph.output[0].name = "z"
    m.opset_import.append(helper.make_opsetid("com.vendor", 1))
    p = write(tmp_path, m)
    code, out, err = refold(capsys, "run", p, "-o", tmp_path / "o.onnx", "--json", tmp_path / "r.json")
    assert code == 0, err
    assert "numeric check skipped" in out  # ORT cannot run com.vendor ops; said, not hidden
    res = onnx.load(str(tmp_path / "o.onnx"))
    mystery = [n for n in res.graph.node if n.op_type == "Mystery"]
    assert len(mystery) == 1 and mystery[0] == m.graph.node[1]


# -- 4. graph structure -----------------------------------------------------------------------

def test_dangling_input(capsys, tmp_path):
    m = simple_model()
    m.graph.node[0].input[0] = "ghost"
    expect_refusal(capsys, tmp_path, write(tmp_path, m), errors.EXIT_INVALID, "'mm'", "'ghost'",
                   "nothing produces")


def test_output_not_produced(capsys, tmp_path):
    m = simple_model()
    m.graph.output[0].name = "nowhere"
    expect_refusal(capsys, tmp_path, write(tmp_path, m), errors.EXIT_INVALID, "output 'nowhere'")


def test_nodes_out_of_order_are_sorted(capsys, tmp_path):
    m = simple_model()
    m.graph.node.append(helper.make_node("Relu", ["y"], ["r"], name="relu"))
    m.graph.output[0].name = "r"
    m.graph.node.reverse()
    p = write(tmp_path, m)
    code, _, err = refold(capsys, "run", p, "-o", tmp_path / "o.onnx", "-p", "dce")
    assert code == 0, err
    assert [n.name for n in onnx.load(str(tmp_path / "o.onnx")).graph.node] == ["mm", "relu"]


def test_cycle_names_its_nodes(capsys, tmp_path):
    m = simple_model()
    m.graph.node[0].input[0] = "r"
    m.graph.node.append(helper.make_node("Relu", ["y"], ["r"], name="relu"))
    line = expect_refusal(capsys, tmp_path, write(tmp_path, m), errors.EXIT_INVALID, "cycle")
    assert "mm" in line and "relu" in line


# -- 5. names ---------------------------------------------------------------------------------

def test_duplicate_value_name(capsys, tmp_path):
    m = simple_model()
    m.graph.node.append(helper.make_node("Relu", ["x"], ["y"], name="second"))
    expect_refusal(capsys, tmp_path, write(tmp_path, m), errors.EXIT_INVALID, "'y'", "produced twice")


def test_duplicate_node_names_kept_and_generated_names_fresh(capsys, tmp_path):
    m = simple_model()
    # names that look like refold's own generated names, and two nodes named alike
    m.graph.node.append(helper.make_node("Concat", ["c1", "c2"], ["relu__0"], name="dup", axis=0))
    m.graph.node.append(helper.make_node("Reshape", ["y", "relu__0"], ["z"], name="dup"))
    m.graph.initializer.extend([numpy_helper.from_array(np.array([4], np.int64), "c1"),
                                numpy_helper.from_array(np.array([2], np.int64), "c2")])
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 2]))
    p = write(tmp_path, m)
    code, _, err = refold(capsys, "run", p, "-o", tmp_path / "o.onnx")
    assert code == 0, err
    res = onnx.load(str(tmp_path / "o.onnx"))
    outs = [o for n in res.graph.node for o in n.output] + [t.name for t in res.graph.initializer]
    assert len(outs) == len(set(outs))


# -- 6. payload size --------------------------------------------------------------------------

def test_initializer_payload_disagrees_with_dims(capsys, tmp_path):
    m = simple_model()
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:20]
    expect_refusal(capsys, tmp_path, write(tmp_path, m), errors.EXIT_INVALID, "'w'", "48 bytes",
                   "holds 20 bytes")


def test_initializer_dims_huge_but_payload_small(capsys, tmp_path):
    m = simple_model()
    del m.graph.initializer[0].dims[:]
    m.graph.initializer[0].dims.extend([1 << 40, 1 << 20])
    expect_refusal(capsys, tmp_path, write(tmp_path, m), errors.EXIT_INVALID, "'w'")


# -- 7. sizes ---------------------------------------------------------------------------------

def test_constant_of_shape_huge_is_not_folded(capsys, tmp_path):
    shape = numpy_helper.from_array(np.array([1 << 20, 1 << 20], np.int64), "shape")
    g = helper.make_graph([helper.make_node("ConstantOfShape", ["shape"], ["big"], name="cos"),
                           helper.make_node("Shape", ["big"], ["y"], name="sh")], "g", [],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, [2])], initializer=[shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    p = write(tmp_path, m)
    code, out, err = refold(capsys, "run", p, "-o", tmp_path / "o.onnx", "-p", "fold-constants", "--no-check")
    assert code == 0, err
    assert [n.op_type for n in onnx.load(str(tmp_path / "o.onnx")).graph.node] == ["ConstantOfShape", "Shape"]


def test_negative_dims(capsys, tmp_path):
    m = simple_model()
    m.graph.initializer[0].dims[0] = -3
    expect_refusal(capsys, tmp_path, write(tmp_path, m), errors.EXIT_INVALID, "negative dims")


def test_element_count_overflow(capsys, tmp_path):
    m = simple_model()
    del m.graph.initializer[0].dims[:]
    m.graph.initializer[0].dims.extend([1 << 40, 1 << 40])
    expect_refusal(capsys, tmp_path, write(tmp_path, m), errors.EXIT_INVALID, "overflows int64")


# -- 8. zero-size and symbolic ----------------------------------------------------------------

def test_zero_size_tensor_and_symbolic_dims_preserved(capsys, tmp_path):
    empty = numpy_helper.from_array(np.zeros((0, 4), np.float32), "empty")
    g = helper.make_graph([helper.make_node("Concat", ["x", "empty"], ["y"], axis=0, name="cat")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                          initializer=[empty])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    p = write(tmp_path, m)
    code, _, err = refold(capsys, "run", p, "-o", tmp_path / "o.onnx", "-p", "infer-shapes", "-p", "cse")
    assert code == 0, err
    res = onnx.load(str(tmp_path / "o.onnx"))
    assert res.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert list(res.graph.initializer[0].dims) == [0, 4]


# -- 9. external data -------------------------------------------------------------------------

def external_model(tmp_path, location="w.bin") -> str:
    m = simple_model()
    big = numpy_helper.from_array(np.arange(1024, dtype=np.float32).reshape(4, 256), "w")
    m.graph.initializer[0].CopyFrom(big)
    m.graph.node[0].CopyFrom(helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"))
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]))
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 256]))
    path = tmp_path / "ext.onnx"
    onnx.save(m, str(path), save_as_external_data=True, location=location, size_threshold=0)
    return str(path)


def set_external(path: str, **kv) -> None:
    m = onnx.load(path, load_external_data=False)
    t = m.graph.initializer[0]
    entries = {e.key: e.value for e in t.external_data}
    entries.update({k: str(v) for k, v in kv.items()})
    del t.external_data[:]
    for k, v in entries.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


@pytest.mark.parametrize("location,fragment", [
    ("../outside.bin", "leaves the model folder"),
    ("/etc/passwd", "is absolute"),
    ("sub/../../outside.bin", "leaves the model folder"),
])
def test_external_data_outside_folder(capsys, tmp_path, location, fragment):
    path = external_model(tmp_path)
    set_external(path, location=location)
    expect_refusal(capsys, tmp_path, path, errors.EXIT_SECURITY, "'w'", fragment)


def test_external_data_symlink(capsys, tmp_path):
    path = external_model(tmp_path)
    (tmp_path / "secret").write_bytes(b"\0" * 4096)
    os.symlink(tmp_path / "secret", tmp_path / "link.bin")
    set_external(path, location="link.bin")
    expect_refusal(capsys, tmp_path, path, errors.EXIT_SECURITY, "symlink")


def test_external_data_hardlink(capsys, tmp_path):
    path = external_model(tmp_path)
    os.link(tmp_path / "w.bin", tmp_path / "hard.bin")
    set_external(path, location="hard.bin")
    expect_refusal(capsys, tmp_path, path, errors.EXIT_SECURITY, "hard link")


@pytest.mark.parametrize("kv,fragment", [
    ({"offset": 1 << 20}, "runs past the end"),
    ({"length": 1 << 20}, "runs past the end"),
    ({"evil": "1"}, "unknown keys"),
])
def test_external_data_bad_ranges_and_keys(capsys, tmp_path, kv, fragment):
    path = external_model(tmp_path)
    set_external(path, **kv)
    expect_refusal(capsys, tmp_path, path, errors.EXIT_SECURITY, fragment)


def test_external_data_file_missing(capsys, tmp_path):
    path = external_model(tmp_path)
    os.remove(tmp_path / "w.bin")
    expect_refusal(capsys, tmp_path, path, errors.EXIT_INVALID, "'w.bin' is missing")


# -- 10. large models ---------------------------------------------------------------------------

def test_over_threshold_saved_with_external_data(tmp_path, monkeypatch):
    from refold.frontends.onnx import save as onnx_save
    from refold.frontends.onnx.importer import load_onnx

    monkeypatch.setattr(onnx_save, "EXTERNAL_THRESHOLD", 1000)  # stands in for 2 GiB
    src = write(tmp_path, simple_model(), "small.onnx")
    m = load_onnx(src)
    m.graph.initializers["w"].const = __import__("refold").ir.tensor.Tensor.from_array(
        np.ones((3, 4096), np.float32))
    m.graph.outputs[0].shape = (2, 4096)
    onnx_save.save_onnx(m, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size == 3 * 4096 * 4
    back = load_onnx(str(tmp_path / "big.onnx"))
    assert back.graph.initializers["w"].const.external is not None  # stays on disk until read
    np.testing.assert_array_equal(back.graph.initializers["w"].const.numpy(), np.ones((3, 4096)))


# -- 11. output over input ----------------------------------------------------------------------

def test_output_over_input_with_external_data(capsys, tmp_path):
    path = external_model(tmp_path, location="ext.onnx.data")
    os.rename(tmp_path / "ext.onnx.data", tmp_path / "ext.onnx.data.tmp")
    os.rename(tmp_path / "ext.onnx.data.tmp", tmp_path / "ext.onnx.data")
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    import onnxruntime as ort

    want = ort.InferenceSession(path).run(None, {"x": x})[0]
    size = (tmp_path / "ext.onnx.data").stat().st_size
    code, _, err = refold(capsys, "run", path, "-o", path, "-p", "cse")
    assert code == 0, err
    assert (tmp_path / "ext.onnx.data").stat().st_size == size  # rewritten fresh, never appended
    got = ort.InferenceSession(path).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    assert sorted(os.listdir(tmp_path)) == ["ext.onnx", "ext.onnx.data"]  # no staging left


# -- 17. writing ------------------------------------------------------------------------------

def test_output_folder_missing(capsys, tmp_path):
    src = write(tmp_path, simple_model())
    before = digest(tmp_path)
    code, _, err = refold(capsys, "run", src, "-o", tmp_path / "nope" / "o.onnx")
    assert code == errors.EXIT_OUTPUT and "does not exist" in err and len(err.strip().splitlines()) == 1
    assert digest(tmp_path) == before


def test_output_folder_is_a_file(capsys, tmp_path):
    src = write(tmp_path, simple_model())
    code, _, err = refold(capsys, "run", src, "-o", tmp_path / "m.onnx" / "o.onnx")
    assert code == errors.EXIT_OUTPUT and "is not a folder" in err


def _fail_during_write(monkeypatch, exc):
    from refold.frontends.onnx import save as onnx_save

    real = onnx_save.to_onnx

    def boom(*a, **k):
        real(*a, **k)
        if callable(exc):
            exc()
        raise exc

    monkeypatch.setattr(onnx_save, "to_onnx", boom)


@pytest.mark.parametrize("exc,code", [
    (OSError(28, "No space left on device"), errors.EXIT_OUTPUT),
    (KeyboardInterrupt(), errors.EXIT_INTERRUPTED),
])
def test_failure_mid_write_leaves_destination_unchanged(capsys, tmp_path, monkeypatch, exc, code):
    src = write(tmp_path, simple_model())
    dest = tmp_path / "dest.onnx"
    dest.write_bytes(b"previous contents")
    _fail_during_write(monkeypatch, exc)
    got, _, err = refold(capsys, "run", src, "-o", dest)
    assert got == code, err
    assert dest.read_bytes() == b"previous contents"
    assert sorted(os.listdir(tmp_path)) == ["dest.onnx", "m.onnx"]  # staging removed


def test_sigterm_mid_write(capsys, tmp_path, monkeypatch):
    src = write(tmp_path, simple_model())
    dest = tmp_path / "dest.onnx"
    from refold.frontends.onnx import save as onnx_save

    real = onnx_save.to_onnx

    def term(*a, **k):
        out = real(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled by refold's handler
        return out

    monkeypatch.setattr(onnx_save, "to_onnx", term)
    got, _, err = refold(capsys, "run", src, "-o", dest)
    assert got == errors.EXIT_TERMINATED and "terminated" in err
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
