"""Shared test fixtures: tiny generated datasets in the formats kcnn reads."""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


# The shapes of the lines kcnn itself prints on stderr: its messages ("kcnn: ..."), the
# execution line, step and epoch lines ("[3/7] ...", "[head] epoch ..."), indented details,
# the titles of its progress, and what it found and split (the count table).  Anything
# else on stderr is another library's noise.
KCNN_LINE = re.compile(r"^(kcnn: |device: |\[|  |$|checking |extracting |predicting |resuming |hashing |found |caching |not caching |stage |"
                       r"using the split |(part|train|validation|test|total) )")
INTERNAL_WORDS = re.compile(r"seed[ -]0\d\d|REFERENCES|DESIGN\.md|shared documents", re.IGNORECASE)
MAX_LINE = 300


def output_problems(text: str) -> list[str]:
    """What is wrong with text kcnn printed to a pipe: escape codes, carriage returns, long
    lines, internal vocabulary, or (see ``stderr_problems``) lines that are not kcnn's."""
    problems = []
    if "\x1b" in text:
        problems.append("an ANSI escape code")
    if "\r" in text:
        problems.append("a carriage return")
    problems += [f"line over {MAX_LINE} characters: {line[:80]}…" for line in text.splitlines()
                 if len(line) > MAX_LINE]
    problems += [f"internal vocabulary: {line[:120]}" for line in text.splitlines()
                 if INTERNAL_WORDS.search(line)]
    return problems


def stderr_problems(stderr: str) -> list[str]:
    """``output_problems`` plus every stderr line that is not one of kcnn's own."""
    return output_problems(stderr) + [f"not kcnn's: {line[:160]}" for line in stderr.splitlines()
                                      if not KCNN_LINE.match(line)]


def learnable_digit_images(count: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (count, size, size) images whose class (0..9) is a bright bar at row 2 + 2*class."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=count).astype("uint8")
    images = rng.integers(0, 60, size=(count, size, size)).astype("uint8")
    for index, label in enumerate(labels):
        row = 2 + 2 * int(label)
        start = int(rng.integers(0, size // 3))
        images[index, row:row + 2, start:start + size // 2] = 255
    return images, labels


def write_mnist_npz(path: Path, train: int = 600, test: int = 200, seed: int = 0) -> Path:
    """A file in the layout of keras.datasets' mnist.npz (x_train, y_train, x_test, y_test)."""
    x_train, y_train = learnable_digit_images(train, seed)
    x_test, y_test = learnable_digit_images(test, seed + 1)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def write_cifar10_archive(folder: Path, per_batch: int = 20, seed: int = 0, as_tar: bool = True) -> Path:
    """cifar-10-python.tar.gz (or the extracted cifar-10-batches-py/) with tiny batches."""
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072)).astype("uint8")
        labels = [int(value) for value in rng.integers(0, 10, size=per_batch)]
        batches[name] = pickle.dumps({b"data": data, b"labels": labels})
    if not as_tar:
        target = folder / "cifar-10-batches-py"
        target.mkdir(parents=True, exist_ok=True)
        for name, payload in batches.items():
            (target / name).write_bytes(payload)
        return target
    path = folder / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


@pytest.fixture(scope="session")
def mnist_npz(tmp_path_factory) -> Path:
    return write_mnist_npz(tmp_path_factory.mktemp("mnist") / "mnist.npz")


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory) -> Path:
    """The built-in sample set, small: 3 classes x 40 images of 48 px."""
    from keras_cnn.data.sample import write_sample_data

    folder = tmp_path_factory.mktemp("sample")
    write_sample_data(folder, classes=3, per_class=40, size=48, seed=0)
    return folder


HUB_FEATURES = 6


def write_hub_module(path: Path) -> str:
    """Write a tiny module in the TF Hub TF2 format and return its folder.

    ``__call__(images in [0, 1], training)`` -> conv 3x3 -> BatchNorm-like scale/offset
    with a moving mean -> relu -> spatial mean; ``variables`` / ``trainable_variables``
    lists as hub modules have them.  Traced for training False and True like real modules.
    """
    import tensorflow as tf

    class TinyFeatureVector(tf.Module):
        # tf.Module defines these as properties; the hub format saves them as plain lists.
        variables = None
        trainable_variables = None

        def __init__(self):
            super().__init__(name="tiny")
            with tf.name_scope("conv"):
                self.kernel = tf.Variable(tf.random.stateless_normal([3, 3, 3, HUB_FEATURES], seed=[1, 2]) * 0.3,
                                          name="Conv1_kernel")
                self.bias = tf.Variable(tf.zeros([HUB_FEATURES]), name="Conv1_bias")
            self.gamma = tf.Variable(tf.ones([HUB_FEATURES]), name="stem_bn/gamma")
            self.beta = tf.Variable(tf.zeros([HUB_FEATURES]), name="stem_bn/beta")
            self.moving_mean = tf.Variable(tf.zeros([HUB_FEATURES]), trainable=False,
                                           name="stem_bn/moving_mean")
            self.variables = [self.kernel, self.bias, self.gamma, self.beta, self.moving_mean]
            self.trainable_variables = [self.kernel, self.bias, self.gamma, self.beta]
            self.regularization_losses = []

        @tf.function
        def __call__(self, images, training=False):
            hidden = tf.nn.conv2d(images, self.kernel, 1, "SAME") + self.bias
            if training:
                self.moving_mean.assign(0.9 * self.moving_mean + 0.1 * tf.reduce_mean(hidden, axis=[0, 1, 2]))
            hidden = (hidden - self.moving_mean) * self.gamma + self.beta
            return tf.reduce_mean(tf.nn.relu(hidden), axis=[1, 2])

    module = TinyFeatureVector()
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    for training in (False, True):
        module.__call__.get_concrete_function(spec, training=training)
    tf.saved_model.save(module, str(path))
    return str(path)


@pytest.fixture(scope="session")
def sample_split(sample_data_dir, tmp_path_factory) -> Path:
    """The split CSV of ``sample_data_dir``."""
    from keras_cnn.data.collection import split_to_file

    path = tmp_path_factory.mktemp("split") / "split.csv"
    split_to_file(str(sample_data_dir / "label.csv"), str(path))
    return path


def train_tiny_hub_head(folder: Path, split: Path | None, images: Path) -> Path:
    """A finished stage-1 run (1 epoch, 32 px) on a tiny generated hub module; returns the run folder.

    Without ``split`` the run splits ``images`` itself (into RUN/split.csv).
    """
    from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
    from keras_cnn.train.two_stage import train_head

    hub = write_hub_module(folder / "hub")
    run = folder / "run"
    train_head(RunConfig(command="transfer", model=ModelConfig(kind="transfer", name=f"hub:{hub}"),
                         data=DataConfig(split=split and str(split), images=str(images), image_size=(32, 32)),
                         training=TrainingConfig(epochs=1, batch_size=16, learning_rate=0.01)), run)
    return run


CHROMIUM = "/usr/bin/chromium"
BROWSER_INSTALL_HINT = "apt-get install -y chromium (Debian's browser) and pip install -e '.[test]' (playwright)"
# Flags that keep a headless Chromium off the network (the machine has none) and out of the user's profile.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def chromium_page():
    """A page of a headless Debian Chromium driven by Playwright; skips when either is missing.

    Nothing downloads a browser: Playwright is pointed at the system's ``chromium``.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"browser tests need playwright: {BROWSER_INSTALL_HINT}")
    executable = CHROMIUM if os.path.exists(CHROMIUM) else None
    if executable is None:
        pytest.skip(f"browser tests need Chromium at {CHROMIUM}: {BROWSER_INSTALL_HINT}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            yield page
        finally:
            browser.close()


# Kinds of planted near-duplicate copies, in turn: what kcnn doctor must pair with their originals.
COPY_KINDS = ("re-encoded", "resized", "cropped", "brightened")


def write_planted_digits(root: Path, count: int | None = None, flip_share: float = 0.05, copies: int = 30,
                         seed: int = 19, side: int = 32) -> dict:
    """scikit-learn's digits as PNG class folders ``root/<label>/img_NNNN.png`` (``side`` pixels),
    with planted mistakes; returns what was planted.

    ``flip_share`` of the labels are flipped to another digit (seeded), and ``copies`` images
    (never flipped ones) get a near-duplicate beside them, ``root/<label>/copy_NN.<png|jpg>``:
    in turn re-encoded as JPEG, resized by 2 pixels, cropped by a pixel, brightened by 25 %.
    Returns ``{"flipped": {objectId: true label}, "copies": {copy objectId: (original objectId, kind)}}``.
    """
    from PIL import ImageEnhance
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    total = len(digits.target) if count is None else int(count)
    rng = np.random.default_rng(seed)
    labels = digits.target[:total].copy()
    flipped_rows = rng.choice(total, size=int(round(flip_share * total)), replace=False)
    for row in flipped_rows:
        labels[row] = (labels[row] + rng.integers(1, 10)) % 10
    unflipped = np.setdiff1d(np.arange(total), flipped_rows)
    copied_rows = rng.choice(unflipped, size=copies, replace=False)

    def picture(row: int) -> Image.Image:
        pixels = np.clip(digits.images[row] * 16, 0, 255).astype(np.uint8)
        return Image.fromarray(pixels).resize((side, side), Image.BILINEAR)

    def object_id(row: int) -> str:
        return f"{labels[row]}/img_{row:04d}.png"

    for row in range(total):
        path = root / object_id(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        picture(row).save(path)
    planted_copies = {}
    for number, row in enumerate(copied_rows):
        kind = COPY_KINDS[number % len(COPY_KINDS)]
        image = picture(row)
        if kind == "resized":
            image = image.resize((side - 2, side - 2), Image.BILINEAR)
        elif kind == "cropped":
            image = image.crop((1, 1, side, side))
        elif kind == "brightened":
            image = ImageEnhance.Brightness(image).enhance(1.25)
        name = f"{labels[row]}/copy_{number:02d}.{'jpg' if kind == 're-encoded' else 'png'}"
        image.save(root / name, **({"quality": 85} if kind == "re-encoded" else {}))
        planted_copies[name] = (object_id(row), kind)
    return {"flipped": {object_id(row): str(digits.target[row]) for row in flipped_rows},
            "copies": planted_copies}
