"""Classify image files with an exported SavedModel (``kcnn export``), without the training code.

Only TensorFlow, numpy, Pillow and kcnn's small ``errors`` / ``io`` / ``config`` /
``export_layout`` / ``heatmaps`` modules and its decoder (``data.images``) are used (with
``--tta``, also ``tta``): the model directory alone is enough, the run it came from is not
needed.  The probabilities are the export's (calibrated when the run was); an answer whose
top probability is below a threshold (``--reject-below``, else the export's
``reject_below``) is marked ``rejected``; with ``--explain`` each image's heat map comes
from the ``serving_explain`` signature.

Images are decoded while the model classifies: a ``tf.data`` pipeline reads and decodes the
files in parallel, a batch ahead, with :func:`keras_cnn.data.images.load_image` and the
input the export records in ``kcnn.json`` (the function and settings of its own
``serving_default`` graph, so the pixels are the same), and the model takes them through
the ``serving_images_uint8`` signature.  A file that cannot be read or decoded is left out
of its batch and reported with its reason.  An export that does not record its resize
filter (made by an older kcnn), ``--tta`` and ``--explain`` send the encoded bytes to the
graph's own signatures instead, one batch at a time; a batch that fails there is retried
file by file, so one bad file never costs the good ones.
A multi-label export (``kcnn.json``: ``"multi_label": true`` and per-label ``"thresholds"``)
answers with every label at or above its threshold (``above_threshold``).
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_cnn.data.images import RESIZE_FILTER, header_pixels, load_image
from keras_cnn.data.pixel_limit import DEFAULT_MAX_IMAGE_PIXELS, over_limit_message, pixel_limit_problem
from keras_cnn.errors import UserError, first_line
from keras_cnn.export_layout import (EXPLAIN_SIGNATURE, HEATMAP_OUTPUT, IMAGES_SIGNATURE, IMAGES_UINT8_SIGNATURE,
                                     METADATA_FILE, SERVING_SIGNATURE, TTA_SIGNATURE, check_answer_options,
                                     check_label_count, read_export_labels, read_export_metadata,
                                     resolve_version_dir)
from keras_cnn.heatmaps import overlay_png, peak_on_image
from keras_cnn.io import atomic_write_bytes, check_output_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


@dataclass
class ExportedModel:
    """A loaded export: its ``serving_default`` signature, labels and metadata."""

    path: Path                                # the version folder (DIR/<version>)
    signature: Any                            # concrete function: image_bytes -> outputs
    labels: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    saved_model: Any = None                   # keeps the loaded object (and its variables) alive
    tta_views: list[str] | None = None        # set by use_tta(): classify averages over these views

    explaining: bool = False                  # set by use_explain(): classify also returns heat maps

    @property
    def thresholds(self) -> dict[str, float] | None:
        """A multi-label export's threshold per label (``kcnn.json``), else None."""
        thresholds = self.metadata.get("thresholds")
        return {str(label): float(value) for label, value in thresholds.items()} if isinstance(thresholds, dict) \
            else None

    def classify(self, encoded_images: list[bytes]) -> dict[str, np.ndarray]:
        """Run the signature on a batch of encoded images; raises TensorFlow's error on a bad one."""
        if self.tta_views:
            return self._classify_with_tta(encoded_images)
        signature = self.saved_model.signatures[EXPLAIN_SIGNATURE] if self.explaining else self.signature
        outputs = signature(image_bytes=tf.constant(encoded_images, dtype=tf.string))
        return {name: value.numpy() for name, value in outputs.items()}

    def use_explain(self) -> None:
        """Answer through the ``serving_explain`` signature from now on: each answer gets its heat map."""
        check_answer_options(self.path, self.metadata, tta=len(self.tta_views or ()), explain=True)
        if EXPLAIN_SIGNATURE not in getattr(self.saved_model, "signatures", {}):
            reason = (self.metadata.get("explain") or {}).get("reason") or "it was exported by an older kcnn"
            raise UserError(f"{self.path} has no {EXPLAIN_SIGNATURE!r} signature for heat maps: {reason}")
        self.explaining = True

    def reject_below(self, requested: float | None = None) -> float | None:
        """The threshold below which an answer is "unknown": ``requested``, else the export's (kcnn.json).

        A multi-label export has none: each label is answered at its own threshold."""
        check_answer_options(self.path, self.metadata, reject_below=requested)
        threshold = requested if requested is not None else self.metadata.get("reject_below")
        if self.thresholds is not None or threshold is None:
            return None
        check_answer_options(self.path, self.metadata, reject_below=threshold)   # the export's own
        return float(threshold)

    def use_tta(self, count: int) -> list[str]:
        """Average the probabilities of ``count`` test-time augmentation views from now on.

        The views are those of ``kcnn evaluate --tta`` for the run (mirrored views only when
        it trained with flips).  An export made with ``--tta`` and the same number of views
        answers through its own ``serving_tta`` signature; any other export through its
        ``serving_images`` signature, fed the views of the images decoded as in training.
        """
        from keras_cnn.tta import view_names

        baked = (self.metadata.get("tta") or {}).get("views")
        if baked and len(baked) == count and TTA_SIGNATURE in self.saved_model.signatures:
            self.tta_views = list(baked)
        else:
            self.tta_views = view_names(count, bool(self.metadata.get("trained_with_horizontal_flips")))
            if IMAGES_SIGNATURE not in self.saved_model.signatures or "input" not in self.metadata:
                raise UserError(f"{self.path} has no {IMAGES_SIGNATURE!r} signature or no input description in "
                                f"{METADATA_FILE}: --tta needs an export made by kcnn export")
        return self.tta_views

    def _classify_with_tta(self, encoded_images: list[bytes]) -> dict[str, np.ndarray]:
        from keras_cnn.tta import average_views, tta_views

        signatures = self.saved_model.signatures
        if (self.metadata.get("tta") or {}).get("views") == self.tta_views and TTA_SIGNATURE in signatures:
            outputs = signatures[TTA_SIGNATURE](image_bytes=tf.constant(encoded_images, dtype=tf.string))
            return {name: value.numpy() for name, value in outputs.items()}
        pixels = self._decode(encoded_images)
        views = signatures[IMAGES_SIGNATURE](images=tta_views(pixels, self.tta_views))
        probabilities = average_views(views["probabilities"], len(self.tta_views)).numpy()
        class_index = probabilities.argmax(axis=-1)
        labels = self.labels or [str(index) for index in range(probabilities.shape[-1])]
        return {"probabilities": probabilities, "class_index": class_index,
                "label": np.array([labels[index].encode("utf-8") for index in class_index], dtype=object)}

    def _decode(self, encoded_images: list[bytes]) -> tf.Tensor:
        """Decode and resize as the export's graph does (float32 [batch, H, W, C])."""
        image_size, channels, resize_mode = self.input_description()
        # Traced with an unknown image shape, as in the export's graph and the tf.data pipeline.
        decode = tf.function(lambda data: load_image(data, image_size, channels, resize_mode),
                             input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
        return tf.cast(tf.stack([decode(tf.constant(data)) for data in encoded_images]), tf.float32)

    def input_description(self) -> tuple[tuple[int, int], int, str]:
        """(image size, channels, resize mode) of the export's decoding, from ``kcnn.json``."""
        description = self.metadata["input"]
        return (tuple(int(side) for side in description["image_size"]), int(description["channels"]),
                description["resize_mode"])

    def decodes_in_pipeline(self) -> bool:
        """Whether predict may decode in its own pipeline and send pixels: the export records its
        decoding, the resize filter included, as this kcnn decodes, and takes uint8 pixels; no
        --tta or --explain."""
        recorded = self.metadata.get("input") or {}
        return (not self.tta_views and not self.explaining
                and IMAGES_UINT8_SIGNATURE in getattr(self.saved_model, "signatures", {})
                and {"image_size", "channels", "resize_mode"} <= set(recorded)
                and recorded.get("resize_filter") == RESIZE_FILTER)


def load_exported_model(path: str | os.PathLike) -> ExportedModel:
    """Load an export (``DIR`` or ``DIR/<version>``) for :func:`predict_files`."""
    version_dir = resolve_version_dir(path)
    metadata = read_export_metadata(version_dir)
    labels = read_export_labels(version_dir, metadata)
    try:
        saved_model = tf.saved_model.load(str(version_dir))
    except Exception as error:  # noqa: BLE001 - TensorFlow raises many kinds for a broken SavedModel
        raise UserError(f"cannot load the SavedModel {version_dir}: {first_line(error)}") from error
    signatures = getattr(saved_model, "signatures", {})
    if SERVING_SIGNATURE not in signatures:
        raise UserError(f"{version_dir} has no {SERVING_SIGNATURE!r} signature (found: {sorted(signatures)})")
    signature = signatures[SERVING_SIGNATURE]
    inputs = signature.structured_input_signature[1]
    if list(inputs) != ["image_bytes"] or inputs["image_bytes"].dtype != tf.string:
        raise UserError(f"{version_dir}: {SERVING_SIGNATURE!r} must take 'image_bytes' (string), received: {inputs}")
    missing = {"probabilities", "class_index", "label"} - set(signature.structured_outputs)
    if missing:
        raise UserError(f"{version_dir}: {SERVING_SIGNATURE!r} does not return {sorted(missing)}; is it a kcnn export?")
    classes = signature.structured_outputs["probabilities"].shape[-1]
    if classes is not None:
        check_label_count(version_dir, labels, int(classes))
    return ExportedModel(version_dir, signature, labels, metadata, saved_model)


def expand_inputs(paths: list[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given, and the image files (by extension, sorted) under each directory.

    Returns ``(files, failures)``; a missing path or an image-less directory is a failure.
    """
    files: list[Path] = []
    failures: list[tuple[str, str]] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(child for child in path.rglob("*")
                           if child.is_file() and child.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                failures.append((str(path), f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this directory"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            # Reading a named pipe could wait forever, a device could never end.
            failures.append((str(path), "not a regular file (a named pipe, socket or device); not read"))
        else:
            failures.append((str(path), "no such file or directory"))
    return files, failures


def predict_files(model: ExportedModel, paths: list[str | os.PathLike], batch_size: int = 32,
                  top_k: int = 1, tta: int | None = None, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                  reject_below: float | None = None, explain_dir: str | os.PathLike | None = None
                  ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Classify image files (directories are expanded) with an exported model.

    Returns ``(results, failures)``.  Each result is ``{"path", "label", "class_index",
    "probability", "probabilities", "top_k"}`` with ``probabilities`` in ``labels.txt``
    order and ``top_k`` a list of ``{"label", "class_index", "probability"}``, best first.
    Each failure is ``(path, reason)``: unreadable, empty, truncated or non-image files are
    reported there while the others are still classified, and so are images over
    ``max_image_pixels`` (read from their header: they are never decoded; 0 or None: no
    limit).  ``tta``: average the probabilities over that many test-time augmentation views
    (:meth:`ExportedModel.use_tta`).

    ``reject_below`` (else the export's ``reject_below``, when it has one): each result also
    gets ``"rejected"`` (its top probability is below the threshold: the answer is "none of
    these"; ``label`` stays the top label) and ``"reject_below"``.  ``explain_dir``: write one
    overlay PNG per image there (the image with where the model looked, from the export's
    ``serving_explain`` signature) and add ``"heatmap"`` (its path) and ``"peak"`` (``[y,
    x]``, the heat map's maximum, 0..1 from the top-left corner of the image as given).

    A multi-label export's results add ``above_threshold``: every label whose probability is
    at or above its threshold, ``{"label", "probability", "threshold"}`` in ``labels.txt``
    order (``label`` is then the most probable one); it takes no ``reject_below`` (its labels'
    thresholds decide).
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, received: {batch_size}")
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, received: {top_k}")
    if model.labels:
        top_k = min(top_k, len(model.labels))  # more than every class says nothing more
    if tta:
        model.use_tta(int(tta))
    threshold = model.reject_below(reject_below)
    overlays = None
    if explain_dir is not None:
        model.use_explain()
        overlays = OverlayWriter(Path(explain_dir), model.metadata)
    files, failures = expand_inputs(paths)
    results: list[dict[str, Any]] = []
    batches = _pipeline_batches if model.decodes_in_pipeline() else _graph_batches
    for answered, outputs in batches(model, files, batch_size, failures, max_image_pixels):
        records = prediction_records(model, [path for path, _ in answered], outputs, top_k)
        for row, (record, (_, data)) in enumerate(zip(records, answered)):
            if threshold is not None:
                record.update(rejection(record["probability"], threshold))
            if overlays is not None:
                record.update(overlays.write(Path(record["path"]), data, outputs[HEATMAP_OUTPUT][row]))
        results.extend(records)
    return results, failures


def rejection(probability: float, threshold: float) -> dict[str, Any]:
    """``{"rejected", "reject_below"}`` of an answer: rejected ("none of these") when its top probability
    is below ``threshold``; the label stays the top label, so a class named "unknown" stays itself."""
    return {"rejected": bool(probability < threshold), "reject_below": float(threshold)}


class OverlayWriter:
    """Writes each image's heat-map overlay into a folder, never over a file that is there already."""

    def __init__(self, folder: Path, metadata: dict[str, Any]):
        check_output_path(folder, directory=True, option="--explain")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the --explain folder {folder}: {error.strerror or error}") from None
        self.folder = folder
        self.resize_mode = (metadata.get("input") or {}).get("resize_mode", "stretch")
        self._taken: set[str] = set()

    def write(self, path: Path, data: bytes, heatmap: np.ndarray) -> dict[str, Any]:
        """Write the overlay of ``path`` (its bytes ``data``); returns ``{"heatmap": PATH, "peak": [y, x]}``."""
        with Image.open(io.BytesIO(data)) as picture:
            picture.load()
            target = self._free_name(path)
            atomic_write_bytes(target, overlay_png(picture, heatmap, self.resize_mode))
            return {"heatmap": str(target), "peak": peak_on_image(heatmap, picture.height, picture.width,
                                                                  self.resize_mode)}

    def _free_name(self, path: Path) -> Path:
        """``NAME.heatmap.png``, or ``NAME-2.heatmap.png`` ... when that name is taken (two inputs with one
        name, or a file that was there before)."""
        number = 1
        while True:
            stem = path.stem if number == 1 else f"{path.stem}-{number}"
            target = self.folder / f"{stem}.heatmap.png"
            if target.name not in self._taken and not target.exists():
                self._taken.add(target.name)
                return target
            number += 1


def _pipeline_batches(model: ExportedModel, files: list[Path], batch_size: int, failures: list[tuple[str, str]],
                      max_image_pixels: int | None):
    """``(answered, outputs)`` per batch: the files decoded in a parallel ``tf.data`` pipeline, a batch
    ahead of the model (the export's own decoding, see the module docstring), classified through
    ``serving_images_uint8``.  Files that could not be read or decoded go to ``failures`` at the end."""
    if not files:
        return
    image_size, channels, resize_mode = model.input_description()
    limit = int(max_image_pixels or 0)

    def load(position, path):
        return position, load_image(tf.io.read_file(path), image_size, channels, resize_mode, max_pixels=limit)

    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(files), dtype=tf.int64),
                                                  tf.constant([os.fspath(path) for path in files])))
    # A file that fails to read, decode or pass the pixel limit is dropped here; its reason is found below.
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=False)
    classify = model.saved_model.signatures[IMAGES_UINT8_SIGNATURE]
    answered: set[int] = set()
    for positions, images in dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE):
        outputs = {name: value.numpy() for name, value in classify(images=images).items()}
        positions = positions.numpy().tolist()
        answered.update(positions)
        yield [(files[position], None) for position in positions], outputs
    for position, path in enumerate(files):
        if position not in answered:
            data, problem = _read_file(path, max_image_pixels)
            failures.append((str(path), problem or decode_failure_reason(data, limit)))


def _graph_batches(model: ExportedModel, files: list[Path], batch_size: int, failures: list[tuple[str, str]],
                   max_image_pixels: int | None):
    """``(answered, outputs)`` per batch of encoded images sent to the export's graph, which decodes them."""
    # Files are read one batch at a time, so a large folder never sits in memory at once.
    for start in range(0, len(files), batch_size):
        batch = _read_files(files[start:start + batch_size], failures, max_image_pixels)
        if not batch:
            continue
        try:
            yield batch, model.classify([data for _, data in batch])
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
            # Some file in this batch does not decode: find it by trying them one by one.
            answered, outputs = _classify_one_by_one(model, batch, failures)
            if answered:
                yield answered, outputs


def _read_file(path: Path, max_image_pixels: int | None) -> tuple[bytes, str | None]:
    """The file's bytes, and why it cannot be classified when that shows before decoding (else None)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return b"", f"cannot read: {error.strerror or error}"
    return data, "empty file" if not data else pixel_limit_problem(data, max_image_pixels)


def _read_files(paths: list[Path], failures: list[tuple[str, str]],
                max_image_pixels: int | None) -> list[tuple[Path, bytes]]:
    readable = []
    for path in paths:
        data, problem = _read_file(path, max_image_pixels)
        if problem:
            failures.append((str(path), problem))
            continue
        readable.append((path, data))
    return readable


def _classify_one_by_one(model: ExportedModel, batch: list[tuple[Path, bytes]],
                         failures: list[tuple[str, str]]) -> tuple[list[tuple[Path, bytes]], dict[str, np.ndarray]]:
    """The files of ``batch`` that could be classified and their outputs (row by row); the others go to ``failures``."""
    answered, rows = [], []
    for path, data in batch:
        try:
            outputs = model.classify([data])
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
            failures.append((str(path), decode_failure_reason(data)))
            continue
        answered.append((path, data))
        rows.append(outputs)
    joined = {name: np.concatenate([row[name] for row in rows]) for name in rows[0]} if rows else {}
    return answered, joined


def decode_failure_reason(data: bytes, max_image_pixels: int | None = None) -> str:
    """A clean one-line reason why ``data`` is not an image (the graph's error is verbose), or is one over
    ``max_image_pixels`` by the header TensorFlow reads (Pillow may not know its format)."""
    if max_image_pixels:
        try:
            pixels = int(header_pixels(tf.constant(data)))
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
            pixels = -1
        if pixels > max_image_pixels:
            return over_limit_message(pixels, max_image_pixels)
    try:
        tf.io.decode_image(data, channels=0, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        return f"not a readable image: {clean_tensorflow_message(error)}"
    return "the model could not classify this image"


def prediction_records(model: ExportedModel, paths: list[Path] | list[str], outputs: dict[str, np.ndarray],
                       top_k: int) -> list[dict[str, Any]]:
    """One prediction record per row of the signature's ``outputs`` (see :func:`predict_files`);
    ``kcnn serve``'s own endpoint answers with the same records."""
    labels = model.labels or [str(index) for index in range(outputs["probabilities"].shape[-1])]
    results = []
    for row, path in enumerate(paths):
        probabilities = outputs["probabilities"][row].astype(float)
        class_index = int(outputs["class_index"][row])
        best = np.argsort(-probabilities, kind="stable")[:top_k]
        results.append({
            "path": str(path),
            "label": outputs["label"][row].decode("utf-8"),
            "class_index": class_index,
            "probability": float(probabilities[class_index]),
            "probabilities": probabilities.tolist(),
            "top_k": [{"label": labels[index], "class_index": int(index), "probability": float(probabilities[index])}
                      for index in best],
        })
        if model.thresholds is not None:
            results[-1]["above_threshold"] = labels_above_threshold(labels, probabilities, model.thresholds)
    return results


def labels_above_threshold(labels: list[str], probabilities, thresholds: dict[str, float]) -> list[dict[str, Any]]:
    """Every label at or above its threshold: ``{"label", "probability", "threshold"}``, labels.txt order."""
    return [{"label": label, "probability": float(probabilities[index]), "threshold": thresholds[label]}
            for index, label in enumerate(labels)
            if label in thresholds and float(probabilities[index]) >= thresholds[label]]


def clean_tensorflow_message(error: BaseException) -> str:
    """TensorFlow's error text without its ``{{function_node ...}}`` prefix and ``[Op:...]`` suffix."""
    text = first_line(error)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", text).strip()
