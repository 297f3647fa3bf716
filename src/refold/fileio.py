"""Writing text files so that a reader never sees half of one."""
from __future__ import annotations

import os

from refold.errors import OutputError


def write_text_atomic(path: str, text: str) -> None:
    """Write beside the destination, then rename: a reader never sees half a file."""
    tmp = path + ".refold-tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OutputError(f"cannot write '{path}': {e.strerror or e}") from None
