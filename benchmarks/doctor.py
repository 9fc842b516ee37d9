"""``kcnn doctor`` at scale: every stage on 10,000 images, and the neighbour search on 100,000 vectors.

Three kinds of measurement, each in its own Python process (so its peak memory is its own):

1. the doctor pipeline on ``--images`` generated JPEG pictures (10 classes, with planted
   near-duplicate copies): reading and splitting, the image check, thumbnails, the picture
   checks, features of a frozen ``--base`` (random weights: the time is the same as with
   ImageNet's), the neighbour search, the k-fold head (also timed with BLAS on every core,
   the reference for kcnn's one-thread choice), cleanlab, outliers, near-duplicates and the
   output files, stage by stage;
2. the neighbour search alone on ``--vectors`` random ``--dimensions``-d vectors (k = 10);
3. on ``--reference-size`` vectors, kcnn's blocked search against the references: the full
   n x n distance matrix (what a naive search builds) and scikit-learn's brute-force
   ``NearestNeighbors``.

The generated files live in a temporary folder that is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import add_recording_arguments, command_line, describe_machine, load_average, machine_description, publish

SECTION_TITLE = "kcnn doctor: the pipeline on 10,000 images, the neighbour search on 100,000 vectors"
REPOSITORY = Path(__file__).resolve().parent.parent

# Each child prints one JSON line: {"peak_mib": ..., **result}.  VmHWM is the process's own peak.
_CHILD_FOOTER = """
import json
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
print(json.dumps({"peak_mib": peak, **result}))
"""

PIPELINE = """
import contextlib, sys, time
import numpy as np, pandas as pd
from keras_cnn.library_chatter import import_tensorflow_quietly
import_tensorflow_quietly()
from keras_cnn.data.files import find_bad_images, resolve_image_paths
from keras_cnn.doctor import duplicates, findings, labels, outliers, pictures
from keras_cnn.doctor.features import base_feature_source, image_features
from keras_cnn.doctor.neighbours import nearest_neighbours, unit_rows
from keras_cnn.doctor.report import write_doctor_report
from keras_cnn.doctor.balance import balance_summary
from keras_cnn.doctor.source import read_doctor_source
from keras_cnn.doctor.thumbnails import image_sizes, read_pixels

seconds, started = {{}}, time.perf_counter()
def lap(name):
    global started
    now = time.perf_counter()
    seconds[name] = now - started
    started = now

with contextlib.redirect_stdout(sys.stderr):
    data = read_doctor_source({images!r})
    table = data.table
    lap("read and split (hash every file)")
    bad = find_bad_images(data.images, table["objectId"].tolist(), progress=False)
    lap("image check (decode every file)")
    paths = resolve_image_paths(data.images, table["objectId"].tolist())
    thumbnails, blur = read_pixels(paths)
    lap("thumbnails and blur (decode again)")
    rows = [pictures.cleanvision_findings(table, paths)]
    lap("cleanvision: dark, light, odd aspect (Pillow decode)")
    rows += [pictures.blurry_findings(table, blur, thumbnails), pictures.small_findings(table, image_sizes(paths)),
             pictures.grayscale_findings(table, thumbnails)]
    lap("own picture checks (blurry, small, grey)")
    source = base_feature_source({base!r}, "none", {image_size!r})
    lap("build the base")
    features = image_features(source, table, data.images)
    lap("features")
    distances, neighbours = nearest_neighbours(unit_rows(features), 10)
    lap("neighbour search (k = 10)")
    indices = table["value"].map({{label: index for index, label in enumerate(data.labels)}}).to_numpy()
    probabilities = labels.out_of_fold_probabilities(features, indices, len(data.labels), 5, 0)
    lap("5-fold head (1 BLAS thread)")
    rows.append(labels.label_issue_findings(table, indices, probabilities, data.labels))
    lap("cleanlab")
    rows.append(outliers.outlier_findings(table, distances))
    lap("outliers")
    near = duplicates.near_duplicate_pairs(thumbnails, neighbours, table["sha1"].to_numpy(dtype=object))
    rows.append(duplicates.pair_findings(table, near, "near_duplicate"))
    lap("near-duplicates (hash search + pixel check)")
    found = findings.ordered_findings(rows)
    findings.write_issues_csv(found, {scratch!r} + "/issues.csv")
    summary = {{"source": "bench", "images": len(table), "labels": data.labels, "features": source.description,
               "counts": findings.issue_counts(found), "excluded": 0, "balance": balance_summary(table, data.labels),
               "notes": []}}
    write_doctor_report({scratch!r} + "/doctor.html", found, table, data.images, summary, {{}})
    lap("issues.csv and doctor.html")
    labels.out_of_fold_probabilities(features, indices, len(data.labels), 5, 0, blas_threads=None)
    lap("reference: 5-fold head, BLAS on every core")

pairs = {{frozenset((table["objectId"][a], table["objectId"][b])) for a, b in zip(near["first"], near["second"])}}
planted = pd.read_csv({truth!r}, dtype=str)
wanted = {{frozenset(pair) for pair in zip(planted["copy"], planted["original"])}}
result = {{"seconds": seconds, "images": len(table), "feature_width": int(features.shape[1]),
          "counts": findings.issue_counts(found), "pairs_found": len(pairs), "planted": len(wanted),
          "planted_found": len(pairs & wanted)}}
"""

SEARCH = """
import time
import numpy as np
{setup}
vectors = np.random.default_rng(0).normal(size=({count}, {dimensions})).astype(np.float32)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
start = time.perf_counter()
positions = search(vectors)
result = {{"seconds": time.perf_counter() - start, "count": {count}, "dimensions": {dimensions},
          "checksum": int(np.asarray(positions)[:, 0].sum())}}
"""

SEARCHES = {
    "kcnn blocked search": """
from keras_cnn.doctor.neighbours import nearest_neighbours
search = lambda vectors: nearest_neighbours(vectors, 10)[1]
""",
    "scikit-learn NearestNeighbors (brute)": """
from sklearn.neighbors import NearestNeighbors
search = lambda vectors: NearestNeighbors(n_neighbors=11, algorithm="brute").fit(vectors).kneighbors(vectors)[1][:, 1:]
""",
    "full n x n distance matrix": """
def search(vectors):
    squares = (vectors * vectors).sum(axis=1)
    distances = squares[:, None] + squares[None, :] - 2 * (vectors @ vectors.T)
    np.fill_diagonal(distances, np.inf)
    nearest = np.argpartition(distances, 9, axis=1)[:, :10]
    return np.take_along_axis(nearest, np.argsort(np.take_along_axis(distances, nearest, axis=1), axis=1), axis=1)
""",
}


def run_child(template: str, **values) -> dict:
    """Run ``template`` (formatted with ``values``) in a fresh Python; return its JSON line."""
    code = template.format(**values) + _CHILD_FOOTER
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "TF_CPP_MIN_LOG_LEVEL": "2", "KCNN_QUIET": "1"}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                               check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark child failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def write_pictures(root: Path, count: int, copies: int, side: int) -> Path:
    """``root/class_<k>/pic_<n>.jpg`` and ``copies`` near-duplicates of some (re-encoded, resized,
    cropped, brightened); returns the CSV naming each copy and its original.

    A picture: a two-colour gradient, a few random ellipses and rectangles, the class's
    stripes (their angle is the class) blended in, and sensor-like noise.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageEnhance

    generator = np.random.default_rng(0)
    rows, columns = np.mgrid[0:side, 0:side] / side
    written = []
    for index in range(count):
        label = index % 10
        start, end = generator.uniform(0, 255, size=(2, 3))
        weight = (rows * generator.uniform(-1, 1) + columns * generator.uniform(-1, 1))[..., None]
        picture = Image.fromarray(np.clip(start + (end - start) * (weight - weight.min()) /
                                          (np.ptp(weight) + 1e-6), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        for _shape in range(generator.integers(4, 9)):
            width, height = generator.uniform(0.15, 0.5, size=2) * side
            left, top = generator.uniform(0, side - width), generator.uniform(0, side - height)
            corners = [left, top, left + width, top + height]
            colour = tuple(int(value) for value in generator.integers(0, 256, size=3))
            (draw.ellipse if generator.random() < 0.5 else draw.rectangle)(corners, fill=colour)
        angle = np.pi * label / 10
        stripes = 40 * np.sin((rows * np.cos(angle) + columns * np.sin(angle)) * side / 4)[..., None]
        pixels = np.asarray(picture, dtype=np.float32) + stripes + generator.normal(0, 6, size=(side, side, 3))
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"class_{label}/pic_{index:06d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name, quality=90)
        written.append(name)
    truth = ["copy,original"]
    for number, original in enumerate(generator.choice(written, size=copies, replace=False)):
        image = Image.open(root / original)
        kind = number % 4
        if kind == 1:
            image = image.resize((side - 6, side - 6))
        elif kind == 2:
            image = image.crop((2, 2, side, side))
        elif kind == 3:
            image = ImageEnhance.Brightness(image).enhance(1.25)
        name = f"{Path(original).parent.as_posix()}/copy_{number:04d}.jpg"
        image.save(root / name, quality=75 if kind == 0 else 90)
        truth.append(f"{name},{original}")
    truth_path = root.parent / "truth.csv"
    truth_path.write_text("\n".join(truth) + "\n")
    return truth_path


def measure(arguments, scratch: Path) -> dict:
    """Every measurement of the module docstring; returns their child reports."""
    images = scratch / "pictures"
    truth = write_pictures(images, arguments.images, arguments.copies, arguments.side)
    pipeline = run_child(PIPELINE, images=str(images), base=arguments.base, image_size=arguments.image_size,
                         scratch=str(scratch), truth=str(truth))
    large = run_child(SEARCH, setup=SEARCHES["kcnn blocked search"], count=arguments.vectors,
                      dimensions=arguments.dimensions)
    references = {name: run_child(SEARCH, setup=setup, count=arguments.reference_size,
                                  dimensions=arguments.dimensions) for name, setup in SEARCHES.items()}
    return {"pipeline": pipeline, "large": large, "references": references}


def section_lines(result: dict, arguments, machine: dict[str, str], load_after: str,
                  argv: list[str] | None) -> list[str]:
    """The RESULTS.md section: machine, tables, ratios and the command."""
    pipeline, large, references = result["pipeline"], result["large"], result["references"]
    stages = pipeline["seconds"]
    reference_head = stages.pop("reference: 5-fold head, BLAS on every core")
    total = sum(stages.values())
    lines = [
        describe_machine(machine, load_after), "",
        (f"Pipeline: {pipeline['images']:,} generated JPEGs of {arguments.side}x{arguments.side} in 10 classes "
         f"({arguments.copies} of them planted near-duplicate copies), features of `{arguments.base}` at "
         f"{arguments.image_size or 'its default size'} ({pipeline['feature_width']:,}-d, random weights: the same "
         f"time as ImageNet's).  One process; peak resident memory {pipeline['peak_mib']:,.0f} MiB."), "",
        "| stage | seconds | share |", "|---|---:|---:|",
        *[f"| {name} | {value:.2f} | {value / total:.0%} |" for name, value in stages.items()],
        f"| **total** | **{total:.1f}** | |", "",
        (f"Planted copies paired: {pipeline['planted_found']} of {pipeline['planted']} "
         f"({pipeline['pairs_found']} pairs in all).  5-fold head with BLAS on every core (the reference): "
         f"{reference_head:.2f} s, {reference_head / max(stages['5-fold head (1 BLAS thread)'], 1e-9):.1f}x "
         f"kcnn's one-thread time."), "",
        (f"Neighbour search alone (k = 10, exact), random unit vectors of {arguments.dimensions:,} dimensions, "
         f"each line a fresh process:"), "",
        "| search | vectors | seconds | peak MiB |", "|---|---:|---:|---:|",
        f"| kcnn blocked search | {large['count']:,} | {large['seconds']:.1f} | {large['peak_mib']:,.0f} |",
        *[f"| {name} | {report['count']:,} | {report['seconds']:.2f} | {report['peak_mib']:,.0f} |"
          for name, report in references.items()], "",
    ]
    own, full = references["kcnn blocked search"], references["full n x n distance matrix"]
    sklearn = references["scikit-learn NearestNeighbors (brute)"]
    lines += [(f"Ratios at {arguments.reference_size:,} vectors: full matrix / kcnn time "
               f"{full['seconds'] / own['seconds']:.2f}x, memory {full['peak_mib'] / own['peak_mib']:.1f}x; "
               f"scikit-learn / kcnn time {sklearn['seconds'] / own['seconds']:.2f}x.  The full matrix of "
               f"{arguments.vectors:,} vectors would need {arguments.vectors ** 2 * 4 / 2 ** 30:,.0f} GiB."),
              f"Command: `{command_line(__file__, argv)}`"]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="generated pictures for the pipeline")
    parser.add_argument("--copies", type=int, default=40, help="planted near-duplicates among them")
    parser.add_argument("--side", type=int, default=96, help="picture side in pixels")
    parser.add_argument("--base", default="efficientnet_b0", help="frozen base of the features")
    parser.add_argument("--image-size", type=int, default=None, help="input side of the base [its own]")
    parser.add_argument("--vectors", type=int, default=100_000, help="vectors of the large neighbour search")
    parser.add_argument("--dimensions", type=int, default=1280, help="their dimensions")
    parser.add_argument("--reference-size", type=int, default=10_000,
                        help="vectors for the comparison with the full matrix and scikit-learn")
    add_recording_arguments(parser)
    arguments = parser.parse_args(argv)
    machine = machine_description()
    with tempfile.TemporaryDirectory(prefix="kcnn-doctor-bench-") as scratch:
        result = measure(arguments, Path(scratch))
    publish(SECTION_TITLE, section_lines(result, arguments, machine, load_average(), argv), arguments)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
