"""Errors with stable exit codes: every failure a user can cause maps to one of these."""
from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_UNSUPPORTED = 4
EXIT_SECURITY = 5
EXIT_OUTPUT = 6
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141  # the reader of our output went away (128 + SIGPIPE)
EXIT_TERMINATED = 143


class RefoldError(Exception):
    """Base error; ``exit_code`` is what the CLI returns, the message is one line."""

    exit_code = EXIT_INVALID

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def one_line(e: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (the type alone when the message is empty), for a
    reason that goes in a report or a table."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:limit]}" if text else type(e).__name__


class UsageError(RefoldError):
    exit_code = EXIT_USAGE


class InvalidModelError(RefoldError):
    """The model is unreadable, malformed or inconsistent."""

    exit_code = EXIT_INVALID


class UnsupportedError(RefoldError):
    """The model is valid but uses something refold does not handle."""

    exit_code = EXIT_UNSUPPORTED


class SecurityError(RefoldError):
    """Refused before reading: the model points outside where it may read."""

    exit_code = EXIT_SECURITY


class OutputError(RefoldError):
    """The output could not be written; the destination is unchanged."""

    exit_code = EXIT_OUTPUT


class PassFailedError(RefoldError):
    """A pass broke the graph (verifier) or its numerics (check)."""

    exit_code = EXIT_UNSUPPORTED


class Terminated(BaseException):
    """Raised from the SIGTERM handler so that cleanup code runs."""
