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
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from keras_cnn.data.pixel_limit import DEFAULT_MAX_IMAGE_PIXELS, over_limit_message
from keras_cnn.errors import UserError
from keras_cnn.messages import MAX_ITEMS, MAX_MESSAGE, summarize_items
from keras_cnn.progress import ProgressBar, warn
from keras_cnn.io import atomic_write_text
from keras_cnn.spreadsheet import csv_text, unescape_cell

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


def image_path_candidates(images_dir: str | os.PathLike, object_id: str) -> tuple[Path, ...]:
    """Where ``object_id`` may be: ``DIR/<id>``, and for a bare name also sharded ``DIR/ab/cd/<id>``."""
    root = Path(images_dir)
    if "/" in object_id:  # a relative path (class folders, label CSV with any names) is where it says
        return (root / object_id,)
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


def full_list_path(name: str, folder: str | os.PathLike | None = None) -> Path:
    """Where the full list behind a shortened message goes: ``folder/name``, else the temp folder."""
    if folder is not None:
        return Path(folder) / name
    return Path(tempfile.gettempdir()) / f"kcnn-{os.getpid()}-{name}"


def bounded_list_message(compose: Callable[[str], str], items: Sequence[object],
                         list_path: str | os.PathLike | None) -> str:
    """``compose(listed)`` with as many of ``items`` (at most 5, maybe none) as keep the line within 300 characters.

    The full list goes to ``list_path`` when some are left out (see ``summarize_items``).
    """
    # Long paths leave less room: fewer examples, and none at all when even one does not fit.
    for limit in range(MAX_ITEMS, -1, -1):
        message = compose(summarize_items(items, list_path, limit=limit))
        if len(message) <= MAX_MESSAGE:
            break
    return message


def missing_files_message(missing: Sequence[str], total: int, images_dir: str | os.PathLike, named_by: str,
                          list_path: str | os.PathLike | None = None) -> str:
    """One line about files that are not where ``named_by`` says: a wrong folder when most are missing."""
    found = total - len(missing)
    if found * 2 < total:
        def compose(listed):
            return (f"only {found:,} of the {total:,} files named by {named_by} are in {images_dir}: "
                    f"is --images the folder that holds them? Missing: {listed}")
    else:
        def compose(listed):
            return f"{len(missing):,} of the {total:,} files named by {named_by} are missing in {images_dir}: {listed}"
    return bounded_list_message(compose, list(missing), list_path or full_list_path("missing.txt"))


def resolve_image_paths(images_dir: str | os.PathLike, object_ids: Sequence[str],
                        named_by: str = "the split") -> list[str]:
    """Paths of ``object_ids`` (same order), each found flat or sharded.

    Raises one ``UserError`` line when any is in neither place: how many were found, up to
    five missing names, and the file listing all of them.
    """
    _require_folder(images_dir)
    paths, missing = [], []
    for object_id in object_ids:
        path = locate_image(images_dir, object_id)
        if path is None:
            missing.append(object_id)
        else:
            paths.append(os.fspath(path))
    if missing:
        raise UserError(missing_files_message(missing, len(object_ids), images_dir, named_by))
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
    """Progress of the image check on stderr (stdout may carry a --json result); yields update(n)."""
    if not enabled:
        yield lambda done: None
        return
    with ProgressBar(total, f"checking {total} images") as bar:
        yield bar.update


def find_bad_images(images_dir: str | os.PathLike, object_ids: Iterable[str], progress: bool = True,
                    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> list[tuple[str, str]]:
    """Every objectId whose file is missing, over ``max_pixels`` or does not decode, with the reason, in input order.

    Files are read and decoded by TensorFlow (the pipeline's own decoder; a JPEG at its
    smallest DCT scale, which still reads its whole compressed stream) in a parallel
    ``tf.data`` map, so thousands of images take seconds.  An image whose header says it
    has more than ``max_pixels`` pixels is not decoded at all (0 or None: no limit).
    Reasons: ``missing``, ``the image has N pixels, over the limit of M``, ``empty file``,
    ``not an image``, ``unreadable (...)``, ``truncated or corrupt JPEG`` (PNG, GIF,
    BMP...).  ``progress`` shows a progress bar on stderr.
    """
    import tensorflow as tf

    from keras_cnn.data.images import CHECK_TARGET_SIZE, decode_image, header_pixels

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
    limit = int(max_pixels or 0)

    def decode(position, path):
        encoded = tf.io.read_file(path)
        pixels = header_pixels(encoded)
        # The smallest DCT scale of a JPEG is enough to know whether it decodes; an image
        # over the limit is not decoded (its height comes out as -1).  Returning a value
        # computed from the pixels keeps the decode from being pruned.
        height = tf.cond(tf.logical_and(limit > 0, pixels > limit), lambda: tf.constant(-1),
                         lambda: tf.shape(decode_image(encoded, channels=3, target_size=CHECK_TARGET_SIZE))[0])
        return position, height, pixels

    decoded = set()
    if found_paths:
        dataset = tf.data.Dataset.from_tensor_slices((found_positions, found_paths))
        dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        # A file that fails to read or decode raises inside the map; ignore_errors drops
        # that element, and the positions that never come out are the bad ones.
        dataset = dataset.ignore_errors().batch(64).prefetch(tf.data.AUTOTUNE)
        with _progress_bar(len(found_paths), progress) as update:
            for positions, heights, pixels in dataset:
                for position, height, count in zip(positions.numpy().tolist(), heights.numpy().tolist(),
                                                   pixels.numpy().tolist()):
                    decoded.add(position)
                    if height < 0:
                        bad[position] = f"{over_limit_message(count, limit)} (--max-image-pixels)"
                update(len(decoded))
    for position, path in zip(found_positions, found_paths):
        if position not in decoded:
            bad[position] = _classify_undecodable(path)
    return [(object_ids[position], bad[position]) for position in sorted(bad)]


def refuse_too_large(images_dir: str | os.PathLike, object_ids: Iterable[str], max_pixels: int | None,
                     list_folder: str | os.PathLike | None = None) -> None:
    """One line naming the images whose header says they are over ``max_pixels`` (none is decoded), if any.

    For steps that read the images of a finished run (evaluation, an export's calibration):
    its check at training time found none, so such a file was put there since.
    """
    import tensorflow as tf

    from keras_cnn.data.images import header_pixels

    limit = int(max_pixels or 0)
    located = [(object_id, locate_image(images_dir, object_id)) for object_id in object_ids]
    located = [(object_id, os.fspath(path)) for object_id, path in located if path is not None]
    if not limit or not located:
        return
    dataset = tf.data.Dataset.from_tensor_slices((list(range(len(located))), [path for _, path in located]))
    dataset = dataset.map(lambda position, path: (position, header_pixels(tf.io.read_file(path))),
                          num_parallel_calls=tf.data.AUTOTUNE)
    # A file that cannot be read (or a damaged JPEG header) is for the decoder to report.
    large = [(located[position][0], f"{over_limit_message(pixels, limit)} (--max-image-pixels)")
             for position, pixels in dataset.ignore_errors().as_numpy_iterator() if pixels > limit]
    if large:
        raise UserError(_bad_images_message(large, "the run's check found none when it trained: put back the "
                                                   "images it was trained on", full_list_path("large_images.txt",
                                                                                             list_folder)))


def _bad_images_message(bad: Sequence[tuple[str, str]], advice: str,
                        list_path: str | os.PathLike | None = None) -> str:
    noun = "image cannot" if len(bad) == 1 else "images cannot"
    return bounded_list_message(lambda listed: f"{len(bad)} {noun} be used: {listed} — {advice}",
                                [f"{object_id} ({reason})" for object_id, reason in bad],
                                list_path or full_list_path("bad_images.txt"))


def write_skipped_record(path: str | os.PathLike, bad: Sequence[tuple[str, str]]) -> Path:
    """Write ``objectId,reason`` rows (a header line first) atomically; safe to open in a spreadsheet."""
    return atomic_write_text(path, csv_text(["objectId", "reason"], bad))


def read_skipped_record(path: str | os.PathLike) -> list[str]:
    """The objectIds of a record written by :func:`write_skipped_record` (empty if there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return [unescape_cell(row["objectId"]) for row in csv.DictReader(handle) if row.get("objectId")]


SKIP_ADVICE = "fix them or pass --skip-bad-images"


def check_images_or_fail(images_dir: str | os.PathLike, object_ids: Iterable[str], skip_bad: bool = False,
                         record_path: str | os.PathLike | None = None, progress: bool = True,
                         max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, advice: str = SKIP_ADVICE) -> set[str]:
    """Check every image (see :func:`find_bad_images`); return the objectIds to leave out of training.

    Without ``skip_bad`` any bad image is a ``UserError`` that lists all of them by
    objectId and reason (one line) and ends with ``advice`` (what the command can do about
    it).  With ``skip_bad`` the bad ones are returned and, when ``record_path`` is given,
    written there as ``objectId,reason`` (always written, header only when nothing was
    skipped, so the run shows the check happened).
    """
    object_ids = list(object_ids)
    bad = find_bad_images(images_dir, object_ids, progress=progress, max_pixels=max_pixels)
    list_folder = Path(record_path).parent if record_path is not None else None
    missing = [object_id for object_id, reason in bad if reason == MISSING]
    if len(missing) * 2 > len(object_ids):
        # Most files absent: the folder is wrong, and skipping them would train on nothing.
        raise UserError(missing_files_message(missing, len(object_ids), images_dir, "the split",
                                              full_list_path("missing.txt", list_folder)))
    if bad and not skip_bad:
        raise UserError(_bad_images_message(bad, advice, full_list_path("bad_images.txt", list_folder)))
    if skip_bad and record_path is not None:
        write_skipped_record(record_path, bad)
    if bad:
        warn(f"skipping {len(bad)} bad image(s)" + (f"; listed in {record_path}" if record_path else ""))
    return {object_id for object_id, _reason in bad}


def refuse_emptied_groups(frame, skipped: Iterable[str], list_folder: str | os.PathLike | None = None) -> None:
    """Refuse when leaving out ``skipped`` would take every image of a label out of a part.

    ``frame`` is a split (objectId, value, type).  ``--skip-bad-images`` must never train
    on a class it has no images of, nor test on a part that lost a class: that would report
    a score for a problem other than the one asked.
    """
    skipped = set(skipped)
    if not skipped:
        return
    gone = frame["objectId"].isin(skipped)
    for (part, label), rows in frame.groupby(["type", "value"], sort=False):
        if gone[rows.index].all():
            names = rows["objectId"].tolist()
            raise UserError(bounded_list_message(
                lambda listed: (f"--skip-bad-images would leave label {label!r} with no {part} images: all "
                                f"{len(names)} are bad ({listed}); fix or replace them"),
                names, full_list_path(f"bad_{part}_images.txt", list_folder)))
