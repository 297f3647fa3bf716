"""The one interface every engine offers: run a Model on feeds, optionally exposing intermediates.

>>> from refold.runtime import runner_for
>>> runner = runner_for(model)                                  # doctest: +SKIP
>>> out = runner.run({"x": x}, capture=["conv1_out"])           # doctest: +SKIP
>>> runner.stream(loader, lambda i, values: stats.update(values["conv1_out"]),
...               capture=["conv1_out"])                        # doctest: +SKIP

``run`` returns the graph outputs plus every captured value, by name. ``stream`` runs an iterable
of feeds (a list of dicts, a generator, a torch DataLoader yielding tensors, tuples or dicts) and
hands each batch's values to a callback, keeping nothing, so memory does not grow with the data.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

from refold.errors import UsageError
from refold.ir.graph import Model


class Runner:
    """Base class of the engines. Subclasses set ``engine`` and implement ``_run``."""

    engine = "runner"

    def __init__(self, model: Model):
        self.model = model
        g = model.graph
        self.input_names = [v.name for v in g.inputs if v.const is None]
        self.output_names = [v.name for v in g.outputs]
        self._known = {v.name for v in g.inputs} | {o.name for n in g for o in n.outputs}

    def run(self, feeds: Any, *, capture: Sequence[str] = ()) -> dict[str, Any]:
        """Outputs (and each name in ``capture``) for one set of feeds."""
        self._check_capture(capture)
        return self._run(self.feeds(feeds), list(capture))

    def stream(self, batches: Iterable[Any], callback: Callable[[int, dict[str, Any]], None], *,
               capture: Sequence[str] = (), outputs: bool = True) -> int:
        """Run every batch; ``callback(i, values)`` gets its outputs (unless ``outputs=False``) and
        captured values, which are dropped afterwards. Returns the number of batches."""
        self._check_capture(capture)
        count = 0
        for i, batch in enumerate(batches):
            values = self._run(self.feeds(batch), list(capture))
            if not outputs:
                values = {k: values[k] for k in capture}
            callback(i, values)
            count += 1
        return count

    def feeds(self, batch: Any) -> dict[str, Any]:
        """Name the tensors of one batch: a dict by name, a sequence in input order, or one tensor."""
        if isinstance(batch, Mapping):
            unknown = [k for k in batch if k not in self.input_names]
            if unknown:
                raise UsageError(f"feeds name {unknown}, which are not inputs of the graph; "
                                 f"its inputs are {self.input_names}")
            missing = [k for k in self.input_names if k not in batch]
            if missing:
                raise UsageError(f"feeds lack graph inputs {missing}")
            return dict(batch)
        if isinstance(batch, (list, tuple)):
            if len(batch) < len(self.input_names):
                raise UsageError(f"a batch of {len(batch)} tensors for {len(self.input_names)} graph "
                                 f"inputs {self.input_names}")
            # a DataLoader yields (inputs..., label): extra trailing items are not graph inputs
            return dict(zip(self.input_names, batch))
        if len(self.input_names) != 1:
            raise UsageError(f"one tensor given for {len(self.input_names)} graph inputs {self.input_names}")
        return {self.input_names[0]: batch}

    def _check_capture(self, capture: Sequence[str]) -> None:
        if isinstance(capture, str):
            raise UsageError("capture= takes a list of value names, not one string")
        unknown = [c for c in capture if c not in self._known]
        if unknown:
            raise UsageError(f"cannot capture {unknown}: no value of the graph has that name")

    def _run(self, feeds: dict[str, Any], capture: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model.graph.name!r}, engine={self.engine!r})"
