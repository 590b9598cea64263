"""Tests for tumor.explain.grad_cam."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from tumor.explain import grad_cam
from tumor.models import build_classifier, preprocess_classifier

ROOT = Path(__file__).resolve().parents[1]


def _bright_square_input(size: int = 16) -> np.ndarray:
    x = np.zeros((1, size, size, 3), np.float32)
    x[0, 2:6, 2:6, :] = 1.0  # bright in the upper left
    return x


def _tiny_model() -> keras.Model:
    """Features = mean intensity; class 0 rises with it, class 1 falls."""
    inputs = keras.Input((16, 16, 3), name="image")
    features = keras.layers.Conv2D(1, 1, use_bias=False, name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(pooled)
    model = keras.Model(inputs, outputs)
    model.get_layer("features").set_weights([np.full((1, 1, 3, 1), 1 / 3, np.float32)])
    model.get_layer("predictions").set_weights([np.array([[4.0, -4.0]], np.float32), np.zeros(2, np.float32)])
    return model


def test_heat_follows_the_evidence():
    heat = grad_cam(_tiny_model(), _bright_square_input(), class_index=0, layer_name="features")
    assert heat.shape == (16, 16) and heat.dtype == np.float32
    assert heat.max() == pytest.approx(1.0)
    assert heat[3, 3] == pytest.approx(1.0)
    assert heat[12, 12] == pytest.approx(0.0)


def test_class_lowered_by_the_evidence_gives_zero_heat():
    heat = grad_cam(_tiny_model(), _bright_square_input(), class_index=1, layer_name="features")
    np.testing.assert_array_equal(heat, np.zeros((16, 16), np.float32))


def test_default_class_is_the_top_class():
    model = _tiny_model()
    x = _bright_square_input()
    np.testing.assert_array_equal(
        grad_cam(model, x, layer_name="features"),
        grad_cam(model, x, class_index=0, layer_name="features"),
    )


def test_resnet_classifier_mechanics():
    model = build_classifier(input_size=64)
    rgb = np.zeros((1, 64, 64, 3), np.uint8)
    rgb[0, 16:48, 16:48] = 200
    x = np.asarray(preprocess_classifier(rgb))
    heat = grad_cam(model, x)
    assert heat.shape == (64, 64)
    assert heat.dtype == np.float32
    assert np.all(np.isfinite(heat))
    assert heat.min() >= 0.0 and heat.max() <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x": np.zeros((16, 16, 3), np.float32)}, r"shape=\(16, 16, 3\)"),
        ({"x": np.zeros((2, 16, 16, 3), np.float32)}, r"shape=\(2, 16, 16, 3\)"),
        ({"class_index": 5}, "class_index=5"),
        ({"layer_name": "conv5_block3_out"}, "'conv5_block3_out'"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = {"x": _bright_square_input(), "layer_name": "features"} | kwargs
    with pytest.raises(ValueError, match=message):
        grad_cam(_tiny_model(), **args)


def test_the_keras_classifier_loader_refuses_weights_other_than_the_loaded_ones(tmp_path):
    from tumor import weights as weights_lib
    from tumor.errors import WeightsError
    from tumor.explain import keras_classifier

    for name in weights_lib.MODEL_KINDS:
        (tmp_path / f"{name}.weights.h5").write_bytes(name.encode())
    weights_lib.write_manifest(
        tmp_path, version="t", input_sizes={"classifier": 32, "segmenter": 32}, build_kwargs={},
        tumor_threshold=0.5, mask_threshold=0.5,
    )  # fmt: skip
    with pytest.raises(WeightsError, match=r"not the one the app loaded \(expected sha256 000000000000"):
        keras_classifier(tmp_path, "classifier", "0" * 64)
    with pytest.raises(WeightsError, match="'classifier_9'"):
        keras_classifier(tmp_path, "classifier_9", "0" * 64)


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "weights" / "manifest.json").is_file(), reason="trained weights not present")
def test_the_keras_classifier_is_built_once_and_shared_by_threads():
    from concurrent.futures import ThreadPoolExecutor

    from tumor import weights as weights_lib
    from tumor.explain import keras_classifier

    entry = weights_lib.read_registry(ROOT / "weights").models["classifier"]
    with ThreadPoolExecutor(3) as pool:
        models = list(pool.map(lambda _: keras_classifier(ROOT / "weights", "classifier", entry.sha256), range(3)))
    assert models[0] is models[1] is models[2]
