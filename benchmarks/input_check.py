"""Checking a run's inputs: 100,000 unchanged image files checked against the run's record.

Every command that reads a run's images again first checks them against ``RUN/inputs.json``
(:mod:`keras_cnn.data.input_record`): one ``stat`` per file, a re-hash only where a stamp
changed, and a listing of the folder the run split for images added since.  This measures,
on a class-folder tree of small files that the run split itself (the costliest case: the
folder is listed too):

1. making the record (every file stamped and hashed, once per run);
2. the check of the unchanged tree (target: < 2 s for 100,000 files);
3. the check after ``touch`` gave 1 % of the files new stamps (same bytes: re-hashed, stamps kept);
4. the reference: re-hashing every file (kcnn's threaded hasher), what a check without stamps costs.

Files are in the page cache (they were just written and hashed); the ratio is 4 / 2, measured in the
same run.  The generated files live in a temporary folder that is deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS_PATH, command_line, describe_machine, load_average, machine_description, publish

SECTION_TITLE = "Checking a run's inputs: unchanged image files against the run's record"


def write_tree(root: Path, files: int, classes: int, size: int) -> None:
    """``root/class_<k>/img_<n>.png``: ``size`` random bytes each (the check never decodes them)."""
    for index in range(files):
        folder = root / f"class_{index % classes}"
        if index < classes:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{index:07d}.png").write_bytes(os.urandom(size))


def timed(function, repeats: int) -> tuple[float, object]:
    """The median time of ``repeats`` calls of ``function`` and its last result."""
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def measure(files: int, classes: int, size: int, repeats: int, scratch: Path) -> dict:
    """Every measurement of the module docstring: seconds, and what each check found."""
    from keras_cnn.config import DataConfig
    from keras_cnn.data.collection import content_sha1s, split_to_file
    from keras_cnn.data.input_record import check_inputs

    tree, run = scratch / "images", scratch / "run"
    write_tree(tree, files, classes, size)
    run.mkdir()
    split_to_file(str(tree), str(run / "split.csv"))
    data = DataConfig(split=str(run / "split.csv"), images=str(tree))
    record_seconds, made = timed(lambda: check_inputs(run, data, split_itself=True), 1)
    unchanged_seconds, unchanged = timed(lambda: check_inputs(run, data), repeats)
    touched = sorted(tree.rglob("*.png"))[:: 100]
    for path in touched:
        os.utime(path)

    def check_touched():
        for path in touched:   # new stamps again for every repeat, so each one re-hashes them
            os.utime(path)
        return check_inputs(run, data)

    touched_seconds, refreshed = timed(check_touched, repeats)
    object_ids = [path.relative_to(tree).as_posix() for path in sorted(tree.rglob("*.png"))]
    rehash_seconds, digests = timed(lambda: content_sha1s(tree, object_ids), repeats)
    return {"files": files, "record": record_seconds, "record_created": made.created,
            "unchanged": unchanged_seconds, "unchanged_changes": len(unchanged.changes),
            "touched": touched_seconds, "touched_files": len(touched), "refreshed": refreshed.refreshed,
            "rehash": rehash_seconds, "rehashed": len(digests)}


def section_lines(result: dict, arguments, machine: dict[str, str], load_after: str,
                  argv: list[str] | None) -> list[str]:
    """The RESULTS.md section: machine, table, ratio and the command."""
    files = result["files"]
    meets = "meets" if result["unchanged"] < 2 * files / 100_000 else "MISSES"
    return [
        describe_machine(machine, load_after),
        "",
        (f"{files:,} files of {arguments.size:,} random bytes in {arguments.classes} class folders, split by the run "
         f"itself (so each check also lists the folder for added images); median of {arguments.repeats} runs, files "
         "in the page cache."),
        "",
        "| what | seconds | files per second | found |",
        "|---|---:|---:|---|",
        f"| making the record (stat + SHA-1 of every file) | {result['record']:.2f} | {files / result['record']:,.0f} | "
        f"created: {result['record_created']} |",
        f"| check, nothing changed | {result['unchanged']:.2f} | {files / result['unchanged']:,.0f} | "
        f"{result['unchanged_changes']} changes; target < 2 s per 100,000 files: {meets} |",
        f"| check, {result['touched_files']:,} files touched (new stamps, same bytes) | {result['touched']:.2f} | "
        f"{files / result['touched']:,.0f} | {result['refreshed']:,} stamps refreshed |",
        f"| reference: re-hash every file (threaded) | {result['rehash']:.2f} | {files / result['rehash']:,.0f} | "
        f"{result['rehashed']:,} hashed |",
        "",
        (f"Ratio: re-hashing every file / the stamp check {result['rehash'] / result['unchanged']:.1f}x (on "
         f"{arguments.size:,}-byte files; photos of a few hundred KB make re-hashing proportionally slower, "
         "the stamp check not)."),
        f"Command: `{command_line(__file__, argv)}`",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000, help="Image files in the class tree.")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=4096, help="Bytes per file.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each check (the median is reported).")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="Markdown file to append to.")
    parser.add_argument("--no-record", "--no-write", dest="no_record", action="store_true",
                        help="Print only; do not append to RESULTS.md.")
    parser.add_argument("--note", default=None, help="A line added under the section (e.g. the machine's load).")
    arguments = parser.parse_args(argv)

    machine = machine_description()
    with tempfile.TemporaryDirectory(prefix="kcnn-input-check-benchmark-") as scratch:
        started = time.perf_counter()
        result = measure(arguments.files, arguments.classes, arguments.size, arguments.repeats, Path(scratch))
        print(f"(all measurements took {time.perf_counter() - started:.0f} s)", file=sys.stderr)
        publish(SECTION_TITLE, section_lines(result, arguments, machine, load_average(), argv), arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
