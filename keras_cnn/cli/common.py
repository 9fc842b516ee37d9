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
import sys
from typing import Any, Callable

import click

from keras_cnn.io import to_jsonable
from keras_cnn.library_chatter import import_tensorflow_quietly


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


overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Start this stage over: removes its epochs, checkpoints, logs and eval/ (and any later stage's).",
)


debug_option = option_group(
    click.option("--quiet", "-q", is_flag=True, expose_value=False, is_eager=True, callback=enable_quiet,
                 help=QUIET_HELP),
    click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=enable_debug,
                 help="Show the full traceback on errors."),
)
"""``--quiet`` and ``--debug``, which every command takes (under this one name every command imports)."""


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


def test_result(result: dict) -> str:
    """What a training command's one-line summary says about the test part."""
    if result.get("multi_label"):
        if result.get("test_macro_map") is None:
            return "no test part" if result.get("test_loss") is None else "no label with a test image"
        return f"test mAP {result['test_macro_map']:.4f}, micro F1 {result['test_micro_f1']:.4f}"
    accuracy = result.get("test_accuracy")
    return f"test accuracy {accuracy:.4f}" if accuracy is not None else "no test part"
