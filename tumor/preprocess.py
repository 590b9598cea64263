"""What a slice goes through before a network sees it, free of Keras and TensorFlow.

The prediction path (``tumor.pipeline``, ``tumor.runtime``) imports this module,
never ``tumor.models``: importing Keras costs seconds and half a gigabyte. The
Keras builders and the Keras form of the intensity scaling (``tumor.models``)
import their constants from here, so that training, export and inference
prepare a slice identically.

Data contract: a slice is RGB uint8 (H, W, 3); a network input is a batch of
model squares, uint8 (N, S, S, 3), padded with black to a square and resized
(``to_model_square``). The intensity scaling, which the compiled networks run
inside their graph, is ``scale_intensity``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Constants shared by training, evaluation and the app.
CLASS_NAMES: tuple[str, ...] = ("no_tumor", "glioma", "meningioma", "pituitary")
TUMOR_TYPES: tuple[str, ...] = CLASS_NAMES[1:]
INPUT_SIZE = 256

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


def scale_intensity(squares: np.ndarray, intensity: str = "unit") -> np.ndarray:
    """The network input of uint8 squares (N, S, S, 3): float32, as ``tumor.models.preprocess_*`` makes it.

    The NumPy twin of the Keras operation that the compiled networks run in
    their graph; for stand-in networks and for checking the graph.

    Raises:
        ValueError: ``intensity`` is not one of ``INTENSITY_MODES``.
    """
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}. Received: {intensity!r}")
    x = np.asarray(squares, np.float32) / np.float32(255.0)
    if intensity == "unit":
        return x
    fg = (x.max(axis=-1, keepdims=True) > FOREGROUND_LEVEL).astype(np.float32)
    n = fg.sum(axis=(1, 2), keepdims=True)
    mean = (x * fg).sum(axis=(1, 2), keepdims=True) / np.maximum(n, 1.0)
    gain = np.float32(FOREGROUND_TARGET) / np.maximum(mean, np.float32(FOREGROUND_MIN_MEAN))
    gain = np.where(n >= FOREGROUND_MIN_FRACTION * x.shape[1] * x.shape[2], gain, np.float32(1.0))
    return np.clip(x * gain, 0.0, STANDARDIZED_MAX).astype(np.float32)
