"""The image-folder pipeline (keras_cnn.data.pipeline) and the file checks (keras_cnn.data.files).

Images are generated with PIL in every supported format and named ``<sha1 of bytes>.<ext>``
like real data; they are tiny so the whole file runs in seconds.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from keras_cnn.data.files import (
    check_images_or_fail,
    find_bad_images,
    locate_image,
    resolve_image_paths,
)
from keras_cnn.data.pipeline import make_dataset, subset_frame
from keras_cnn.errors import UserError

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "GIF": "gif"}


def encode(array: np.ndarray, image_format: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    if image_format == "JPEG":
        image.save(buffer, image_format, quality=95)
    else:
        image.save(buffer, image_format)
    return buffer.getvalue()


def store(folder: Path, data: bytes, extension: str, sharded: bool = False) -> str:
    """Write ``data`` as ``<sha1>.<extension>``, flat or under ``ab/cd/``; return the objectId."""
    object_id = f"{hashlib.sha1(data).hexdigest()}.{extension}"
    target = folder / object_id[:2] / object_id[2:4] if sharded else folder
    target.mkdir(parents=True, exist_ok=True)
    (target / object_id).write_bytes(data)
    return object_id


def solid(color, size=(12, 16)) -> np.ndarray:
    return np.broadcast_to(np.array(color, dtype=np.uint8), (*size, len(color))).copy()


def noise(seed: int, size=(24, 24)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def write_split(path: Path, rows) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["objectId", "value", "type"])
        writer.writerows(rows)
    return path


def make_folder(folder: Path, sharded: bool = False):
    """One image per format, solid colours, labels 'cat'/'dog', 4 train + 1 validation + 1 test.

    Returns (rows, colours): split rows in file order and the RGB colour of each objectId.
    """
    specimens = [  # (rgb colour, format, PIL array/mode, label, type)
        ((200, 40, 40), "JPEG", "RGB", "dog", "train"),
        ((40, 200, 40), "PNG", "RGBA", "cat", "train"),
        ((90, 90, 90), "PNG", "L", "dog", "train"),
        ((40, 40, 200), "BMP", "RGB", "cat", "train"),
        ((250, 250, 0), "GIF", "RGB", "dog", "validation"),
        ((0, 128, 255), "PNG", "RGB", "cat", "test"),
    ]
    rows, colours = [], {}
    for colour, image_format, mode, label, part in specimens:
        if mode == "L":
            array = solid((colour[0],))[..., 0]
        elif mode == "RGBA":
            array = solid((*colour, 128))  # half-transparent: alpha must simply be dropped
        else:
            array = solid(colour)
        object_id = store(folder, encode(array, image_format), EXTENSIONS[image_format], sharded)
        rows.append((object_id, label, part))
        colours[object_id] = colour
    return rows, colours


def collect(dataset):
    images, labels = [], []
    for batch_images, batch_labels in dataset:
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(images), np.concatenate(labels)


@pytest.mark.parametrize("sharded", [False, True], ids=["flat", "sharded"])
def test_every_format_decodes_to_rgb_with_labels_in_sorted_order(tmp_path, sharded):
    rows, colours = make_folder(tmp_path / "images", sharded=sharded)
    split = write_split(tmp_path / "split.csv", rows)
    dataset = make_dataset(split, tmp_path / "images", "all", (8, 10), batch_size=4, cache=False)
    images, labels = collect(dataset)
    as_float = make_dataset(split, tmp_path / "images", "all", (8, 10), batch_size=4, cache=False, dtype="float32")

    # uint8 up to the model (it casts), float32 for callers who ask: the same pixels either way.
    assert dataset.element_spec[0].dtype == tf.uint8 and dataset.element_spec[1].dtype == tf.int32
    assert as_float.element_spec[0].dtype == tf.float32
    np.testing.assert_array_equal(collect(as_float)[0], images.astype(np.float32))
    assert images.shape == (6, 8, 10, 3)
    # "all" is not shuffled: rows come in file order; labels sorted: cat = 0, dog = 1.
    assert labels.tolist() == [1, 0, 1, 0, 1, 0]
    for image, (object_id, _label, _part) in zip(images, rows):
        # Solid colours survive resizing; JPEG may move a value by a little.
        np.testing.assert_allclose(image.mean(axis=(0, 1)), colours[object_id], atol=3)
    grey = images[2]
    assert np.all(grey[..., 0] == grey[..., 1]) and np.all(grey[..., 1] == grey[..., 2])


def test_flat_and_sharded_layouts_give_the_same_pixels(tmp_path):
    flat_rows, _ = make_folder(tmp_path / "flat")
    sharded_rows, _ = make_folder(tmp_path / "sharded", sharded=True)
    assert flat_rows == sharded_rows
    split = write_split(tmp_path / "split.csv", flat_rows)
    flat_images, _ = collect(make_dataset(split, tmp_path / "flat", "all", 8, 6, cache=False))
    sharded_images, _ = collect(make_dataset(split, tmp_path / "sharded", "all", 8, 6, cache=False))
    np.testing.assert_array_equal(flat_images, sharded_images)
    object_id = flat_rows[0][0]
    expected = tmp_path / "sharded" / object_id[:2] / object_id[2:4] / object_id
    assert locate_image(tmp_path / "sharded", object_id) == expected


def test_one_channel_output_is_luminance(tmp_path):
    rows, colours = make_folder(tmp_path / "images")
    split = write_split(tmp_path / "split.csv", rows)
    images, _ = collect(make_dataset(split, tmp_path / "images", "all", 8, 6, channels=1, cache=False))
    assert images.shape == (6, 8, 8, 1)
    for image, (object_id, _label, _part) in zip(images, rows):
        red, green, blue = colours[object_id]
        expected = red if red == green == blue else 0.2989 * red + 0.587 * green + 0.114 * blue
        assert abs(float(image.mean()) - expected) < 3


def test_subsets_share_the_label_mapping_and_only_train_is_shuffled(tmp_path):
    folder = tmp_path / "images"
    rows = []
    for index in range(16):
        object_id = store(folder, encode(solid((index * 15, 0, 0)), "PNG"), "png")
        rows.append((object_id, str([10, 2, 1][index % 3]), "train" if index < 12 else "validation"))
    split = write_split(tmp_path / "split.csv", rows)

    def reds(dataset):
        images, labels = collect(dataset)
        return [round(float(value)) for value in images[:, 0, 0, 0]], labels.tolist()

    train = make_dataset(split, folder, "train", 4, batch_size=5, seed=3)
    epochs = [reds(train)[0] for _ in range(3)]
    assert sorted(epochs[0]) == [index * 15 for index in range(12)]
    assert len({tuple(epoch) for epoch in epochs}) > 1, "train must be reshuffled every epoch"

    validation = make_dataset(split, folder, "validation", 4, batch_size=3)
    first, labels = reds(validation)
    assert first == reds(validation)[0] == [index * 15 for index in range(12, 16)]
    # Numeric labels sort numerically ("1" < "2" < "10") across the whole split.
    frame = subset_frame(split, "validation")
    assert labels == [["1", "2", "10"].index(value) for value in frame["value"]]
    assert frame["objectId"].tolist() == [row[0] for row in rows[12:]]

    explicit = make_dataset(split, folder, "validation", 4, batch_size=3, labels=["10", "2", "1"])
    assert collect(explicit)[1].tolist() == [["10", "2", "1"].index(value) for value in frame["value"]]
    with pytest.raises(UserError, match="not among the classes"):
        make_dataset(split, folder, "validation", 4, batch_size=3, labels=["1", "2"])


def test_a_frame_works_like_its_file_and_skip_leaves_rows_out(tmp_path):
    rows, _ = make_folder(tmp_path / "images")
    split = write_split(tmp_path / "split.csv", rows)
    frame = pd.read_csv(split, dtype=str)
    skipped = {rows[0][0], rows[2][0]}
    dataset = make_dataset(frame, tmp_path / "images", "train", (8, 8), 2, skip=skipped, shuffle=False,
                           drop_remainder=True)
    images, labels = collect(dataset)
    assert images.shape == (2, 8, 8, 3)
    assert labels.tolist() == [0, 0]  # the two cats left in train
    kept = subset_frame(frame, "train", skip=skipped)
    assert kept["objectId"].tolist() == [rows[1][0], rows[3][0]]
    assert kept.index.tolist() == [0, 1]


def test_a_frame_with_a_path_outside_the_folder_is_refused(tmp_path):
    rows, _ = make_folder(tmp_path / "images")
    frame = pd.DataFrame(rows, columns=["objectId", "value", "type"])
    frame.loc[1, "objectId"] = "../" + frame.loc[1, "objectId"]
    with pytest.raises(UserError, match="contains '..'"):
        make_dataset(frame, tmp_path / "images", "train", 8, 2)
    with pytest.raises(UserError, match="no column"):
        subset_frame(frame.drop(columns="type"), "train")


def test_an_empty_subset_is_a_user_error_naming_it(tmp_path):
    rows, _ = make_folder(tmp_path / "images")
    only_train = [(object_id, label, "train") for object_id, label, _part in rows]
    split = write_split(tmp_path / "split.csv", only_train)
    with pytest.raises(UserError, match="'test' part .* has no images"):
        make_dataset(split, tmp_path / "images", "test", 8, 2)
    with pytest.raises(UserError, match="subset must be one of"):
        make_dataset(split, tmp_path / "images", "training", 8, 2)


def test_the_file_cache_is_filled_before_augmentation(tmp_path):
    """Epoch 2 reads the cache (sources deleted) and still draws new augmentations."""
    folder = tmp_path / "images"
    rows = [(store(folder, encode(noise(seed), "PNG"), "png"), "a", "train") for seed in range(4)]
    split = write_split(tmp_path / "split.csv", rows)
    augmentation = {"rotation_range": 40.0, "width_shift_range": 0.2, "height_shift_range": 0.2}
    dataset = make_dataset(split, folder, "train", 16, batch_size=4, augment=augmentation,
                           cache=tmp_path / "cache" / "images", shuffle=False, seed=1)

    first, _ = collect(dataset)
    index_files = list((tmp_path / "cache").glob("images-train-*.index"))
    assert len(index_files) == 1, "the first epoch must leave a finished cache file"
    hidden = folder.rename(tmp_path / "hidden")
    second, _ = collect(dataset)  # would fail if it decoded again: the files are gone
    hidden.rename(folder)

    assert first.dtype == np.float32 and first.shape == second.shape == (4, 16, 16, 3)
    assert 0.0 <= first.min() and first.max() <= 255.0
    assert not np.allclose(first, second), "two epochs must see different augmentations"

    # Other settings must not read this cache: they get a file of their own.
    other, _ = collect(make_dataset(split, folder, "train", 12, 4, cache=tmp_path / "cache" / "images"))
    assert other.shape == (4, 12, 12, 3)
    assert len(list((tmp_path / "cache").glob("images-train-*.index"))) == 2


def test_training_on_uint8_batches_ends_with_the_weights_of_float32_batches(tmp_path):
    """The model casts uint8 to float32 at its input, the exact value a float32 batch carries: the same
    seed gives the same weights, cached and shuffled, from image folders and from arrays."""
    import keras

    from keras_cnn.data.pipeline import array_pipeline

    folder = tmp_path / "images"
    rows = [(store(folder, encode(noise(seed, (20, 20)), "PNG"), "png"), "ab"[seed % 2], "train") for seed in range(12)]
    split = write_split(tmp_path / "split.csv", rows)
    arrays = np.stack([noise(seed, (12, 12)) for seed in range(12)]), np.arange(12) % 2

    def weights_after_training(dtype, from_arrays=False):
        keras.utils.set_random_seed(3)
        inputs = keras.Input((12, 12, 3))
        x = keras.layers.Conv2D(3, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
        model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x)))
        model.compile("adam", "sparse_categorical_crossentropy")
        if from_arrays:
            dataset = array_pipeline(*arrays, batch_size=5, shuffle=True, seed=4, dtype=dtype)
        else:
            dataset = make_dataset(split, folder, "train", 12, 5, seed=4, dtype=dtype)
        assert dataset.element_spec[0].dtype.name == dtype
        model.fit(dataset, epochs=2, verbose=0, shuffle=False)
        return model.get_weights()

    kernels = []
    for from_arrays in (False, True):
        uint8, float32 = weights_after_training("uint8", from_arrays), weights_after_training("float32", from_arrays)
        assert all(np.array_equal(a, b) for a, b in zip(uint8, float32))
        kernels.append(uint8[0])
    assert not np.array_equal(*kernels)   # the images count: the same start, other data, other weights
    with pytest.raises(UserError, match="dtype must be one of uint8, float32"):
        make_dataset(split, folder, "train", 12, 5, dtype="float16")


def test_memory_cache_without_augmentation_repeats_exactly(tmp_path):
    folder = tmp_path / "images"
    rows = [(store(folder, encode(noise(seed), "JPEG"), "jpg"), "a", "test") for seed in range(3)]
    split = write_split(tmp_path / "split.csv", rows)
    dataset = make_dataset(split, folder, "test", (10, 14), batch_size=2, resize_mode="crop")
    first, _ = collect(dataset)
    second, _ = collect(dataset)
    np.testing.assert_array_equal(first, second)
    assert first.shape == (3, 10, 14, 3)


def test_an_abandoned_cache_does_not_block_the_next_run(tmp_path):
    """A killed run leaves a lockfile and a half-written shard; the next run rebuilds the cache."""
    folder = tmp_path / "images"
    rows = [(store(folder, encode(noise(seed), "PNG"), "png"), "a", "train") for seed in range(2)]
    split = write_split(tmp_path / "split.csv", rows)
    cache = tmp_path / "cache"
    collect(make_dataset(split, folder, "train", 8, 2, cache=cache))
    (index,) = tmp_path.glob("cache-train-*.index")
    prefix = str(index)[: -len(".index")]
    for path in tmp_path.glob("cache-train-*"):
        path.unlink()
    Path(f"{prefix}_0.lockfile").write_text("killed\n")
    Path(f"{prefix}_0.data-00000-of-00001.tempstate123").write_bytes(b"half")

    images, _ = collect(make_dataset(split, folder, "train", 8, 2, cache=cache))
    assert images.shape == (2, 8, 8, 3)
    assert sorted(path.name[len(Path(prefix).name):] for path in tmp_path.glob("cache-train-*")) == [
        ".data-00000-of-00001", ".index",
    ]


# ---------------------------------------------------------------- bad images

@pytest.fixture()
def bad_folder(tmp_path):
    """Two good images and four bad ones (missing, truncated JPEG, text as .jpg, empty .png)."""
    folder = tmp_path / "images"
    good = [store(folder, encode(noise(seed), "JPEG"), "jpg") for seed in range(2)]
    whole = encode(noise(7, (40, 40)), "JPEG")
    truncated = store(folder, whole[: len(whole) // 2], "jpg")
    text = store(folder, b"this is not an image at all\n", "jpg")
    empty = store(folder, b"", "png")
    missing = f"{hashlib.sha1(b'missing').hexdigest()}.jpg"
    ids = [good[0], missing, truncated, good[1], text, empty]
    rows = [(object_id, "x", "train") for object_id in ids]
    return folder, write_split(tmp_path / "split.csv", rows), {
        "good": good, "missing": missing, "truncated": truncated, "text": text, "empty": empty,
    }


def test_find_bad_images_lists_every_bad_file_with_its_reason(bad_folder):
    folder, split, names = bad_folder
    ids = subset_frame(split, "all")["objectId"].tolist()
    assert find_bad_images(folder, ids, progress=False) == [
        (names["missing"], "missing"),
        (names["truncated"], "truncated or corrupt JPEG"),
        (names["text"], "not an image"),
        (names["empty"], "empty file"),
    ]


def test_check_images_or_fail_names_all_of_them_in_one_line(bad_folder, capsys):
    folder, split, names = bad_folder
    ids = subset_frame(split, "all")["objectId"].tolist()
    with pytest.raises(UserError) as raised:
        check_images_or_fail(folder, ids)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("4 images cannot be used: ")
    assert message.endswith("fix them or pass --skip-bad-images")
    assert len(message) <= 300 and names["missing"] in message
    # As many as fit in one line are shown; the file it names lists every one with its reason.
    full_list = Path(re.search(r"full list: (.+?)\)", message).group(1)).read_text()
    for key in ("missing", "truncated", "text", "empty"):
        assert names[key] in full_list
    assert names["good"][0] not in message + full_list
    captured = capsys.readouterr()
    assert captured.out == "", "the progress bar must stay off stdout (it may carry --json output)"
    assert "checking 5 images" in captured.err  # the missing one is known without reading


def test_skip_bad_images_records_them_and_trains_on_the_rest(bad_folder, tmp_path):
    folder, split, names = bad_folder
    ids = subset_frame(split, "all")["objectId"].tolist()
    record = tmp_path / "run" / "skipped_images.csv"
    skipped = check_images_or_fail(folder, ids, skip_bad=True, record_path=record, progress=False)
    assert skipped == {names[key] for key in ("missing", "truncated", "text", "empty")}
    recorded = pd.read_csv(record, dtype=str)
    assert recorded.columns.tolist() == ["objectId", "reason"]
    assert set(recorded["objectId"]) == skipped
    images, _ = collect(make_dataset(split, folder, "train", 8, 4, skip=skipped))
    assert images.shape == (2, 8, 8, 3)

    good_only = check_images_or_fail(folder, names["good"], skip_bad=True, record_path=record, progress=False)
    assert good_only == set()
    assert pd.read_csv(record, dtype=str).empty


def test_missing_files_are_reported_before_any_reading(bad_folder):
    folder, split, names = bad_folder
    with pytest.raises(UserError) as raised:
        resolve_image_paths(folder, [names["good"][0], names["missing"]])
    assert names["missing"] in str(raised.value) and names["good"][0] not in str(raised.value)
    with pytest.raises(UserError, match="1 of the 6 files named by the split are missing in"):
        make_dataset(split, folder, "train", 8, 2)
    with pytest.raises(UserError, match="does not exist"):
        resolve_image_paths(folder / "nowhere", [names["good"][0]])
    assert os.path.isfile(resolve_image_paths(folder, names["good"])[1])
