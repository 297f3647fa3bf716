"""The refold command line: help everywhere, show, run, passes; exit codes."""
import json
import subprocess
import sys

import onnx
import pytest

from refold import cli, errors
from refold.api import example_path


def refold(capsys, *args):
    code = cli.main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("args", [["--help"], ["show", "--help"], ["run", "--help"], ["passes", "--help"]])
def test_help_everywhere(capsys, args):
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: refold" in out and "exit codes" in out


def test_show_summary(capsys):
    code, out, _ = refold(capsys, "show", "example:tiny_cnn")
    assert code == 0
    assert "x: f32[1,3,32,32]" in out and "logits: f32[1,10]" in out
    assert "parameters  954" in out and "onnx.BatchNormalization      2" in out


def test_show_graph_and_json(capsys):
    code, out, _ = refold(capsys, "show", example_path(), "--graph")
    assert code == 0 and "%c1 = onnx.Conv(%x, %conv1.w, %conv1.b) {pads=[1,1,1,1]}" in out
    code, out, _ = refold(capsys, "show", example_path(), "--json")
    s = json.loads(out)
    assert s["nodes"] == 14 and s["ops"]["onnx.Relu"] == 3


def test_run_writes_checked_model_and_report(capsys, tmp_path):
    out_path = tmp_path / "o.onnx"
    code, out, err = refold(capsys, "run", "example:tiny_cnn", "-p", "cse", "-p", "dce", "-o", out_path,
                            "--json", tmp_path / "r.json")
    assert code == 0, err
    onnx.checker.check_model(str(out_path), full_check=True)
    assert "cse" in out and "max abs err" in out and "merged_nodes=1" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert [p["name"] for p in rep["passes"]] == ["cse", "dce"]


def test_passes_lists_descriptions(capsys):
    code, out, _ = refold(capsys, "passes")
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert {"dce", "cse", "fold-constants", "infer-shapes", "raise-to-core"} <= set(lines)


@pytest.mark.parametrize("args,fragment", [
    (["run", "example:tiny_cnn"], "-o/--output"),
    (["run", "example:tiny_cnn", "-o", "x.onnx", "-p", "nonsense"], "unknown pass 'nonsense'"),
    (["frobnicate"], "invalid choice"),
    (["run", "example:tiny_cnn", "-o", "x.onnx", "--dim", "bad"], "NAME=N"),
])
def test_usage_errors_exit_2(capsys, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    code, _, err = refold(capsys, *args)
    assert code == errors.EXIT_USAGE and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_debug_prints_traceback(capsys, tmp_path):
    (tmp_path / "e.onnx").write_bytes(b"")
    code, _, err = refold(capsys, "--debug", "show", tmp_path / "e.onnx")
    assert code == errors.EXIT_INVALID and "Traceback" in err


def test_console_script_installed(tmp_path):
    res = subprocess.run([sys.executable, "-m", "refold.cli", "passes"], capture_output=True, text=True)
    assert res.returncode == 0 and "dce" in res.stdout


@pytest.mark.parametrize("spec, says", [
    ("fuse-conv-bn:affine=maybe", "expected true or false"),
    ("layernorm-to-rmsnorm:compress=maybe", "expected true or false"),
    ("layernorm-to-rmsnorm:target=bogus", "choose one of auto, ort"),
    ("layernorm-to-rmsnorm:target=ort:compress=true", "choose one of auto, ort"),
    ("layernorm-to-rmsnorm:target=ort,compress=true", "contradict"),
    ("dce:aggressive=true", "unknown option 'aggressive'"),
    ("fold-constants:max_bytes=lots", "expected int"),
    ("fuse-conv-bn:mode=tune,mode=deploy", "given twice"),
])
def test_pass_options_are_checked(spec, says, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert cli.main(["run", "example:tiny_cnn", "-p", spec, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and not out.exists()


def test_python_pass_options_are_checked_too():
    from refold.errors import UsageError
    from refold.passes import FuseConvBN, LayerNormToRMSNorm

    with pytest.raises(UsageError, match="expected True or False"):
        LayerNormToRMSNorm(compress="maybe")
    with pytest.raises(UsageError, match="choose one of deploy, tune"):
        FuseConvBN("train")
    assert FuseConvBN("tune").mode == "tune" and repr(FuseConvBN()) == "FuseConvBN(mode='deploy', affine=False)"


def test_passes_name_prints_options(capsys):
    assert cli.main(["passes", "layernorm-to-rmsnorm"]) == 0
    out = capsys.readouterr().out
    assert "compress=bool (default False)" in out and "target=auto|ort|rms (default auto)" in out
    assert cli.main(["passes", "nope"]) == 2


def test_unknown_dim_is_a_usage_error(tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert cli.main(["run", "example:tiny_cnn", "--dim", "nosuchdim=5", "-o", str(out)]) == 2
    assert "not a symbolic input dim" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("flag", ["-o", "--json", "--report"])
def test_unwritable_destinations_fail_before_any_work(flag, tmp_path, capsys, monkeypatch):
    from refold.passes import PassManager

    ran = []
    monkeypatch.setattr(PassManager, "run", lambda self, *a, **k: ran.append(1))
    out = tmp_path / "o.onnx"
    argv = ["run", "example:tiny_cnn", "-o", str(out)]
    argv = argv[:-2] + ["-o", str(tmp_path / "nope" / "o.onnx")] if flag == "-o" else \
        argv + [flag, str(tmp_path / "nope" / "r")]
    assert cli.main(argv) == errors.EXIT_OUTPUT
    assert ran == [] and "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_all_outputs_or_none_when_a_late_write_fails(tmp_path, monkeypatch):
    import refold.ir.fileio

    def fail(path, text):
        raise errors.OutputError(f"cannot write '{path}': disk full")

    monkeypatch.setattr(refold.ir.fileio, "write_text_atomic", fail)
    out = tmp_path / "o.onnx"
    assert cli.main(["run", "example:tiny_cnn", "-o", str(out), "--json", str(tmp_path / "r.json")]) == 6
    assert list(tmp_path.iterdir()) == []


def test_closed_pipe_exits_quietly():
    import zoo

    big = next(p for p in zoo.LIGHT_MODELS if "densenet121" in p)  # 1,746 nodes: more than a pipe holds
    p = subprocess.run(f"set -o pipefail; {sys.executable} -m refold.cli show {big} --graph | head -1",
                       shell=True, capture_output=True, text=True, executable="/bin/bash")
    assert p.stderr == "" and p.stdout.count("\n") == 1 and p.returncode == errors.EXIT_PIPE


def test_progress_bar_only_on_a_terminal(capsys):
    from refold.ir.progress import StepBar, step_bar

    assert step_bar() is None and not StepBar().enabled  # pytest's stderr is not a terminal
    with StepBar(force=True) as bar:
        bar(1, 3, "fuse-conv-bn")
    assert "fuse-conv-bn" in capsys.readouterr().err
    assert cli.main(["run", "example:tiny_cnn", "-o", "/dev/null/x"]) == 6
    assert "\r" not in capsys.readouterr().err  # no bar when redirected
