"""The two kinds of failure kcnn reports, and their exit codes.

``UserError``: the input or an option is wrong and the user can fix it (exit 2).
``RunFailure``: the work itself failed, e.g. the loss became NaN (exit 1).
The CLI prints either as one line; ``--debug`` shows the traceback instead.
"""


class KcnnError(Exception):
    """Base class of every error kcnn raises on purpose."""

    exit_code = 1


class UserError(KcnnError, ValueError):
    """Bad input: an unknown name, an unreadable file, an option value out of range."""

    exit_code = 2


class RunFailure(KcnnError, RuntimeError):
    """The work started but could not finish (NaN loss, a failed export check...)."""

    exit_code = 1


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (TensorFlow's run to pages)."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


class NoSpaceLeft(RunFailure):
    """A write failed because the disk (or the user's quota) is full."""


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error``, or an error it came from, is "no space left on device" (or a full quota)."""
    import errno

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        # TensorFlow's and h5py's errors carry the system's text, not always its number.
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_message(path: object | None, atomic: bool = False) -> str:
    """The one line for a full disk, naming what was being written when it is known.

    ``atomic``: the write was to a temporary name, now removed, so nothing is half-written.
    """
    where = f" while writing {path}" if path else ""
    kept = " (the file was left as it was)" if atomic else ""
    return f"no space left on device{where}{kept}; free some space and run the command again"
