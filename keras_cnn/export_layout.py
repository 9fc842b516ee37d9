"""The layout of an exported model folder, declared once, and its files read without TensorFlow.

``kcnn export`` (:mod:`keras_cnn.export`) writes these names and ``kcnn predict`` reads
them.  ``predict`` checks the folder it is given (a version folder, or the export folder
holding numbered versions) and the labels shipped inside it before it spends seconds
importing TensorFlow, so a wrong path or a damaged export is reported at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from keras_cnn.errors import UserError
from keras_cnn.io import read_json, read_labels
from keras_cnn.label_lists import check_same_labels

# Files of DIR/<version>/ (TF Serving loads the highest numeric version folder).
SAVED_MODEL_FILE = "saved_model.pb"
LABELS_ASSET = Path("assets") / "labels.txt"              # class names in class-index order
METADATA_FILE = Path("assets.extra") / "kcnn.json"        # what kcnn knows about the export
ONNX_FILE = "model.onnx"
LITERT_FILE = "model.tflite"

# Signatures of the SavedModel.
SERVING_SIGNATURE = "serving_default"          # image_bytes: encoded images
IMAGES_SIGNATURE = "serving_images"            # images: float32 decoded pixels
IMAGES_UINT8_SIGNATURE = "serving_images_uint8"   # images: uint8 decoded pixels
TTA_SIGNATURE = "serving_tta"                  # serving_default averaged over test-time augmentation views
EXPLAIN_SIGNATURE = "serving_explain"          # serving_default plus heatmap: where the model looked (Grad-CAM)
HEATMAP_OUTPUT = "heatmap"                     # its [batch, height, width] output, 0..1

MAX_VERSION = 2**63 - 1   # TF Serving reads a version folder's name as a 64-bit integer


def quantized_litert_file(mode: str) -> str:
    """``model_int8.tflite`` etc., beside the float ``model.tflite``."""
    return f"model_{mode}.tflite"


def resolve_version_dir(path: str | os.PathLike) -> Path:
    """``DIR/<version>`` itself, or the highest numeric version folder inside ``DIR``."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise UserError(f"--model must be an export directory, received a file: {path}")
    if (path / SAVED_MODEL_FILE).is_file():
        return path
    return version_dirs(path)[-1]


def version_dirs(path: str | os.PathLike) -> list[Path]:
    """The numbered version folders of an export directory (an existing folder) that hold a SavedModel,
    lowest version first."""
    path = Path(path)
    versions = [child for child in path.iterdir()
                if child.name.isdigit() and (child / SAVED_MODEL_FILE).is_file()]
    if not versions:
        raise UserError(f"{path} is not an exported model: no {SAVED_MODEL_FILE} in it or in a numbered "
                        "version folder")
    return sorted(versions, key=lambda child: int(child.name))


def served_version_dirs(path: str | os.PathLike) -> list[Path]:
    """Every version folder of an export (PATH itself when it is one), lowest version first: what
    ``kcnn serve`` serves, as TF Serving's "all versions" policy does."""
    resolved = resolve_version_dir(path)   # checks the folder and names the problem in one line
    return [resolved] if resolved == Path(path) else version_dirs(path)


def version_number(folder: Path) -> int:
    """A version folder's number (a lone version folder given directly that is not numbered is version 1)."""
    return int(folder.name) if folder.name.isdigit() else 1


def read_export_metadata(version_dir: Path) -> dict[str, Any]:
    """``assets.extra/kcnn.json`` (empty for an export made by other tools)."""
    path = version_dir / METADATA_FILE
    return read_json(path) if path.is_file() else {}


def read_export_labels(version_dir: Path, metadata: dict[str, Any]) -> list[str]:
    """The export's ``labels.txt``, refused when missing or when it differs from the labels of
    ``kcnn.json`` in content or order (both Unicode-normalised).

    The serving graph initialises its label table from this file, so without it loading fails
    deep inside TensorFlow, and with two lines swapped every answer names the wrong class;
    saying so here names both files and what to do.
    """
    path = version_dir / LABELS_ASSET
    expected = metadata.get("labels")
    if not path.is_file():
        if metadata:
            count = f"{len(expected)} expected" if expected is not None else "the number of classes expected"
            raise UserError(f"{path} is missing (0 labels, {count}); export the run again with kcnn export")
        return []
    labels = read_labels(path)
    if expected is not None:
        check_same_labels(path, labels, version_dir / METADATA_FILE, expected,
                          "export the run again with kcnn export")
    return labels


def check_label_count(version_dir: Path, labels: list[str], classes: int) -> None:
    """Refuse ``labels.txt`` whose length differs from the model's number of output classes."""
    if labels and len(labels) != classes:
        raise UserError(f"{version_dir / LABELS_ASSET} has {len(labels)} labels but the model has {classes} classes; "
                        "export the run again with kcnn export")


def check_answer_options(version_dir: Path, metadata: dict[str, Any], *, tta: int | None = None,
                         reject_below: float | None = None, explain: bool = False) -> list[str] | None:
    """Refuse what the export cannot answer with, from its ``kcnn.json`` alone (no TensorFlow), so
    ``kcnn predict`` says so before it loads the model: a ``reject_below`` for a multi-label export
    (each label has its threshold) or out of [0, 1], heat maps (``explain``) from an export without
    them or together with ``tta``, more ``tta`` views than the run's.  Returns the names of the TTA
    views (None without ``tta``)."""
    if reject_below is not None:
        if isinstance(metadata.get("thresholds"), dict):
            raise UserError("--reject-below is for single-label models; this export is multi-label: each "
                            "label is answered at its own threshold (kcnn.json's thresholds)")
        if not 0.0 <= float(reject_below) <= 1.0:   # NaN too
            raise UserError(f"--reject-below must be a probability in [0, 1], received: {reject_below}")
    if explain:
        if tta:
            raise UserError("--explain and --tta cannot be combined: the heat map is of the image itself")
        described = metadata.get("explain")
        if isinstance(described, dict) and not described.get("signature"):
            raise UserError(f"{version_dir} has no {EXPLAIN_SIGNATURE!r} signature for heat maps: "
                            f"{described.get('reason') or 'kcnn.json gives no reason'}")
    if not tta:
        return None
    from keras_cnn.tta import view_names   # here: predict imports the TTA code only for --tta

    return view_names(int(tta), bool(metadata.get("trained_with_horizontal_flips")))
