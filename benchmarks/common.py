"""What every benchmark script shares: the machine it ran on, its load, and RESULTS.md.

A result without its machine is not a result: :func:`machine_description` gathers the CPU
model, the cores this process may use, the GPU (if any), the platform and the Python /
TensorFlow / Keras versions; :func:`load_average` says how busy the (shared) machine was;
:func:`append_section` appends a dated section to ``benchmarks/RESULTS.md``, creating the
file with its header first.

The scripts import this file as ``common`` (``python benchmarks/NAME.py`` puts
``benchmarks/`` first on ``sys.path``).  TensorFlow is imported only inside the functions
that need it.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Iterable
from pathlib import Path

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
RESULTS_HEADER = """# Benchmark results

Each section below was appended by one of the scripts in `benchmarks/` (the script named in
the heading), with the machine it ran on.  Numbers from a shared machine are noisy; each
section says how loaded the machine was.
"""


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``"1.5, 2.5, 2.7"`` (``"n/a"`` where unknown)."""
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask: a container's share, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gpu_names() -> list[str]:
    """Names of the GPUs TensorFlow sees (e.g. ``"NVIDIA H100 80GB HBM3"``); empty without one."""
    import tensorflow as tf

    names = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(device)
        except (RuntimeError, ValueError):
            details = {}
        names.append(details.get("device_name") or device.name)
    return names


def machine_description() -> dict[str, str]:
    """The machine and software a measurement ran on; ``load`` is the load average now.

    Keys: cpu, cores, gpu (``"none"`` without one), load, platform, python, tensorflow, keras.
    """
    import keras
    import tensorflow as tf

    return {
        "cpu": cpu_model(),
        "cores": str(usable_cores()),
        "gpu": ", ".join(gpu_names()) or "none",
        "load": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def describe_machine(machine: dict[str, str], load_after: str | None = None) -> str:
    """One line for a RESULTS.md section: the machine, the versions and the load before/after."""
    gpu = "no GPU" if machine.get("gpu", "none") == "none" else f"GPU: {machine['gpu']}"
    load = f"Load average (1/5/15 min) before: {machine['load']}"
    if load_after is not None:
        load += f"; after: {load_after}"
    return (f"Machine: {machine['cpu']}, {machine['cores']} usable cores, {gpu}; {machine['platform']}; "
            f"Python {machine['python']}, TensorFlow {machine['tensorflow']}, Keras {machine['keras']}.  "
            f"{load}.")


def timestamp() -> str:
    """Local date and time with its zone, as section headings show it."""
    return datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def append_section(title: str, lines: Iterable[str], path: str | os.PathLike = RESULTS_PATH,
                   stamp: str | None = None) -> Path:
    """Append ``## <title> — <stamp>`` and ``lines`` (one string per line) to ``path``.

    The file is created with :data:`RESULTS_HEADER` when it does not exist yet.  Returns
    the path written.
    """
    path = Path(path)
    if not path.exists():
        path.write_text(RESULTS_HEADER, encoding="utf-8")
    body = "\n".join(["", f"## {title} — {stamp or timestamp()}", "", *lines])
    with path.open("a", encoding="utf-8") as handle:
        handle.write(body.rstrip("\n") + "\n")
    return path


def command_line(script: str, argv: list[str] | None) -> str:
    """How this run was started, e.g. ``python benchmarks/predict.py --batch-size 32``, quoted for a shell."""
    import shlex
    import sys

    return shlex.join(["python", f"benchmarks/{Path(script).name}", *(argv if argv is not None else sys.argv[1:])])


def publish(title: str, lines: list[str], arguments) -> None:
    """Print a section and, unless ``--no-record``, append it to ``arguments.results``.

    ``--note`` (when given) is added under the section first.
    """
    if getattr(arguments, "note", None):
        lines = [*lines, arguments.note, ""]
    print("\n".join(lines))
    if not arguments.no_record:
        print(f"appended to {append_section(title, lines, arguments.results)}")


def ratio_verdict(ratio: float, target: float) -> str:
    """``"meets"`` or ``"MISSES"`` the ``target`` ratio, for the printed summary."""
    return "meets" if ratio >= target else "MISSES"


def add_recording_arguments(parser) -> None:
    """``--results``, ``--no-record`` and ``--note``: where and whether :func:`publish` records."""
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="Markdown file to append to")
    parser.add_argument("--no-record", action="store_true", help="print only; do not touch RESULTS.md")
    parser.add_argument("--note", default="", help="a sentence added under the table")


def steady_epoch_seconds(epoch_seconds: list[float], statistic: str = "mean") -> float:
    """Mean (or ``statistic="median"``) epoch time after the first, which traces the step;
    the only epoch if there is one."""
    import statistics

    later = epoch_seconds[1:] or epoch_seconds
    return statistics.median(later) if statistic == "median" else statistics.fmean(later)
