"""The HTTP application: TF Serving's REST API, kcnn's upload endpoint and the page.

Routes:

``GET /v1/models/NAME[/versions/N]``            TF Serving's model status
``GET /v1/models/NAME[/versions/N]/metadata``   TF Serving's metadata (every SignatureDef)
``POST /v1/models/NAME[/versions/N]:predict``   TF Serving's predict, row or column format
``GET /kcnn/v1/models``                         the served model for the page (labels, metrics…)
``POST /kcnn/v1/models/NAME[/versions/N]/classify``  multipart ``image`` files -> answers per image
``GET /``                                       the page

Every ``/v1/`` path is parsed with TF Serving's own URL patterns, so a path it would not
accept gets the same 400 (``Malformed request: …``).  Every error is ``{"error": "…"}``
with a 4xx/5xx status; nothing a request does shows a traceback to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from keras_cnn.data.pixel_limit import DEFAULT_MAX_IMAGE_PIXELS, pixel_limit_problem
from keras_cnn.errors import first_line
from keras_cnn.predict import clean_tensorflow_message, decode_failure_reason
from keras_cnn.serve.answers import IMAGE_INPUT, answer_signature, image_answers, model_description
from keras_cnn.serve.batching import Batcher
from keras_cnn.serve.errors import ServingError, bad_request, not_found
from keras_cnn.serve.limits import BodySizeLimit, ModelWork
from keras_cnn.serve.models import ModelRepository, ServedVersion, Signature
from keras_cnn.serve.page import page_html
from keras_cnn.serve.rest_json import (PredictRequest, parse_json_body, parse_predict_request, predict_response,
                                       requested_signature)

LOGGER = logging.getLogger("keras_cnn.serve")

# TF Serving's URL patterns (http_rest_api_util.cc), so paths are accepted exactly as there.
PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:"
                          r"(classify|regress|predict)", re.IGNORECASE)
STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                         r"(?:/(metadata))?", re.IGNORECASE)
# Errors of the model's graph on an input it cannot take (an image that does not decode, a wrong shape).
INPUT_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.UnknownError)
DEFAULT_TOP_K = 3


@dataclass
class ServeOptions:
    """The limits and batching of one server (``kcnn serve``'s options)."""

    max_batch: int = 32
    batch_timeout_ms: float = 2.0
    max_body_bytes: int = 32 * 2 ** 20
    max_in_flight: int = 64
    request_timeout: float = 30.0
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    max_files: int = 64


class JSON(JSONResponse):
    """A JSON response that writes ``NaN`` and ``Infinity`` as TF Serving does (Starlette's refuses them)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=True, separators=(",", ":")).encode("utf-8")


class Service:
    """The served repository with its batcher and limits; the route handlers call into it."""

    def __init__(self, repository: ModelRepository, options: ServeOptions):
        self.repository = repository
        self.options = options
        self.batcher = Batcher(self._run_batch, options.max_batch, options.batch_timeout_ms / 1000.0)
        self.work = ModelWork(options.max_in_flight, options.request_timeout)

    def _run_batch(self, key: tuple, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        version, signature = key[0], key[1]
        return self.repository.versions[version].run(signature, inputs)

    async def run(self, version: ServedVersion, signature: Signature, inputs: dict[str, np.ndarray],
                  size: int) -> dict[str, np.ndarray]:
        """Outputs of ``signature`` for a batch of examples, batched with other requests."""
        shapes = tuple((name, value.dtype.str, value.shape[1:]) for name, value in sorted(inputs.items()))
        return await self.batcher.submit((version.number, signature.name, shapes), inputs, size)

    # ----------------------------------------------------------------------- TF Serving

    def status(self, model_name: str, number: int | None) -> dict[str, Any]:
        if model_name != self.repository.name:
            raise not_found(f"Could not find any versions of model {model_name}" if number is None
                            else f"Could not find version {number} of model {model_name}")
        if number is not None and number not in self.repository.versions:
            raise not_found(f"Could not find version {number} of model {model_name}")
        numbers = [number] if number is not None else sorted(self.repository.versions, reverse=True)
        return {"model_version_status": [
            {"version": str(value), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for value in numbers]}

    def metadata(self, model_name: str, number: int | None) -> dict[str, Any]:
        version = self.repository.version(model_name, number)
        return {"model_spec": {"name": self.repository.name, "signature_name": "", "version": str(version.number)},
                "metadata": {"signature_def": {"signature_def": version.signature_defs}}}

    async def predict(self, model_name: str, number: int | None, body: bytes) -> dict[str, Any]:
        version = self.repository.version(model_name, number)
        document = parse_json_body(body)
        signature_name = requested_signature(document)
        signature = version.signatures.get(signature_name)
        if signature is None:
            raise bad_request(f'Serving signature name: "{signature_name}" not found in signature def')
        request = parse_predict_request(document, signature)
        self._check_pixels(request)
        try:
            outputs = await self.run(version, signature, request.inputs, request.size)
        except INPUT_ERRORS as error:
            raise bad_request(await self._failed_example(version, signature, request, error)) from None
        return predict_response(outputs, request.format)

    def _check_pixels(self, request: PredictRequest) -> None:
        """Refuse images over the pixel limit before anything decodes them."""
        limit = self.options.max_image_pixels
        for name, value in request.inputs.items():
            for index in range(request.size):
                if value.dtype == object:
                    problem = pixel_limit_problem(value[index], limit) if value.ndim == 1 else None
                elif limit and value.ndim == 4 and value.shape[1] * value.shape[2] > limit:
                    problem = f"the image has {value.shape[1] * value.shape[2]:,} pixels, over the limit of {limit:,}"
                else:
                    problem = None
                if problem:
                    raise bad_request(f"{request.item_name(index)}: {problem}")

    async def _failed_example(self, version: ServedVersion, signature: Signature, request: PredictRequest,
                              error: Exception) -> str:
        """The message of a failed predict request: the first example that fails on its own, and why."""
        for index in range(request.size):
            one = {name: value[index:index + 1] for name, value in request.inputs.items()}
            try:
                await self.run(version, signature, one, 1)
            except INPUT_ERRORS as single_error:
                return f"{request.item_name(index)}: {await _reason(one, single_error)}"
        return clean_tensorflow_message(error)

    # ----------------------------------------------------------------------- kcnn's endpoint

    async def classify(self, model_name: str, number: int | None, request: Request) -> dict[str, Any]:
        version = self.repository.version(model_name, number)
        form = await request.form(max_files=self.options.max_files, max_fields=16)
        uploads = [item for item in form.getlist("image") if isinstance(item, UploadFile)]
        if not uploads:
            raise bad_request("send one or more images as multipart/form-data fields named 'image'")
        top_k = _positive_int(form.get("top_k", DEFAULT_TOP_K), "top_k")
        signature_name = answer_signature(version, form.get("signature") or None)
        signature = version.signatures.get(signature_name)
        if signature is None or list(signature.inputs) != [IMAGE_INPUT]:
            takes_images = sorted(name for name, found in version.signatures.items()
                                  if list(found.inputs) == [IMAGE_INPUT])
            raise bad_request(f"signature {signature_name!r} does not take encoded images; use one of {takes_images}")
        names, images, problems = [], [], {}
        for index, upload in enumerate(uploads):
            data = await upload.read()
            names.append(upload.filename or f"image {index}")
            images.append(data)
            problem = "empty file" if not data else pixel_limit_problem(data, self.options.max_image_pixels)
            if problem:
                problems[index] = problem
        good = [index for index in range(len(images)) if index not in problems]
        answers: dict[int, dict[str, Any]] = {index: {"file": names[index], "error": problems[index]}
                                              for index in problems}
        answers.update(await self._answer(version, signature, [names[i] for i in good], [images[i] for i in good],
                                          good, top_k))
        return {"model": {"name": self.repository.name, "version": version.number, "signature": signature.name},
                "results": [answers[index] for index in range(len(images))]}

    async def _answer(self, version: ServedVersion, signature: Signature, names: list[str], images: list[bytes],
                      positions: list[int], top_k: int) -> dict[int, dict[str, Any]]:
        if not images:
            return {}
        batch = {IMAGE_INPUT: np.array(images, dtype=object)}
        try:
            outputs = await self.run(version, signature, batch, len(images))
        except INPUT_ERRORS:
            if len(images) == 1:
                reason = await asyncio.to_thread(decode_failure_reason, images[0])
                return {positions[0]: {"file": names[0], "error": reason}}
            answers = {}
            for index in range(len(images)):   # each on its own: only the bad ones fail
                answers.update(await self._answer(version, signature, names[index:index + 1],
                                                  images[index:index + 1], positions[index:index + 1], top_k))
            return answers
        return dict(zip(positions, image_answers(version, names, outputs, top_k)))


async def _reason(example: dict[str, np.ndarray], error: Exception) -> str:
    """Why one example failed: for encoded images, whether they decode at all."""
    value = next(iter(example.values()))
    if value.dtype == object and value.ndim == 1 and isinstance(value[0], bytes):
        return await asyncio.to_thread(decode_failure_reason, value[0])
    return clean_tensorflow_message(error)


def _positive_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise bad_request(f"{name} must be a positive integer, received: {str(value)[:40]!r}")
    return number


# --------------------------------------------------------------------------- routes


def create_app(repository: ModelRepository, options: ServeOptions | None = None) -> Starlette:
    """The ASGI application serving ``repository`` (wrapped in the body-size limit)."""
    options = options or ServeOptions()
    service = Service(repository, options)

    @json_errors
    async def tf_serving(request: Request):
        path, method = request.url.path, request.method
        if method == "POST":
            found = PREDICT_PATH.fullmatch(path)
            if found:
                name, number, label, verb = found.groups()
                _refuse_label(label)
                if verb.lower() != "predict":
                    raise bad_request(f"this model has no {verb.lower()} signature (its signatures use "
                                      "tensorflow/serving/predict): use :predict")
                async with service.work():
                    body = await request.body()
                    return JSON(await service.predict(name, _version(number), body))
        elif method == "GET":
            found = STATUS_PATH.fullmatch(path)
            if found:
                name, number, label, metadata = found.groups()
                _refuse_label(label)
                if not name:
                    raise bad_request("Missing model name in request.")
                if metadata:
                    return JSON(service.metadata(name, _version(number)))
                return JSON(service.status(name, _version(number)))
        raise bad_request(f"Malformed request: {method} {path}")

    @json_errors
    async def models(request: Request):
        return JSON({"models": [model_description(repository, repository.latest)]})

    @json_errors
    async def classify(request: Request):
        number = request.path_params.get("version")
        async with service.work():
            return JSON(await service.classify(request.path_params["name"], number, request))

    async def page(request: Request):
        return HTMLResponse(page_html())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        yield
        await service.batcher.stop()

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/kcnn/v1/models", models, methods=["GET"]),
            Route("/kcnn/v1/models/{name}/classify", classify, methods=["POST"]),
            Route("/kcnn/v1/models/{name}/versions/{version:int}/classify", classify, methods=["POST"]),
            Route("/v1/{rest:path}", tf_serving, methods=["GET", "POST"]),
        ],
        exception_handlers={ServingError: _serving_error, HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.service = service
    return BodySizeLimitedApp(app, options.max_body_bytes, service)


class BodySizeLimitedApp(BodySizeLimit):
    """The application behind its body-size limit; ``.service`` and ``.app`` for tests and the server."""

    def __init__(self, app: Starlette, max_bytes: int, service: Service):
        super().__init__(app, max_bytes)
        self.service = service


def json_errors(handler):
    """Turn any unexpected failure of ``handler`` into a 500 ``{"error": …}`` (logged in one line)."""

    @functools.wraps(handler)
    async def guarded(request: Request):
        try:
            return await handler(request)
        except (ServingError, HTTPException):
            raise
        except Exception as error:  # noqa: BLE001 - the client gets one line, never a traceback
            LOGGER.warning("%s %s failed: %s: %s", request.method, request.url.path, type(error).__name__,
                           first_line(error))
            raise ServingError(500, f"internal error: {type(error).__name__}: {first_line(error)}") from None

    return guarded


def _version(number: str | None) -> int | None:
    return None if number is None else int(number)


def _refuse_label(label: str | None) -> None:
    if label is not None:
        raise not_found(f"Unrecognized servable version label: {label} (kcnn serve has version numbers only)")


async def _serving_error(request: Request, error: ServingError) -> JSON:
    return JSON({"error": error.message}, status_code=error.status, headers=error.headers)


async def _http_error(request: Request, error: HTTPException) -> JSON:
    # Starlette's own: unknown paths (404), wrong methods (405), unreadable multipart bodies (400).
    return JSON({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)


async def _internal_error(request: Request, error: Exception) -> JSON:
    LOGGER.warning("%s %s failed: %s: %s", request.method, request.url.path, type(error).__name__,
                   first_line(error))
    return JSON({"error": f"internal error: {type(error).__name__}: {first_line(error)}"}, status_code=500)
