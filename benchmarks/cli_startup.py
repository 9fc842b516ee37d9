"""Start-up of the command line: ``kcnn --help`` against the bare start of Python with click.

``kcnn --help`` (and ``--version``, and every ``kcnn COMMAND --help``) must answer without
importing TensorFlow; the tests check that no TensorFlow module is loaded.  How long it
takes depends on the machine and its load, so it is measured here, not asserted in a test:
each round times, in fresh processes, ``python -m keras_cnn --help``, ``python -m keras_cnn
train --help`` and the reference ``python -c "import click"`` (the interpreter and the CLI
library, which no command line can avoid), one after the other, and the ratios of the
medians are reported (target: ``kcnn --help`` within 3x the reference, about 1 s on a laptop).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from common import add_recording_arguments, command_line, describe_machine, load_average, machine_description, publish

SECTION_TITLE = "Command-line start-up: `kcnn --help` vs `python -c 'import click'`"
TARGET_RATIO = 3.0
COMMANDS = {
    "reference": [sys.executable, "-c", "import click"],
    "kcnn --help": [sys.executable, "-m", "keras_cnn", "--help"],
    "kcnn train --help": [sys.executable, "-m", "keras_cnn", "train", "--help"],
}


def seconds_of(command: list[str]) -> float:
    """Wall time of one run of ``command`` in a fresh process (its output discarded; it must succeed)."""
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="runs of each command, interleaved")
    add_recording_arguments(parser)
    arguments = parser.parse_args(argv)

    machine = machine_description()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for name, command in COMMANDS.items():
        seconds_of(command)   # warm the page cache: every measured round reads the same files
    for _ in range(arguments.rounds):
        for name, command in COMMANDS.items():
            times[name].append(seconds_of(command))
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = medians["reference"]
    lines = [f"`{command_line(__file__, argv)}`: {arguments.rounds} interleaved rounds, median wall time per run "
             "in a fresh process.", "",
             "| command | median s | min s | ratio to reference | target |", "|---|---:|---:|---:|---:|"]
    for name, median in medians.items():
        target = f"<= {TARGET_RATIO:g}x" if name == "kcnn --help" else ""
        lines.append(f"| `{name}` | {median:.3f} | {min(times[name]):.3f} | {median / reference:.2f}x | {target} |")
    ratio = medians["kcnn --help"] / reference
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    lines += ["", f"`kcnn --help` takes {ratio:.2f}x the bare interpreter with click ({verdict} the "
              f"{TARGET_RATIO:g}x target).", "", describe_machine(machine, load_average()), ""]
    publish(SECTION_TITLE, lines, arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
