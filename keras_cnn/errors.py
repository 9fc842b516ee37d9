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
