"""Model builders and the preprocessing that feeds them.

Both models take RGB slices resized (with padding to a square) to
``INPUT_SIZE`` pixels. Training and inference share ``to_model_square`` and
the per-model ``preprocess_*`` functions defined here, so a slice is prepared
identically in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import keras
import numpy as np
from keras import layers

# Constants shared by training, evaluation and the app.
CLASS_NAMES: tuple[str, ...] = ("no_tumor", "glioma", "meningioma", "pituitary")
TUMOR_TYPES: tuple[str, ...] = CLASS_NAMES[1:]
INPUT_SIZE = 256
SEGMENTER_BASE_FILTERS = 16
SEGMENTER_DEPTH = 4


@dataclass(frozen=True)
class SquareFrame:
    """How an image of shape (height, width) was padded into a square.

    Attributes:
        height: original image height in pixels.
        width: original image width in pixels.
        top: rows of padding added above the image.
        left: columns of padding added to its left.
        side: side of the padded square, ``max(height, width)``.
    """

    height: int
    width: int
    top: int
    left: int
    side: int


def to_model_square(rgb: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, SquareFrame]:
    """Pads an RGB image to a square with black borders and resizes it.

    Args:
        rgb: uint8 array of shape (H, W, 3).
        size: side of the output square in pixels.

    Returns:
        The (size, size, 3) uint8 image and the frame needed to map a
        prediction back onto the original pixels with ``from_model_square``.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(
            f"Expected an RGB uint8 image of shape (H, W, 3). Received: shape={rgb.shape}, dtype={rgb.dtype}"
        )
    h, w = rgb.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    square = cv2.copyMakeBorder(rgb, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=0)
    if side != size:
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        square = cv2.resize(square, (size, size), interpolation=interp)
    return square, SquareFrame(h, w, top, left, side)


def from_model_square(values: np.ndarray, frame: SquareFrame) -> np.ndarray:
    """Maps a (size, size) map from the model square back to the original image.

    Args:
        values: float array of shape (size, size), e.g. a probability map.
        frame: the frame returned by ``to_model_square`` for this image.

    Returns:
        A float32 array of shape (frame.height, frame.width).
    """
    full = cv2.resize(values.astype(np.float32), (frame.side, frame.side), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(full[frame.top : frame.top + frame.height, frame.left : frame.left + frame.width])


# Intensity scaling of the model input. "unit" is x / 255 (models up to 1.2);
# "foreground_mean" then rescales each channel so that its mean over the
# slice's foreground is FOREGROUND_TARGET: MRI intensities have no absolute
# scale, and the LGG patients whose slices were darker than most were the
# ones the 1.2 models missed (see MODEL_CARD.md).
INTENSITY_MODES: tuple[str, ...] = ("unit", "foreground_mean")
FOREGROUND_LEVEL = 10 / 255  # a pixel is foreground when its brightest channel exceeds this
FOREGROUND_MIN_FRACTION = 0.01  # below this foreground share, a slice is left at unit scale
FOREGROUND_TARGET = 0.25
FOREGROUND_MIN_MEAN = 0.02  # caps the gain at FOREGROUND_TARGET / FOREGROUND_MIN_MEAN
STANDARDIZED_MAX = 5.0


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
