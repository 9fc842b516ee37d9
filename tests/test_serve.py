"""``kcnn serve``: TF Serving's REST contract, kcnn's endpoint, limits, batching, the page in Chromium.

One export (two versions of a tiny model, the second with ``serving_tta``) and one server
(uvicorn in a thread of this process) are shared by the whole module; one more test runs
``kcnn serve`` as a real process and stops it with SIGTERM while a request is in flight.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest.importorskip("starlette", reason="kcnn serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="kcnn serve needs the serve extra: pip install -e '.[serve]'")

import httpx  # noqa: E402
import keras  # noqa: E402
import uvicorn  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from conftest import stderr_problems  # noqa: E402
from PIL import Image  # noqa: E402

from keras_cnn.cli import cli  # noqa: E402
from keras_cnn.config import DataConfig, ModelConfig, RunConfig  # noqa: E402
from keras_cnn.export import export_run  # noqa: E402
from keras_cnn.predict import load_exported_model, predict_files  # noqa: E402
from keras_cnn.runs import RunDirectory  # noqa: E402
from keras_cnn.serve.app import ServeOptions, create_app  # noqa: E402
from keras_cnn.serve.models import load_repository  # noqa: E402
from keras_cnn.serve.server import DrainingServer, bind_socket, url_of  # noqa: E402

LABELS = ["apple", "banana", "cherry"]
SIZE = 24
NAME = "fruit"
PIXEL_LIMIT = 250_000
BODY_LIMIT = 300_000


def encoded(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode("ascii")}


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """EXPORT/1 and EXPORT/2 (with serving_tta) of a 3-class model whose answer depends on the colours."""
    root = tmp_path_factory.mktemp("serve")
    run = RunDirectory(root / "run").create()
    keras.utils.set_random_seed(7)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(6, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(run.model_path)
    run.write_labels(LABELS)
    run.write_config(RunConfig("train", ModelConfig(name="tiny"),
                               DataConfig(image_size=(SIZE, SIZE), channels=3)).to_dict())
    export = root / NAME
    export_run(run.root, export, version=1, verify=False)
    export_run(run.root, export, version=2, verify=False, tta=2)
    shutil.rmtree(run.root)   # serving needs only the export
    return export


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    """Images of several formats, sizes and colours (so the model's answers differ between them)."""
    folder = tmp_path_factory.mktemp("images")
    generator = np.random.default_rng(3)
    paths = []
    for index, (height, width, fmt) in enumerate([(SIZE, SIZE, "PNG"), (40, 30, "JPEG"), (17, 50, "BMP"),
                                                  (SIZE, SIZE, "PNG"), (64, 64, "PNG")]):
        base = generator.integers(0, 256, 3)
        pixels = np.clip(base + generator.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
        path = folder / f"image{index}.{fmt.lower()}"
        path.write_bytes(encoded(pixels, fmt))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def server(export_dir):
    """The app for ``export_dir`` served by uvicorn in a thread; yields (base URL, app)."""
    app = create_app(load_repository(export_dir), ServeOptions(
        max_batch=16, batch_timeout_ms=30, max_body_bytes=BODY_LIMIT, max_in_flight=32, request_timeout=20,
        max_image_pixels=PIXEL_LIMIT))
    server_socket = bind_socket("127.0.0.1", 0)
    uvicorn_server = DrainingServer(uvicorn.Config(app, log_config=None, lifespan="on"), lambda: None,
                                    lambda: app.service.work.in_flight)
    thread = threading.Thread(target=lambda: asyncio.run(uvicorn_server.serve(sockets=[server_socket])), daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not uvicorn_server.started and time.time() < deadline:
        time.sleep(0.05)
    assert uvicorn_server.started
    yield url_of(server_socket), app
    uvicorn_server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server[0], timeout=30) as session:
        yield session


@pytest.fixture(scope="module")
def kcnn_predictions(export_dir, image_files):
    """What `kcnn predict` answers for the image files (version 1, and version 2 with --tta 2)."""
    plain, failures = predict_files(load_exported_model(export_dir / "1"), image_files, top_k=3)
    assert not failures
    with_tta, failures = predict_files(load_exported_model(export_dir / "2"), image_files, tta=2)
    assert not failures
    return plain, with_tta


def same_float32(served, expected) -> None:
    """The served numbers are the float32 values kcnn predict computed, up to the rounding that another
    batch size brings (kcnn predict's own answers differ that much between --batch-size 1 and 32)."""
    np.testing.assert_allclose(np.asarray(served, np.float32), np.asarray(expected, np.float32), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- TF Serving's REST API


def test_status_and_metadata_as_tf_serving_answers(client):
    everything = client.get(f"/v1/models/{NAME}")
    assert everything.status_code == 200 and everything.headers["content-type"] == "application/json"
    assert everything.json() == {"model_version_status": [
        {"version": version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        for version in ("2", "1")]}
    assert [entry["version"] for entry in client.get(f"/v1/models/{NAME}/versions/1").json()[
        "model_version_status"]] == ["1"]
    assert client.get(f"/v1/models/{NAME}/versions/3").json() == {"error": f"Could not find version 3 of model {NAME}"}
    missing = client.get("/v1/models/other")
    assert missing.status_code == 404 and missing.json() == {"error": "Could not find any versions of model other"}

    latest = client.get(f"/v1/models/{NAME}/metadata").json()
    assert latest["model_spec"] == {"name": NAME, "signature_name": "", "version": "2"}
    signatures = latest["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "serving_images", "serving_images_uint8", "serving_tta"} <= set(signatures)
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert default["inputs"]["image_bytes"]["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}],
                                                                "unknown_rank": False}
    assert set(default["outputs"]) == {"probabilities", "class_index", "label"}
    assert default["outputs"]["probabilities"]["tensor_shape"]["dim"][1]["size"] == "3"
    assert signatures["serving_images_uint8"]["inputs"]["images"]["dtype"] == "DT_UINT8"
    first = client.get(f"/v1/models/{NAME}/versions/1/metadata").json()
    assert first["model_spec"]["version"] == "1"
    assert "serving_tta" not in first["metadata"]["signature_def"]["signature_def"]


def test_predict_in_row_and_column_format_equals_kcnn_predict(client, image_files, kcnn_predictions):
    plain, with_tta = kcnn_predictions
    encoded_files = [b64(path.read_bytes()) for path in image_files]
    expected_labels = [record["label"] for record in plain]
    assert len(set(expected_labels)) > 1 or len({record["class_index"] for record in plain}) > 1 or \
        np.ptp([record["probabilities"][0] for record in plain]) > 1e-3   # the answers depend on the image

    rows = client.post(f"/v1/models/{NAME}/versions/1:predict", json={"instances": encoded_files})
    assert rows.status_code == 200, rows.text
    predictions = rows.json()["predictions"]
    assert [set(item) for item in predictions] == [{"probabilities", "class_index", "label"}] * len(plain)
    same_float32([item["probabilities"] for item in predictions], [record["probabilities"] for record in plain])
    assert [item["label"] for item in predictions] == expected_labels
    assert [item["class_index"] for item in predictions] == [record["class_index"] for record in plain]

    # The same through every spelling the guide documents: named instances, columns, a named column.
    named = client.post(f"/v1/models/{NAME}/versions/1:predict",
                        json={"signature_name": "serving_default",
                              "instances": [{"image_bytes": item} for item in encoded_files]}).json()
    assert named == rows.json()
    for inputs in (encoded_files, {"image_bytes": encoded_files}):
        columns = client.post(f"/v1/models/{NAME}/versions/1:predict", json={"inputs": inputs})
        assert columns.status_code == 200, columns.text
        outputs = columns.json()["outputs"]
        same_float32(outputs["probabilities"], [record["probabilities"] for record in plain])
        assert outputs["label"] == expected_labels

    # serving_tta of version 2 (the default version) equals kcnn predict --tta 2.
    tta = client.post(f"/v1/models/{NAME}:predict", json={"signature_name": "serving_tta",
                                                          "instances": encoded_files}).json()
    same_float32([item["probabilities"] for item in tta["predictions"]],
                 [record["probabilities"] for record in with_tta])


def test_decoded_pixel_signatures_equal_the_encoded_one(client, image_files, kcnn_predictions):
    plain, _ = kcnn_predictions
    pixels = np.asarray(Image.open(image_files[0]).convert("RGB"))     # already at the model's size
    for signature, values in (("serving_images", pixels.astype(float).tolist()),
                              ("serving_images_uint8", pixels.tolist())):
        answer = client.post(f"/v1/models/{NAME}/versions/1:predict",
                             json={"signature_name": signature, "instances": [values, values]})
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        np.testing.assert_allclose([item["probabilities"] for item in predictions],
                                   [plain[0]["probabilities"]] * 2, atol=1e-6)


def test_floats_are_written_as_tf_serving_writes_float32():
    from keras_cnn.serve.rest_json import predict_response

    values = np.array([[0.2, 1 / 3, 1.0, 1e-7]], np.float32)
    text = json.dumps(predict_response({"probabilities": values}, "inputs"))
    assert text == '{"outputs": [[0.2, 0.333333343, 1.0, 1e-07]]}'
    single = predict_response({"scores": values[0], "ids_bytes": np.array([b"\x00\xff"] * 4, object)}, "instances")
    assert single["predictions"][0] == {"ids_bytes": {"b64": "AP8="}, "scores": 0.2}
    # NaN and Infinity are written as TF Serving writes them (strict JSON has no such numbers).
    from keras_cnn.serve.app import JSON

    assert JSON(predict_response({"p": np.array([np.nan, -np.inf], np.float32)}, "inputs")).body == \
        b'{"outputs":[NaN,-Infinity]}'


BAD_REQUESTS = [
    # (path suffix, body, status, what the error says)
    (":predict", b"", 400, "JSON Parse error: The document is empty"),
    (":predict", b"{not json", 400, "JSON Parse error"),
    (":predict", b"[1, 2]", 400, "Is not object"),
    (":predict", b'{"signature_name": 3, "instances": [1]}', 400, "'signature_name' key must be a string"),
    (":predict", b'{"instances": []}', 400, "No values in 'instances' array"),
    (":predict", b'{"instances": {"b64": "AA=="}}', 400, "Excepting 'instances' to be an list/array"),
    (":predict", b'{"instances": [], "inputs": []}', 400, "expecting only one of 'inputs' or 'instances'"),
    (":predict", b'{"examples": []}', 400, "Missing 'inputs' or 'instances' key"),
    (":predict", b'{"signature_name": "nope", "instances": [1]}', 400,
     'Serving signature name: "nope" not found in signature def'),
    (":predict", b'{"instances": [{"b64": "AAA="}, {"b64": "@@@@"}]}', 400,
     "Failed to process element: 1 of 'instances' list: Unable to base64 decode"),
    (":predict", b'{"instances": [{"image": {"b64": "AA=="}}]}', 400, "keys must be equal to: image_bytes"),
    (":predict", b'{"instances": [3]}', 400, "is not of expected type: DT_STRING"),
    (":predict", b'{"signature_name": "serving_images_uint8", "instances": [[[[1, 2, 300]]]]}', 400,
     "values must be within 0..255"),
    (":predict", b'{"signature_name": "serving_images", "instances": [[[[1, 2]]]]}', 400,
     "input images must have shape [?, ?, ?, 3]"),
    (":predict", b'{"signature_name": "serving_images", "instances": [[[[1, 2, 3]]], [[[1, 2, 3], [4, 5, 6]]]]}',
     400, "same shape"),
    (":classify", b'{"examples": []}', 400, "use :predict"),
    ("/versions/9:predict", b'{"instances": [{"b64": "AA=="}]}', 404, "Servable not found for request: Specific"),
    ("/labels/stable:predict", b'{"instances": [{"b64": "AA=="}]}', 404, "Unrecognized servable version label"),
]


@pytest.mark.parametrize("suffix, body, status, message", BAD_REQUESTS)
def test_bad_requests_get_tf_serving_json_errors(client, suffix, body, status, message):
    answer = client.post(f"/v1/models/{NAME}{suffix}", content=body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert set(answer.json()) == {"error"} and message in answer.json()["error"], answer.json()


def test_non_images_huge_images_and_huge_bodies_are_refused_and_the_server_stays_up(client, image_files):
    good = b64(image_files[0].read_bytes())
    jpeg = image_files[1].read_bytes()
    for broken, reason in ((b"hello, not an image", "not a readable image"),
                           (jpeg[: len(jpeg) // 2], "not a readable image")):
        answer = client.post(f"/v1/models/{NAME}:predict", json={"instances": [good, good, b64(broken)]})
        assert answer.status_code == 400 and answer.json()["error"].startswith("instance 2: " + reason), answer.text
    column = client.post(f"/v1/models/{NAME}:predict", json={"inputs": [b64(b"GIF89a nonsense"), good]})
    assert column.status_code == 400 and column.json()["error"].startswith("inputs[0]: ")

    # A 1000 x 1000 PNG of one colour is small on the wire and over the 250,000-pixel limit.
    bomb = encoded(np.zeros((1000, 1000, 3), np.uint8))
    assert len(bomb) < BODY_LIMIT / 2
    answer = client.post(f"/v1/models/{NAME}:predict", json={"instances": [good, b64(bomb)]})
    assert answer.status_code == 400 and "instance 1: the image has 1,000,000 pixels, over the limit of 250,000" \
        in answer.json()["error"]

    big = client.post(f"/v1/models/{NAME}:predict", content=b'{"instances": ["' + b"A" * BODY_LIMIT + b'"]}')
    assert big.status_code == 413 and "over the limit of 300,000 bytes" in big.json()["error"]

    def chunks():   # no Content-Length: the limit applies while the body streams in
        for _ in range(8):
            yield b" " * 50_000

    streamed = client.post(f"/v1/models/{NAME}:predict", content=chunks())
    assert streamed.status_code == 413, streamed.text
    assert client.get("/nothing/here").json() == {"error": "Not Found"}
    assert client.get(f"/v1/models/{NAME}").status_code == 200
    assert client.post(f"/v1/models/{NAME}:predict", json={"instances": [good]}).status_code == 200


# --------------------------------------------------------------------------- batching and limits


class WrappedModel:
    """Runs every model call of the running server through ``wrap(run, key, inputs)`` (in the model thread)."""

    def __init__(self, app, wrap):
        self.batcher, self.wrap = app.service.batcher, wrap

    def __enter__(self):
        self.original = run = self.batcher.run
        self.batcher.run = lambda key, inputs: self.wrap(run, key, inputs)
        return self

    def __exit__(self, *exc_info):
        self.batcher.run = self.original


def slow_model(app, seconds: float) -> WrappedModel:
    """Every model call takes ``seconds`` longer."""
    def slow(run, key, inputs):
        time.sleep(seconds)
        return run(key, inputs)

    return WrappedModel(app, slow)


def heatmap_output(app) -> WrappedModel:
    """Every model call also returns a ``heatmap`` (a bright spot), as a signature returning one would."""
    def with_heatmap(run, key, inputs):
        outputs = run(key, inputs)
        heatmap = np.zeros((len(outputs["label"]), 6, 6), np.float32)
        heatmap[:, 2, 3] = 1.0
        return {**outputs, "heatmap": heatmap}

    return WrappedModel(app, with_heatmap)


def test_concurrent_requests_are_batched_and_answered_alike(server, client, image_files):
    url, app = server
    images = [b64(path.read_bytes()) for path in image_files]
    alone = [client.post(f"/v1/models/{NAME}:predict", json={"instances": [image]}).json()["predictions"][0]
             for image in images]
    batches_before = app.service.batcher.batches
    requests = [images[index % len(images)] for index in range(16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda image: httpx.post(f"{url}v1/models/{NAME}:predict",
                                                         json={"instances": [image]}, timeout=30), requests))
    assert all(answer.status_code == 200 for answer in answers)
    for index, answer in enumerate(answers):
        # Equal up to float rounding: the batch size changes the order of the sums.
        batched, single = answer.json()["predictions"][0], alone[index % len(images)]
        assert batched["label"] == single["label"] and batched["class_index"] == single["class_index"]
        np.testing.assert_allclose(batched["probabilities"], single["probabilities"], atol=1e-6)
    assert app.service.batcher.batches - batches_before < 16   # some requests shared a model call


def test_status_answers_while_the_model_computes(server, client, image_files):
    url, app = server
    with slow_model(app, 1.5), ThreadPoolExecutor(1) as pool:
        busy = pool.submit(httpx.post, f"{url}v1/models/{NAME}:predict",
                           json={"instances": [b64(image_files[0].read_bytes())]}, timeout=30)
        time.sleep(0.3)
        start = time.perf_counter()
        assert client.get(f"/v1/models/{NAME}").status_code == 200
        assert client.get("/").status_code == 200
        assert time.perf_counter() - start < 0.5 and not busy.done()
        assert busy.result().status_code == 200


def test_requests_beyond_the_in_flight_limit_get_503_and_slow_ones_504(server, client, image_files):
    url, app = server
    work = app.service.work
    body = {"instances": [b64(image_files[0].read_bytes())]}
    limit, timeout = work.max_in_flight, work.timeout
    try:
        work.max_in_flight = 1
        with slow_model(app, 1.0), ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, f"{url}v1/models/{NAME}:predict", json=body, timeout=30)
            time.sleep(0.3)
            refused = client.post(f"/v1/models/{NAME}:predict", json=body)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "busy" in refused.json()["error"]
            assert client.get(f"/v1/models/{NAME}/metadata").status_code == 200   # status is never limited
            assert first.result().status_code == 200
        work.max_in_flight, work.timeout = limit, 0.3
        with slow_model(app, 1.0):
            late = client.post(f"/v1/models/{NAME}:predict", json=body)
        assert late.status_code == 504 and "longer than 0.3 s" in late.json()["error"]
    finally:
        work.max_in_flight, work.timeout = limit, timeout
    time.sleep(1.0)   # the abandoned call finishes in the model thread
    assert client.post(f"/v1/models/{NAME}:predict", json=body).status_code == 200


# --------------------------------------------------------------------------- kcnn's endpoint and the page


def test_classify_endpoint_answers_per_image_as_kcnn_predict(server, client, image_files, kcnn_predictions):
    url, app = server
    plain, _ = kcnn_predictions
    files = [("image", (path.name, path.read_bytes(), "application/octet-stream")) for path in image_files[:2]]
    files += [("image", ("notes.txt", b"not an image", "text/plain")), ("image", ("empty.png", b"", "image/png"))]
    answer = client.post(f"/kcnn/v1/models/{NAME}/versions/1/classify", files=files, data={"top_k": "2"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    # The export has a heat-map signature (lenet has a feature map): the endpoint answers through it.
    explains = "serving_explain" in app.service.repository.versions[1].signatures
    assert body["model"] == {"name": NAME, "version": 1,
                             "signature": "serving_explain" if explains else "serving_default"}
    results = body["results"]
    assert [result["file"] for result in results] == [image_files[0].name, image_files[1].name, "notes.txt",
                                                      "empty.png"]
    for result, expected in zip(results[:2], plain[:2]):
        assert result["label"] == expected["label"] and result["class_index"] == expected["class_index"]
        same_float32(result["probabilities"], expected["probabilities"])
        assert [item["label"] for item in result["top_k"]] == [item["label"] for item in expected["top_k"][:2]]
        assert not {"rejected", "above_threshold"} & set(result)   # this export carries neither
        assert ("heatmap" in result) == explains
    assert results[2] == {"file": "notes.txt", "error": results[2]["error"]}
    assert results[2]["error"].startswith("not a readable image")
    assert results[3] == {"file": "empty.png", "error": "empty file"}

    assert client.post(f"/kcnn/v1/models/{NAME}/classify", data={"top_k": "2"}).status_code == 400
    assert client.post(f"/kcnn/v1/models/{NAME}/classify", files=files[:1], data={"top_k": "x"}).status_code == 400
    assert client.post("/kcnn/v1/models/other/classify", files=files[:1]).status_code == 404


def test_optional_fields_show_when_the_export_carries_them(server, client, image_files):
    url, app = server
    version = app.service.repository.versions[1]
    metadata = version.model.metadata
    saved = dict(metadata)
    try:
        metadata.update({"reject_below": 0.999, "thresholds": {"apple": 0.0, "banana": 1.01, "cherry": 0.0},
                         "calibration": {"temperature": 1.7}})
        files = [("image", (image_files[0].name, image_files[0].read_bytes(), "image/png"))]
        result = client.post(f"/kcnn/v1/models/{NAME}/versions/1/classify", files=files).json()["results"][0]
        assert result["rejected"] is True and result["reject_below"] == 0.999
        assert [item["label"] for item in result["above_threshold"]] == ["apple", "cherry"]
    finally:
        metadata.clear()
        metadata.update(saved)
    description = client.get("/kcnn/v1/models").json()["models"][0]
    assert description["name"] == NAME and description["versions"] == [2, 1] and description["labels"] == LABELS
    assert "reject_below" not in description


def test_heatmap_answer_has_the_peak_where_the_map_is_largest():
    from keras_cnn.serve.answers import add_heatmap

    heatmap = np.zeros((1, 8, 4), np.float32)
    heatmap[0, 6, 1] = 1.0
    answer: dict = {}
    add_heatmap(None, {"heatmap": heatmap}, 0, answer)
    assert answer["heatmap"]["peak"] == [6.5 / 8, 1.5 / 4]
    picture = Image.open(io.BytesIO(base64.b64decode(answer["heatmap"]["png"])))
    assert picture.size == (4, 8) and picture.mode == "RGBA"
    assert picture.getpixel((1, 6))[0] == 255 and picture.getpixel((0, 0))[3] == 0


def test_page_classifies_an_uploaded_image_in_chromium(server, chromium_page, image_files, kcnn_predictions):
    url, app = server
    plain, _ = kcnn_predictions
    latest = app.service.repository.latest.model.metadata
    saved = dict(latest)
    page = chromium_page
    try:
        # Version 2 as an export with metrics and a rejection threshold would be; version 1 as it is.
        latest.update({"metrics": {"test": {"accuracy": 0.75, "count": 1200}, "stages": {"head": {"seconds": 3}}},
                       "reject_below": 0.999})
        page.set_viewport_size({"width": 375, "height": 740})      # a phone
        page.goto(url)
        page.wait_for_function("document.getElementById('model-name').textContent === 'fruit'")
        assert "version 2" in page.text_content("#model-summary")
        assert page.text_content("#label-count") == "3"
        about = page.text_content("#about")
        assert "test accuracy0.7500" in about and "test count1,200" in about and "shown as unknown" in about
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "files"      # reachable from the keyboard

        with heatmap_output(app):   # as a signature returning a heat map would answer
            page.set_input_files("#files", [str(image_files[0])])
            page.wait_for_selector(".result .label")
        rejected = page.text_content(".result .label")
        assert rejected.startswith(f"unknown (top: {plain[0]['label']} ") and "version 2" in page.text_content(".result")
        assert page.get_attribute(".result img.heatmap", "src").startswith("data:image/png;base64,")

        page.select_option("#version", "1")
        page.set_input_files("#files", [str(image_files[0]), str(image_files[1])])
        page.wait_for_function("document.querySelectorAll('.result').length === 3")
        # Newest first: the page puts each answer on top, so image 1, image 0, then the rejected one.
        labels = page.eval_on_selector_all(".result .label", "nodes => nodes.map(node => node.dataset.label)")
        assert labels == [plain[1]["label"], plain[0]["label"], plain[0]["label"]]
        texts = page.eval_on_selector_all(".result .label", "nodes => nodes.map(node => node.textContent)")
        assert texts[1] == f"{plain[0]['label']} · {100 * plain[0]['probability']:.1f}\u00a0%"
        assert page.evaluate("document.scrollingElement.scrollWidth") <= 375    # no sideways scrolling
        assert "classified by version 1" in page.text_content("#status")
    finally:
        latest.clear()
        latest.update(saved)


# --------------------------------------------------------------------------- the command line


def test_missing_extra_bad_folder_and_busy_port_are_one_line(export_dir, tmp_path, monkeypatch):
    import keras_cnn.serve as serve_package

    runner = CliRunner()
    result = runner.invoke(cli, ["serve", "--model", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output
    busy = bind_socket("127.0.0.1", 0)
    busy.listen()
    port = busy.getsockname()[1]
    result = runner.invoke(cli, ["serve", "--model", str(export_dir), "--port", str(port)])
    busy.close()
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output
    monkeypatch.setitem(serve_package.SERVE_MODULES, "no_such_module_kcnn", "uvicorn")
    result = runner.invoke(cli, ["serve", "--model", str(export_dir)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["kcnn: error: kcnn serve needs uvicorn: pip install 'kcnn[serve]'"]


def test_uvicorn_lines_are_kcnn_lines_and_quiet_means_none(capsys, monkeypatch):
    import logging

    from keras_cnn.serve.logs import route_server_logs

    route_server_logs()
    access = logging.getLogger("uvicorn.access")
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", f"/v1/models/{NAME}:predict", "1.1", 200)
    logging.getLogger("uvicorn.error").error("Exception in ASGI application\nTraceback (most recent call last):",
                                             exc_info=False)
    logging.getLogger("uvicorn.error").info("Started server process [1]")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"kcnn: 127.0.0.1:5000 POST /v1/models/{NAME}:predict 200",
                     "kcnn: warning: Exception in ASGI application"]
    monkeypatch.setenv("KCNN_QUIET", "1")
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/", "1.1", 200)
    logging.getLogger("uvicorn.error").warning("something")
    assert capsys.readouterr().err == ""


def test_kcnn_serve_process_drains_in_flight_requests_on_sigterm(export_dir, image_files):
    command = [sys.executable, "-m", "keras_cnn", "serve", "--model", str(export_dir), "--port", "0", "--json",
               "--max-batch", "64", "--batch-timeout-ms", "1500"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = json.loads(process.stdout.readline())
        assert started["name"] == NAME and started["versions"] == [1, 2]
        url = started["url"]
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}v1/models/{NAME}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "kcnn serve did not start"
            time.sleep(0.2)
        with ThreadPoolExecutor(1) as pool:
            # The batch waits 1.5 s for company, so this request is in flight when SIGTERM comes.
            in_flight = pool.submit(httpx.post, f"{url}v1/models/{NAME}:predict",
                                    json={"instances": [b64(image_files[0].read_bytes())]}, timeout=30)
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            answer = in_flight.result()
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert stdout == ""
    assert "kcnn: stopping: finishing 1 request(s) in flight" in stderr and "kcnn: stopped" in stderr
    assert f"POST /v1/models/{NAME}:predict 200" in stderr
    assert stderr_problems(stderr) == []
