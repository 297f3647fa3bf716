"""``refold.inspect(model)``: a graph view for notebooks and files."""
from __future__ import annotations

import html as _html
from typing import Any


class View:
    """One graph, or two side by side (``other``), as the self-contained HTML viewer.

    In Jupyter the view displays itself (an isolated iframe); ``to_html()`` gives the page and
    ``save(path)`` writes it.
    """

    def __init__(self, model: Any, other: Any = None, *, title: str = "refold"):
        from refold.inspect.diff import as_snapshot

        self.title = title
        self.a = as_snapshot(model, "before" if other is not None else "")
        self.b = as_snapshot(other, "after") if other is not None else None

    def to_html(self) -> str:
        from refold.inspect.html import render

        return render(self.a, self.b, title=self.title)

    def save(self, path: str) -> str:
        from refold.ir.fileio import write_text_atomic

        write_text_atomic(path, self.to_html())
        return path

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{_html.escape(self.to_html(), quote=True)}" '
                f'style="width:100%;height:640px;border:1px solid #ddd" sandbox="allow-scripts"></iframe>')

    def __repr__(self) -> str:
        n = self.a.node_count
        return f"<refold view: {n} nodes" + (f" vs {self.b.node_count}" if self.b else "") + ">"
