"""Export a finished run for serving: a SavedModel in TF Serving layout, plus ONNX / LiteRT.

Layout of one export (``DIR`` is ``--out``; TF Serving loads the highest numeric version)::

    DIR/<version>/
      saved_model.pb, variables/     the SavedModel (format "saved_model")
      assets/labels.txt              class names in class-index order (a SavedModel asset)
      assets.extra/kcnn.json         metadata: versions, model, input size, labels, metrics,
                                     signatures, files and the verification differences
      model.onnx                     format "onnx"   (TF Serving ignores extra files)
      model.tflite                   format "litert"

One job per module: :mod:`~keras_cnn.export.saved_model` (the SavedModel and its
signatures), :mod:`~keras_cnn.export.portable` (ONNX, LiteRT), :mod:`~keras_cnn.export.verify`
(checking each file against the Keras model), :mod:`~keras_cnn.export.quantize` (quantized
LiteRT files and their accuracy); this module runs them for a run (:func:`export_run`).
The names of the files and signatures are declared once, in :mod:`keras_cnn.export_layout`.

Every export is written into a temporary folder beside ``DIR/<version>``, checked, and only
then renamed into place, so a failed export leaves no version folder behind.  The check runs
each written format on a few images (see :mod:`~keras_cnn.export.verify`).

TensorFlow is imported inside the functions so the CLI can read :data:`EXPORT_FORMATS`
without loading it.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from keras_cnn.config import RunConfig
from keras_cnn.errors import UserError
from keras_cnn.export.portable import compare_litert, compare_onnx, write_litert, write_onnx
from keras_cnn.export.quantize import DEFAULT_MAX_ACCURACY_DROP, check_mode, quantize_litert
from keras_cnn.export.saved_model import compare_saved_model, signature_descriptions, write_saved_model
from keras_cnn.export.spec import ModelSpec, model_spec
from keras_cnn.export.verify import TOLERANCE, check_format, verification_images
from keras_cnn.export_layout import (EXPLAIN_SIGNATURE, HEATMAP_OUTPUT, LITERT_FILE, MAX_VERSION, METADATA_FILE,
                                     ONNX_FILE, SAVED_MODEL_FILE, TTA_SIGNATURE)
from keras_cnn.io import atomic_path, atomic_write_json, remove_abandoned_temporaries
from keras_cnn.run_calibration import read_calibration, run_temperature
from keras_cnn.runs import RunDirectory, RunState
from keras_cnn.thresholds import read_thresholds
from keras_cnn.versions import library_versions

__all__ = ["EXPORT_FORMATS", "TOLERANCE", "ExportFormat", "check_export_options", "export_run"]


@dataclass(frozen=True)
class ExportFormat:
    """One export format: where it goes, how it is written, what is compared to check it."""

    file_name: str
    write: Callable[..., Path]               # (model, spec, folder) -> written path
    compare: Callable[..., list[tuple]]      # (model, spec, path, encoded images) -> [(expected, actual)]
    requires: tuple[str, ...] = ()           # modules beyond TensorFlow/Keras (the "export" extra)


# --format name -> format (the names: keras_cnn.choices.ExportFormatName).
EXPORT_FORMATS: dict[str, ExportFormat] = {
    "saved_model": ExportFormat(SAVED_MODEL_FILE, write_saved_model, compare_saved_model),
    "onnx": ExportFormat(ONNX_FILE, write_onnx, compare_onnx, ("tf2onnx", "onnxruntime")),
    "litert": ExportFormat(LITERT_FILE, write_litert, compare_litert, ("ai_edge_litert",)),
}


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, version: int | None = None,
               formats: tuple[str, ...] | list[str] = ("saved_model",), verify: bool = True,
               force: bool = False, tta: int | None = None, quantize: str | None = None,
               max_accuracy_drop: float | None = None, allow_unfinished: bool = False,
               trust_hub: bool = False, accept_input_changes: bool = False) -> dict[str, Any]:
    """Export the model of a finished run into ``out_dir/<version>/``.

    ``version`` defaults to 1; an existing version folder is refused unless ``force``, and
    even then when it is not a kcnn export (no ``assets.extra/kcnn.json``).  A run whose
    state says no stage finished, or a stage is running (or was stopped), is refused
    unless ``allow_unfinished``, which ``kcnn.json`` then records.  ``trust_hub``: the
    model may load the TF Hub module the run records as its base.
    ``formats`` is any of :data:`EXPORT_FORMATS` (``saved_model``, ``onnx``, ``litert``).
    With ``verify`` every written format is run on a few images and compared with the Keras
    model (``RunFailure`` above :data:`TOLERANCE`; nothing is left behind).
    ``tta``: add the ``serving_tta`` signature, ``serving_default`` averaged over that many
    test-time augmentation views (:mod:`keras_cnn.tta`); needs the SavedModel format.
    ``quantize`` (dynamic, float16, int8; needs the litert format): also write
    ``model_<mode>.tflite`` and measure both LiteRT files' size and accuracy on the run's
    test part (validation when it has no test part); a quantized model that loses more than
    ``max_accuracy_drop`` accuracy is refused (``UserError``, nothing written) unless ``force``.
    Only ``quantize`` reads the run's images; it first checks them and the split against the
    run's input record (changes refused unless ``accept_input_changes``, which records them).
    The run's labels.txt must agree with its config.json.

    Returns ``{"path", "version", "files": {format: path}, "max_abs_diff": {format: float},
    "metadata": path, "labels", "image_size", "channels"}``.
    """
    # The run's data and its record need pandas: not imported for --help.
    from keras_cnn.run_data import run_labels

    formats, version, tta_views = check_export_options(run_dir, formats, version, tta, quantize)
    version_dir = Path(out_dir) / str(version)
    _check_version_folder(version_dir, force)

    run = RunDirectory(run_dir).require()
    unfinished = RunState.read(run).unfinished()
    if unfinished and not allow_unfinished:
        raise UserError(f"{run.root}: {unfinished}, so its model.keras is not a finished model; finish the run, "
                        "or pass --allow-unfinished to export its best model so far")
    config = RunConfig.from_dict(run.read_config())
    labels = run_labels(run, config)
    if quantize is not None:
        _check_quantization_inputs(run, config, accept_input_changes)
    # Registers kcnn's custom layers first; the written export needs none of them.
    from keras_cnn.models.loading import hub_base_of, load_model
    from keras_cnn.models.opened import open_model

    model = load_model(run.model_path, trust_hub=hub_base_of(config.model.name) if trust_hub else None)
    spec = model_spec(model, labels, config, read_thresholds(run, labels) if config.data.multi_label else None)
    opened = open_model(model)
    temperature = run_temperature(run)
    if temperature is not None:
        # Every format carries the calibrated probabilities: the model written is the same
        # layers with the logits divided by the temperature.
        model = opened.calibrated_model(temperature)
    explainer = opened if opened.has_feature_map and not spec.multi_label else None
    spec = replace(spec, temperature=temperature, explainer=explainer)
    if tta_views:
        spec = replace(spec, tta_views=tuple(tta_views))
    probe_images = verification_images(config, spec) if verify else []
    quantization = None

    files: dict[str, str] = {}
    differences: dict[str, float] = {}
    with atomic_path(version_dir, directory=True) as temporary:
        for name in formats:
            exporter = EXPORT_FORMATS[name]
            written = exporter.write(model, spec, temporary)
            files[name] = str(version_dir / written.relative_to(temporary))
            if verify:
                differences[name] = check_format(name, exporter, model, spec, written, probe_images)
        if quantize is not None:
            quantization = quantize_litert(model, spec, config, run, temporary, quantize, force,
                                           DEFAULT_MAX_ACCURACY_DROP if max_accuracy_drop is None
                                           else max_accuracy_drop)
            files[f"litert_{quantize}"] = str(version_dir / quantization["quantized"]["file"])
        metadata = export_metadata(config, spec, run.read_metrics(), run.root, formats, differences)
        metadata["quantization"] = quantization
        metadata["unfinished"] = unfinished
        metadata.update(answer_metadata(run, opened, "saved_model" in formats, spec.multi_label))
        atomic_write_json(temporary / METADATA_FILE, metadata)
    return {
        "path": str(version_dir),
        "version": version,
        "files": files,
        "max_abs_diff": differences,
        "verified_on_images": len(probe_images),
        "metadata": str(version_dir / METADATA_FILE),
        "labels": list(spec.labels),
        "image_size": list(spec.image_size),
        "channels": spec.channels,
        "tta": metadata["tta"],
        "quantization": quantization,
        "calibration": metadata["calibration"],
        "reject_below": metadata.get("reject_below"),
        "explain": metadata["explain"],
    }


def _check_version_folder(version_dir: Path, force: bool) -> None:
    """Refuse a version folder that exists (unless ``force``) or is not kcnn's; remove a killed export's leftovers."""
    remove_abandoned_temporaries(version_dir)
    if not (version_dir.exists() or version_dir.is_symlink()):
        return
    if not force:
        raise UserError(f"{version_dir} already exists: choose another --version or pass --force to replace it")
    if version_dir.is_symlink() or not (version_dir / METADATA_FILE).is_file():
        raise UserError(f"{version_dir} is not a kcnn export (it has no {METADATA_FILE}), and kcnn replaces only "
                        "its own: choose another --version or --out")
def _check_quantization_inputs(run: RunDirectory, config: RunConfig, accept: bool) -> None:
    """The images quantization reads (int8 calibration, the accuracy check), checked against the run's
    record.  Exporting without ``--quantize`` reads none, so a run copied without its data exports as well."""
    from keras_cnn.run_data import check_run_inputs

    data = config.data
    for what, path, is_there in (("image folder", data.images, os.path.isdir), ("split", data.split, os.path.isfile)):
        if path and not is_there(path):
            raise UserError(f"--quantize reads the run's images (int8 calibration and the accuracy check), but its "
                            f"{what} {path} is missing; put it back, or export without --quantize (no image needed)")
    check_run_inputs(run, config, accept=accept, command="kcnn export --quantize")


def check_export_options(run_dir: str | os.PathLike, formats: tuple[str, ...] | list[str] | str = ("saved_model",),
                         version: int | None = None, tta: int | None = None, quantize: str | None = None
                         ) -> tuple[tuple[str, ...], int, list[str] | None]:
    """The export's options checked against each other and the run's config.json, with no TensorFlow and
    no model (the command line calls it before anything starts).  Returns the formats in writing order,
    the version (default 1) and the TTA views (None without ``tta``)."""
    from keras_cnn.tta import trained_with_flips, view_names

    formats = _check_formats(formats)
    version = 1 if version is None else version
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise UserError(f"--version must be a whole number from 1 to {MAX_VERSION:,}, received: {version!r}")
    if quantize is not None:
        check_mode(quantize)
        if "litert" not in formats:
            raise UserError("--quantize makes a LiteRT file: add --format litert")
    if not tta:
        return formats, version, None
    if "saved_model" not in formats:
        raise UserError("--tta adds a signature to the SavedModel: add --format saved_model")
    config = RunConfig.from_dict(RunDirectory(run_dir).require().read_config())
    return formats, version, view_names(int(tta), trained_with_flips(config))


def _check_formats(formats) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    unknown = [name for name in formats if name not in EXPORT_FORMATS]
    if unknown or not formats:
        raise UserError(f"export format must be among {sorted(EXPORT_FORMATS)}, received: {list(formats)}")
    for name in formats:
        missing = [module for module in EXPORT_FORMATS[name].requires if importlib.util.find_spec(module) is None]
        if missing:
            raise UserError(f"--format {name} needs {', '.join(missing)}: pip install 'kcnn[export]'")
    # The SavedModel last: tf2onnx serialises the graph collections, and after the
    # SavedModel's label table exists it warns (harmlessly) about its initializer.
    ordered = [name for name in EXPORT_FORMATS if name in formats]
    return tuple(sorted(ordered, key=lambda name: name == "saved_model"))


def answer_metadata(run: RunDirectory, opened, saved_model: bool, multi_label: bool = False) -> dict[str, Any]:
    """What kcnn.json says about the answers: ``calibration`` (the temperature and its numbers, or
    None), ``reject_below`` (when the run stored a threshold) and ``explain`` (the heat-map
    signature and its feature map, or why there is none)."""
    record = read_calibration(run)
    entry: dict[str, Any] = {"calibration": None}
    if record.get("temperature") is not None:
        entry["calibration"] = {key: record[key] for key in ("temperature", "kind", "stage", "fitted_on",
                                                             "validation", "test") if key in record}
    selection = record.get("reject_below") or {}
    if selection.get("threshold") is not None:
        entry["reject_below"] = float(selection["threshold"])
        entry["reject_below_choice"] = {key: selection[key] for key in ("target_accuracy", "validation")
                                        if key in selection}
    if multi_label:
        entry["explain"] = {"signature": None, "reason": "a multi-label model's export has no heat-map signature "
                                                         "(Grad-CAM explains one answer; it answers each label)"}
    elif opened.has_feature_map and saved_model:
        entry["explain"] = {"signature": EXPLAIN_SIGNATURE, "output": HEATMAP_OUTPUT,
                            "feature_layer": opened.feature_layer, "feature_shape": list(opened.feature_shape)}
    else:
        entry["explain"] = {"signature": None, "reason": opened.no_feature_map or
                            "heat maps are a signature of the SavedModel (--format saved_model)"}
    return entry


def export_metadata(config: RunConfig, spec: ModelSpec, metrics: dict[str, Any], run_root: Path,
                    formats: tuple[str, ...], differences: dict[str, float]) -> dict[str, Any]:
    """The ``kcnn.json`` written beside the SavedModel (``assets.extra/``)."""
    from keras_cnn.data.images import RESIZE_FILTER
    from keras_cnn.tta import trained_with_flips

    multi_label = {"multi_label": True, "thresholds": dict(zip(spec.labels, spec.thresholds))} if spec.multi_label \
        else {}
    return {
        "versions": library_versions(),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run": str(run_root.resolve()),
        "kind": config.model.kind,
        "base": config.model.name,
        "input": {"image_size": list(spec.image_size), "channels": spec.channels,
                  "resize_mode": spec.resize_mode, "resize_filter": RESIZE_FILTER, "dtype": "float32",
                  "range": [0, 255]},
        "output": {"activation": "sigmoid" if spec.binary or spec.multi_label else "softmax",
                   "classes": len(spec.labels)},
        "labels": list(spec.labels),
        # Multi-label: one probability per label; a label is predicted at or above its threshold.
        **multi_label,
        "metrics": metrics,
        "signatures": signature_descriptions(spec) if "saved_model" in formats else {},
        "tta": {"signature": TTA_SIGNATURE, "views": list(spec.tta_views)} if spec.tta_views else None,
        # Lets `kcnn predict --tta N` choose the same views as `kcnn evaluate --tta N`.
        "trained_with_horizontal_flips": trained_with_flips(config),
        "files": {name: EXPORT_FORMATS[name].file_name for name in formats},
        "max_abs_diff": differences,
    }
