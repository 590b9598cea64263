"""Model builders and the Keras form of the preprocessing that feeds them.

Both models take RGB slices resized (with padding to a square) to
``INPUT_SIZE`` pixels. Training and the export of the compiled networks
(``tumor.runtime``) share ``to_model_square`` and the per-model
``preprocess_*`` functions, so a slice is prepared identically in both. The
app never imports this module: it imports Keras (``tumor.preprocess`` holds
the Keras-free half).
"""

from __future__ import annotations

import keras
from keras import layers

# The constants and the square framing live in ``tumor.preprocess``, which the
# prediction path imports without Keras; they are re-exported here for training.
from tumor.preprocess import (
    CLASS_NAMES,
    FOREGROUND_LEVEL,
    FOREGROUND_MIN_FRACTION,
    FOREGROUND_MIN_MEAN,
    FOREGROUND_TARGET,
    INPUT_SIZE,
    INTENSITY_MODES,
    STANDARDIZED_MAX,
    TUMOR_TYPES,
    SquareFrame,
    from_model_square,
    to_model_square,
)

SEGMENTER_BASE_FILTERS = 16
SEGMENTER_DEPTH = 4


def standardize_intensity(x):
    """Rescales each channel of (N, S, S, 3) floats in [0, 1] by its foreground mean.

    The foreground is shared by the channels: pixels whose brightest channel
    exceeds ``FOREGROUND_LEVEL``. A slice with less than
    ``FOREGROUND_MIN_FRACTION`` foreground is returned unchanged, so nearly
    black input is not amplified into noise.
    """
    fg = keras.ops.cast(keras.ops.max(x, axis=-1, keepdims=True) > FOREGROUND_LEVEL, x.dtype)
    n = keras.ops.sum(fg, axis=(1, 2), keepdims=True)
    mean = keras.ops.sum(x * fg, axis=(1, 2), keepdims=True) / keras.ops.maximum(n, 1.0)
    area = keras.ops.cast(keras.ops.shape(x)[1] * keras.ops.shape(x)[2], x.dtype)
    gain = FOREGROUND_TARGET / keras.ops.maximum(mean, FOREGROUND_MIN_MEAN)
    gain = keras.ops.where(n >= FOREGROUND_MIN_FRACTION * area, gain, keras.ops.ones_like(gain))
    return keras.ops.clip(x * gain, 0.0, STANDARDIZED_MAX)


def _preprocess(x, intensity: str):
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}. Received: {intensity!r}")
    x = keras.ops.cast(x, "float32") / 255.0
    return standardize_intensity(x) if intensity == "foreground_mean" else x


def preprocess_classifier(x, intensity: str = "unit"):
    """Scales uint8 RGB (N, S, S, 3) to float32 for the classifier.

    ``intensity`` is one of ``INTENSITY_MODES`` (the weights' manifest says
    which). Works on NumPy arrays and backend tensors alike, so the training
    graph and single-slice inference use the very same operation.
    """
    return _preprocess(x, intensity)


def preprocess_segmenter(x, intensity: str = "unit"):
    """Scales uint8 RGB (N, S, S, 3) to float32 for the segmenter, as ``preprocess_classifier``."""
    return _preprocess(x, intensity)


def build_classifier(
    input_size: int = INPUT_SIZE,
    weights: str | None = None,
    dropout: float = 0.3,
    num_classes: int = len(CLASS_NAMES),
) -> keras.Model:
    """Builds the ResNet-50 tumour classifier.

    Args:
        input_size: side of the square input; the network is fully
            convolutional up to global pooling, so weights trained at one size
            load at another.
        weights: ``None`` for random initialisation or ``"imagenet"`` to start
            the backbone from ImageNet (needs a download).
        dropout: dropout rate before the softmax head.
        num_classes: number of output classes, ``len(CLASS_NAMES)``.

    Returns:
        A ``keras.Model`` mapping preprocessed float32 (N, S, S, 3) in [0, 1]
        to softmax probabilities (N, num_classes) in ``CLASS_NAMES`` order. The
        backbone's layers keep their Keras names (``conv5_block3_out`` is the
        last convolutional block, used by Grad-CAM).
    """
    inputs = keras.Input((input_size, input_size, 3), name="image")
    # ImageNet weights expect caffe-style BGR mean subtraction; random init
    # trains on the [0, 1] input directly.
    x = inputs
    if weights == "imagenet":
        x = layers.Rescaling(255.0, name="to_255")(x)
        x = layers.Lambda(keras.applications.resnet.preprocess_input, name="imagenet_preprocess")(x)
    backbone = keras.applications.ResNet50(include_top=False, weights=weights, input_tensor=x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="resnet50_tumor_classifier")


def _res_block(x, filters: int, name: str):
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    x = layers.BatchNormalization(name=f"{name}_bn1")(x)
    x = layers.Activation("relu", name=f"{name}_relu1")(x)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(x)
    x = layers.BatchNormalization(name=f"{name}_bn2")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def build_segmenter(
    input_size: int = INPUT_SIZE,
    base_filters: int = SEGMENTER_BASE_FILTERS,
    depth: int = SEGMENTER_DEPTH,
) -> keras.Model:
    """Builds the Res-U-Net tumour segmenter.

    A residual encoder-decoder: ``depth`` downsampling stages doubling the
    filters from ``base_filters``, a residual bottleneck, and a decoder that
    upsamples and concatenates the encoder's skip connections.

    Args:
        input_size: side of the square input.
        base_filters: filters of the first stage.
        depth: number of downsampling stages.

    Returns:
        A ``keras.Model`` mapping preprocessed float32 (N, S, S, 3) in [0, 1]
        to a tumour probability map (N, S, S, 1) in [0, 1].
    """
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = _res_block(x, base_filters * 2**level, name=f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _res_block(x, base_filters * 2**depth, name="bottleneck")
    x = layers.SpatialDropout2D(0.2, name="bottleneck_dropout")(x)
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level]])
        x = _res_block(x, filters, name=f"dec{level}")
    outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="mask")(x)
    return keras.Model(inputs, outputs, name="res_unet_tumor_segmenter")


__all__ = [
    "CLASS_NAMES",
    "FOREGROUND_LEVEL",
    "FOREGROUND_MIN_FRACTION",
    "FOREGROUND_MIN_MEAN",
    "FOREGROUND_TARGET",
    "INPUT_SIZE",
    "INTENSITY_MODES",
    "SEGMENTER_BASE_FILTERS",
    "SEGMENTER_DEPTH",
    "STANDARDIZED_MAX",
    "TUMOR_TYPES",
    "SquareFrame",
    "build_classifier",
    "build_segmenter",
    "from_model_square",
    "preprocess_classifier",
    "preprocess_segmenter",
    "standardize_intensity",
    "to_model_square",
]
