"""The models `batchscore train` builds, and the SavedModel it exports.

Every model maps `features` ([batch, *shape]) to raw scores (logits, [batch, outputs]);
the task's link (sigmoid, softmax, identity) is applied by the exported signature, whose
outputs are the contract with `batchscore score` (`serving_outputs`, `OUTPUT_NAMES`):
binary -> `probability` [batch] = sigmoid(logit); multiclass -> `probabilities` [batch, classes]
= softmax(logits); regression -> `prediction` [batch], the raw score.

A user's model is `package.module:function`, called as
`function(input_shape=(...), outputs=K, task="binary")`; it returns a Keras model from
`input_shape` to `[batch, K]` raw scores (no final sigmoid or softmax).
"""
from __future__ import annotations

import importlib
import math
import os
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np

from batchscore.config.train_spec import TrainSection
from batchscore.core.errors import ConfigError, SchemaError

OUTPUT_NAMES = {"binary": "probability", "multiclass": "probabilities", "regression": "prediction"}


def input_shape(train: TrainSection, dim: int) -> tuple[int, ...]:
    """The model's input shape: `train.input_shape` (its product must be D), else (D,)."""
    if train.input_shape is None:
        return (dim,)
    shape = tuple(train.input_shape)
    if math.prod(shape) != dim:
        raise SchemaError(f"config key 'train.input_shape' {list(shape)} holds {math.prod(shape)} values, "
                          f"but the features have {dim} per row")
    return shape


def output_width(train: TrainSection, classes: int) -> int:
    """Raw scores per row: the classes for multiclass, else one."""
    return classes if train.task == "multiclass" else 1


def model_builder(train: TrainSection, *, dim: int, classes: int, mean: np.ndarray | None,
                  variance: np.ndarray | None, label_scale: tuple[float, float] | None = None) -> Callable[[], Any]:
    """A function that builds a fresh model (the same architecture each call): `features` -> logits.

    With `mean` / `variance` the features are standardised inside the model, so the
    exported SavedModel takes raw features; with `label_scale` (regression: the label's
    mean and std) the network predicts the standardised label and the model's last layer
    maps it back.
    """
    shape = input_shape(train, dim)
    outputs = output_width(train, classes)
    core = _core_factory(train)

    def build() -> Any:
        import keras  # noqa: PLC0415 - seconds of import: only where a model is built

        inputs = keras.Input(shape=shape, name="features")
        h = inputs
        if mean is not None and variance is not None:
            flat = keras.layers.Reshape((dim,))(h) if len(shape) > 1 else h  # [batch, D]
            flat = keras.layers.Normalization(mean=mean, variance=variance, name="normalize")(flat)
            h = keras.layers.Reshape(shape)(flat) if len(shape) > 1 else flat  # [batch, *shape]
        logits = core(shape, outputs)(h)  # [batch, outputs]
        if label_scale is not None:
            logits = keras.layers.Rescaling(scale=label_scale[1], offset=label_scale[0], name="label_scale")(logits)
        return keras.Model(inputs, logits, name="batchscore_train")

    return build


def _core_factory(train: TrainSection) -> Callable[[tuple[int, ...], int], Any]:
    if train.model == "mlp":
        return lambda shape, outputs: _mlp(shape, outputs, train.hidden)
    if train.model == "cnn":
        return _cnn
    fn = _user_function(train.model)

    def user(shape: tuple[int, ...], outputs: int) -> Any:
        model = fn(input_shape=shape, outputs=outputs, task=train.task)
        if not callable(model):
            raise ConfigError(f"config key 'train.model' {train.model!r} returned {type(model).__name__}, "
                              "not a Keras model")
        return model

    return user


def _user_function(path: str) -> Callable[..., Any]:
    module_name, _, name = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"config key 'train.model' {path!r} cannot be imported: {e}") from None
    if not callable(fn):
        raise ConfigError(f"config key 'train.model' {path!r} is not a function")
    return fn  # the user's function: what it returns is checked where it is called


def _mlp(shape: tuple[int, ...], outputs: int, hidden: list[int]) -> Any:
    import keras  # noqa: PLC0415 - seconds of import: only where a model is built

    layers: list[Any] = [keras.layers.Flatten()] if len(shape) > 1 else []
    layers += [keras.layers.Dense(width, activation="relu") for width in hidden]
    return keras.Sequential([*layers, keras.layers.Dense(outputs, name="logits")], name="mlp")


def _cnn(shape: tuple[int, ...], outputs: int) -> Any:
    """A small CNN over [batch, H, W, C] (or [batch, H, W]: one channel)."""
    import keras  # noqa: PLC0415 - seconds of import: only where a model is built

    if len(shape) not in (2, 3):
        raise ConfigError(f"config key 'train.input_shape' must be [H, W] or [H, W, C] for a cnn, got {list(shape)}")
    layers: list[Any] = [keras.layers.Reshape((*shape, 1))] if len(shape) == 2 else []
    pool = [keras.layers.MaxPooling2D(2)] if min(shape[:2]) >= 4 else []
    layers += [
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"), *pool,
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(outputs, name="logits"),
    ]
    return keras.Sequential(layers, name="cnn")


def serving_outputs(task: str, logits: Any) -> dict[str, Any]:
    """The exported signature's outputs from the model's logits ([batch, outputs])."""
    import tensorflow as tf  # noqa: PLC0415 - seconds of import: only where a model is exported

    if task == "binary":
        return {"probability": tf.sigmoid(logits[:, 0])}  # [batch]
    if task == "multiclass":
        return {"probabilities": tf.nn.softmax(logits, axis=-1)}  # [batch, classes]
    return {"prediction": logits[:, 0]}  # [batch]


def export_saved_model(build: Callable[[], Any], weights: list[np.ndarray], *, task: str,
                       shape: tuple[int, ...], path: str) -> None:
    """Export a fresh (undistributed) copy of the model with `weights` as a SavedModel at `path`.

    The copy is built outside any distribution strategy, so the SavedModel holds plain
    variables whatever strategy trained it. Written beside `path` and moved into place:
    a failed export leaves the previous model as it was.
    """
    import keras  # noqa: PLC0415 - seconds of import: only where a model is exported
    import tensorflow as tf  # noqa: PLC0415 - seconds of import: only where a model is exported

    model = build()
    model.set_weights(weights)

    def serve(features: Any) -> dict[str, Any]:
        return serving_outputs(task, model(features, training=False))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([None, *shape], tf.float32, name="features")])
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    archive.write_out(tmp, verbose=False)
    old = path.rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
