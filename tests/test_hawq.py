"""HAWQ-V2 mixed precision: Hutchinson traces against the exact Hessian, the exact Pareto
frontier, a layer made more sensitive gets more bits, mixed never loses to uniform at its size,
in torch and ONNX, from Python and the CLI."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import refold
from refold import cli
from refold.errors import UsageError
from refold.passes import Quantize
from refold.passes.quantize.hawq import choose, hessian_traces, pareto


class _TwoBranches(torch.nn.Module):
    """y = C(8 relu(A x) + relu(B x) / 8): A's errors reach the output 64x louder than B's."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = torch.nn.Linear(16, 32), torch.nn.Linear(16, 32), torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.c(torch.relu(self.a(x)) * 8 + torch.relu(self.b(x)) * 0.125)


def _setup():
    net = _TwoBranches().eval()
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(16, 16, generator=gen) for _ in range(4)]
    return net, xs


def _error(gm, net, xs):
    with torch.no_grad():
        return float(sum(((gm(x) - net(x)) ** 2).sum() for x in xs))


def test_the_sensitive_layer_gets_more_bits_and_mixed_never_loses_to_uniform():
    net, xs = _setup()
    data = [(x,) for x in xs]

    def run(**kw):
        gm, rep = refold.optimize(net, (xs[0],), passes=[Quantize(data=data, hessian_iterations=30, **kw)])
        return gm, rep.record("quantize").stats

    gm, st = run(bits="mixed", avg_bits=6)
    bits = st["weight_bits"]
    assert bits["p_a_weight"] == 8 and bits["p_b_weight"] == 4, bits
    assert st["hessian_trace"]["p_a_weight"] > 100 * st["hessian_trace"]["p_b_weight"]
    # at the size of a uniform allocation, mixed is at most as wrong
    for choices, avg in (("4+6+8", 6), ("4+8", 4), ("4+8", 8)):
        mixed, _ = run(bits="mixed", bit_choices=choices, avg_bits=avg)
        uniform, _ = run(bits="mixed", bit_choices=str(avg), avg_bits=avg)
        assert _error(mixed, net, xs) <= _error(uniform, net, xs) * (1 + 1e-6), (choices, avg)
    int4, st4 = run(weights="int4")
    assert set(st4["weight_bits"].values()) == {4} and _error(int4, net, xs) > _error(gm, net, xs)


def test_onnx_graphs_get_the_same_allocation(tmp_path):
    net, xs = _setup()
    path = str(tmp_path / "net.onnx")
    torch.onnx.export(net, (xs[0],), path, dynamo=False, input_names=["x"], output_names=["y"])
    _, rep = refold.optimize(path, passes=[Quantize(data=[{"x": x.numpy()} for x in xs], bits="mixed",
                                                    avg_bits=6, hessian_iterations=30)])
    bits = rep.record("quantize").stats["weight_bits"]
    assert sorted(bits.values()) == [4, 4, 8]
    text = rep.format()
    assert "weight bits by Hessian trace" in text and "<- chosen" in text


def test_hutchinson_matches_the_exact_hessian_trace():
    from refold.api import load
    from refold.passes.raise_core import RaiseToCore

    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).eval()
    x = torch.randn(8, 5)
    model = load(lin, (x,))
    RaiseToCore().call(model)
    names = {n.name: n.inputs[1].name for n in model.graph if n.op == "linear"}
    traces, steps = hessian_traces(model, names, [((x,), None)], iterations=400, tol=0)
    assert steps == 400
    labels = lin(x).argmax(-1).detach()
    params = dict(lin.named_parameters())
    for node, wname in names.items():
        key = "0.weight" if params["0.weight"].shape == tuple(model.graph.initializers[wname].shape) else "2.weight"

        def loss_of(w, key=key):
            p = {k: (w if k == key else v.detach()) for k, v in params.items()}
            out = torch.func.functional_call(lin, p, (x,))
            return torch.nn.functional.cross_entropy(out, labels)

        h = torch.autograd.functional.hessian(loss_of, params[key].detach())
        exact = float(h.reshape(params[key].numel(), -1).diagonal().sum())
        assert abs(traces[node] - exact) < 0.15 * abs(exact) + 1e-6, (node, traces[node], exact)


def test_the_frontier_is_exact():
    rng = np.random.default_rng(0)
    layers = {f"l{i}": {b: (float(n * b), float(rng.random() * 2.0 ** -b)) for b in (2, 4, 8)}
              for i, n in enumerate(rng.integers(1, 50, 6))}
    front = pareto(layers)
    sizes = [s for s, _, _ in front]
    costs = [c for _, c, _ in front]
    assert sizes == sorted(sizes) and costs == sorted(costs, reverse=True)
    for budget in np.linspace(sizes[0], sizes[-1], 25):
        best = min((sum(layers[k][b][1] for k, b in zip(layers, combo)), combo)
                   for combo in itertools.product((2, 4, 8), repeat=len(layers))
                   if sum(layers[k][b][0] for k, b in zip(layers, combo)) <= budget)
        assert np.isclose(choose(front, budget)[1], best[0])
    assert choose(front, sizes[0] - 1) is None


def test_budget_errors_and_the_cli_report(tmp_path):
    net, xs = _setup()
    with pytest.raises(UsageError, match="budget_mb"):
        refold.optimize(net, (xs[0],), passes=[Quantize(data=[(x,) for x in xs], bits="mixed")])
    with pytest.raises(UsageError, match="below the smallest"):
        refold.optimize(net, (xs[0],), passes=[Quantize(data=[(x,) for x in xs], bits="mixed", budget_mb=1e-6)])
    with pytest.raises(UsageError, match="bit_choices"):
        refold.optimize(net, (xs[0],), passes=[Quantize(data=[(x,) for x in xs], bits="mixed",
                                                        bit_choices="4+9", avg_bits=6)])
    path = str(tmp_path / "net.onnx")
    torch.onnx.export(net, (xs[0],), path, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}})
    np.savez(tmp_path / "d.npz", x=torch.cat(xs).numpy())  # 64 samples of [16]
    html = tmp_path / "r.html"
    assert cli.main(["run", path, "-p", "quantize:bits=mixed,avg_bits=6,hessian_iterations=10", "--data",
                     str(tmp_path / "d.npz"), "-o", str(tmp_path / "q.onnx"), "--report", str(html), "--quiet"]) == 0
    page = html.read_text()
    assert "weight bits by Hessian trace" in page and '"frontier":[[' in page
