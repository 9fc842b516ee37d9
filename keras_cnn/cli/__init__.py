"""The ``kcnn`` command line: a click group whose commands live in small modules.

Commands are loaded lazily from ``COMMANDS`` so ``kcnn --help`` and ``kcnn --version``
never import TensorFlow; each command module imports the heavy parts inside its function.
Errors are mapped here, once: ``UserError`` and click usage errors exit 2 with one line,
other failures exit 1 with one line, and ``--debug`` (or ``KCNN_DEBUG=1``) re-raises so
the traceback shows.  Output is set up here too: other packages' warnings and logs stay
out (``keras_cnn.library_chatter``), and every message starts on a fresh line and stays bounded
(``keras_cnn.progress``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from typing import Iterator

import click

import keras_cnn
from keras_cnn.cli.common import QUIET_HELP, enable_debug, enable_quiet, forget_resumable, interrupted_message
from keras_cnn.errors import KcnnError, disk_full_message, first_line, is_disk_full
from keras_cnn.messages import did_you_mean
from keras_cnn.progress import emit, route_kcnn_logs, track_stderr
from keras_cnn.library_chatter import debugging, native_noise_filtered, quiet_library_messages

# command name -> "module:attribute"; adding a command = one line here plus its module.
COMMANDS = {
    "models": "keras_cnn.cli.models_command:models",
    "summary": "keras_cnn.cli.models_command:summary",
    "sample-data": "keras_cnn.cli.sample_command:sample_data",
    "split": "keras_cnn.cli.split_command:split",
    "train": "keras_cnn.cli.train_command:train",
    "transfer": "keras_cnn.cli.transfer_command:transfer",
    "finetune": "keras_cnn.cli.transfer_command:finetune",
    "lr-find": "keras_cnn.cli.lr_find_command:lr_find",
    "evaluate": "keras_cnn.cli.evaluate_command:evaluate",
    "calibrate": "keras_cnn.cli.calibrate_command:calibrate",
    "export": "keras_cnn.cli.export_command:export",
    "predict": "keras_cnn.cli.predict_command:predict",
    "serve": "keras_cnn.cli.serve_command:serve",
    "demo": "keras_cnn.cli.demo_command:demo",
    "devices": "keras_cnn.cli.devices_command:devices",
    "doctor": "keras_cnn.cli.doctor_command:doctor",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an exception: every atomic write removes its temporary, as on Ctrl-C."""


@contextlib.contextmanager
def _terminate_like_ctrl_c() -> Iterator[threading.Event]:
    """While a command runs, SIGTERM unwinds it like Ctrl-C (Python's default would end it on the spot).

    Yields an event set once SIGTERM came: the exception can surface as another one when it
    interrupts a library half-way, and the command still ends as terminated.
    """
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield received
        return

    def terminate(signum, frame):
        received.set()
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class KcnnGroup(click.Group):
    """A group that loads commands on demand and turns exceptions into exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # A command whose module is not there yet is simply not offered.
            if error.name == module_name:
                return None
            raise
        return getattr(module, attribute)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else ""
        if name and not name.startswith("-") and not ctx.resilient_parsing and self.get_command(ctx, name) is None:
            ctx.fail(f"No such command '{name}'{did_you_mean(name, COMMANDS)}")
        return super().resolve_command(ctx, args)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # TensorFlow's C++ INFO/WARNING lines would bury kcnn's own output; --debug keeps them.
        # (--debug is looked for now: its click callback runs only once the command is parsed.)
        if _asks_for_debug(sys.argv[1:] if args is None else list(args)):
            os.environ["KCNN_DEBUG"] = "1"
        if not debugging():
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with native_noise_filtered():
            track_stderr()
            quiet_library_messages()
            route_kcnn_logs()
            forget_resumable()
            arguments = list(sys.argv[1:] if args is None else args)
            with _terminate_like_ctrl_c() as terminated:
                try:
                    result = super().main(args, prog_name or "kcnn", complete_var, standalone_mode=False, **extra)
                except click.exceptions.Exit as stop:
                    sys.exit(stop.exit_code)
                except BaseException:
                    if terminated.is_set() and not debugging():
                        emit("kcnn: terminated")
                        sys.exit(143)
                    self._report_failure(arguments)
        sys.exit(result if isinstance(result, int) else 0)

    @staticmethod
    def _report_failure(arguments: list[str]) -> None:
        """The exception being handled as one line and its exit code (re-raised under --debug)."""
        try:
            raise
        except click.exceptions.Abort:
            # click turns Ctrl-C into Abort.
            emit(interrupted_message(arguments))
            sys.exit(130)
        except click.ClickException as error:
            # Usage errors (unknown option, bad value, missing argument): one line, exit 2.
            if debugging():
                raise
            emit(f"kcnn: error: {error.format_message()} (see --help)")
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            emit(interrupted_message(arguments))
            sys.exit(130)
        except KcnnError as error:
            if debugging():
                raise
            emit(f"kcnn: error: {first_line(error)}")
            sys.exit(error.exit_code)
        except Exception as error:  # noqa: BLE001 - the top level maps every failure to exit 1
            if debugging():
                raise
            if is_disk_full(error):
                # Written by a library (TensorBoard's logs, a SavedModel): the file it names, if any.
                emit(f"kcnn: error: {disk_full_message(getattr(error, 'filename', None))}")
            else:
                emit(f"kcnn: error: {type(error).__name__}: {first_line(error)} "
                     "(run with --debug for the traceback)")
            sys.exit(1)


def _asks_for_debug(arguments: list[str]) -> bool:
    """Whether ``--debug`` is among the options (before a ``--``)."""
    return "--debug" in (arguments[:arguments.index("--")] if "--" in arguments else arguments)


@click.group(cls=KcnnGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(keras_cnn.__version__, "--version", prog_name="kcnn", message="%(prog)s %(version)s")
@click.option(
    "--debug", is_flag=True, expose_value=False, is_eager=True, callback=enable_debug,
    help="Show the full traceback on errors (also KCNN_DEBUG=1).",
)
@click.option("--quiet", "-q", is_flag=True, expose_value=False, is_eager=True, callback=enable_quiet,
              help=QUIET_HELP + " Also KCNN_QUIET=1.")
def cli() -> None:
    """kcnn: train image classifiers with Keras 3, from scratch or by transfer learning.

    \b
    Typical flow:
      kcnn sample-data data/                      # or your own images + label.csv
      kcnn split data/label.csv -o split.csv      # stable SHA-1 based split
      kcnn transfer --base efficientnet_b0 --split split.csv --images data/ --out runs/a
      kcnn finetune --run runs/a --unfreeze-from block7a
      kcnn evaluate --run runs/a
      kcnn export --run runs/a --out export/
      kcnn predict --model export/1 image.jpg

    Run `kcnn demo` to see the whole flow on generated sample data. Progress goes to
    stderr (live bars on a terminal, one plain line per epoch in a pipe or a log file);
    --json prints the result as one JSON object on stdout. Shell completion (bash):
    eval "$(_KCNN_COMPLETE=bash_source kcnn)".
    """


def main() -> None:
    """Console-script entry point."""
    cli.main(prog_name="kcnn")
