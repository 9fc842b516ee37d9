"""The export being served: every version folder, loaded with ``kcnn predict``'s loader.

``kcnn serve --model DIR`` serves each numbered version folder of ``DIR`` (TF Serving's
"all versions" policy); requests without a version go to the highest.  Each version is
loaded by :func:`keras_cnn.predict.load_exported_model` (which checks the export and its
labels) and keeps, for every signature of the SavedModel, its input specs and the
``SignatureDef`` as TF Serving's metadata API prints it (read from ``saved_model.pb``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

from keras_cnn.export_layout import served_version_dirs, version_number
from keras_cnn.predict import ExportedModel, load_exported_model
from keras_cnn.serve.errors import not_found

DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class InputSpec:
    """One named input of a signature: its dtype (``tf.string``, ``tf.float32``…) and shape (None = any)."""

    name: str
    dtype: Any
    shape: tuple[int | None, ...]


@dataclass
class Signature:
    """A callable signature of a loaded SavedModel."""

    name: str
    function: Any
    inputs: dict[str, InputSpec]
    outputs: list[str]


@dataclass
class ServedVersion:
    """One loaded version folder."""

    number: int
    model: ExportedModel
    signatures: dict[str, Signature]
    signature_defs: dict[str, Any] = field(default_factory=dict)   # TF Serving's metadata JSON

    def run(self, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call a signature on batched inputs; raises TensorFlow's error on inputs it cannot take."""
        signature = self.signatures[signature_name]
        tensors = {name: tf.constant(value, dtype=signature.inputs[name].dtype) for name, value in inputs.items()}
        return {name: value.numpy() for name, value in signature.function(**tensors).items()}


@dataclass
class ModelRepository:
    """The served model: its name and loaded versions."""

    name: str
    versions: dict[int, ServedVersion]

    @property
    def latest(self) -> ServedVersion:
        return self.versions[max(self.versions)]

    def version(self, model_name: str, number: int | None) -> ServedVersion:
        """The version a request names (None: the highest), or TF Serving's 404."""
        if model_name != self.name:
            detail = f"Latest({model_name})" if number is None else f"Specific({model_name}, {number})"
            raise not_found(f"Servable not found for request: {detail}")
        if number is None:
            return self.latest
        if number not in self.versions:
            raise not_found(f"Servable not found for request: Specific({model_name}, {number})")
        return self.versions[number]


def load_repository(path: str | os.PathLike, name: str | None = None) -> ModelRepository:
    """Load every version of an export; ``name`` defaults to the export folder's name."""
    folders = served_version_dirs(path)
    if name is None:
        lone_version = len(folders) == 1 and folders[0] == Path(path)
        name = (Path(path).resolve().parent if lone_version else Path(path).resolve()).name
    versions = {version_number(folder): load_version(folder) for folder in folders}
    return ModelRepository(name, versions)


def load_version(folder: Path) -> ServedVersion:
    """Load one version folder through ``kcnn predict``'s loader, with its signatures described."""
    model = load_exported_model(folder)
    signatures = {}
    for name, function in model.saved_model.signatures.items():
        specs = function.structured_input_signature[1]
        signatures[name] = Signature(
            name, function,
            {key: InputSpec(key, spec.dtype, tuple(spec.shape.as_list()) if spec.shape.rank is not None else ())
             for key, spec in specs.items()},
            sorted(function.structured_outputs))
    return ServedVersion(version_number(folder), model, signatures, read_signature_defs(folder))


def read_signature_defs(folder: Path) -> dict[str, Any]:
    """Every ``SignatureDef`` of ``saved_model.pb`` as JSON, printed the way TF Serving prints them."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((folder / "saved_model.pb").read_bytes())
    meta_graph = saved_model.meta_graphs[0]
    return {name: json_format.MessageToDict(definition, preserving_proto_field_name=True,
                                            always_print_fields_with_no_presence=True)
            for name, definition in meta_graph.signature_def.items()}
