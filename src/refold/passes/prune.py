"""Structured pruning: remove the least important channels of each dependency group, physically
shrinking every tensor that shares them (weights, biases, BN statistics, reshape targets).

    group (conv1 out, bn1, conv2 in), units 0..C-1, importance I_c = sum over members ||slice_c||
    remove the floor(ratio * C) least important units (kept count rounded up to round_to, >= keep_min)
    W1 <- W1[kept], b1 <- b1[kept], bn1.* <- bn1.*[kept], W2 <- W2[:, kept]

Only zero-invariant groups are pruned (``passes/analysis/channels.py``): zeroing a group's slices
and removing them give the same outputs, so what pruning changes is exactly what the removed
channels contributed.

>>> Prune(ratio=0.5, importance="l1")   # doctest: +SKIP
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from refold.errors import UsageError
from refold.ir.graph import CORE, Model
from refold.ir.tensor import Tensor
from refold.passes.analysis.channels import ChannelGraph, Group
from refold.passes.base import RAISED, Option, Pass, PassResult, Reason


class Prune(Pass):
    """Remove ``ratio`` of the channels of every prunable dependency group (or of all channels,
    ``scope=global``), least important first."""

    name = "prune"
    description = "remove the least important channels of dependency-coupled groups, shrinking the tensors"
    requires = frozenset({RAISED})
    exact = False  # removes what the channels contributed; the check reports the difference
    options = (
        Option("ratio", float, 0.5, "fraction of channels removed per group (scope=per_layer) or overall (global)"),
        Option("importance", str, "l1", "channel importance: l1 / l2 norm of the group's slices, the "
               "BatchNorm scale |gamma|, or taylor: |sum of w * dL/dw| over the slices on the data (first-order "
               "loss change; L is the task loss with labels, else cross-entropy against the model's own "
               "predictions)", choices=("l1", "l2", "bn_scale", "taylor")),
        Option("scope", str, "per_layer", "per_layer: ratio in every group; global: the least important "
               "channels of the whole model, each group's importances normalised by their mean",
               choices=("per_layer", "global")),
        Option("round_to", int, 1, "keep a multiple of this many channels per group (8 for fast kernels)"),
        Option("keep_min", int, 1, "keep at least this many channels per group"),
        Option("exclude", str, "", "node names whose output channels stay, separated by '+'"),
        Option("heads", bool, True, "prune attention heads (whole heads across q, k, v and the output "
               "projection; whole key/value groups under grouped-query attention)"),
    )

    def __init__(self, *args, data=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.data = data

    def validate(self) -> None:
        if not 0 <= self.ratio < 1:
            raise UsageError(f"prune: ratio={self.ratio} is not in [0, 1)")
        if self.round_to < 1 or self.keep_min < 1:
            raise UsageError("prune: round_to and keep_min must be at least 1")

    def call(self, model: Model) -> PassResult:
        from refold.runtime.shapes import infer_shapes

        if model.source == "onnx":
            infer_shapes(model, probe=True)
        untie_constants(model)
        cg = ChannelGraph(model)
        grads = self._taylor(model, cg) if self.importance == "taylor" else None
        macs_before = count_macs(model)
        excluded = {e.strip() for e in self.exclude.split("+") if e.strip()}
        skipped: dict[str, Reason] = {}
        candidates: list[tuple[Group, np.ndarray]] = []
        for g in cg.groups:
            label = f"group {g.index} ({', '.join(g.sources) or next(iter(g.params), ('?',))[0]})"
            if not g.prunable:
                skipped[label] = g.why_not
            elif excluded & set(g.sources):
                skipped[label] = Reason("excluded by the user", "excluded")
            elif g.heads and not self.heads:
                skipped[label] = Reason("attention heads (heads=false)", "excluded")
            elif g.units == 1:  # LLM-Pruner#64: one key/value head made pruning a silent no-op
                skipped[label] = Reason("a single unit (one KV head, one channel): removing it would remove "
                                        "the layer", "single-unit")
            else:
                candidates.append((g, importance(model, g, self.importance, grads)))
        plan = self._plan(candidates)
        removed = {g.index: units for g, units in plan if len(units)}
        params_before = _param_count(model)
        if removed:
            remove_units(model, {g.index: g for g, _ in plan}, removed)
        stats = {"groups": len(cg.groups), "prunable": len(candidates), "pruned_groups": len(removed),
                 "heads_removed": int(sum(len(u) for g, u in plan if g.heads)),
                 "channels_removed": int(sum(len(u) for u in removed.values())),
                 "channels": int(sum(g.units for g, _ in candidates)),
                 "params_before": params_before, "params_after": _param_count(model),
                 "macs_before": macs_before, "macs_after": count_macs(model), "not_pruned": skipped}
        return PassResult(model, bool(removed), stats)

    def _taylor(self, model: Model, cg: ChannelGraph) -> dict[str, np.ndarray]:
        """sum over the data of w * dL/dw for every prunable group's constants."""
        import torch

        from refold.ir.progress import StepBar
        from refold.passes.objectives import split_labels, task_loss
        from refold.runtime.torch_runner import TorchRunner

        if self.data is None:
            raise UsageError("prune: importance=taylor needs data: Prune(data=...) in Python, --data on the command line")
        names = sorted({name for g in cg.groups if g.prunable for name, _ in g.params
                        if model.graph.initializers[name].dtype is not None
                        and model.graph.initializers[name].dtype.is_float})
        runner = TorchRunner(model, trainable=names)
        params = runner.parameters()
        out = model.graph.outputs[0].name
        n_inputs = sum(1 for v in model.graph.inputs if v.const is None)
        acc = {k: torch.zeros_like(t) for k, t in params.items()}
        with StepBar("batch") as bar:
            for i, batch in enumerate(self.data):
                batch, labels = split_labels(batch, n_inputs)
                with torch.enable_grad():
                    y = runner.run(batch)[out]
                    target = labels if labels is not None else y.detach()
                    loss = task_loss(y, target, labels is not None)
                    gs = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
                for k, g in zip(names, gs):
                    if g is not None:
                        acc[k] += (g * params[k]).detach()
                if bar.enabled:
                    bar(i + 1, i + 1, "taylor importance")
        return {k: t.numpy() for k, t in acc.items()}

    def _plan(self, candidates: list[tuple[Group, np.ndarray]]) -> list[tuple[Group, np.ndarray]]:
        """Which units of each group go."""
        if self.scope == "global" and candidates:
            scores = np.concatenate([imp / (imp.mean() if imp.mean() > 0 else 1.0) for _, imp in candidates])
            cut = np.sort(scores)[int(np.floor(self.ratio * scores.size))] if self.ratio > 0 else -np.inf
            wanted = [int((imp / (imp.mean() if imp.mean() > 0 else 1.0) < cut).sum()) for _, imp in candidates]
        else:
            wanted = [int(np.floor(self.ratio * g.units)) for g, _ in candidates]
        out = []
        for (g, imp), drop in zip(candidates, wanted):
            keep = max(g.units - drop, self.keep_min, 1)
            keep = min(g.units, -(-keep // self.round_to) * self.round_to)
            order = np.argsort(imp, kind="stable")  # least important first, ties by index
            out.append((g, np.sort(order[: g.units - keep])))
        return out


def untie_constants(model: Model) -> int:
    """Give each reader of a shared constant its own copy (not a trainable parameter: tied weights
    stay tied). Exporters deduplicate equal initializers — the zero biases of every 256-wide conv
    become one tensor, the split sizes [16, 16] of every C2f block of that width one int64
    tensor — and a shared constant would couple layers that have nothing in common (or shrink
    one block's split sizes for another's channels)."""
    count = 0
    g = model.graph
    for v in list(g.initializers.values()):
        if v.const is None or v.kind == "param" or v.dtype is None:
            continue
        if v.dtype.is_float:
            readers = list(dict.fromkeys(n for n, _ in v.uses()))
            uses = [(n, [i for i, u in enumerate(n.inputs) if u is v]) for n in readers[1:]]
        else:  # sizes and bounds: one per use (a Slice reading [1] as its start and its axis)
            uses = [(n, [i]) for n, i in v.uses()[1:]]
        for n, positions in uses:
            copy = g.add_const(Tensor.from_array(np.array(v.const.numpy(), copy=True)), prefix=v.name)
            copy.shape, copy.dtype = v.shape, v.dtype
            for i in positions:
                n.set_input(i, copy)
            count += 1
    return count


def importance(model: Model, group: Group, kind: str, grads: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Per unit of ``group``: the l1 / l2 norm of all its slices, |gamma| of its BatchNorms, or
    (taylor) |sum of w * dL/dw| over its slices (``grads``: that product, summed over the data)."""
    consts = model.graph.initializers
    score = np.zeros(group.units)
    if kind == "taylor":
        for (name, axis), per_unit in group.params.items():
            if grads and name in grads:
                moved = np.moveaxis(np.asarray(grads[name], np.float64), axis, 0)
                for u, idx in enumerate(per_unit):
                    score[u] += moved[idx].sum()
        return np.abs(score)
    scales = _bn_scales(model) if kind == "bn_scale" else set()
    for (name, axis), per_unit in group.params.items():
        if kind == "bn_scale" and name not in scales:
            continue
        arr = np.moveaxis(np.asarray(consts[name].const.numpy(), np.float64), axis, 0)
        for u, idx in enumerate(per_unit):
            part = arr[idx]
            score[u] += np.abs(part).sum() if kind in ("l1", "bn_scale") else (part ** 2).sum()
    if kind == "bn_scale" and not scales & {name for name, _ in group.params}:  # no BN in the group: fall back to l1
        return importance(model, group, "l1")
    return np.sqrt(score) if kind == "l2" else score


def _bn_scales(model: Model) -> set[str]:
    return {n.inputs[1].name for n in model.graph if n.domain == CORE and n.op == "batch_norm"}


def zero_units(model: Model, group: Group, units) -> None:
    """Set every slice of ``units`` in ``group`` to zero (the oracle pruning must agree with)."""
    consts = model.graph.initializers
    for (name, axis), per_unit in group.params.items():
        idx = sorted({i for u in units for i in per_unit[u]})
        arr = np.array(consts[name].const.numpy(), copy=True)
        np.moveaxis(arr, axis, 0)[idx] = 0
        consts[name].const = Tensor.from_array(arr)


def remove_units(model: Model, groups: dict[int, Group], removed: dict[int, np.ndarray]) -> None:
    """Physically delete the slices of the removed units of every group at once (indices are
    the original ones, so groups sharing a tensor, as a concat's reader does, compose), shrink
    the reshape targets spelling the width, and re-derive shapes."""
    consts = model.graph.initializers
    cut: dict[tuple[str, int], set[int]] = defaultdict(set)
    shrink: dict[tuple[str, int], int] = defaultdict(int)
    for gi, units in removed.items():
        g = groups[gi]
        for (name, axis), per_unit in g.params.items():
            cut[(name, axis)].update(i for u in units for i in per_unit[u])
        for target, pos, per_unit in g.shapes:
            shrink[(target, pos)] += int(sum(per_unit[u] for u in units))
    by_name: dict[str, list[tuple[int, list[int]]]] = defaultdict(list)
    for (name, axis), idx in cut.items():
        by_name[name].append((axis, sorted(idx)))
    depthwise = {n: (n.inputs[1].shape[0] // n.attrs.get("group", 1)) for n in model.graph
                 if n.domain == CORE and n.op == "conv" and n.attrs.get("group", 1) > 1
                 and n.inputs[1].shape is not None and n.inputs[1].shape[1] == 1}
    for name, cuts in by_name.items():
        v = consts[name]
        arr = np.asarray(v.const.numpy())
        for axis, idx in cuts:
            arr = np.delete(arr, idx, axis=axis)
        v.const = Tensor.from_array(np.ascontiguousarray(arr))
        v.shape = tuple(arr.shape)
    by_node = {n.name: n for n in model.graph}
    for (name, pos), minus in shrink.items():
        if name.startswith("args:"):  # a torch view's size list
            node = by_node[name[len("args:"):]]
            args = list(node.attrs["args"])
            sizes = list(args[1])
            sizes[pos] -= minus
            args[1] = type(node.attrs["args"][1])(sizes)
            node.attrs["args"] = tuple(args) if isinstance(node.attrs["args"], tuple) else args
            continue
        v = consts[name]
        arr = np.array(v.const.numpy(), copy=True)
        arr.reshape(-1)[pos] -= minus
        v.const = Tensor.from_array(arr)
    for n, per_group in depthwise.items():  # a depthwise conv keeps one group per input channel
        n.attrs["group"] = n.inputs[1].shape[0] // per_group
    _reshape_values(model)


def _reshape_values(model: Model) -> None:
    """Shapes of the activations after the weights shrank. ONNX models: onnx's inference again.
    Torch models: one torch-runner run on the example inputs; a dim stays symbolic where it was
    (pruning changes only static channel counts)."""
    if model.source == "onnx":
        from refold.runtime.shapes import infer_shapes

        for n in model.graph.all_nodes():
            for o in n.outputs:
                o.shape = None
        infer_shapes(model, probe=True)
        return
    from refold.runtime.torch_runner import example_shapes

    values = [o for n in model.graph for o in n.outputs if o.shape is not None]
    got = example_shapes(model, [v.name for v in values], strict=True)
    for v in values:
        shape = got.get(v.name)
        if shape is not None and len(shape) == len(v.shape):
            v.shape = tuple(d if isinstance(d, str) else int(s) for d, s in zip(v.shape, shape))


def count_macs(model: Model) -> int | None:
    """Multiply-accumulates of conv / conv-transpose / linear / gemm / matmul on one run of the
    example inputs (a torch model's own, else probe inputs); None when the model cannot run."""
    from refold.runtime.torch_runner import example_shapes

    dense = [n for n in model.graph if n.domain == CORE and n.op in ("conv", "conv_transpose", "linear", "gemm", "matmul")]
    names = sorted({v.name for n in dense for v in (*n.inputs[:2], n.outputs[0]) if v is not None and v.const is None})
    got = example_shapes(model, names)
    if names and not got:
        return None
    shape = lambda v: tuple(v.const.shape) if v.const is not None else got[v.name]  # noqa: E731
    total = 0
    for n in dense:
        out, w = shape(n.outputs[0]), shape(n.inputs[1])
        if n.op == "conv":  # every output element: Cin/g * kernel
            total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif n.op == "conv_transpose":  # every input element: Cout/g * kernel
            total += int(np.prod(shape(n.inputs[0]))) * int(np.prod(w[1:]))
        elif n.op == "gemm":
            total += int(np.prod(out)) * (w[1] if n.attrs.get("transB", 0) else w[0])
        else:  # linear [out, in]; matmul [..., K, N]
            total += int(np.prod(out)) * (w[-1] if n.op == "linear" else shape(n.inputs[0])[-1])
    return total


def _param_count(model: Model) -> int:
    return int(sum(np.prod(v.shape or (), dtype=np.int64) for v in model.graph.initializers.values()
                   if v.const is not None and v.dtype is not None and v.dtype.is_float))
