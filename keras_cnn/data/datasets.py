"""MNIST and CIFAR-10, from ``keras.datasets`` or from the very files it downloads.

``keras.datasets`` needs the internet the first time.  ``--dataset-path`` takes the same
archives on disk so training works offline: ``mnist.npz`` for MNIST, and
``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/`` folder for CIFAR-10.
"""

from __future__ import annotations

import pickle
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_cnn.errors import UserError

CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MNIST_LABELS = [str(digit) for digit in range(10)]


@dataclass
class DatasetArrays:
    """A dataset held in memory: uint8 images (N, H, W, C) and int class indices (N,)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]


def load_mnist(path: str | Path | None = None) -> DatasetArrays:
    """MNIST as (N, 28, 28, 1) uint8; from ``path`` (``mnist.npz``) or keras.datasets."""
    if path is None:
        arrays = _download("mnist", lambda: __import__("keras").datasets.mnist.load_data())
    else:
        arrays = _read_mnist_npz(Path(path))
    (x_train, y_train), (x_test, y_test) = arrays
    return DatasetArrays("mnist", x_train[..., None], y_train.astype("int32"),
                         x_test[..., None], y_test.astype("int32"), list(MNIST_LABELS))


def load_cifar10(path: str | Path | None = None) -> DatasetArrays:
    """CIFAR-10 as (N, 32, 32, 3) uint8; from ``path`` (tar.gz or extracted folder) or keras.datasets."""
    if path is None:
        (x_train, y_train), (x_test, y_test) = _download(
            "cifar10", lambda: __import__("keras").datasets.cifar10.load_data())
    else:
        (x_train, y_train), (x_test, y_test) = _read_cifar10(Path(path))
    return DatasetArrays("cifar10", x_train, y_train.reshape(-1).astype("int32"),
                         x_test, y_test.reshape(-1).astype("int32"), list(CIFAR10_LABELS))


LOADERS = {"mnist": load_mnist, "cifar10": load_cifar10}


def load_dataset(name: str, path: str | Path | None = None) -> DatasetArrays:
    """Load dataset ``name`` ("mnist" or "cifar10"), from ``path`` when given."""
    if name not in LOADERS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(LOADERS)}")
    if path is not None and not Path(path).exists():
        raise UserError(f"--dataset-path {path} does not exist")
    return LOADERS[name](path)


def _download(name: str, load):
    try:
        return load()
    except Exception as error:  # noqa: BLE001 - any download failure gets the same advice
        raise UserError(
            f"cannot download {name} through keras.datasets ({type(error).__name__}); "
            f"without internet pass the archive with --dataset-path FILE"
        ) from None


def _read_mnist_npz(path: Path):
    if path.is_dir():
        raise UserError(f"{path} is a folder; MNIST wants the mnist.npz file keras.datasets downloads")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
            if missing:
                raise UserError(f"{path} is not an MNIST archive: it lacks {', '.join(sorted(missing))}")
            arrays = ((archive["x_train"], archive["y_train"]), (archive["x_test"], archive["y_test"]))
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise UserError(f"{path} is not an MNIST .npz archive ({error})") from None
    (x_train, _), (x_test, _) = arrays
    if x_train.ndim != 3 or x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"{path}: expected images of shape (N, 28, 28), found {x_train.shape}")
    return tuple((x.astype("uint8"), y) for x, y in arrays)


def _read_cifar10(path: Path):
    """Read the python-pickle batches, from the tar.gz or from the extracted folder."""
    if path.is_dir():
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        batches = {name: (folder / name).read_bytes() for name in _cifar_batch_names()
                   if (folder / name).is_file()}
    else:
        try:
            with tarfile.open(path, "r:*") as archive:
                batches = {}
                for member in archive.getmembers():
                    if member.isfile() and Path(member.name).name in _cifar_batch_names():
                        batches[Path(member.name).name] = archive.extractfile(member).read()
        except (tarfile.TarError, OSError) as error:
            raise UserError(f"{path} is not a CIFAR-10 archive (cifar-10-python.tar.gz): {error}") from None
    missing = [name for name in _cifar_batch_names() if name not in batches]
    if missing:
        raise UserError(f"{path} is not a CIFAR-10 python archive: {', '.join(missing)} missing")
    train = [_decode_cifar_batch(batches[f"data_batch_{index}"], path) for index in range(1, 6)]
    x_train = np.concatenate([images for images, _ in train])
    y_train = np.concatenate([labels for _, labels in train])
    x_test, y_test = _decode_cifar_batch(batches["test_batch"], path)
    return (x_train, y_train), (x_test, y_test)


def _cifar_batch_names() -> list[str]:
    return [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]


def _decode_cifar_batch(payload: bytes, source: Path):
    # The official archive is a Python pickle, as keras.datasets reads it; only open
    # archives you trust.
    try:
        batch = pickle.loads(payload, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype="uint8")
        labels = np.asarray(batch[b"labels"], dtype="int32")
    except Exception as error:  # noqa: BLE001 - any decoding problem means a wrong file
        raise UserError(f"{source}: a CIFAR-10 batch cannot be read ({type(error).__name__})") from None
    # Rows are 3072 bytes: 1024 red, 1024 green, 1024 blue, each 32x32 row-major.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def holdout_split(length: int, validation_split: float) -> tuple[slice, slice]:
    """Train/validation slices like Keras's ``validation_split``: the last fraction is validation."""
    if not 0.0 <= validation_split < 1.0:
        raise UserError(f"validation split must be in [0, 1), received: {validation_split}")
    cut = length - int(round(length * validation_split))
    return slice(0, cut), slice(cut, length)


def adapt_images(images: np.ndarray, input_shape: tuple[int, int, int], batch_size: int = 4096) -> np.ndarray:
    """Convert uint8 images to an architecture's (height, width, channels), e.g. MNIST for a CIFAR net."""
    height, width, channels = input_shape
    if images.shape[1:] == (height, width, channels):
        return images
    import tensorflow as tf

    from keras_cnn.data.images import resize_image

    chunks = []
    for start in range(0, len(images), batch_size):
        chunk = tf.convert_to_tensor(images[start:start + batch_size])
        if chunk.shape[-1] == 1 and channels == 3:
            chunk = tf.image.grayscale_to_rgb(chunk)
        elif chunk.shape[-1] == 3 and channels == 1:
            chunk = tf.image.rgb_to_grayscale(chunk)
        if tuple(chunk.shape[1:3]) != (height, width):
            chunk = resize_image(chunk, (height, width))
        chunks.append(chunk.numpy())
    return np.concatenate(chunks) if chunks else images.reshape((0, height, width, channels))
