"""``kcnn export``: SavedModel round trip in plain TensorFlow, ONNX, LiteRT, atomicity, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from keras_cnn import export as export_module  # noqa: E402
from keras_cnn.cli import cli  # noqa: E402
from keras_cnn.config import DataConfig, ModelConfig, RunConfig  # noqa: E402
from keras_cnn.data.images import load_image, resize_image  # noqa: E402
from keras_cnn.errors import RunFailure, UserError  # noqa: E402
from keras_cnn.export import export_run  # noqa: E402
from keras_cnn.export_layout import METADATA_FILE  # noqa: E402
from keras_cnn.runs import RunDirectory  # noqa: E402

RGB_LABELS = ["cat", "dog", "fish"]
# The RGB run is calibrated (RUN/calibration.json): every format it exports must answer with its logits
# divided by this, so each round trip below checks that the temperature is baked in.
RGB_TEMPERATURE = 2.5


def tiny_model(image_size, channels, classes, seed):
    """A small CNN following the kcnn contract: 0..255 float input, scaling inside."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*image_size, channels))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    # Keras keeps a Normalization's mean/variance as tensors, not variables (as in
    # EfficientNet): the ONNX export must freeze them instead of making them inputs.
    x = keras.layers.Normalization(mean=[0.1] * channels, variance=[1.5] * channels)(x)
    x = keras.layers.Conv2D(6, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    activation = "sigmoid" if classes == 1 else "softmax"
    return keras.Model(inputs, keras.layers.Dense(classes, activation=activation)(x))


def encode(array, fmt, mode=None):
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def sample_images():
    """Encoded images of several formats, sizes and colour modes: name -> bytes."""
    generator = np.random.default_rng(7)

    def picture(height, width):
        y, x = np.mgrid[0:height, 0:width]
        smooth = np.stack([255 * y / height, 255 * x / width, 128 + 100 * np.sin(x / 3.0)], axis=-1)
        return np.clip(smooth + generator.normal(0, 25, smooth.shape), 0, 255).astype(np.uint8)

    return {
        "rgb.png": encode(picture(32, 32), "PNG"),
        "rgb.jpg": encode(picture(57, 41), "JPEG"),
        # At least 4x both models' sizes: decoded at a reduced DCT scale, in training and serving.
        "large.jpg": encode(picture(150, 140), "JPEG"),
        "grey.png": encode(picture(20, 30), "PNG", "L"),
        "grey.jpg": encode(picture(50, 50), "JPEG", "L"),
        "rgba.png": encode(picture(64, 48), "PNG", "RGBA"),
        "grey_alpha.png": encode(picture(31, 17), "PNG", "LA"),
        "rgb.bmp": encode(picture(33, 35), "BMP"),
        "palette.gif": encode(picture(40, 40), "GIF", "P"),
    }


def make_run(root: Path, image_size, channels, labels, resize_mode, seed, binary=False, with_split=False,
             temperature=None) -> Path:
    """A finished run directory built by hand (what the training commands leave behind); ``temperature``:
    calibrated with it (as when a stage ends)."""
    run = RunDirectory(root).create()
    if temperature is not None:
        run.calibration_path.write_text(json.dumps({"format": 1, "temperature": temperature, "kind": "softmax",
                                                    "stage": "train", "fitted_on": {"part": "validation",
                                                                                    "images": 2}}))
    tiny_model(image_size, channels, 1 if binary else len(labels), seed).save(run.model_path)
    run.write_labels(labels)
    data = DataConfig(image_size=image_size, channels=channels, resize_mode=resize_mode)
    if with_split:
        # Two validation images, one flat and one sharded (ab/cd/<sha1>.png), for the export check.
        images = root / "images"
        flat, sharded = "a" * 40 + ".png", "bcde" + "0" * 36 + ".png"
        (images / "bc" / "de").mkdir(parents=True)
        (images / flat).write_bytes(sample_images()["rgb.png"])
        (images / "bc" / "de" / sharded).write_bytes(sample_images()["rgba.png"])
        split = root / "split.csv"
        split.write_text(f"objectId,value,type\n{flat},cat,validation\n{'f' * 40}.png,dog,train\n"
                         f"{sharded},dog,validation\n")
        data.split, data.images = str(split), str(images)
    run.write_config(RunConfig("train", ModelConfig(name="tiny_cnn"), data).to_dict())
    run.write_metrics({"accuracy": 0.5, "loss": 1.0})
    return root


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("rgb_run"), (32, 32), 3, RGB_LABELS, "crop", seed=1, with_split=True,
                    temperature=RGB_TEMPERATURE)


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory):
    # Binary sigmoid, one channel, non-square input: catches height/width swaps.
    return make_run(tmp_path_factory.mktemp("grey_run"), (28, 20), 1, ["0", "1"], "pad", seed=2, binary=True)


@pytest.fixture(scope="module")
def rgb_export(rgb_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("rgb_export")
    return export_run(rgb_run, out, formats=("litert", "onnx", "saved_model"), tta=3)


@pytest.fixture(scope="module")
def grey_export(grey_run, tmp_path_factory):
    return export_run(grey_run, tmp_path_factory.mktemp("grey_export"), version=3)


def keras_probabilities(run_root, pixels, calibrated=True):
    """The run's Keras model's probabilities; a calibrated (softmax) run's from its logits divided by T."""
    model = keras.saving.load_model(Path(run_root) / "model.keras")
    output = np.asarray(model(pixels, training=False), np.float64)
    calibration = Path(run_root) / "calibration.json"
    if calibrated and calibration.exists():
        # log p is the logits up to a constant per image, which the softmax ignores.
        scaled = np.log(output) / json.loads(calibration.read_text())["temperature"]
        output = np.exp(scaled - scaled.max(axis=1, keepdims=True))
        output /= output.sum(axis=1, keepdims=True)
    return np.concatenate([1 - output, output], axis=-1) if output.shape[-1] == 1 else output


def decode_like_training(images, image_size, channels, mode):
    """Decode + resize in a graph with unknown image shapes, as the tf.data pipeline does."""
    decode = tf.function(lambda data: load_image(data, image_size, channels, mode),
                         input_signature=[tf.TensorSpec([], tf.string)])
    return np.stack([decode(tf.constant(data)).numpy() for data in images]).astype(np.float32)


def resize_like_training(pixels, image_size, mode):
    resize = tf.function(lambda batch: resize_image(batch, image_size, mode),
                         input_signature=[tf.TensorSpec([None, None, None, pixels.shape[-1]], pixels.dtype)])
    return resize(tf.constant(pixels)).numpy().astype(np.float32)


def test_export_layout_metadata_and_verification(rgb_export, rgb_run):
    version_dir = Path(rgb_export["path"])
    assert version_dir.name == "1" and rgb_export["version"] == 1
    assert sorted(rgb_export["files"]) == ["litert", "onnx", "saved_model"]
    assert (version_dir / "saved_model.pb").is_file()
    assert (version_dir / "model.onnx").is_file() and (version_dir / "model.tflite").is_file()
    assert (version_dir / "assets" / "labels.txt").read_text().splitlines() == RGB_LABELS
    for name in ("saved_model", "onnx", "litert"):
        assert 0 <= rgb_export["max_abs_diff"][name] < 1e-4
    # the two validation images of the run were found (flat and sharded) + 4 generated ones
    assert rgb_export["verified_on_images"] == 6
    metadata = json.loads((version_dir / "assets.extra" / "kcnn.json").read_text())
    assert metadata["labels"] == RGB_LABELS
    assert metadata["base"] == "tiny_cnn"
    assert metadata["input"] == {"image_size": [32, 32], "channels": 3, "resize_mode": "crop",
                                 "resize_filter": "area", "dtype": "float32", "range": [0, 255]}
    assert metadata["metrics"] == {"accuracy": 0.5, "loss": 1.0}
    assert metadata["versions"]["tensorflow"] == tf.__version__
    assert metadata["versions"]["keras"] == keras.__version__
    assert "kcnn" in metadata["versions"]
    assert set(metadata["signatures"]) == {"serving_default", "serving_images", "serving_images_uint8", "serving_tta",
                                           "serving_explain"}
    assert metadata["explain"]["signature"] == "serving_explain" and metadata["explain"]["feature_layer"]
    assert metadata["calibration"]["temperature"] == RGB_TEMPERATURE and "reject_below" not in metadata
    assert metadata["tta"] == rgb_export["tta"] == {"signature": "serving_tta",
                                                    "views": ["identity", "crop_center", "crop_top_left"]}
    assert metadata["trained_with_horizontal_flips"] is False
    assert sorted(os.listdir(version_dir.parent)) == ["1"]  # no temporary folder left


ROUND_TRIP_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
request = json.load(open(sys.argv[1]))
answer = {}
for name, job in request.items():
    loaded = tf.saved_model.load(job["export"])
    images = [open(path, "rb").read() for path in job["files"]]
    by_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    pixels = np.load(job["pixels"])
    by_float = loaded.signatures["serving_images"](images=tf.constant(pixels))
    by_uint8 = loaded.signatures["serving_images_uint8"](images=tf.constant(np.round(pixels).astype(np.uint8)))
    at_size = np.load(job["pixels_at_size"])
    by_method = loaded.serving_images(tf.constant(at_size))
    if "serving_tta" in loaded.signatures:
        answer[name + "_tta"] = loaded.signatures["serving_tta"](image_bytes=tf.constant(images))[
            "probabilities"].numpy().tolist()
    answer[name] = {
        "signatures": sorted(loaded.signatures),
        "bytes": {key: value.numpy().tolist() for key, value in by_bytes.items() if key != "label"},
        "float": by_float["probabilities"].numpy().tolist(),
        "uint8": by_uint8["probabilities"].numpy().tolist(),
        "at_size": by_method["probabilities"].numpy().tolist(),
        "labels": [value.decode() for value in by_bytes["label"].numpy()],
    }
answer["keras_cnn_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "keras_cnn")
print(json.dumps(answer))
"""


def test_saved_model_round_trip_in_plain_tensorflow(rgb_export, grey_export, rgb_run, grey_run, tmp_path):
    # The grey run has no calibration.json: its export says so and answers with the model's own probabilities.
    assert json.loads((Path(grey_export["path"]) / METADATA_FILE).read_text())["calibration"] is None
    images = sample_images()
    files = []
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
        files.append(str(tmp_path / name))
    generator = np.random.default_rng(3)
    request, expected = {}, {}
    for name, export, run, size, channels, mode in (
        ("rgb", rgb_export, rgb_run, (32, 32), 3, "crop"),
        ("grey", grey_export, grey_run, (28, 20), 1, "pad"),
    ):
        # Decoded images of another size (resized in the graph) and at the model's size
        # with fractional values (which must reach the model unchanged).
        pixels = generator.uniform(0, 255, (2, 45, 37, channels)).astype(np.float32)
        at_size = generator.uniform(0, 255, (3, *size, channels)).astype(np.float32)
        np.save(tmp_path / f"{name}_pixels.npy", pixels)
        np.save(tmp_path / f"{name}_at_size.npy", at_size)
        request[name] = {"export": export["path"], "files": files, "pixels": str(tmp_path / f"{name}_pixels.npy"),
                         "pixels_at_size": str(tmp_path / f"{name}_at_size.npy")}
        resized = resize_like_training(pixels, size, mode)
        resized_uint8 = resize_like_training(np.round(pixels).astype(np.uint8), size, mode)
        expected[name] = {
            "bytes": keras_probabilities(run, decode_like_training(images.values(), size, channels, mode)),
            "float": keras_probabilities(run, resized),
            "uint8": keras_probabilities(run, resized_uint8),
            "at_size": keras_probabilities(run, at_size),
        }
    (tmp_path / "request.json").write_text(json.dumps(request))
    completed = subprocess.run([sys.executable, "-c", ROUND_TRIP_SCRIPT, str(tmp_path / "request.json")],
                               capture_output=True, text=True, timeout=300,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    answer = json.loads(completed.stdout.strip().splitlines()[-1])
    assert answer["keras_cnn_modules"] == []  # plain TensorFlow: no kcnn code was needed

    # serving_tta averages the Keras model's probabilities over the views; serving_default is unchanged.
    from keras_cnn.tta import tta_views

    views = rgb_export["tta"]["views"]
    decoded = decode_like_training(images.values(), (32, 32), 3, "crop")
    expected_tta = keras_probabilities(rgb_run, tta_views(decoded, views).numpy()).reshape(
        len(views), len(images), 3).mean(axis=0)
    assert np.max(np.abs(np.array(answer["rgb_tta"]) - expected_tta)) < 1e-5
    assert np.max(np.abs(np.array(answer["rgb_tta"]) - expected["rgb"]["bytes"])) > 1e-4
    assert "grey_tta" not in answer

    for name, labels in (("rgb", RGB_LABELS), ("grey", ["0", "1"])):
        result = answer[name]
        tta_signature = ["serving_tta"] if name == "rgb" else []
        assert result["signatures"] == ["serving_default", "serving_explain", "serving_images", "serving_images_uint8",
                                        *tta_signature]
        probabilities = np.array(result["bytes"]["probabilities"])
        assert probabilities.shape == (len(images), len(labels))
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert np.max(np.abs(probabilities - expected[name]["bytes"])) < 1e-5
        assert result["bytes"]["class_index"] == probabilities.argmax(axis=1).tolist()
        assert result["labels"] == [labels[index] for index in result["bytes"]["class_index"]]
        for key in ("float", "uint8", "at_size"):
            assert np.max(np.abs(np.array(result[key]) - expected[name][key])) < 1e-5, key


def test_the_readme_example_loads_an_export_with_plain_tensorflow(rgb_export, tmp_path, monkeypatch, capsys):
    """README's "Using an export without kcnn" code, as written, on an export and an image of ours."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    example = readme[readme.index("## Using an export without kcnn"):].split("```python", 1)[1].split("```", 1)[0]
    (tmp_path / "export").symlink_to(Path(rgb_export["path"]).parent)
    (tmp_path / "photo.jpg").write_bytes(encode(np.full((40, 30, 3), 90, np.uint8), "JPEG"))
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    label, probabilities = capsys.readouterr().out.split(" ", 1)
    assert label in RGB_LABELS and probabilities.startswith("[")


def test_onnx_round_trip(rgb_export, rgb_run):
    import onnxruntime

    pixels = decode_like_training(sample_images().values(), (32, 32), 3, "crop")
    session = onnxruntime.InferenceSession(rgb_export["files"]["onnx"], providers=["CPUExecutionProvider"])
    assert [(tensor.name, tensor.shape[1:]) for tensor in session.get_inputs()] == [("images", [32, 32, 3])]
    [output] = session.run(None, {session.get_inputs()[0].name: pixels})
    assert output.shape == (len(pixels), 3)
    assert np.max(np.abs(output - keras_probabilities(rgb_run, pixels))) < 1e-4
    assert np.max(np.abs(output - keras_probabilities(rgb_run, pixels, calibrated=False))) > 1e-3   # T mattered


def test_litert_round_trip(rgb_export, rgb_run):
    from ai_edge_litert.interpreter import Interpreter

    pixels = decode_like_training(sample_images().values(), (32, 32), 3, "crop")
    interpreter = Interpreter(model_path=rgb_export["files"]["litert"])
    [detail] = interpreter.get_input_details()
    interpreter.resize_tensor_input(detail["index"], list(pixels.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], pixels)
    interpreter.invoke()
    output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert np.max(np.abs(output - keras_probabilities(rgb_run, pixels))) < 1e-4


def test_failed_verification_leaves_no_version_and_keeps_the_old_one(grey_run, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module.verify, "max_abs_difference", lambda expected, actual: 0.5)
    with pytest.raises(RunFailure, match="max abs difference 0.5"):
        export_run(grey_run, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists() or os.listdir(tmp_path / "fresh") == []

    # --force over an existing version: the failed export must not destroy it.
    old = tmp_path / "existing" / "1"
    (old / METADATA_FILE).parent.mkdir(parents=True)
    (old / METADATA_FILE).write_text("{}")   # a kcnn export, which --force may replace
    (old / "marker").write_text("old export")
    with pytest.raises(RunFailure):
        export_run(grey_run, tmp_path / "existing", force=True)
    assert os.listdir(tmp_path / "existing") == ["1"]
    assert (old / "marker").read_text() == "old export"


def test_existing_version_refused_without_force(grey_run, tmp_path):
    (tmp_path / "1").mkdir()
    with pytest.raises(UserError, match="already exists"):
        export_run(grey_run, tmp_path)


@pytest.mark.parametrize("arguments, message", [
    ({"formats": ("tensorrt",)}, "export format must be among"),
    ({"version": 0}, "--version must be a whole number from 1"),
])
def test_bad_options(grey_run, tmp_path, arguments, message):
    with pytest.raises(UserError, match=message):
        export_run(grey_run, tmp_path, **arguments)


def test_not_a_run_and_label_mismatch(grey_run, tmp_path):
    with pytest.raises(UserError, match="not a kcnn run directory"):
        export_run(tmp_path, tmp_path / "out")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.keras", "config.json"):
        (broken / name).write_bytes((Path(grey_run) / name).read_bytes())
    (broken / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(UserError, match="1 output unit.*3 labels"):
        export_run(broken, tmp_path / "out")


def test_cli_export_json_and_text(grey_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["export", "--run", str(grey_run), "--out", str(tmp_path), "--version", "2",
                                 "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["path"] == str(tmp_path / "2")
    assert payload["labels"] == ["0", "1"] and payload["max_abs_diff"]["saved_model"] < 1e-4

    again = runner.invoke(cli, ["export", "--run", str(grey_run), "--out", str(tmp_path), "--version", "2"])
    assert again.exit_code == 2
    assert again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr

    forced = runner.invoke(cli, ["export", "--run", str(grey_run), "--out", str(tmp_path), "--version", "2",
                                 "--force", "--no-verify"])
    assert forced.exit_code == 0, forced.output
    assert "exported version 2" in forced.stdout and "not verified" in forced.stdout


def test_cli_rejects_unknown_format(grey_run, tmp_path):
    result = CliRunner().invoke(cli, ["export", "--run", str(grey_run), "--out", str(tmp_path),
                                      "--format", "caffe"])
    assert result.exit_code == 2 and "caffe" in result.stderr


def test_missing_optional_library_is_a_user_error(grey_run, tmp_path, monkeypatch):
    import dataclasses

    onnx = dataclasses.replace(export_module.EXPORT_FORMATS["onnx"], requires=("kcnn_no_such_module",))
    monkeypatch.setitem(export_module.EXPORT_FORMATS, "onnx", onnx)
    with pytest.raises(UserError, match="--format onnx needs kcnn_no_such_module"):
        export_run(grey_run, tmp_path, formats=("saved_model", "onnx"))
    assert not (tmp_path / "1").exists()


# ----------------------------------------------------------------------------- TTA in predict, quantized LiteRT


def test_predict_tta_matches_the_baked_signature_and_works_on_any_export(rgb_export, rgb_run, tmp_path):
    from keras_cnn.predict import load_exported_model, predict_files

    files = []
    for name, data in sample_images().items():
        (tmp_path / name).write_bytes(data)
        files.append(tmp_path / name)
    plain_export = export_run(rgb_run, tmp_path / "plain", verify=False)
    baked = load_exported_model(rgb_export["path"])
    generic = load_exported_model(plain_export["path"])
    with_signature, _ = predict_files(baked, files, tta=3)
    without_signature, _ = predict_files(generic, files, batch_size=3, tta=3)
    plain, _ = predict_files(load_exported_model(plain_export["path"]), files)
    assert baked.tta_views == generic.tta_views == ["identity", "crop_center", "crop_top_left"]
    first = np.array([row["probabilities"] for row in with_signature])
    second = np.array([row["probabilities"] for row in without_signature])
    assert np.max(np.abs(first - second)) < 1e-5
    assert np.max(np.abs(first - np.array([row["probabilities"] for row in plain]))) > 1e-4
    assert [row["label"] for row in without_signature] == [RGB_LABELS[row] for row in second.argmax(axis=1)]
    with pytest.raises(UserError, match="between 1 and 6 views"):
        predict_files(generic, files, tta=7)


def make_split_run(root: Path) -> Path:
    """A run with train/test images on disk and a model whose weights dominate its file (for quantization)."""
    images = root / "images"
    images.mkdir(parents=True)
    rows = ["objectId,value,type"]
    generator = np.random.default_rng(11)
    for index in range(24):
        label = RGB_LABELS[index % 3]
        pixels = np.clip(generator.normal(60 + 70 * (index % 3), 30, (16, 16, 3)), 0, 255).astype(np.uint8)
        encoded = encode(pixels, "PNG")
        name = f"{hashlib.sha1(encoded).hexdigest()}.png"   # a file named by a SHA-1 must have it
        (images / name).write_bytes(encoded)
        rows.append(f"{name},{label},{'test' if index % 4 == 0 else 'train'}")
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    run = RunDirectory(root / "run").create()
    keras.utils.set_random_seed(4)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(48, activation="relu")(x)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(run.model_path)
    run.write_labels(RGB_LABELS)
    data = DataConfig(split=str(root / "split.csv"), images=str(images), image_size=(16, 16), channels=3)
    run.write_config(RunConfig("train", ModelConfig(name="dense_cnn"), data).to_dict())
    return run.root


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    return make_split_run(tmp_path_factory.mktemp("split_run"))


@pytest.mark.parametrize("mode, largest_ratio", [("int8", 0.34), pytest.param("float16", 0.6, marks=pytest.mark.slow)])
def test_quantized_litert_is_smaller_and_its_accuracy_is_recorded(split_run, tmp_path, mode, largest_ratio, capsys):
    from keras_cnn.export.portable import litert_outputs

    result = export_run(split_run, tmp_path, formats=("litert",), quantize=mode)
    record = result["quantization"]
    version_dir = Path(result["path"])
    quantized = version_dir / f"model_{mode}.tflite"
    assert result["files"][f"litert_{mode}"] == str(quantized) and quantized.is_file()
    assert record["quantized"]["bytes"] == quantized.stat().st_size
    float_bytes = (version_dir / "model.tflite").stat().st_size
    assert record["size_ratio"] == pytest.approx(quantized.stat().st_size / float_bytes, abs=1e-3)
    assert record["size_ratio"] <= largest_ratio
    assert record["accuracy_part"] == "test" and record["images"] == 6
    assert 0 <= record["quantized"]["accuracy"] <= 1 and 0 <= record["float"]["accuracy"] <= 1
    assert record["representative_images"] == (18 if mode == "int8" else 0)
    pixels = decode_like_training([encode(np.full((16, 16, 3), value, np.uint8), "PNG") for value in (30, 200)],
                                  (16, 16), 3, "stretch")
    float_out = litert_outputs(version_dir / "model.tflite", pixels)
    quantized_out = litert_outputs(quantized, pixels)
    assert 0 < np.max(np.abs(float_out - quantized_out)) < 0.1   # quantized, and still the same model
    metadata = json.loads((version_dir / "assets.extra" / "kcnn.json").read_text())
    assert metadata["quantization"] == record
    # The printed list says how each file was checked; the quantized one by its test accuracy, not "not verified".
    from keras_cnn.cli.export_command import render

    render(result)
    lines = capsys.readouterr().out.splitlines()
    quantized_line = next(line for line in lines if line.strip().startswith(f"litert_{mode}"))
    assert f"test accuracy {record['quantized']['accuracy']:.4f}" in quantized_line
    assert not any("not verified" in line for line in lines)


@pytest.mark.parametrize("metric, shown, scored", [("accuracy", "test accuracy 0.9100", True),
                                                    ("macro_map", "test mAP 0.8700", True),
                                                    ("accuracy", "not verified: no test or validation images", False)])
def test_a_quantized_file_is_listed_with_the_score_that_checked_it(capsys, metric, shown, scored):
    from keras_cnn.cli.export_command import render

    score = {metric: 0.91 if metric == "accuracy" else 0.87} if scored else {}
    quantization = {"mode": "int8", "metric": metric, "accuracy_part": "test" if scored else None, "size_ratio": 0.3,
                    "float": {"file": "model.tflite", "bytes": 4_000_000, **score},
                    "quantized": {"file": "model_int8.tflite", "bytes": 1_200_000, **score}}
    render({"version": 1, "path": "export/1", "verified_on_images": 8, "labels": ["a", "b"],
            "files": {"saved_model": "export/1", "litert": "export/1/model.tflite",
                      "litert_int8": "export/1/model_int8.tflite"},
            "max_abs_diff": {"saved_model": 0.0, "litert": 1e-6}, "quantization": quantization,
            "metadata": "export/1/assets.extra/kcnn.json"})
    lines = capsys.readouterr().out.splitlines()
    quantized_line = next(line for line in lines if line.strip().startswith("litert_int8"))
    assert shown in quantized_line
    assert any("not verified" in line for line in lines) == (not scored)


def test_quantized_model_that_lost_accuracy_is_refused_unless_forced(split_run, tmp_path, monkeypatch):
    import keras_cnn.export.quantize

    monkeypatch.setattr(keras_cnn.export.quantize, "litert_accuracy",
                        lambda paths, dataset, true, classes: {"float": 0.9, "quantized": 0.8})
    runner = CliRunner()
    arguments = ["export", "--run", str(split_run), "--out", str(tmp_path), "--format", "litert",
                 "--quantize", "dynamic", "--no-verify"]
    refused = runner.invoke(cli, arguments)
    assert refused.exit_code == 2 and refused.stderr.strip().count("\n") == 0
    assert "0.8000 accurate against 0.9000" in refused.stderr and "--force" in refused.stderr
    assert not (tmp_path / "1").exists()
    kept = runner.invoke(cli, [*arguments, "--force"])
    assert kept.exit_code == 0, kept.output
    assert "accuracy change -0.1000" in kept.stdout and "model_dynamic.tflite" in kept.stdout


@pytest.mark.parametrize("arguments, message", [
    ({"formats": ("saved_model",), "quantize": "int8"}, "add --format litert"),
    ({"formats": ("litert",), "tta": 2}, "add --format saved_model"),
    ({"formats": ("litert",), "quantize": "int4"}, "--quantize must be one of"),
])
def test_tta_and_quantize_need_their_formats(split_run, tmp_path, arguments, message):
    with pytest.raises(UserError, match=message):
        export_run(split_run, tmp_path, **arguments)
