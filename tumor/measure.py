"""Measurements of a tumour mask: area, diameters and position in words.

Millimetres are reported only when the scan states its pixel spacing; they are
never guessed. Diameters follow clinical viewers (RECIST-like, bidirectional):
the long axis is the longest diameter of the largest connected component, and
the short axis is the component's extent perpendicular to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Words for the patient directions an image axis can point to.
DIRECTION_WORDS = {
    "L": "patient's left",
    "R": "patient's right",
    "A": "anterior",
    "P": "posterior",
    "S": "superior",
    "I": "inferior",
}
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
NO_TUMOUR = "no tumour outlined"


@dataclass(frozen=True)
class Measurements:
    """What a mask measures on one slice.

    Attributes:
        area_px: tumour pixels.
        area_mm2: area in mm^2, None when the pixel spacing is unknown.
        percent_of_brain: tumour area as a percentage of the brain area, None
            when no brain mask was given (or it is empty).
        bbox: (x, y, width, height) of all tumour pixels, None when empty.
        centroid: (x, y) mean pixel position, None when empty.
        n_components: connected tumour regions (8-connectivity).
        long_axis_px: longest diameter of the largest component, between the
            centres of its outermost pixels; None when empty.
        short_axis_px: extent of the largest component perpendicular to the
            long axis (its convex hull's width in that direction); None when
            empty.
        long_axis_mm: long axis in millimetres, None when spacing is unknown.
        short_axis_mm: short axis in millimetres, None when spacing is unknown.
        position: where the tumour lies, in plain words.
    """

    area_px: int
    area_mm2: float | None
    percent_of_brain: float | None
    bbox: tuple[int, int, int, int] | None
    centroid: tuple[float, float] | None
    n_components: int
    long_axis_px: float | None
    short_axis_px: float | None
    long_axis_mm: float | None
    short_axis_mm: float | None
    position: str


def drop_small_components(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Removes connected components smaller than ``min_fraction`` of the slice.

    The cut is an absolute size (a fraction of H x W), so a higher mask
    threshold still never grows the mask: each component at a higher
    threshold lies inside one at a lower threshold that is at least as large.

    Args:
        mask: boolean (H, W) mask.
        min_fraction: smallest kept component, as a fraction of the slice's
            pixels, in [0, 1); 0 keeps everything.

    Returns:
        A new boolean (H, W) mask.
    """
    mask = _as_bool_2d(mask, "mask")
    if not 0.0 <= min_fraction < 1.0:
        raise ValueError(f"min_fraction must be in [0, 1). Received: min_fraction={min_fraction}")
    min_area = min_fraction * mask.size
    if min_area <= 1 or not mask.any():
        return mask.copy()
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
    return keep[labels]


def brain_mask(rgb: np.ndarray) -> np.ndarray:
    """Finds the head/brain region of a slice.

    Otsu threshold of the blurred grey image, the largest connected region,
    with its holes filled.

    Args:
        rgb: uint8 array (H, W, 3).

    Returns:
        A bool array (H, W); all False for an image without foreground.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(
            f"Expected an RGB uint8 image of shape (H, W, 3). Received: shape={rgb.shape}, dtype={rgb.dtype}"
        )
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    empty = np.zeros(gray.shape, bool)
    if gray.max() == gray.min():
        return empty
    blurred = cv2.GaussianBlur(gray, (5, 5), 0)
    _, binary = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n < 2:
        return empty
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(region)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def measure(
    mask: np.ndarray,
    *,
    spacing_mm: tuple[float, float] | None = None,
    orientation: tuple[str, str] | None = None,
    brain: np.ndarray | None = None,
) -> Measurements:
    """Measures a tumour mask.

    Args:
        mask: (H, W) array, bool or numeric; nonzero is tumour. Not modified.
        spacing_mm: (row, column) pixel spacing in mm, or None if unknown.
        orientation: patient directions of image +x and +y (e.g. ``("L", "P")``)
            for anatomical position words; None gives image words.
        brain: optional bool (H, W) brain mask: the denominator of
            ``percent_of_brain`` and the reference centre for the position.

    Returns:
        ``Measurements``; for an empty mask the area is 0, the geometric
        fields are None and the position is "no tumour outlined".
    """
    mask = _as_bool_2d(mask, "mask")
    spacing = _check_spacing(spacing_mm)
    orientation = _check_orientation(orientation)
    if brain is not None:
        brain = _as_bool_2d(brain, "brain")
        if brain.shape != mask.shape:
            raise ValueError(
                f"brain and mask must have the same shape. Received: brain.shape={brain.shape}, mask.shape={mask.shape}"
            )
    area_px = int(mask.sum())
    brain_area = int(brain.sum()) if brain is not None else 0
    percent = 100.0 * area_px / brain_area if brain_area else None
    if area_px == 0:
        return Measurements(
            area_px=0,
            area_mm2=0.0 if spacing else None,
            percent_of_brain=percent,
            bbox=None,
            centroid=None,
            n_components=0,
            long_axis_px=None,
            short_axis_px=None,
            long_axis_mm=None,
            short_axis_mm=None,
            position=NO_TUMOUR,
        )
    mask_u8 = mask.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask_u8, connectivity=8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    ys, xs = np.nonzero(mask)
    bbox = (
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    )
    centroid = (float(xs.mean()), float(ys.mean()))
    hull = _hull_points(labels == largest)  # (N, 2) as (x, y)
    long_px, short_px = _diameters(hull)
    long_mm = short_mm = area_mm2 = None
    if spacing is not None:
        row_mm, col_mm = spacing
        long_mm, short_mm = _diameters(hull * np.array([col_mm, row_mm]))
        area_mm2 = area_px * row_mm * col_mm
    return Measurements(
        area_px=area_px,
        area_mm2=area_mm2,
        percent_of_brain=percent,
        bbox=bbox,
        centroid=centroid,
        n_components=int(n - 1),
        long_axis_px=long_px,
        short_axis_px=short_px,
        long_axis_mm=long_mm,
        short_axis_mm=short_mm,
        position=_position(centroid, mask.shape, orientation, brain),
    )


def _as_bool_2d(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{name} must be a non-empty 2-D array. Received: shape={array.shape}")
    return array != 0


def _check_spacing(spacing: tuple[float, float] | None) -> tuple[float, float] | None:
    if spacing is None:
        return None
    try:
        row, col = (float(v) for v in spacing)
    except (TypeError, ValueError) as err:
        raise ValueError(f"spacing_mm is (row, col) in mm. Received: {spacing!r}") from err
    if not (np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0):
        raise ValueError(f"spacing_mm must be positive and finite. Received: {spacing!r}")
    return row, col


def _check_orientation(orientation: tuple[str, str] | None) -> tuple[str, str] | None:
    if orientation is None:
        return None
    if (
        len(orientation) != 2
        or any(letter not in DIRECTION_WORDS for letter in orientation)
        or orientation[1] in (orientation[0], _OPPOSITE[orientation[0]])
    ):
        raise ValueError(
            f"orientation is two letters from L/R/A/P/S/I on different axes, e.g. ('L', 'P'). Received: {orientation!r}"
        )
    return orientation[0], orientation[1]


def _hull_points(component: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(component.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = np.concatenate(contours).reshape(-1, 2)
    return cv2.convexHull(points).reshape(-1, 2).astype(np.float64)


def _diameters(points: np.ndarray) -> tuple[float, float]:
    """Longest pairwise distance and the extent perpendicular to it."""
    if len(points) < 2:
        return 0.0, 0.0
    deltas = points[:, None, :] - points[None, :, :]
    distances = np.hypot(deltas[..., 0], deltas[..., 1])
    i, j = np.unravel_index(int(np.argmax(distances)), distances.shape)
    long_axis = float(distances[i, j])
    direction = (points[j] - points[i]) / long_axis
    normal = np.array([-direction[1], direction[0]])
    projected = points @ normal
    return long_axis, float(projected.max() - projected.min())


def _third(value: float, low: float, high: float) -> int:
    """-1, 0 or 1: which third of [low, high] the value falls in."""
    span = max(high - low, 1e-9)
    fraction = (value - low) / span
    return -1 if fraction < 1 / 3 else (1 if fraction > 2 / 3 else 0)


def _position(
    centroid: tuple[float, float],
    shape: tuple[int, int],
    orientation: tuple[str, str] | None,
    brain: np.ndarray | None,
) -> str:
    if brain is not None and brain.any():
        ys, xs = np.nonzero(brain)
        x_range = (float(xs.min()), float(xs.max()))
        y_range = (float(ys.min()), float(ys.max()))
    else:
        x_range = (0.0, float(shape[1] - 1))
        y_range = (0.0, float(shape[0] - 1))
    col = _third(centroid[0], *x_range)
    row = _third(centroid[1], *y_range)
    if orientation is None:
        vertical = ("upper", "middle", "lower")[row + 1]
        horizontal = ("left", "centre", "right")[col + 1]
        if row == 0 and col == 0:
            return "centre of the image"
        return f"{vertical} {horizontal} of the image"
    words = []
    for step, letter in ((col, orientation[0]), (row, orientation[1])):
        if step == 0:
            words.append("midline" if letter in "LR" else "central")
        else:
            words.append(DIRECTION_WORDS[letter if step > 0 else _OPPOSITE[letter]])
    return ", ".join(words)


__all__ = ["Measurements", "brain_mask", "measure"]
