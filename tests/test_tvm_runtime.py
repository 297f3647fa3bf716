"""refold.compile: TVM kernels for fused blocks, torch for the rest; the same outputs as ORT /
the module; a second compile builds nothing (the on-disk cache); a block made to fail falls back,
and says why."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import refold
import zoo
from refold.errors import UnsupportedError
from refold.runtime.ort import OrtRunner

pytest.importorskip("tvm")


@pytest.fixture()
def kernel_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REFOLD_KERNEL_CACHE", str(tmp_path / "kernels"))
    return tmp_path / "kernels"


def test_tiny_cnn_and_ppocr_cls_match_ort_and_the_second_compile_hits_the_cache(kernel_cache):
    for src, shape, least in ((refold.example_path(), (1, 3, 32, 32), 5), (zoo.ppocr_path("cls"), (1, 3, 48, 192), 89),
                             (zoo.ppocr_path("rec"), (1, 3, 48, 160), 104)):
        fast = refold.compile(src)
        # PP-OCR cls's residual adds read two tensors whose image sizes onnx left as distinct
        # unknown dims: the kernel takes them as equal (checked per call), so they build too
        assert fast.kernels >= least and not fast.fallbacks, fast.fallbacks
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        ref = next(iter(OrtRunner(onnx.load(src)).run({"x": x}).values()))
        got = fast(torch.from_numpy(x))
        assert np.abs(got.numpy() - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
        again = refold.compile(src)
        assert all(p.cached for p in again.runner.plan if p.kernel is not None)
        assert again.kernels == fast.kernels
    assert any(kernel_cache.rglob("*.so"))


def test_gpt2_module_compiles_with_symbolic_sequence_length(kernel_cache):
    model, inputs = zoo.tiny_hf_model("gpt2")
    module = zoo.last_hidden(model).eval()
    fast = refold.compile(module, inputs)
    assert fast.kernels >= 20 and not fast.fallbacks
    for length in (8, 13):  # one kernel per block serves every length
        ids = torch.randint(0, 99, (1, length))
        with torch.no_grad():
            ref = module(ids)
        assert torch.allclose(fast(ids), ref, atol=1e-4, rtol=1e-4)


def test_a_block_made_to_fail_falls_back_and_says_why(kernel_cache):
    src = refold.example_path()
    good = refold.compile(src)
    victim = next(p.block.name for p in good.runner.plan if p.kernel is not None and p.block.kind == "conv_bias_act")
    fast = refold.compile(src, sabotage=victim)
    assert list(fast.fallbacks) == [victim] and "disagrees with the reference" in fast.fallbacks[victim]
    assert fast.kernels == good.kernels - 1
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(fast(x), good(x), atol=1e-5)  # the fallback runs the ops in torch


def test_refold_compile_writes_a_folder_load_compiled_builds_nothing(kernel_cache, tmp_path, capsys):
    from refold import cli

    out = tmp_path / "tiny.refold"
    assert cli.main(["compile", refold.example_path(), "-o", str(out)]) == 0
    assert "kernels (llvm)" in capsys.readouterr().out
    import json

    plan = json.loads((out / "plan.json").read_text())
    assert plan["kernels"] >= 5 and all(b["kernel"] for b in plan["blocks"])
    loaded = refold.load_compiled(str(out))
    assert all(p.cached for p in loaded.runner.plan if p.kernel is not None)  # loaded, not built
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    ref = next(iter(OrtRunner(onnx.load(refold.example_path())).run({"x": x}).values()))
    assert np.abs(loaded(torch.from_numpy(x)).numpy() - ref).max() < 1e-4
    cuda = tmp_path / "tiny.cuda"
    assert cli.main(["compile", refold.example_path(), "--target", "cuda", "-o", str(cuda)]) == 0
    plan = json.loads((cuda / "plan.json").read_text())
    sources = [b["source"] for b in plan["blocks"] if b["kernel"]]
    assert sources and all("__global__" in (cuda / s).read_text() for s in sources)
    assert all(b["schedule"] for b in plan["blocks"] if b["kernel"])
    from refold.codegen.cubin import nvcc_path

    if nvcc_path() is not None:  # CI installs nvcc from PyPI: every kernel ships its sm_90 cubin
        cubins = [b["cubin"] for b in plan["blocks"] if b["kernel"]]
        assert len(cubins) == len(sources) and all((cuda / c).read_bytes()[:4] == b"\x7fELF" for c in cubins)
    on_gpu = refold.load_compiled(str(cuda))  # nothing built: the kernels come from the folder
    assert on_gpu.kernels == plan["kernels"] and all(p.cached for p in on_gpu.runner.plan if p.kernel)
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedError, match="run on a GPU"):
            on_gpu(torch.randn(1, 3, 32, 32))


def test_tuned_kernels_serve_the_example_shape_and_the_untuned_one_the_rest(kernel_cache):
    class LinearGelu(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 32)

        def forward(self, x):
            return torch.nn.functional.gelu(self.fc(x))

    module, x = LinearGelu().eval(), torch.randn(4, 16)
    fast = refold.compile(module, (x,), tune_trials=4)  # MetaSchedule, 4 measured candidates
    (planned,) = fast.runner.plan
    assert planned.kernel.schedule == "MetaSchedule (4 measured)" and not fast.fallbacks
    assert planned.kernel.static == ((4, 16), (32, 16), (32,))  # tuned at the example's sizes
    with torch.no_grad():
        for batch in (4, 7):  # 7: the untuned kernel beside it
            y = torch.randn(batch, 16)
            assert torch.allclose(fast(y), module(y), atol=1e-5)
    again = refold.compile(module, (x,), tune_trials=4)
    assert again.runner.plan[0].cached and again.runner.plan[0].kernel.static == planned.kernel.static
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedError, match="on a GPU"):
            refold.compile(module, (x,), target="cuda", tune_trials=4)


def test_show_marks_which_nodes_became_which_kernel(kernel_cache, tmp_path, capsys):
    import json

    import browser
    from refold import cli

    assert cli.main(["show", refold.example_path(), "--kernels", "--json"]) == 0  # partitioned, nothing built
    planned = json.loads(capsys.readouterr().out)["kernels"]
    assert planned and {r["status"] for r in planned} == {"planned"}
    src = refold.example_path()
    victim = next(r["block"] for r in planned if r["kind"] == "conv_bias_act")
    folder = tmp_path / "tiny.refold"
    refold.save_compiled(refold.compile(src, sabotage=victim), str(folder))  # one block in torch, on purpose
    html = tmp_path / "kernels.html"
    assert cli.main(["show", str(folder), "--html", str(html)]) == 0
    text = capsys.readouterr().out
    assert f"kernels: {len(planned) - 1} of {len(planned)} blocks (1 run in torch)" in text
    line = next(ln for ln in text.splitlines() if ln.strip().startswith(victim))
    assert "torch" in line and "disagrees with the reference" in line
    nodes = {r["block"]: r["nodes"] for r in planned}
    driver = browser.chrome(tmp_path)
    try:
        browser.open_page(driver, str(html))
        marked = driver.execute_script("return [...document.querySelectorAll('#pane-a g.node[data-kernel]')]"
                                       ".map(e => [e.dataset.kernel, e.classList.contains('in-torch')])")
        assert sorted(k for k, _ in marked) == sorted(b for b, ns in nodes.items() for _ in ns)
        assert {k for k, torch_ in marked if torch_} == {victim}
        driver.execute_script("document.querySelector('#pane-a g.node.in-kernel')"
                              ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
        assert "TVM kernel" in driver.find_element("id", "details").text
        assert f"{len(planned) - 1} TVM kernels, 1 blocks in torch" in driver.find_element("id", "summary").text
    finally:
        driver.quit()


def test_compile_bad_input_and_unsafe_output_write_nothing(kernel_cache, tmp_path, capsys):
    from refold import cli

    png = tmp_path / "photo.onnx"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    out = tmp_path / "out.refold"
    assert cli.main(["compile", str(png), "-o", str(out)]) != 0
    assert not out.exists() and len(capsys.readouterr().err.strip().splitlines()) == 1
    mine = tmp_path / "mine"  # a folder with someone's files is never replaced
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert cli.main(["compile", refold.example_path(), "-o", str(mine)]) == 6
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert cli.main(["compile", refold.example_path(), "-o", str(out)]) == 0
    assert cli.main(["compile", refold.example_path(), "-o", str(out)]) == 0  # its own folder: replaced whole
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left
    (out / "plan.json").write_text("{not json")
    capsys.readouterr()
    assert cli.main(["show", str(out)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plan.json" in err[0]


def test_a_qdq_model_compiles_with_its_quantized_convs_as_one_kernel_each(kernel_cache, tmp_path):
    from collections import Counter

    from refold.passes import Quantize

    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]
    proto, _ = refold.optimize(refold.example_path(), passes=[Quantize(data=data)])
    path = tmp_path / "tiny_qdq.onnx"
    onnx.save(proto, str(path))
    fast = refold.compile(str(path))
    kinds = Counter(p.block.kind for p in fast.runner.plan if p.kernel is not None)
    assert kinds["dequant_conv_quant"] == 2 and not fast.fallbacks, (kinds, fast.fallbacks)  # Q(conv(DQ, DQ))
    for x in (data[0]["x"], 3 * rng.standard_normal((1, 3, 32, 32)).astype(np.float32)):  # one past the range
        ref = next(iter(OrtRunner(proto).run({"x": x}).values()))
        assert np.abs(fast(torch.from_numpy(x)).numpy() - ref).max() < 1e-4


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_transformers_onnx_exports_compile_without_fallbacks(kernel_cache, hf_onnx, name):
    # GPT-2 has integer elementwise blocks (position ids: probed with small integers); BERT's
    # attention matmuls read heads onnx left as two unknown dims (one size, checked per call)
    src = hf_onnx(name)
    fast = refold.compile(src)
    assert fast.kernels >= 30 and not fast.fallbacks, fast.fallbacks
    x = np.random.default_rng(0).integers(0, 90, (1, 8)).astype(np.int64)
    ref = next(iter(OrtRunner(onnx.load(src)).run({"input": x}).values()))
    assert np.abs(fast(torch.from_numpy(x)).numpy() - ref).max() < 1e-4


def test_a_block_whose_tuning_fails_keeps_its_untuned_kernel_and_says_why(kernel_cache, monkeypatch):
    import refold.codegen.tune as tune

    def broken(*args, **kwargs):
        raise RuntimeError("no candidate built")

    monkeypatch.setattr(tune, "tune", broken)
    module, x = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval(), torch.randn(2, 8)
    fast = refold.compile(module, (x,), tune_trials=4)
    (planned,) = fast.runner.plan
    assert planned.kernel is not None and planned.kernel.static is None and not fast.fallbacks
    assert "tuning failed: RuntimeError: no candidate built" in planned.kernel.schedule
    with torch.no_grad():
        assert torch.allclose(fast(x), module(x), atol=1e-6)


def test_refold_compile_of_a_torch_program_keeps_it_as_pt2(kernel_cache, tmp_path):
    from refold import cli

    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 4)).eval()
    x = torch.randn(3, 4)
    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(module, (x,)), str(path))
    out = tmp_path / "mlp.refold"
    assert cli.main(["compile", str(path), "-o", str(out)]) == 0
    assert (out / "model.pt2").exists() and not (out / "model.onnx").exists()
    loaded = refold.load_compiled(str(out))
    assert loaded.kernels == 2 and all(p.cached for p in loaded.runner.plan)
    with torch.no_grad():
        assert torch.allclose(loaded(x), module(x), atol=1e-5)


def test_select_fastest_leaves_out_a_kernel_slower_than_torch_and_says_so(kernel_cache, monkeypatch):
    # the choice, not the clock: times come from a stand-in (speed is measured in benchmarks/)
    import refold.codegen.plan as plan

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(1, 4, 16, 16)
    calls = []

    def times(fns, device="cpu", runs=7):
        calls.append(len(fns))
        return [5e-3, 1e-3]  # kernel 5 ms, torch 1 ms

    monkeypatch.setattr(plan, "median_times", times)
    fast = refold.compile(module, (x,), select="fastest")
    (planned,) = fast.runner.plan
    assert calls == [2] and planned.kernel is None
    assert planned.reason == "torch is faster here: kernel 5 ms, torch 1 ms"
    with torch.no_grad():
        assert torch.allclose(fast(x), module(x), atol=1e-5)
    monkeypatch.setattr(plan, "median_times", lambda fns, device="cpu", runs=7: [1.05e-3, 1e-3])
    assert refold.compile(module, (x,), select="fastest").kernels == 1  # within 10%: the kernel stays
    monkeypatch.setattr(plan, "median_times", times)
    assert refold.compile(module, (x,)).kernels == 1  # the default times nothing, keeps every kernel
    assert calls == [2]
    with pytest.raises(refold.RefoldError, match="select must be one of kernels, fastest"):
        refold.compile(module, (x,), select="quickest")


def test_a_build_error_without_a_message_is_still_a_fallback(kernel_cache, monkeypatch):
    import refold.codegen.plan as plan

    def silent(*args, **kwargs):
        raise RuntimeError()  # str(e) == "": its reason is its type

    monkeypatch.setattr(plan, "cached_build", silent)
    fast = refold.compile(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).eval(), (torch.randn(2, 4),))
    assert list(fast.fallbacks.values()) == ["build failed: RuntimeError"]
