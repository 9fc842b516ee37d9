"""Every keras.applications base through one factory: registry, exact counts, preprocessing,
unfreeze boundaries, the import structure of models/, and one base per family end to end.

Building all 40 bases takes minutes on two cores: the small ones run by default, the rest
(and most end-to-end families) under ``pytest -m slow``.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import keras_cnn.models
from keras_cnn.cli import cli
from keras_cnn.errors import UserError
from keras_cnn.models.applications import APPLICATION_BASES, FAMILIES, smallest_member
from keras_cnn.models.bases import build_base, get_base_spec
from keras_cnn.models.factory import create_model
from keras_cnn.models.parameters import parameter_counts
from keras_cnn.models.preprocessing import preprocessing_for
from keras_cnn.models.transfer import find_boundary

# Total parameters without top, weights=None, Keras 3.15: the figures the issue quotes.
REFERENCE_PARAMS = {
    "resnet50": 23_587_712, "resnet50_v2": 23_564_800, "resnet101": 42_658_176, "mobilenet": 3_228_864,
    "mobilenet_v2": 2_257_984, "mobilenet_v3_small": 939_120, "mobilenet_v3_large": 2_996_352,
    "efficientnet_b3": 10_783_535, "efficientnet_v2_b0": 5_919_312, "efficientnet_v2_s": 20_331_360,
    "convnext_tiny": 27_820_128, "densenet121": 7_037_504, "xception": 20_861_480,
    "inception_resnet_v2": 54_336_736, "nasnet_mobile": 4_269_716, "vgg19": 20_024_384,
    "vgg16": 14_714_688, "inception_v3": 21_802_784, "efficientnet_b0": 4_049_571,
}

# Built in the default run (cheap on two cores); every other base is built under -m slow.
DEFAULT_RUN_BASES = {"mobilenet_v3_small", "mobilenet"}
# NASNet cells read the two previous cells' outputs: no block boundary is a single tensor.
MULTI_TENSOR_FAMILIES = {"nasnet"}


def invoke_json(*args):
    result = CliRunner().invoke(cli, [str(arg) for arg in args] + ["--json"])
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads(result.stdout)


def test_registry_has_every_keras_applications_constructor_once():
    constructors = sorted(name for name in dir(keras.applications) if name[0].isupper())
    assert len(constructors) == 40
    assert sorted(spec.constructor for spec in APPLICATION_BASES.values()) == constructors
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) for name in APPLICATION_BASES)
    assert {"vgg16", "inception_v3", "efficientnet_b0", "resnet50_v2", "efficientnet_v2_s",
            "inception_resnet_v2", "nasnet_mobile"} <= set(APPLICATION_BASES)
    for name, params in REFERENCE_PARAMS.items():
        assert APPLICATION_BASES[name].params == params, name


def test_registry_is_derived_from_the_family_table():
    for family in FAMILIES:
        for member in family.members:
            spec = APPLICATION_BASES[member.name]
            assert spec.family == family.name and spec.preprocessing == family.preprocessing
            assert spec.weights_file in spec.weights_url or member.download_name in spec.weights_url
    assert get_base_spec("ConvNeXt_Tiny").name == "convnext_tiny"


def _boundary_tensors(base: keras.Model, index: int) -> set[int]:
    """Tensors made below the cut and read above it; the cut moves past weightless layers first.

    Operations, not layers: MobileNetV3's hard-swish is made of ``keras.ops`` calls that
    are not layers.
    """
    operations = base.operations
    start = operations.index(base.layers[index])
    while start < len(operations) and not getattr(operations[start], "weights", None):
        start += 1
    above = {id(operation) for operation in operations[start:]}
    tensors = set()
    for operation in operations[start:]:
        for node in operation._inbound_nodes:
            for tensor in node.input_tensors:
                if id(tensor._keras_history.operation) not in above:
                    tensors.add(id(tensor))
    return tensors


@pytest.mark.parametrize("name", [
    name if name in DEFAULT_RUN_BASES else pytest.param(name, marks=pytest.mark.slow) for name in APPLICATION_BASES
])
def test_base_builds_with_its_exact_count_width_and_unfreeze_boundary(name):
    spec = APPLICATION_BASES[name]
    base = build_base(spec, max(spec.min_image_size, 32), weights="none")
    assert base.name == name
    assert parameter_counts(base)["total_params"] == spec.params
    assert base.output_shape[-1] == spec.feature_width
    index = find_boundary(base, spec.default_unfreeze)
    assert 0 < index < len(base.layers) - 1
    if spec.family not in MULTI_TENSOR_FAMILIES:
        assert len(_boundary_tensors(base, index)) == 1, f"{spec.default_unfreeze} is not a single-tensor boundary"
    if spec.preprocessing == "none":  # the base scales its own 0..255 input
        assert any(isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))
                   for layer in base.layers[:4])


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_preprocessing_equals_keras_preprocess_input(family):
    spec = APPLICATION_BASES[family.members[0].name]
    pixels = np.random.default_rng(0).uniform(0, 255, size=(2, 5, 7, 3)).astype("float32")
    expected = getattr(keras.applications, family.module).preprocess_input(pixels.copy())
    layer = preprocessing_for(spec)
    actual = pixels if layer is None else keras.ops.convert_to_numpy(layer(pixels))
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


def test_models_package_has_no_import_cycle_and_no_train_or_cli_imports():
    folder = Path(keras_cnn.models.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.py")):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):  # function-level imports too
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        forbidden = sorted(name for name in imported if name.startswith(("keras_cnn.train", "keras_cnn.cli")))
        assert not forbidden, f"{path.name} imports {forbidden}"
        graph[path.stem] = {name.rsplit(".", 1)[-1] for name in imported if name.startswith("keras_cnn.models.")}

    def visit(module, trail):
        assert module not in trail, f"import cycle: {' -> '.join(trail + [module])}"
        for imported in graph.get(module, ()):
            visit(imported, trail + [module])

    for module in graph:
        visit(module, [])


def test_create_model_builds_scratch_and_transfer_models_with_one_signature():
    scratch = create_model("lenet", 10)
    assert scratch.input_shape == (None, 28, 28, 1) and scratch.output_shape == (None, 10)
    assert parameter_counts(create_model("lenet", 10, input_scaling=False)) == parameter_counts(scratch)
    transfer = create_model("mobilenet_v3_small", 3, image_size=32, weights="none", head_units=(4,))
    counts = parameter_counts(transfer)
    assert counts["non_trainable_params"] == 939_120 and counts["trainable_params"] == 576 * 4 + 4 + 4 * 3 + 3
    with pytest.raises(UserError, match="no ImageNet weights"):
        create_model("lenet", 10, weights="imagenet")
    with pytest.raises(UserError, match="kcnn models"):
        create_model("resnet", 3)


def test_models_command_lists_40_bases_by_family_with_counts_and_top1():
    listed = invoke_json("models")["models"]
    bases = [row for row in listed if row["kind"] == "transfer"]
    assert len(bases) == 40
    by_name = {row["name"]: row for row in bases}
    for name, params in REFERENCE_PARAMS.items():
        assert by_name[name]["params"] == params
    assert by_name["efficientnet_b0"]["default_unfreeze"] == "block7a" and by_name["inception_v3"]["top1"] == 77.9
    assert by_name["efficientnet_v2_s"]["input_shape"] == [384, 384, 3] and by_name["resnet50"]["family"] == "resnet"
    families = [row["family"] for row in bases]
    assert families == sorted(families, key=families.index)  # members of a family are listed together
    text = CliRunner().invoke(cli, ["models"]).output
    assert "convnext_tiny" in text and "27,820,128" in text and "keras_hub:" in text


def _end_to_end(spec, root: Path, images: Path, split: Path, image_size: int) -> None:
    """Stage 1, fine-tuning from the default boundary, export, and kcnn predict equal to Keras."""
    import tensorflow as tf

    from keras_cnn.data.images import load_image
    from keras_cnn.models.loading import load_model

    run = root / "run"
    head = invoke_json("transfer", "--base", spec.name, "--split", split, "--images", images, "--out", run,
                       "--image-size", image_size, "--weights", "none", "--epochs", 1, "--batch-size", 32)
    assert head["non_trainable_params"] == spec.params
    tuned = invoke_json("finetune", "--run", run, "--epochs", 1)
    config = json.loads((run / "config.json").read_text())
    assert config["extra"]["stages"]["finetune"]["unfreeze_from"] == spec.default_unfreeze
    assert tuned["trainable_params"] > head["trainable_params"]
    exported = invoke_json("export", "--run", run, "--out", root / "export")
    assert exported["max_abs_diff"]["saved_model"] < 1e-5
    files = sorted(path for path in images.iterdir() if path.suffix != ".csv")[:3]
    predictions = invoke_json("predict", "--model", exported["path"], *files)
    model = load_model(run / "model.keras")
    pixels = np.stack([load_image(tf.constant(path.read_bytes()), (image_size, image_size), 3).numpy()
                       for path in files]).astype("float32")
    expected = model.predict(pixels, verbose=0)
    actual = np.array([prediction["probabilities"] for prediction in predictions])
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


# Minutes each on two cores (fine-tuning compiles the whole base): under -m slow.  The
# default run trains efficientnet_b0 end to end in test_two_stage.py.
@pytest.mark.slow
@pytest.mark.parametrize("family", [family.name for family in FAMILIES])
def test_smallest_member_of_each_family_trains_fine_tunes_exports_and_predicts(family, tmp_path, sample_data_dir,
                                                                               sample_split):
    spec = smallest_member(family)
    _end_to_end(spec, tmp_path, sample_data_dir, sample_split, max(spec.min_image_size, 48))


def test_summary_builds_a_base_at_the_asked_size_without_download():
    result = CliRunner().invoke(cli, ["summary", "mobilenet_v3_small", "--image-size", "40", "--num-classes", "3"])
    assert result.exit_code == 0, result.output[-3000:]
    assert "(None, 40, 40, 3)" in result.output and "mobilenet_v3_small" in result.output
