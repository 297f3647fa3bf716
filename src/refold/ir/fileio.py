"""Writing files so that a reader never sees half of one."""
from __future__ import annotations

import os

from refold.errors import OutputError


def write_text_atomic(path: str, text: str) -> None:
    """Write beside the destination, then rename: a reader never sees half a file."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str, data: bytes) -> None:
    """``write_text_atomic`` for bytes."""
    tmp = f"{path}.{os.getpid()}.refold-tmp"  # per process: two writers of one path never share it
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OutputError(f"cannot write '{path}': {e.strerror or e}") from None


def check_writable(path: str, what: str = "output") -> None:
    """Fail now, before any work, if ``path`` cannot be written: its folder is missing, is not a
    folder, or is read-only, or the path is a folder."""
    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    if os.path.isdir(full):
        raise OutputError(f"{what} '{path}' is a directory")
    if not os.path.isdir(folder):
        state = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise OutputError(f"{what} '{path}': folder {folder} {state}")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{what} '{path}': folder {folder} is not writable")
