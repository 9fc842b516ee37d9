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

import importlib
import os
import sys

import click

import keras_cnn
from keras_cnn.cli.common import QUIET_HELP, enable_debug, enable_quiet
from keras_cnn.errors import KcnnError, first_line
from keras_cnn.progress import emit, route_kcnn_logs, track_stderr
from keras_cnn.library_chatter import debugging, quiet_library_messages

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

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # TensorFlow's C++ INFO/WARNING lines would bury kcnn's own output; --debug keeps them.
        if not debugging():
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        track_stderr()
        quiet_library_messages()
        route_kcnn_logs()
        try:
            result = super().main(args, prog_name or "kcnn", complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as stop:
            sys.exit(stop.exit_code)
        except click.exceptions.Abort:
            emit("kcnn: interrupted")
            sys.exit(130)
        except click.ClickException as error:
            # Usage errors (unknown option, bad value, missing argument): one line, exit 2.
            if debugging():
                raise
            emit(f"kcnn: error: {error.format_message()} (see --help)")
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            emit("kcnn: interrupted")
            sys.exit(130)
        except KcnnError as error:
            if debugging():
                raise
            emit(f"kcnn: error: {first_line(error)}")
            sys.exit(error.exit_code)
        except Exception as error:  # noqa: BLE001 - the top level maps every failure to exit 1
            if debugging():
                raise
            emit(f"kcnn: error: {type(error).__name__}: {first_line(error)} "
                 "(run with --debug for the traceback)")
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


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
