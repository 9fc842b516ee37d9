"""TF Serving's REST JSON for ``:predict``: request bodies to tensors, tensors to response bodies.

Follows TensorFlow Serving's RESTful API guide and its ``json_tensor`` implementation:

- a request is an object with an optional ``signature_name`` (default ``serving_default``)
  and exactly one of ``instances`` (row format: a non-empty list, one item per example;
  with one named input the item is that input's value, else an object of input name ->
  value) or ``inputs`` (column format: the value of the single input, or an object of
  input name -> batched value);
- binary strings are ``{"b64": "…"}``; ``NaN`` / ``Infinity`` are accepted as numbers;
- a row-format answer is ``{"predictions": […]}`` (a list of objects of output name ->
  value when there are several outputs), a column-format one ``{"outputs": {…}}``;
- float outputs are written as TF Serving writes them: the shortest of ``%g`` (6
  significant digits) that reads back as the same float32, else 9 significant digits,
  and ``.0`` after whole numbers; outputs whose name ends in ``_bytes`` are base64.

Errors are :class:`~keras_cnn.serve.errors.ServingError` 400s whose messages follow TF
Serving's where it has one, and name the instance or input they are about.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from keras_cnn.serve.errors import bad_request
from keras_cnn.serve.models import DEFAULT_SIGNATURE, Signature

ROW, COLUMN = "instances", "inputs"
BYTES_SUFFIX = "_bytes"
SHOWN_JSON_CHARACTERS = 120   # of a JSON value quoted in an error message


@dataclass
class PredictRequest:
    """A parsed ``:predict`` body: the signature, the format and each input batched as numpy."""

    signature_name: str
    format: str                                   # ROW or COLUMN
    inputs: dict[str, np.ndarray]
    size: int                                     # examples in the batch (first dimension)

    def item_name(self, index: int) -> str:
        """How an error names one example: ``instance 3`` / ``inputs[3]`` (counted from 0, as TF Serving does)."""
        return f"instance {index}" if self.format == ROW else f"inputs[{index}]"


def parse_json_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object (TF Serving's parse errors otherwise)."""
    if not body:
        raise bad_request("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad_request(f"JSON Parse error: {error}") from None
    except RecursionError:
        raise bad_request("JSON Parse error: nested too deeply") from None
    if not isinstance(document, dict):
        raise bad_request(f"JSON Value: {shown(document)} Is not object")
    return document


def requested_signature(document: dict[str, Any]) -> str:
    """``signature_name`` of the request (a string) or ``serving_default``."""
    name = document.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(name, str):
        raise bad_request("'signature_name' key must be a string value.")
    return name or DEFAULT_SIGNATURE


def parse_predict_request(document: dict[str, Any], signature: Signature) -> PredictRequest:
    """Turn a ``:predict`` request object into batched numpy inputs for ``signature``."""
    has_rows, has_columns = ROW in document, COLUMN in document
    if has_rows and has_columns:
        raise bad_request("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if has_rows:
        inputs = _rows_to_columns(document[ROW], signature)
        fmt = ROW
    elif has_columns:
        inputs = _columns(document[COLUMN], signature)
        fmt = COLUMN
    else:
        raise bad_request("Missing 'inputs' or 'instances' key")
    sizes = {name: value.shape[0] if value.ndim else None for name, value in inputs.items()}
    batch_sizes = set(sizes.values())
    if None in batch_sizes or len(batch_sizes) != 1:
        raise bad_request(f"every input needs the same first (batch) dimension, received: {sizes}")
    return PredictRequest(signature.name, fmt, inputs, batch_sizes.pop())


def _rows_to_columns(instances: Any, signature: Signature) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise bad_request("Excepting 'instances' to be an list/array")
    if not instances:
        raise bad_request("No values in 'instances' array")
    names = sorted(signature.inputs)
    named = _is_named_object(instances[0])
    if not named and len(names) > 1:
        raise bad_request("instances is a plain list, but expecting list of objects as multiple input tensors "
                          "required as per tensorinfo_map")
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for index, item in enumerate(instances):
        if named != _is_named_object(item):
            raise bad_request(f"Expecting {'object' if named else 'value/list'} but got "
                              f"{'list' if named else 'object'} at item {index} of input list")
        if named:
            if set(item) != set(names):
                raise bad_request(f"Failed to process element: {index} of 'instances' list. JSON object: "
                                  f"{shown(item)} keys must be equal to: {','.join(names)}")
            for name in names:
                columns[name].append(item[name])
        else:
            columns[names[0]].append(item)
    return {name: _tensor(values, signature.inputs[name], ROW) for name, values in columns.items()}


def _columns(value: Any, signature: Signature) -> dict[str, np.ndarray]:
    names = sorted(signature.inputs)
    if not _is_named_object(value):
        if len(names) > 1:
            raise bad_request("inputs is a plain value/list, but expecting an object as multiple input tensors "
                              "required as per tensorinfo_map")
        return {names[0]: _tensor(value, signature.inputs[names[0]], COLUMN)}
    missing = [name for name in names if name not in value]
    if missing:
        raise bad_request(f"Missing named input: {missing[0]} in 'inputs' object.")
    return {name: _tensor(value[name], signature.inputs[name], COLUMN) for name in names}


def _is_named_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_base64_object(value)


def _is_base64_object(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _tensor(values: Any, spec, fmt: str) -> np.ndarray:
    """One input's batched values (a list, one item per example) as numpy of the signature's dtype and rank."""
    if not isinstance(values, list):
        raise bad_request(f"input {spec.name} must be a list with one value per example (its first dimension is "
                          f"the batch), received: {shown(values)}")
    if spec.dtype.name == "string":
        array = _string_tensor(values, spec.name, fmt)
    else:
        array = _numeric_tensor(values, spec)
    expected = spec.shape
    if len(expected) and (array.ndim != len(expected) or any(
            want is not None and want != got for want, got in zip(expected[1:], array.shape[1:]))):
        shape = ", ".join("?" if size is None else str(size) for size in expected)
        raise bad_request(f"input {spec.name} must have shape [{shape}] (? = any), received "
                          f"{list(array.shape)}")
    return array


def _string_tensor(values: list[Any], name: str, fmt: str) -> np.ndarray:
    """Strings and ``{"b64": …}`` objects (nested lists allowed) as a numpy object array of bytes."""
    def convert(value: Any, index: int) -> Any:
        if isinstance(value, list):
            return [convert(item, index) for item in value]
        if isinstance(value, str):
            return value.encode("utf-8")
        if _is_base64_object(value):
            return decode_base64(value["b64"], index, fmt)
        raise bad_request(f"{item_label(fmt, index)}: JSON Value: {shown(value)} is not of expected type: "
                          f"DT_STRING (a string or {{\"b64\": \"...\"}})")

    converted = [convert(value, index) for index, value in enumerate(values)]
    array = np.empty(_dense_shape(converted, name), dtype=object)
    _fill(array, converted)
    return array


def decode_base64(text: str, index: int, fmt: str) -> bytes:
    """Standard base64 (padding optional, as absl's decoder takes it); a 400 naming the example otherwise."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{item_label(fmt, index)}: Unable to base64 decode") from None


def item_label(fmt: str, index: int) -> str:
    """``Failed to process element: 3 of 'instances' list`` style names of one example."""
    return (f"Failed to process element: {index} of 'instances' list" if fmt == ROW
            else f"Failed to process element: {index} of 'inputs'")


def _dense_shape(values: list[Any], name: str) -> tuple[int, ...]:
    shape = []
    level: Any = values
    while isinstance(level, list):
        shape.append(len(level))
        level = level[0] if level else None
    _check_dense(values, tuple(shape), name)
    return tuple(shape)


def _check_dense(value: Any, shape: tuple[int, ...], name: str) -> None:
    if not shape:
        if isinstance(value, list):
            raise bad_request(f"input {name}: lists nested deeper in some examples than in others")
        return
    if not isinstance(value, list) or len(value) != shape[0]:
        raise bad_request(f"input {name}: every example must have the same shape")
    for item in value:
        _check_dense(item, shape[1:], name)


def _fill(array: np.ndarray, values: list[Any]) -> None:
    for index, value in enumerate(values):
        if isinstance(value, list):
            _fill(array[index], value)
        else:
            array[index] = value


def _numeric_tensor(values: list[Any], spec) -> np.ndarray:
    try:
        array = np.asarray(values)
    except (ValueError, RecursionError):
        raise bad_request(f"input {spec.name}: every example must have the same shape") from None
    if array.dtype.kind not in "iuf":
        raise bad_request(f"input {spec.name} must hold numbers ({spec.dtype.name}), received JSON values of "
                          f"another type")
    dtype = np.dtype(spec.dtype.as_numpy_dtype)
    if dtype.kind in "iu":
        if array.dtype.kind == "f":
            raise bad_request(f"input {spec.name} is {spec.dtype.name}: whole numbers only")
        information = np.iinfo(dtype)
        if array.size and (array.min() < information.min or array.max() > information.max):
            raise bad_request(f"input {spec.name} is {spec.dtype.name}: values must be within "
                              f"{information.min}..{information.max}")
    elif array.size and np.isfinite(array).all() and np.abs(array).max() > np.finfo(dtype).max:
        raise bad_request(f"Cannot convert JSON value to {dtype.name} without loss of precision.")
    return array.astype(dtype)


# --------------------------------------------------------------------------- responses


def predict_response(outputs: dict[str, np.ndarray], fmt: str) -> dict[str, Any]:
    """``{"predictions": …}`` (row) or ``{"outputs": …}`` (column), as TF Serving shapes them."""
    names = sorted(outputs)
    columns = {name: tensor_json(name, outputs[name]) for name in names}
    if fmt == COLUMN:
        return {"outputs": columns if len(names) > 1 else columns[names[0]]}
    size = len(columns[names[0]])
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    return {"predictions": [{name: columns[name][row] for name in names} for row in range(size)]}


def tensor_json(name: str, array: np.ndarray) -> Any:
    """A tensor as nested JSON values (floats as TF Serving prints them, ``*_bytes`` strings base64)."""
    array = np.asarray(array)
    if array.dtype.kind == "f":
        convert = _float_json if array.dtype == np.float32 else float
        values = [convert(value) for value in array.reshape(-1).tolist()]
        return np.asarray(values, dtype=object).reshape(array.shape).tolist() if array.ndim else values[0]
    if array.dtype.kind in "OSU":
        as_bytes = name.endswith(BYTES_SUFFIX)

        def string(value: Any) -> Any:
            if as_bytes:
                return {"b64": base64.b64encode(value).decode("ascii")}
            return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)

        flat = [string(value) for value in array.reshape(-1).tolist()]
        return np.asarray(flat, dtype=object).reshape(array.shape).tolist() if array.ndim else flat[0]
    return array.tolist()


def _float_json(value: float) -> float:
    """A float32 (given as a Python float) as the number TF Serving writes for it."""
    if not math.isfinite(value):
        return value
    short = f"{value:g}"
    if np.float32(short) != np.float32(value):
        short = f"{value:.9g}"
    return float(short)


def shown(value: Any) -> str:
    """A JSON value for an error message, cut to a readable length."""
    text = json.dumps(value)
    return text if len(text) <= SHOWN_JSON_CHARACTERS else text[: SHOWN_JSON_CHARACTERS - 1] + "…"
