"""What a frontend lends the layers below it: how to raise its dialect to core ops.

Passes reason about core ops only. The ops a model arrives with (``onnx.*`` from a file, ``aten.*``
from torch.export) are raised by the frontend that imported them; the frontend registers its
raiser here when it is imported, so passes and the PassManager reach it without importing a
frontend (imports flow one way: frontends -> ir).

>>> from refold.ir.dialects import raiser_for
>>> # raiser_for(model)(model) -> RaiseResult(raised=..., not_raised={...})
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

from refold.errors import UnsupportedError

if TYPE_CHECKING:
    from refold.ir.graph import Model
    from refold.ir.rewrite import RewriteStats


@dataclasses.dataclass
class RaiseResult:
    """What raising did: ops mapped 1:1, patterns rewritten (by rule), and per node left in its
    dialect, the reason (keyed by node name, else first output name)."""

    raised: int
    patterns: "RewriteStats"
    not_raised: dict[str, str]

    @property
    def changed(self) -> int:
        return self.raised + self.patterns.total


Raiser = Callable[["Model"], RaiseResult]
_RAISERS: dict[str, Raiser] = {}


def register_raiser(source: str, raiser: Raiser) -> None:
    """Called by a frontend on import: models whose ``source`` is ``source`` raise with ``raiser``."""
    _RAISERS[source] = raiser


def raiser_for(model: "Model") -> Raiser:
    try:
        return _RAISERS[model.source]
    except KeyError:
        raise UnsupportedError(f"no frontend registered to raise '{model.source}' models to core ops "
                               f"(import refold.frontends)") from None
