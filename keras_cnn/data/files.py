"""Image files of a split: where each one lives, and whether it can be used.

An image folder is either flat (``DIR/<objectId>``) or sharded by the first hex digits of
the name (``DIR/ab/cd/<objectId>`` for ``abcd....jpg``); each file is looked up in both
places, so a folder may mix them.  Before training every image the split names is read
and decoded once with the same TensorFlow decoder the pipeline uses, so a broken file is
reported up front (all of them at once) instead of stopping an epoch half-way.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from keras_cnn.errors import UserError
from keras_cnn.runs import atomic_write_text

# Reasons a file cannot be used (the text shown to users and written to the record).
MISSING = "missing"
EMPTY = "empty file"
NOT_AN_IMAGE = "not an image"

# First bytes of the formats TensorFlow's decode_image reads, to tell a damaged image
# from a file that is not an image at all.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"RIFF", "WebP"),
)


def image_path_candidates(images_dir: str | os.PathLike, object_id: str) -> tuple[Path, Path]:
    """The two places ``object_id`` may be: flat ``DIR/<id>`` and sharded ``DIR/ab/cd/<id>``."""
    root = Path(images_dir)
    return root / object_id, root / object_id[0:2] / object_id[2:4] / object_id


def locate_image(images_dir: str | os.PathLike, object_id: str) -> Path | None:
    """The path of ``object_id`` in ``images_dir`` (flat first, then sharded), or None."""
    for candidate in image_path_candidates(images_dir, object_id):
        if candidate.is_file():
            return candidate
    return None


def _require_folder(images_dir: str | os.PathLike) -> None:
    if not Path(images_dir).is_dir():
        raise UserError(f"image folder {images_dir} does not exist or is not a folder")


def resolve_image_paths(images_dir: str | os.PathLike, object_ids: Sequence[str]) -> list[str]:
    """Paths of ``object_ids`` (same order), each found flat or sharded.

    Raises ``UserError`` naming every objectId that is in neither place.
    """
    _require_folder(images_dir)
    paths, missing = [], []
    for object_id in object_ids:
        path = locate_image(images_dir, object_id)
        if path is None:
            missing.append((object_id, MISSING))
        else:
            paths.append(os.fspath(path))
    if missing:
        advice = f"looked in {images_dir} (flat and ab/cd/ sharded)"
        raise UserError(_bad_images_message(missing, advice=advice))
    return paths


def _classify_undecodable(path: str) -> str:
    """Why a file TensorFlow could not decode failed: empty, not an image, or damaged."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as error:
        return f"unreadable ({error.strerror})"
    if not head:
        return EMPTY
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return f"truncated or corrupt {name}"
    return NOT_AN_IMAGE


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool):
    """A Keras progress bar on stderr (stdout may carry a --json result); yields update(n)."""
    if not enabled or total == 0:
        yield lambda done: None
        return
    import keras

    # Progbar writes to sys.stdout; send it to stderr only while it draws.
    bar = keras.utils.Progbar(total, unit_name="image")

    def update(done: int) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            bar.update(done)

    print(f"Checking {total} images", file=sys.stderr)
    yield update


def find_bad_images(images_dir: str | os.PathLike, object_ids: Iterable[str],
                    progress: bool = True) -> list[tuple[str, str]]:
    """Every objectId whose file is missing or does not decode, with the reason, in input order.

    Files are read and decoded by TensorFlow (the pipeline's own decoder; a JPEG at its
    smallest DCT scale, which still reads its whole compressed stream) in a parallel
    ``tf.data`` map, so thousands of images take seconds.  Reasons: ``missing``,
    ``empty file``, ``not an image``, ``truncated or corrupt JPEG`` (PNG, GIF, BMP...).
    ``progress`` shows a progress bar on stderr.
    """
    import tensorflow as tf

    from keras_cnn.data.images import CHECK_TARGET_SIZE, decode_image

    _require_folder(images_dir)
    object_ids = list(object_ids)
    bad: dict[int, str] = {}
    found_positions, found_paths = [], []
    for position, object_id in enumerate(object_ids):
        path = locate_image(images_dir, object_id)
        if path is None:
            bad[position] = MISSING
        else:
            found_positions.append(position)
            found_paths.append(os.fspath(path))

    def decode(position, path):
        # The smallest DCT scale of a JPEG is enough to know whether it decodes.
        image = decode_image(tf.io.read_file(path), channels=3, target_size=CHECK_TARGET_SIZE)
        # Returning a value computed from the pixels keeps the decode from being pruned.
        return position, tf.shape(image)[0]

    decoded = set()
    if found_paths:
        dataset = tf.data.Dataset.from_tensor_slices((found_positions, found_paths))
        dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        # A file that fails to read or decode raises inside the map; ignore_errors drops
        # that element, and the positions that never come out are the bad ones.
        dataset = dataset.ignore_errors().batch(64).prefetch(tf.data.AUTOTUNE)
        with _progress_bar(len(found_paths), progress) as update:
            for positions, _heights in dataset:
                decoded.update(positions.numpy().tolist())
                update(len(decoded))
    for position, path in zip(found_positions, found_paths):
        if position not in decoded:
            bad[position] = _classify_undecodable(path)
    return [(object_ids[position], bad[position]) for position in sorted(bad)]


def _bad_images_message(bad: Sequence[tuple[str, str]], advice: str) -> str:
    listed = ", ".join(f"{object_id} ({reason})" for object_id, reason in bad)
    noun = "image cannot" if len(bad) == 1 else "images cannot"
    return f"{len(bad)} {noun} be used: {listed} — {advice}"


def write_skipped_record(path: str | os.PathLike, bad: Sequence[tuple[str, str]]) -> Path:
    """Write ``objectId,reason`` rows (a header line first) atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["objectId", "reason"])
    writer.writerows(bad)
    return atomic_write_text(path, buffer.getvalue())


def read_skipped_record(path: str | os.PathLike) -> list[str]:
    """The objectIds of a record written by :func:`write_skipped_record` (empty if there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return [row["objectId"] for row in csv.DictReader(handle) if row.get("objectId")]


def check_images_or_fail(images_dir: str | os.PathLike, object_ids: Iterable[str], skip_bad: bool = False,
                         record_path: str | os.PathLike | None = None, progress: bool = True) -> set[str]:
    """Check every image; return the objectIds to leave out of training.

    Without ``skip_bad`` any bad image is a ``UserError`` that lists all of them by
    objectId and reason (one line).  With ``skip_bad`` the bad ones are returned and, when
    ``record_path`` is given, written there as ``objectId,reason`` (always written, header
    only when nothing was skipped, so the run shows the check happened).
    """
    bad = find_bad_images(images_dir, object_ids, progress=progress)
    if bad and not skip_bad:
        raise UserError(_bad_images_message(bad, advice="fix them or pass --skip-bad-images"))
    if skip_bad and record_path is not None:
        write_skipped_record(record_path, bad)
    if bad:
        print(f"Skipping {len(bad)} bad image(s)" + (f"; listed in {record_path}" if record_path else ""),
              file=sys.stderr)
    return {object_id for object_id, _reason in bad}
