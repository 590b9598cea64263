"""Grad-CAM heat maps for the classifier (Selvaraju et al., 2017).

Runs on the TensorFlow backend, with ``tf.GradientTape``. The only part of
the app that needs Keras: importing this module is cheap, and Keras and
TensorFlow are imported when a heat map is first asked for.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import cv2
import numpy as np

from tumor.errors import WeightsError

DEFAULT_LAYER = "conv5_block3_out"

# One gradient model per (classifier, layer), dropped with the classifier.
_GRAD_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# The Keras classifiers Grad-CAM explains, built once per process: (folder, name, sha256) -> model.
_CLASSIFIERS: dict[tuple[str, str, str], object] = {}
_LOCK = threading.Lock()


def keras_classifier(weights_dir: str | Path, name: str, sha256: str):
    """The Keras form of the classifier ``name`` of a weights folder, built once per process.

    Thread-safe: concurrent first calls build it once. The file is verified
    against its pinned hash, and the hash must be ``sha256``, the one the
    compiled network was built from.

    Raises:
        WeightsError: the entry is missing, or its file changed since the
            compiled network was loaded, or it does not load.
    """
    from tumor import weights as weights_lib

    key = (str(Path(weights_dir).resolve()), name, sha256)
    with _LOCK:
        if key not in _CLASSIFIERS:
            entry = weights_lib.read_registry(weights_dir).models.get(name)
            if entry is None or entry.kind != "classifier" or entry.sha256 != sha256:
                raise WeightsError(
                    f"The classifier {name!r} in {weights_dir} is not the one the app loaded (expected sha256 "
                    f"{sha256[:12]}…). The weights changed while the app ran; restart it."
                )
            _CLASSIFIERS[key] = weights_lib.load_model(entry)
        return _CLASSIFIERS[key]


def grad_cam(
    classifier,
    x: np.ndarray,
    class_index: int | None = None,
    layer_name: str = DEFAULT_LAYER,
) -> np.ndarray:
    """Computes the Grad-CAM map of one preprocessed slice.

    Args:
        classifier: a ``keras.Model`` mapping (N, S, S, 3) to class
            probabilities (N, C), with a convolutional layer ``layer_name``.
        x: float32 (1, S, S, 3), already preprocessed (e.g. by
            ``tumor.preprocess.scale_intensity``).
        class_index: class to explain; None explains the top class.
        layer_name: the convolutional layer whose activations are weighted.

    Returns:
        float32 (S, S) in [0, 1], finite; all zeros when no location raises
        the class score. Bilinearly upsampled from the layer's resolution.
    """
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"grad_cam needs the TensorFlow backend. Received: {keras.backend.backend()!r}")
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[3] != 3:
        raise ValueError(f"Expected one preprocessed slice (1, S, S, 3). Received: shape={x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains NaN or infinite values.")
    grad_model = _grad_model(classifier, layer_name)
    inputs = tf.convert_to_tensor(x, dtype=tf.float32)
    with tf.GradientTape() as tape:
        activations, probabilities = grad_model(inputs, training=False)
        n_classes = int(probabilities.shape[-1])
        index = int(tf.argmax(probabilities[0])) if class_index is None else class_index
        if not 0 <= index < n_classes:
            raise ValueError(f"class_index must be in [0, {n_classes - 1}]. Received: class_index={class_index!r}")
        score = probabilities[:, index]
    gradients = tape.gradient(score, activations)
    weights = tf.reduce_mean(gradients, axis=(0, 1, 2))
    cam = tf.nn.relu(tf.reduce_sum(activations[0] * weights, axis=-1)).numpy()
    cam = np.nan_to_num(cam.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else np.zeros_like(cam)
    height, width = x.shape[1:3]
    heat = cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(heat, 0.0, 1.0).astype(np.float32)


def _grad_model(classifier, layer_name: str):
    import keras

    with _LOCK:
        per_model = _GRAD_MODELS.setdefault(classifier, {})
        if layer_name not in per_model:
            try:
                layer = classifier.get_layer(layer_name)
            except ValueError as err:
                raise ValueError(f"The classifier has no layer named {layer_name!r}.") from err
            per_model[layer_name] = keras.Model(classifier.inputs, [layer.output, classifier.output])
        return per_model[layer_name]


__all__ = ["DEFAULT_LAYER", "grad_cam", "keras_classifier"]
