"""MNIST / CIFAR-10 from the files keras.datasets downloads, and refusing the wrong files."""

import numpy as np
import pytest

from conftest import write_cifar10_archive, write_mnist_npz
from keras_cnn.data.datasets import adapt_images, holdout_split, load_dataset
from keras_cnn.errors import UserError


def test_mnist_npz_is_read_with_a_channel_axis(tmp_path):
    arrays = load_dataset("mnist", write_mnist_npz(tmp_path / "mnist.npz", train=30, test=10))
    assert arrays.x_train.shape == (30, 28, 28, 1) and arrays.x_train.dtype == np.uint8
    assert arrays.x_test.shape == (10, 28, 28, 1)
    assert arrays.labels == [str(digit) for digit in range(10)]


@pytest.mark.parametrize("as_tar", [True, False])
def test_cifar10_archive_and_extracted_folder(tmp_path, as_tar):
    path = write_cifar10_archive(tmp_path, per_batch=4, as_tar=as_tar)
    arrays = load_dataset("cifar10", path)
    assert arrays.x_train.shape == (20, 32, 32, 3) and arrays.x_test.shape == (4, 32, 32, 3)
    assert arrays.labels[0] == "airplane" and len(arrays.labels) == 10


def test_cifar10_pixel_layout_is_channels_last(tmp_path):
    import io
    import pickle
    import tarfile

    # One image: red plane 10, green 20, blue 30.
    data = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)]).astype("uint8")[None]
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name in [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]:
            payload = pickle.dumps({b"data": data, b"labels": [3]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    arrays = load_dataset("cifar10", path)
    assert arrays.x_test[0, 5, 7].tolist() == [10, 20, 30]
    assert arrays.y_test.tolist() == [3]


def test_wrong_files_are_refused_clearly(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UserError, match="not an MNIST .npz archive"):
        load_dataset("mnist", text)
    with pytest.raises(UserError, match="not a CIFAR-10 archive"):
        load_dataset("cifar10", text)
    mnist = write_mnist_npz(tmp_path / "mnist.npz", train=5, test=5)
    with pytest.raises(UserError, match="not a CIFAR-10 archive"):
        load_dataset("cifar10", mnist)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(UserError, match="lacks"):
        load_dataset("mnist", tmp_path / "other.npz")
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("mnist", tmp_path / "missing.npz")
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("imagenet")


def test_holdout_split_takes_the_last_fraction():
    train, validation = holdout_split(10, 0.2)
    assert (train, validation) == (slice(0, 8), slice(8, 10))


def test_adapt_images_converts_channels_and_size():
    grey = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28, 1)).astype("uint8")
    adapted = adapt_images(grey, (32, 32, 3))
    assert adapted.shape == (3, 32, 32, 3) and adapted.dtype == np.uint8
    np.testing.assert_array_equal(adapted[..., 0], adapted[..., 2])
    assert adapt_images(grey, (28, 28, 1)) is grey
