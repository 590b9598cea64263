"""Drawing masks and heat maps over a slice, with OpenCV.

Every function returns a new uint8 RGB image at the input's own resolution
and never modifies its inputs. Colour convention: green = expert, red = model.
"""

from __future__ import annotations

import cv2
import numpy as np

EXPERT_COLOR = (0, 200, 0)
MODEL_COLOR = (255, 0, 0)


def draw_mask(
    rgb: np.ndarray,
    mask: np.ndarray,
    *,
    mode: str = "contour",
    color: tuple[int, int, int] = MODEL_COLOR,
    opacity: float = 0.4,
    thickness: int | None = None,
) -> np.ndarray:
    """Draws a mask as an outline, or as a translucent fill with an outline.

    Args:
        rgb: uint8 (H, W, 3) RGB image. Not modified.
        mask: (H, W) array, nonzero inside. Not modified.
        mode: "contour" or "fill".
        color: RGB colour, each channel 0-255.
        opacity: weight of the colour in the fill, 0-1 (unused for "contour").
        thickness: outline width in pixels; None scales it with the image
            (1 px per 256 px of the longer side, at least 1).

    Returns:
        A new uint8 (H, W, 3) image; an equal copy of ``rgb`` when the mask is
        empty.
    """
    _check_rgb(rgb)
    mask = _check_mask(mask, rgb.shape[:2], "mask")
    if mode not in ("contour", "fill"):
        raise ValueError(f"mode must be 'contour' or 'fill'. Received: mode={mode!r}")
    _check_opacity(opacity)
    out = np.array(rgb, dtype=np.uint8, copy=True, order="C")
    _draw(out, mask, _check_color(color), mode, opacity, _thickness(rgb, thickness))
    return out


def draw_comparison(
    rgb: np.ndarray,
    expert_mask: np.ndarray,
    predicted_mask: np.ndarray,
    *,
    thickness: int | None = None,
) -> np.ndarray:
    """Outlines the expert mask in green and the model's mask in red.

    Args:
        rgb: uint8 (H, W, 3) RGB image. Not modified.
        expert_mask: (H, W) ground-truth mask, nonzero inside.
        predicted_mask: (H, W) predicted mask, nonzero inside.
        thickness: outline width in pixels, None to scale with the image.

    Returns:
        A new uint8 (H, W, 3) image; the red outline is drawn over the green.
    """
    _check_rgb(rgb)
    expert = _check_mask(expert_mask, rgb.shape[:2], "expert_mask")
    predicted = _check_mask(predicted_mask, rgb.shape[:2], "predicted_mask")
    width = _thickness(rgb, thickness)
    out = np.array(rgb, dtype=np.uint8, copy=True, order="C")
    _draw(out, expert, EXPERT_COLOR, "contour", 0.0, width)
    _draw(out, predicted, MODEL_COLOR, "contour", 0.0, width)
    return out


def draw_heatmap(rgb: np.ndarray, heat: np.ndarray, *, opacity: float = 0.4) -> np.ndarray:
    """Blends a JET-coloured heat map (e.g. Grad-CAM) over the image.

    Args:
        rgb: uint8 (H, W, 3) RGB image. Not modified.
        heat: float (H, W) in [0, 1], same size as ``rgb`` (map a model-square
            map back with ``tumor.models.from_model_square`` first).
        opacity: weight of the colour map, 0-1.

    Returns:
        A new uint8 (H, W, 3) image.
    """
    _check_rgb(rgb)
    _check_opacity(opacity)
    heat = np.asarray(heat)
    if heat.shape != rgb.shape[:2]:
        raise ValueError(
            f"heat must have the image's (H, W) shape. Received: heat.shape={heat.shape}, image shape={rgb.shape[:2]}"
        )
    heat = heat.astype(np.float32)
    if not np.all(np.isfinite(heat)) or heat.min() < -1e-6 or heat.max() > 1 + 1e-6:
        raise ValueError(
            f"heat must be finite and within [0, 1]. Received: min={np.nanmin(heat)}, max={np.nanmax(heat)}"
        )
    heat_u8 = np.round(np.clip(heat, 0.0, 1.0) * 255.0).astype(np.uint8)
    colored = cv2.cvtColor(cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = rgb.astype(np.float32) * (1.0 - opacity) + colored.astype(np.float32) * opacity
    return np.round(blended).astype(np.uint8)


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(
            "Expected an RGB uint8 image of shape (H, W, 3). "
            f"Received: shape={getattr(rgb, 'shape', None)}, dtype={getattr(rgb, 'dtype', None)}"
        )


def _check_mask(mask: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(
            f"{name} must have the image's (H, W) shape. Received: {name}.shape={mask.shape}, image shape={shape}"
        )
    return (mask != 0).astype(np.uint8)


def _check_color(color: tuple[int, int, int]) -> tuple[int, int, int]:
    values = tuple(int(c) for c in color)
    if len(values) != 3 or any(not 0 <= c <= 255 for c in values):
        raise ValueError(f"color is RGB with channels 0-255. Received: color={color!r}")
    return values  # type: ignore[return-value]


def _check_opacity(opacity: float) -> None:
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity must be within [0, 1]. Received: opacity={opacity!r}")


def _thickness(rgb: np.ndarray, thickness: int | None) -> int:
    if thickness is None:
        return max(1, round(max(rgb.shape[:2]) / 256))
    if int(thickness) < 1:
        raise ValueError(f"thickness must be at least 1. Received: thickness={thickness!r}")
    return int(thickness)


def _draw(
    out: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int],
    mode: str,
    opacity: float,
    thickness: int,
) -> None:
    """Draws into ``out`` in place; ``out`` is always the caller's own copy."""
    if not mask.any():
        return
    if mode == "fill":
        inside = mask.astype(bool)
        blended = out[inside].astype(np.float32) * (1.0 - opacity) + np.float32(color) * opacity
        out[inside] = np.round(blended).astype(np.uint8)
    # RETR_LIST keeps the borders of holes too, so a ring shows both edges.
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, color, thickness=thickness, lineType=cv2.LINE_8)


__all__ = [
    "EXPERT_COLOR",
    "MODEL_COLOR",
    "draw_comparison",
    "draw_heatmap",
    "draw_mask",
]
