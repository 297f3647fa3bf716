"""ZeroQ: data-free calibration. Distil a batch of inputs whose per-channel statistics at every
BatchNorm match the BN's running statistics, then calibrate on it (Cai et al., "ZeroQ", 2020).

    min_x  sum over BN layers l of  ||mean(z_l) - mu_l||^2 + ||std(z_l) - sigma_l||^2

with z_l the BN's input (mean and std per channel, over batch and spatial positions), mu_l and
sigma_l = sqrt(running_var_l) its running statistics; Adam on x (lr 0.5, halved on a plateau).
The gradient flows through the torch runner, so ONNX-born graphs are differentiated as well.

A BN refold folded into the op before it (fuse-conv-bn) left its statistics on the folded op's
output: that output is s * z + t, so z is recovered as (output - t) / s and the loss is the same.

>>> feeds, losses = distil(model, batch=32, iterations=500)   # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np

from refold.errors import UnsupportedError
from refold.ir.graph import CORE, Model

BN_STATISTICS = "bn_statistics"  # Value.meta key: {"mean", "std", "scale", "shift"} per channel


def bn_targets(model: Model) -> dict[str, dict[str, np.ndarray]]:
    """Value name -> the statistics its channels (axis 1) should have, from every BatchNorm with
    constant statistics and every BN refold folded away."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for v in model.graph.inputs:
        if BN_STATISTICS in v.meta:
            out[v.name] = {k: np.asarray(a, np.float64) for k, a in v.meta[BN_STATISTICS].items() if k != "source"}
    for n in model.graph:
        if n.domain == CORE and n.op == "batch_norm":
            x, _, _, mean, var = n.inputs
            if mean.const is None or var.const is None:
                continue
            mu = mean.const.numpy().astype(np.float64)
            out.setdefault(x.name, {"mean": mu, "std": np.sqrt(np.maximum(var.const.numpy().astype(np.float64), 0)),
                                    "scale": np.ones_like(mu), "shift": np.zeros_like(mu)})
        for v in n.outputs:
            stats = v.meta.get(BN_STATISTICS)
            if stats is not None:
                out.setdefault(v.name, {k: np.asarray(a, np.float64) for k, a in stats.items() if k != "source"})
    return out


def _input_shapes(model: Model, batch: int, shapes: dict[str, tuple] | None) -> dict[str, tuple]:
    from refold.runtime.probe import probe_dims

    dims = probe_dims(model)
    examples = [t for t in model.meta.get("torch.example_inputs") or () if hasattr(t, "shape")]
    live = [v for v in model.graph.inputs if v.const is None]
    seen = dict(zip([v.name for v in live], [tuple(t.shape) for t in examples])) if len(examples) == len(live) else {}
    out = {}
    for v in live:
        if shapes and v.name in shapes:
            out[v.name] = tuple(shapes[v.name])
            continue
        if v.name in seen and v.dtype is not None and v.dtype.is_float:  # a torch model: its example's shape
            out[v.name] = (batch, *seen[v.name][1:]) if seen[v.name] else ()
            continue
        if v.dtype is None or not v.dtype.is_float or v.shape is None:
            raise UnsupportedError(f"quantize: calibration=zeroq distils float inputs; input '{v.name}' is "
                                   f"{v.dtype.name if v.dtype else 'untyped'} (pass --data instead)")
        shape = [d if isinstance(d, int) and d >= 0 else dims.get(d if isinstance(d, str) else f"{v.name}:{i}", 1)
                 for i, d in enumerate(v.shape)]
        if shape:
            shape[0] = batch
        out[v.name] = tuple(shape)
    return out


def distil(model: Model, *, batch: int = 32, iterations: int = 500, lr: float = 0.5, seed: int = 0,
           shapes: dict[str, tuple] | None = None, progress=None) -> tuple[dict[str, np.ndarray], list[float]]:
    """A batch of inputs matching the BN statistics, and the loss at each iteration.

    ``shapes``: input name -> full shape (batch included) where the model's own is symbolic.
    ``progress(i, n, what)`` is called each iteration."""
    import torch

    from refold.runtime.torch_runner import TorchRunner

    targets = bn_targets(model)
    if not targets:
        raise UnsupportedError("quantize: calibration=zeroq needs BatchNorm statistics, and the model has "
                               "none (no BatchNormalization, none folded by refold): pass --data instead")
    gen = torch.Generator().manual_seed(seed)
    xs = {name: torch.randn(shape, generator=gen).requires_grad_(True)
          for name, shape in _input_shapes(model, batch, shapes).items()}
    ref = {name: {k: torch.as_tensor(a, dtype=torch.float32) for k, a in t.items()} for name, t in targets.items()}
    runner = TorchRunner(model)
    opt = torch.optim.Adam(list(xs.values()), lr=lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20, min_lr=1e-4)
    names = list(targets)
    losses: list[float] = []
    best, best_x = float("inf"), None
    for i in range(iterations):
        opt.zero_grad(set_to_none=True)
        with torch.enable_grad():
            values = runner.run(dict(xs), capture=names)
            loss = sum(_statistics_loss(values[name], ref[name]) for name in names)
        loss.backward()
        value = float(loss.detach())
        losses.append(value)
        if value < best:  # the distilled batch is the best seen, not the last
            best, best_x = value, {k: x.detach().clone() for k, x in xs.items()}
        opt.step()
        plateau.step(value)
        if progress is not None:
            progress(i + 1, iterations, f"ZeroQ distillation, BN loss {value:.4g}")
    return {k: x.numpy() for k, x in best_x.items()}, losses


def _statistics_loss(z, ref: dict):
    """||mean - mu||^2 + ||std - sigma||^2 over the channels (axis 1) of z, in BN-input units."""
    import torch

    channels = z.shape[1]
    shape = [1, channels] + [1] * (z.dim() - 2)
    z = (z.float() - ref["shift"].reshape(shape)) / torch.where(ref["scale"].abs() > 1e-12, ref["scale"],
                                                                 torch.ones_like(ref["scale"])).reshape(shape)
    flat = z.transpose(0, 1).reshape(channels, -1)
    mean, std = flat.mean(1), flat.std(1, unbiased=False)
    return ((mean - ref["mean"]) ** 2).sum() + ((std - ref["std"]) ** 2).sum()
