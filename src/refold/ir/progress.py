"""Progress for long work: a tqdm bar on a terminal, nothing at all when output is redirected."""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

_SILENCED = [False]


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """No bar while inside (the CLI's --quiet)."""
    old, _SILENCED[0] = _SILENCED[0], True
    try:
        yield
    finally:
        _SILENCED[0] = old


class StepBar:
    """A ``progress(i, n, what)`` callback drawing one bar on stderr; quiet unless stderr is a
    terminal (or ``force``). Call ``close()`` when done (or use it as a context manager)."""

    def __init__(self, unit: str = "step", *, force: bool = False):
        self.enabled = force or (sys.stderr.isatty() and not _SILENCED[0])
        self.unit = unit
        self._bar = None

    def __call__(self, i: int, n: int, what: str) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=n, unit=self.unit, file=sys.stderr, leave=False, dynamic_ncols=True)
        self._bar.total = n
        self._bar.n = i
        self._bar.set_description_str(what)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "StepBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def step_bar(unit: str = "step") -> Callable[[int, int, str], None] | None:
    """A StepBar when stderr is a terminal, else None (so callers skip the calls entirely)."""
    bar = StepBar(unit)
    return bar if bar.enabled else None
