"""``--weights imagenet|none|PATH``: which weights a base starts from, checked before any work.

``imagenet`` is what keras.applications downloads into the Keras cache
(``$KERAS_HOME/models``, default ``~/.keras/models``).  On a machine without internet a
download would fail deep inside model building, after data loading; :func:`resolve_weights`
looks in the cache first and, when the file is missing, tries the download address with a
short timeout, so the run stops at once with one line saying what to do instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from keras_cnn.errors import UserError, first_line
from keras_cnn.models.downloads import can_download
from keras_cnn.models.hub import resolve_hub_handle
from keras_cnn.models.keras_hub import resolve_preset
from keras_cnn.models.specs import BaseSpec


def keras_cache_dirs() -> list[Path]:
    """Folders where Keras keeps downloaded application weights, most likely first.

    Keras uses ``$KERAS_HOME`` (else ``~/.keras``) and falls back to ``/tmp/.keras`` when
    that is not writable; both are checked.
    """
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    candidates = [Path(home) / "models", Path(tempfile.gettempdir()) / ".keras" / "models"]
    unique: list[Path] = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def cached_weights_path(spec: BaseSpec) -> Path | None:
    """The cached ImageNet weights file of ``spec`` (a BaseSpec), or ``None``."""
    if not spec.weights_file:
        return None
    for folder in keras_cache_dirs():
        path = folder / spec.weights_file
        if path.is_file() and path.stat().st_size > 0:
            return path
    return None


def imagenet_weights_available(spec: BaseSpec) -> bool:
    """Whether ``--weights imagenet`` can work for ``spec`` here (cached, or downloadable now).

    For a TF Hub base: whether its module resolves (local folder, cache, or download); for
    a keras-hub preset: whether it is a local folder or can be downloaded.
    """
    resolvers = {"hub": resolve_hub_handle, "keras_hub": resolve_preset}
    if spec.kind in resolvers:
        try:
            resolvers[spec.kind](spec.handle)
        except UserError:
            return False
        return True
    return cached_weights_path(spec) is not None or (
        spec.weights_url is not None and can_download(spec.weights_url)
    )


def resolve_weights(spec: BaseSpec, weights: str | os.PathLike | None) -> str | None:
    """Check ``weights`` for base ``spec`` and say what to build with.

    Returns ``"imagenet"`` (cached or downloadable), ``None`` (random initialisation; for a
    TF Hub base: the module's own weights) or the absolute path of a weights file to load
    after building with ``weights=None``.  Raises a one-line ``UserError`` otherwise.
    For a TF Hub base the module itself is resolved here (found locally or in the cache,
    or downloaded), since it is what carries the pretrained weights.  For a keras-hub preset,
    ``"imagenet"`` means the preset's own weights and ``None`` its architecture with random
    weights; a remote preset is checked for a connection here.
    """
    choice = "none" if weights is None else os.fspath(weights)
    lowered = choice.strip().lower()
    if spec.kind == "hub":
        return _resolve_hub_weights(spec, choice, lowered)
    if spec.kind == "keras_hub":
        resolve_preset(spec.handle)  # a remote preset offline: fail before any work
    if lowered == "none":
        return None
    if lowered == "imagenet":
        if spec.kind == "keras":
            _check_imagenet_reachable(spec)
        return "imagenet"
    return _existing_weights_file(choice)


def _resolve_hub_weights(spec: BaseSpec, choice: str, lowered: str) -> str | None:
    # The module is the download here: fetch or find it now, so offline fails before any work.
    resolve_hub_handle(spec.handle)
    if lowered == "imagenet":
        return None  # a hub module carries its own pretrained weights
    if lowered == "none":
        raise UserError(
            f"{spec.name} is a TF Hub module and carries its own weights; "
            "--weights none cannot re-initialise it (use --weights imagenet or a weights file)"
        )
    return _existing_weights_file(choice)


def _check_imagenet_reachable(spec: BaseSpec) -> None:
    if cached_weights_path(spec) is not None:
        return
    if spec.weights_url and can_download(spec.weights_url):
        return
    cache = keras_cache_dirs()[0]
    # The remedies come first: a long cache path must not push them past the message bound.
    raise UserError(
        f"ImageNet weights for {spec.name} are not cached and cannot be downloaded (no connection): "
        f"pass --weights PATH or --weights none, or put {spec.weights_file} in {cache}"
    )


def _existing_weights_file(choice: str) -> str:
    path = Path(choice).expanduser()
    if not path.is_file():
        raise UserError(
            f"--weights takes imagenet, none or the path of a weights file; {choice!r} is not a file"
        )
    return str(path.resolve())


def load_weights_file(model, path: str | os.PathLike) -> None:
    """Load a ``.h5`` / ``.weights.h5`` / ``.keras`` weights file into ``model`` (one-line errors)."""
    try:
        model.load_weights(os.fspath(path))
    except (ValueError, OSError, KeyError) as error:
        raise UserError(f"cannot load weights from {path} into {model.name}: {first_line(error)}") from None


def set_batch_norm_statistics(model, images) -> None:
    """Give every BatchNormalization layer of ``model`` the statistics of ``images`` (in place).

    For checks and measurements without pretrained weights: a randomly initialised base
    predicts almost the same for every input (its BatchNorm layers expect mean 0 and variance
    1 everywhere); with statistics taken from real images its outputs depend on the input, so
    two computations that differ can be told apart.  One call in training mode with momentum
    0 makes each moving statistic its batch's; the other layers of a kcnn base keep their
    frozen, inference-mode behaviour meanwhile.
    """
    import keras

    def batch_norm_layers(container):
        for layer in container.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                yield layer
            elif isinstance(layer, keras.Model):
                yield from batch_norm_layers(layer)

    layers = list(batch_norm_layers(model))
    saved = [(layer.trainable, layer.momentum) for layer in layers]
    for layer in layers:
        layer.trainable, layer.momentum = True, 0.0
    model(images, training=True)
    for layer, (trainable, momentum) in zip(layers, saved):
        layer.trainable, layer.momentum = trainable, momentum
