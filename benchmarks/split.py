"""Splitting at scale: a 1,000,000-row label CSV, and 100,000 image files in class folders.

Three measurements, each in its own Python process (so its peak memory is its own):

1. ``kcnn split LABEL_CSV`` on a label CSV of SHA-1 names, against the
   original pandas split script on the same file (targets: < 20 s, < 1.5 GiB);
2. ``kcnn split DIR`` on a class-folder tree of small PNG files with arbitrary names:
   listing + hashing their bytes + splitting, with the files in the page cache, against a
   plain one-thread loop that hashes each file (target: >= 5,000 files/s);
3. the bad-image pre-flight (``find_bad_images``: every file read and decoded by
   TensorFlow in a parallel tf.data map) on the same files, against decoding them one at a
   time in a Python loop (on a sample, as the loop is slow).

The generated files live in a temporary folder that is deleted at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS_PATH, command_line, describe_machine, load_average, machine_description, publish

SECTION_TITLE = "Splitting: a 1,000,000-row label CSV and 100,000 image files in class folders"
REPOSITORY = Path(__file__).resolve().parent.parent

# Each child prints one JSON line: {"seconds": ..., "peak_mib": ..., **extra}.  VmHWM (the
# process's own peak resident memory) rather than ru_maxrss, which a child inherits from its parent.
_CHILD_FOOTER = """
import json
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak, **extra}))
"""

# `kcnn split SOURCE -o OUTPUT` (a label CSV or a folder), its imports (pandas) left out of the time.
KCNN_SPLIT = """
import time
import keras_cnn.data.collection
from keras_cnn.data.collection import split_to_file
start = time.perf_counter()
result = split_to_file({source!r}, {output!r})
seconds = time.perf_counter() - start
extra = {{"rows": result["sizes"]["total"]}}
"""

# The original SHA-1 split script (two labels, 0 and 1), reading and writing files as it did.
ORIGINAL_SPLIT_CSV = """
import re, time
import pandas as pd
start = time.perf_counter()
df = pd.read_csv({label_csv!r})
value_0, value_1 = df["value"] == 0, df["value"] == 1
df["type"] = "train"
split_key = df["objectId"].apply(lambda object_id: int(re.sub("\\\\..+$", "", object_id)[-2:], 16))
df.loc[(split_key >= 0) & (split_key <= 24), "type"] = "test"
df.loc[(split_key >= 25) & (split_key <= 49), "type"] = "validation"
for part in ("test", "validation"):
    in_0, in_1 = (df["type"] == part) & value_0, (df["type"] == part) & value_1
    smallest = min(len(df[in_0]), len(df[in_1]))
    df.loc[df[in_0].index[smallest:], "type"] = "train"
    df.loc[df[in_1].index[smallest:], "type"] = "train"
df.to_csv({output!r}, index=False)
seconds = time.perf_counter() - start
extra = {{"rows": len(df)}}
"""

# The reference for hashing: one thread, one file after the other, whole file read.
LOOP_HASH_TREE = """
import hashlib, os, time
start = time.perf_counter()
digests = []
for directory, _folders, files in os.walk({tree!r}):
    for name in sorted(files):
        with open(os.path.join(directory, name), "rb") as handle:
            digests.append(hashlib.sha1(handle.read()).hexdigest())
seconds = time.perf_counter() - start
extra = {{"rows": len(digests)}}
"""

KCNN_PREFLIGHT = """
import time
import pandas as pd
from keras_cnn.data.files import find_bad_images
ids = pd.read_csv({split!r}, dtype=str)["objectId"].tolist()
find_bad_images({tree!r}, ids[:8], progress=False)  # warm-up: TensorFlow's first run of a pipeline
start = time.perf_counter()
bad = find_bad_images({tree!r}, ids, progress=False)
seconds = time.perf_counter() - start
extra = {{"rows": len(ids), "bad": len(bad)}}
"""

LOOP_PREFLIGHT = """
import time
import pandas as pd
import tensorflow as tf
from keras_cnn.data.images import decode_image
ids = pd.read_csv({split!r}, dtype=str)["objectId"].tolist()[:{sample}]
decode_image(tf.io.read_file({tree!r} + "/" + ids[0]), 3)  # warm-up
start = time.perf_counter()
for object_id in ids:
    decode_image(tf.io.read_file({tree!r} + "/" + object_id), 3)
seconds = time.perf_counter() - start
extra = {{"rows": len(ids)}}
"""


def run_child(template: str, **values) -> dict:
    """Run ``template`` (formatted with ``values``) in a fresh Python; return its JSON line."""
    code = template.format(**values) + _CHILD_FOOTER
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                               check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def write_label_csv(path: Path, rows: int) -> None:
    """``objectId,value`` with SHA-1 names (mixed extensions) and labels 0/1 (30 % / 70 %)."""
    with path.open("w", encoding="utf-8") as handle:
        handle.write("objectId,value\n")
        for index in range(rows):
            digest = hashlib.sha1(index.to_bytes(8, "little")).hexdigest()
            handle.write(f"{digest}.jpg,{int(digest[0], 16) >= 5}\n".replace("True", "1").replace("False", "0"))


def write_image_tree(root: Path, files: int, classes: int, side: int) -> None:
    """``root/class_<k>/photo <n>.png``: small random PNGs with arbitrary names."""
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(0)
    for index in range(files):
        folder = root / f"class_{index % classes}"
        if index < classes:
            folder.mkdir(parents=True, exist_ok=True)
        pixels = generator.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
        (folder / f"photo {index:07d}.png").write_bytes(buffer.getvalue())


def measure(rows: int, files: int, classes: int, side: int, loop_sample: int, scratch: Path) -> dict:
    """Every measurement of the module docstring; returns their child reports."""
    label_csv = scratch / "label.csv"
    write_label_csv(label_csv, rows)
    csv_kcnn = run_child(KCNN_SPLIT, source=str(label_csv), output=str(scratch / "split_csv.csv"))
    csv_original = run_child(ORIGINAL_SPLIT_CSV, label_csv=str(label_csv), output=str(scratch / "original_csv.csv"))
    label_csv.unlink()

    tree = scratch / "tree"
    write_image_tree(tree, files, classes, side)
    split = scratch / "split_tree.csv"
    tree_first = run_child(KCNN_SPLIT, source=str(tree), output=str(split))  # fills the page cache
    tree_warm = run_child(KCNN_SPLIT, source=str(tree), output=str(split))
    loop_hash = run_child(LOOP_HASH_TREE, tree=str(tree))
    preflight = run_child(KCNN_PREFLIGHT, tree=str(tree), split=str(split))
    loop_preflight = run_child(LOOP_PREFLIGHT, tree=str(tree), split=str(split), sample=min(loop_sample, files))
    return {"csv_kcnn": csv_kcnn, "csv_original": csv_original, "tree_first": tree_first, "tree_warm": tree_warm,
            "loop_hash": loop_hash, "preflight": preflight, "loop_preflight": loop_preflight}


def _rate(report: dict) -> float:
    return report["rows"] / report["seconds"]


def section_lines(result: dict, arguments, machine: dict[str, str], load_after: str,
                  argv: list[str] | None) -> list[str]:
    """The RESULTS.md section: machine, table, ratios and the command."""
    def row(name, report, target=""):
        return (f"| {name} | {report['rows']:,} | {report['seconds']:.2f} | {_rate(report):,.0f} | "
                f"{report['peak_mib']:,.0f} | {target} |")

    csv_ok = result["csv_kcnn"]["seconds"] < 20 and result["csv_kcnn"]["peak_mib"] < 1536
    tree_ok = _rate(result["tree_warm"]) >= 5000
    return [
        describe_machine(machine, load_after),
        "",
        (f"{arguments.rows:,}-row label CSV of SHA-1 names; {arguments.files:,} PNG files of "
         f"{arguments.side}x{arguments.side} in {arguments.classes} class folders, arbitrary names.  Each line "
         f"is one fresh Python process (its peak resident memory, start-up not timed)."),
        "",
        "| what | rows / files | seconds | per second | peak MiB | target |",
        "|---|---:|---:|---:|---:|---|",
        row("`kcnn split label.csv` (SHA-1 names)", result["csv_kcnn"],
            f"< 20 s, < 1,536 MiB: {'meets' if csv_ok else 'MISSES'}"),
        row("the original pandas split script, same file", result["csv_original"]),
        row("`kcnn split DIR`, first run after writing", result["tree_first"]),
        row("`kcnn split DIR`, warm (list + hash + split)", result["tree_warm"],
            f">= 5,000 files/s: {'meets' if tree_ok else 'MISSES'}"),
        row("one-thread loop hashing each file (no split)", result["loop_hash"]),
        row("pre-flight `find_bad_images` (tf.data, parallel decode)", result["preflight"]),
        row("pre-flight as a Python loop, one image at a time (sample)", result["loop_preflight"]),
        "",
        (f"Ratios: label CSV, original script / kcnn time {result['csv_original']['seconds'] / result['csv_kcnn']['seconds']:.2f}x; "
         f"class tree, kcnn warm / one-thread hash loop {_rate(result['tree_warm']) / _rate(result['loop_hash']):.2f}x "
         f"(kcnn also lists, checks names and labels, splits and writes the CSV); pre-flight, tf.data / loop "
         f"{_rate(result['preflight']) / _rate(result['loop_preflight']):.1f}x."),
        f"Command: `{command_line(__file__, argv)}`",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="Rows of the label CSV.")
    parser.add_argument("--files", type=int, default=100_000, help="Image files in the class tree.")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--side", type=int, default=16, help="Side of the generated PNGs in pixels.")
    parser.add_argument("--loop-sample", type=int, default=5_000,
                        help="Images the one-at-a-time pre-flight reference decodes.")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH, help="Markdown file to append to.")
    parser.add_argument("--no-record", "--no-write", dest="no_record", action="store_true",
                        help="Print only; do not append to RESULTS.md.")
    parser.add_argument("--note", default=None, help="A line added under the section (e.g. the machine's load).")
    arguments = parser.parse_args(argv)

    machine = machine_description()
    with tempfile.TemporaryDirectory(prefix="kcnn-split-benchmark-") as scratch:
        started = time.perf_counter()
        result = measure(arguments.rows, arguments.files, arguments.classes, arguments.side,
                         arguments.loop_sample, Path(scratch))
        print(f"(all measurements took {time.perf_counter() - started:.0f} s)", file=sys.stderr)
        # Before the clean-up: deleting 100,000 files takes minutes on a busy disk.
        publish(SECTION_TITLE, section_lines(result, arguments, machine, load_average(), argv), arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
