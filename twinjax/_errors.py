"""Exceptions raised by twinjax."""

from __future__ import annotations


class InputError(ValueError):
    """Invalid user input: the message names the field, the value and what is allowed.

    Raised before any computation, so nothing has been solved or written when it is seen.
    Also raised when a file twinjax wrote is read back and fails its checksum (truncated,
    bit-flipped or edited): the message names the file and both digests.
    """


class SolverError(RuntimeError):
    """An ODE/PDE solve failed (e.g. ``max_steps`` exceeded); the message says where and why."""


class OutputError(OSError):
    """A result file could not be written (disk full, folder not writable, ...).

    The message names the file and the cause (``"disk full"`` for ``errno.ENOSPC``); `errno`
    is the operating system's. Nothing half-written is left: the previous file, if there was
    one, is unchanged and the temporary file is removed (see `twinjax._files`).
    """

    def __str__(self) -> str:
        # OSError's own str prefixes "[Errno n]"; the message already says what happened.
        return str(self.strerror)
