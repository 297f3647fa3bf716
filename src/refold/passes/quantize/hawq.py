"""HAWQ-V2 mixed precision: bits per layer from the Hessian trace (Dong et al., "HAWQ-V2", 2020).

    Tr(H_i) ~ E_v[v_i^T (H v)_i],  v Rademacher          (Hutchinson; all layers from one H v)
    Omega_i(b) = Tr(H_i) / n_i * ||Q_b(W_i) - W_i||^2    (sensitivity of layer i at b bits)
    min sum_i Omega_i(b_i)  s.t.  sum_i n_i b_i <= budget (exact: the Pareto frontier, layer by layer)

The loss is the task loss where labels come with the data (a batch ``(x, label)``), else the
cross-entropy against the float model's own predictions (logits on the last axis), or the squared
error to the float output for a model whose output is not a distribution.

>>> traces, steps = hessian_traces(model, {"conv1": "conv1.weight"}, batches)   # doctest: +SKIP
>>> frontier = pareto({"conv1": {4: (size4, omega4), 8: (size8, omega8)}})      # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np

from refold.ir.graph import Model
from refold.passes.objectives import task_loss


def hessian_traces(model: Model, weights: dict[str, str], batches: list, *, iterations: int = 100,
                   tol: float = 1e-3, seed: int = 0, progress=None) -> tuple[dict[str, float], int]:
    """Average Hessian trace per layer (``weights``: layer -> its weight's value name) of the loss
    on ``batches`` (feed dicts, or (feeds, labels) pairs); stops when every layer's running mean
    moves by less than ``tol`` (relative) or after ``iterations``. Returns (traces, steps)."""
    import torch

    from refold.runtime.torch_runner import TorchRunner

    runner = TorchRunner(model, trainable=sorted(set(weights.values())))
    params = runner.parameters()
    names = list(weights)
    tensors = [params[weights[n]] for n in names]
    out_name = model.graph.outputs[0].name
    targets = []
    with torch.no_grad():
        for feeds, labels in batches:
            targets.append(labels if labels is not None else runner.run(feeds)[out_name].detach())
    gen = torch.Generator().manual_seed(seed)
    sums = np.zeros(len(names))
    means = np.zeros(len(names))
    steps = 0
    for it in range(iterations):
        feeds, labels = batches[it % len(batches)]
        with torch.enable_grad():
            out = runner.run(feeds)[out_name]
            loss = task_loss(out, targets[it % len(batches)], labels is not None)
            grads = torch.autograd.grad(loss, tensors, create_graph=True)
            vs = [torch.randint(0, 2, t.shape, generator=gen).to(t.dtype) * 2 - 1 for t in tensors]
            hv = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vs)), tensors)
        sums += np.array([float((h * v).sum()) for h, v in zip(hv, vs)])
        steps = it + 1
        new = sums / steps
        change = np.abs(new - means) / (np.abs(means) + 1e-12)
        means = new
        if progress is not None:
            progress(steps, iterations, f"Hessian traces (Hutchinson), largest change {change.max():.2g}")
        if steps > 2 and change.max() < tol:
            break
    return dict(zip(names, means.tolist())), steps


def pareto(layers: dict[str, dict[int, tuple[float, float]]]) -> list[tuple[float, float, dict[str, int]]]:
    """Every allocation not beaten in both size and total sensitivity: (size, sensitivity, bits
    per layer), by growing size. ``layers``: layer -> {bits: (size, sensitivity)}. Exact: after
    each layer only non-dominated partial allocations are kept."""
    front: list[tuple[float, float, tuple]] = [(0.0, 0.0, ())]
    order = list(layers)
    for name in order:
        grown = [(size + s, cost + c, choice + (bits,)) for size, cost, choice in front
                 for bits, (s, c) in sorted(layers[name].items())]
        grown.sort(key=lambda e: (e[0], e[1]))
        front = []
        for e in grown:  # sizes ascending: keep an entry only if it lowers the best cost so far
            if not front or e[1] < front[-1][1]:
                front.append(e)
    return [(size, cost, dict(zip(order, choice))) for size, cost, choice in front]


def choose(front: list[tuple[float, float, dict[str, int]]], budget: float):
    """The least sensitive allocation within ``budget`` (None when even the smallest exceeds it)."""
    fitting = [e for e in front if e[0] <= budget * (1 + 1e-12)]
    return min(fitting, key=lambda e: e[1]) if fitting else None


def quantization_error(w: np.ndarray, bits: int, axis: int | None) -> float:
    """||Q_b(W) - W||^2 with symmetric per-channel (``axis``) or per-tensor b-bit rounding."""
    from refold.passes.quantize.params import rounded_weight

    return float(((rounded_weight(w, axis, bits) - w.astype(np.float64)) ** 2).sum())


def allocate_bits(model: Model, layers: dict[str, tuple], batches: list, choices: list[int], *,
                  budget_bits: float, iterations: int = 100,
                  progress=None) -> tuple[dict[str, int], dict]:
    """Bits per layer (``layers``: name -> (weight Value, per-channel axis or None)) within
    ``budget_bits`` of weights, least total sensitivity; and what was measured (traces, the
    frontier, the chosen point) for the report."""
    from refold.errors import UsageError

    traces, steps = hessian_traces(model, {k: w.name for k, (w, _) in layers.items()}, batches,
                                   iterations=iterations, progress=progress)
    table: dict[str, dict[int, tuple[float, float]]] = {}
    for name, (w, axis) in layers.items():
        arr = w.const.numpy()
        n = arr.size
        table[name] = {b: (float(n * b), max(traces[name], 0.0) / n * quantization_error(arr, b, axis))
                       for b in choices}
    front = pareto(table)
    best = choose(front, budget_bits)
    if best is None:
        raise UsageError(f"quantize: the weight budget {budget_bits / 8e6:.4g} MB is below the smallest "
                         f"allocation, {front[0][0] / 8e6:.4g} MB (every layer at {min(choices)} bits)")
    info = {"hessian_trace": {k: round(v, 6) for k, v in traces.items()}, "hessian_steps": steps,
            "frontier": [(round(s / 8e6, 6), c) for s, c, _ in front],
            "chosen": (round(best[0] / 8e6, 6), best[1]), "budget_mb": round(budget_bits / 8e6, 6)}
    bits = best[2]
    # The sensitivity is a second-order proxy: where one bit-width for every layer fits the budget,
    # the allocation with the lower measured output error (weights quantized, activations float)
    # is kept, so mixed precision is never worse than uniform at its size.
    total = sum(w.const.numpy().size for w, _ in layers.values())
    fitting = [b for b in choices if total * b <= budget_bits * (1 + 1e-12)]
    if fitting and len(set(bits.values())) > 1:
        uniform = {k: max(fitting) for k in layers}
        e_mixed, e_uniform = (output_error(model, layers, a, batches) for a in (bits, uniform))
        info["uniform_check"] = {"bits": max(fitting), "mixed_error": e_mixed, "uniform_error": e_uniform}
        if e_uniform < e_mixed:
            bits = uniform
            info["uniform_check"]["kept"] = "uniform"
    return bits, info


def output_error(model: Model, layers: dict[str, tuple], bits: dict[str, int], batches: list) -> float:
    """Squared output error over ``batches`` with each layer's weight rounded to its bits
    (activations in float): what an allocation costs, measured rather than estimated."""
    import torch

    from refold.passes.quantize.params import rounded_weight
    from refold.runtime.torch_runner import TorchRunner

    runner = TorchRunner(model, trainable=sorted({w.name for w, _ in layers.values()}))
    params = runner.parameters()
    out = model.graph.outputs[0].name
    err = 0.0
    with torch.no_grad():
        refs = [runner.run(feeds)[out].clone() for feeds, _ in batches]
        for name, (w, axis) in layers.items():
            params[w.name].copy_(torch.from_numpy(rounded_weight(w.const.numpy(), axis, bits[name]).astype(np.float32)))
        for (feeds, _), ref in zip(batches, refs):
            err += float(((runner.run(feeds)[out] - ref) ** 2).sum())
    return err
