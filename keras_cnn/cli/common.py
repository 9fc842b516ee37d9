"""What every ``kcnn`` command shares: the output contract and the options all commands take.

A command parses its options, calls one API function inside :func:`run_command`, and
prints the result: a human-readable rendering, or with ``--json`` exactly one JSON object
on stdout (every command, the same contract).  While the work runs, stdout is redirected
to stderr so Keras progress bars and logs never mix with the result; how progress looks
(live bars, plain lines, nothing with ``--quiet``) is ``keras_cnn.progress``'s job.

Options that set a config field are defined in :mod:`keras_cnn.cli.options`; here are the
ones that do not (``--json``, ``--quiet``, ``--debug``, ``--overwrite``).  A new command is
a module ``keras_cnn/cli/NAME_command.py`` (a click command ending in ``@json_option``
and ``@debug_option`` that calls its API function through :func:`run_command`) and one
line in ``COMMANDS`` of :mod:`keras_cnn.cli`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from typing import Any, Callable

import click

from keras_cnn.io import check_output_path, to_jsonable
from keras_cnn.library_chatter import import_tensorflow_quietly
from keras_cnn.messages import MAX_LINE, did_you_mean
from keras_cnn.runs import default_run_dir


def enable_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """``--debug``: tracebacks and every library message (sets ``KCNN_DEBUG``)."""
    if value:
        # keras_cnn.library_chatter and the error handler read the environment, so one switch serves all.
        os.environ["KCNN_DEBUG"] = "1"
    return value


def enable_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """``--quiet``: no progress, only the result, warnings and errors (sets ``KCNN_QUIET``)."""
    if value:
        # keras_cnn.progress reads the environment, as deep down as the epoch lines.
        os.environ["KCNN_QUIET"] = "1"
    return value


QUIET_HELP = "Print only the result (and warnings or errors): no progress bars or step lines."


json_option = click.option(
    "--json", "as_json", is_flag=True,
    help="Print the result as one JSON object on stdout (progress and logs go to stderr).",
)


def option_group(*options: Callable) -> Callable:
    """One decorator applying several click options, in the order listed (as --help shows them)."""

    def decorate(function: Callable) -> Callable:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and infinity (every comparison with NaN is false)."""

    def convert(self, value, param, ctx):
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


@contextlib.contextmanager
def holding_run(out_dir: str | os.PathLike | None, overwrite: bool = False, strategy: str | None = None,
                data: dict[str, Any] | None = None):
    """Hold the run folder's lock, and check kcnn may write there, before TensorFlow loads.

    A second writer is refused at once (not after TensorFlow's start-up), and a folder of
    someone else's files, or one that mixes with the inputs (``data``: the data options of
    a first stage), before any work; the stage runner takes the same lock again
    (re-entrant) and repeats every check.  Skipped without ``--out`` (a new timestamped
    folder) and on multi-worker processes that are not the chief (they write elsewhere).
    """
    from keras_cnn.runs import RunDirectory, RunLock, check_run_placement, input_files
    from keras_cnn.train.devices import parse_slurm, parse_tf_config

    task = parse_tf_config(os.environ.get("TF_CONFIG"))
    if task is None and strategy == "multiworker":
        task = parse_slurm(os.environ)
    if out_dir is None or (task is not None and not task.is_chief):
        yield
        return
    check_output_path(out_dir, directory=True, option="the run folder")
    with RunLock(out_dir, reentrant=True):
        if data is not None:
            check_run_placement(out_dir, images=data.get("images"), files=input_files(data))
        RunDirectory(out_dir).check_ownership(overwrite)
        yield


class InputPath(click.Path):
    """``click.Path`` of something kcnn reads: it must exist, and be a folder (when allowed) or a regular file.

    A named pipe, a socket or a device is refused as the option is parsed, with one line:
    reading a named pipe would wait for ever.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(exists=True, **kwargs)

    def convert(self, value, param, ctx):
        from keras_cnn.errors import UserError
        from keras_cnn.io import check_input_file

        path = super().convert(value, param, ctx)
        if not os.path.isdir(path):
            try:
                check_input_file(path, "the file")
            except UserError as error:
                self.fail(str(error), param, ctx)
        return path


class Choice(click.Choice):
    """``click.Choice`` whose error also offers the closest allowed names (``did you mean 'onnx'?``)."""

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as error:
            hint = did_you_mean(value, self.choices)
            if not hint:
                raise
            self.fail(f"{error.message.rstrip('.')}{hint}", param, ctx)


overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Start this stage over: removes its epochs, checkpoints, logs and eval/ (and any later stage's). "
         "Into a folder that is not a run, adds a run beside its files. kcnn never removes a file it did not make.",
)


debug_option = option_group(
    click.option("--quiet", "-q", is_flag=True, expose_value=False, is_eager=True, callback=enable_quiet,
                 help=QUIET_HELP),
    click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=enable_debug,
                 help="Show the full traceback on errors."),
)
"""``--quiet`` and ``--debug``, which every command takes (under this one name every command imports)."""


# --------------------------------------------------------------------------- Ctrl-C


class _Resume:
    """Whether the command running now resumes when run again, and what its re-run needs added."""

    resumable = False
    added: tuple[str, ...] = ()


_RESUME = _Resume()
# Flags a resuming re-run must not repeat: --overwrite would start the stage over.
NOT_REPEATED = ("--overwrite",)


def resumable(*added: str) -> None:
    """Mark the running command as one whose re-run goes on from where Ctrl-C stopped it.

    ``added``: arguments the re-run needs besides the user's own, e.g. ``--out RUN`` for a
    run folder named by default (``runs/NAME-TIMESTAMP``: the same command would make a new one).
    """
    _RESUME.resumable, _RESUME.added = True, tuple(added)


def resumable_run(out_dir: str | None, name: str) -> str:
    """The run folder of a training command, marked :func:`resumable`: ``out_dir``, or
    ``runs/NAME-TIMESTAMP`` named now, so that Ctrl-C can print the command resuming this very run."""
    if out_dir:
        resumable()
        return out_dir
    out_dir = str(default_run_dir(name))
    resumable("--out", out_dir)
    return out_dir


def forget_resumable() -> None:
    """Start of a command line: nothing is resumable yet (tests run many in one process)."""
    _RESUME.resumable, _RESUME.added = False, ()


def interrupted_message(arguments: list[str]) -> str:
    """What Ctrl-C prints: ``kcnn: interrupted``, and for a command that resumes, the command that does."""
    if not _RESUME.resumable:
        return "kcnn: interrupted"
    kept = [argument for argument in arguments if argument not in NOT_REPEATED]
    command = shlex.join(["kcnn", *kept, *_RESUME.added])
    if len(command) <= MAX_LINE - 90:
        return f"kcnn: interrupted; to go on from the last finished epoch, run: {command}"
    changes = [*(f"without {flag}" for flag in NOT_REPEATED if flag in arguments), *(
        [f"with {shlex.join(_RESUME.added)}"] if _RESUME.added else [])]
    return ("kcnn: interrupted; to go on from the last finished epoch, run the same command again"
            + (f" {' and '.join(changes)}" if changes else ""))


def run_command(as_json: bool, work: Callable[[], dict[str, Any]],
                render: Callable[[dict[str, Any]], None] | None = None,
                needs_tensorflow: bool = True) -> dict[str, Any]:
    """Run ``work`` with stdout sent to stderr, then print its result.

    ``render`` prints the human form (to stdout); without it, a compact
    ``key: value`` listing is printed.  Returns the result.
    """
    if needs_tensorflow:
        import_tensorflow_quietly()
    with contextlib.redirect_stdout(sys.stderr):
        result = work()
    if as_json:
        click.echo(json.dumps(to_jsonable(result)))
    elif render is not None:
        render(result)
    else:
        for key, value in result.items():
            click.echo(f"{key}: {value}")
    return result


def echo_calibration(result: dict[str, Any]) -> None:
    """A stage result's calibration line (when the stage calibrated; a finished stage re-run may predate it)."""
    if result.get("calibration"):
        from keras_cnn.run_calibration import describe_calibration

        click.echo(f"  {describe_calibration(result['calibration'])}")


def test_result(result: dict) -> str:
    """What a training command's one-line summary says about the test part."""
    if result.get("multi_label"):
        if result.get("test_macro_map") is None:
            return "no test part" if result.get("test_loss") is None else "no label with a test image"
        return f"test mAP {result['test_macro_map']:.4f}, micro F1 {result['test_micro_f1']:.4f}"
    accuracy = result.get("test_accuracy")
    return f"test accuracy {accuracy:.4f}" if accuracy is not None else "no test part"
