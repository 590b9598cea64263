"""Segmentation-guided typing and detection: where and how strongly the outline lies, fused with the classifiers.

Location tells the tumour types apart: pituitary adenomas sit at the sella,
meningiomas are extra-axial (against the skull or the falx), gliomas are
intra-axial. ``location_features`` turns the segmenter's probability map into a
few numbers of position, extent and intensity; ``TypeFusion`` is a multinomial
logistic regression over those and the classifier's log type probabilities.
On greyscale slices ``DetectionFusion`` gives P(tumour) from the classifiers'
P(tumour) and how strongly the greyscale segmenters' map marks a tumour
(``detection_features``; rule 1.10.0 b in ``docs/experiments.md``).

Data contract: ``rgb`` is the analysed RGB uint8 slice (H, W, 3), ``prob_map``
the float32 (H, W) tumour probability in [0, 1] at the same resolution,
``type_probs`` the classifier's P(glioma), P(meningioma), P(pituitary) (any
positive scale; renormalised here). The fusion's coefficients are fitted
offline (``python -m tumor.lab.fusion``) on predictions the networks never
trained on, and ship as a JSON file pinned by sha256 in the weights manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tumor import measure as measure_lib
from tumor.errors import WeightsError

TYPE_NAMES: tuple[str, ...] = ("glioma", "meningioma", "pituitary")
FEATURE_NAMES: tuple[str, ...] = (
    "log_p_glioma",
    "log_p_meningioma",
    "log_p_pituitary",
    "mass_fraction",  # soft tumour area / brain area
    "centroid_x",  # -1 (left edge of the head) .. 1 (right edge)
    "centroid_y",  # -1 (top) .. 1 (bottom)
    "abs_centroid_x",  # distance from the vertical midline
    "edge_distance",  # soft mean distance to the head's edge / the head's inscribed radius
    "spread",  # soft standard deviation of position / head size
    "relative_intensity",  # soft mean intensity under the map / the head's mean
    "grey",  # 1 for a single-sequence slice, 0 for a colour composite
)
MAP_FLOOR = 0.05  # map values below this carry no weight (keeps the background's noise out)
EPS = 1e-6


def location_features(
    rgb: np.ndarray, prob_map: np.ndarray, type_probs: np.ndarray, *, brain: np.ndarray | None = None
) -> np.ndarray:
    """The fusion's inputs for one slice, float64 in ``FEATURE_NAMES`` order.

    Args:
        rgb: the slice, RGB uint8 (H, W, 3).
        prob_map: tumour probability (H, W), float in [0, 1].
        type_probs: the classifier's probabilities of the three tumour types.
        brain: the head region (H, W) bool; computed with ``measure.brain_mask`` when None.

    Returns:
        A (len(FEATURE_NAMES),) vector. With an empty map (nothing above
        ``MAP_FLOOR``) the location features are 0 and only the classifier speaks.
    """
    rgb = np.asarray(rgb)
    prob_map = np.asarray(prob_map, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or prob_map.shape != rgb.shape[:2]:
        raise ValueError(
            f"Expected an RGB slice (H, W, 3) and a map (H, W). Received: rgb={rgb.shape}, map={prob_map.shape}"
        )
    tp = np.clip(np.asarray(type_probs, dtype=np.float64).reshape(3), EPS, None)
    out = np.zeros(len(FEATURE_NAMES))
    out[:3] = np.log(tp / tp.sum())
    grey = float(np.abs(rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)).mean() <= 1.0)
    out[10] = grey
    head = measure_lib.brain_mask(rgb) if brain is None else np.asarray(brain, bool)
    w = np.where(prob_map >= MAP_FLOOR, prob_map, 0.0)
    mass = w.sum()
    if mass <= EPS or not head.any():
        return out
    ys, xs = np.nonzero(head)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    cx_head, cy_head = (x0 + x1) / 2, (y0 + y1) / 2
    half_w, half_h = max((x1 - x0) / 2, 1.0), max((y1 - y0) / 2, 1.0)
    yy, xx = np.mgrid[: w.shape[0], : w.shape[1]]
    cx = float((w * xx).sum() / mass)
    cy = float((w * yy).sum() / mass)
    dist = cv2.distanceTransform(head.astype(np.uint8), cv2.DIST_L2, 5)
    inscribed = max(float(dist.max()), 1.0)
    grey_level = rgb.mean(axis=2)
    head_mean = max(float(grey_level[head].mean()), 1.0)
    out[3] = mass / head.sum()
    out[4] = (cx - cx_head) / half_w
    out[5] = (cy - cy_head) / half_h
    out[6] = abs(out[4])
    out[7] = float((w * dist).sum() / mass) / inscribed
    var = (w * ((xx - cx) ** 2 + (yy - cy) ** 2)).sum() / mass
    out[8] = float(np.sqrt(var)) / max(half_w, half_h)
    out[9] = float((w * grey_level).sum() / mass) / head_mean
    return out


@dataclass(frozen=True)
class TypeFusion:
    """A multinomial logistic regression over ``location_features`` (standardised).

    Attributes:
        mean: (F,) feature means used for standardising.
        scale: (F,) feature scales (never 0).
        coef: (3, F) coefficients, ``TYPE_NAMES`` order.
        intercept: (3,) intercepts.
        fitted_on: what the coefficients were fitted on, in words.
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    fitted_on: str = ""

    def __post_init__(self) -> None:
        f = len(FEATURE_NAMES)
        shapes = {"mean": (f,), "scale": (f,), "coef": (3, f), "intercept": (3,)}
        for name, shape in shapes.items():
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != shape or not np.all(np.isfinite(value)):
                raise ValueError(f"TypeFusion.{name} must be a finite array of shape {shape}. Received: {value!r}")
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        if np.any(self.scale <= 0):
            raise ValueError(f"TypeFusion.scale must be positive. Received: {self.scale!r}")

    def type_probabilities(self, features: np.ndarray) -> np.ndarray:
        """P(glioma), P(meningioma), P(pituitary) for a (F,) or (N, F) feature array; rows sum to 1."""
        x = (np.atleast_2d(np.asarray(features, dtype=np.float64)) - self.mean) / self.scale
        logits = x @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        return p[0] if np.ndim(features) == 1 else p

    def to_json(self) -> str:
        """The coefficients as JSON (``from_json`` reads it back)."""
        return _write(self, {"features": list(FEATURE_NAMES), "types": list(TYPE_NAMES)})

    @classmethod
    def from_json(cls, text: str, *, source: str = "the fusion file") -> TypeFusion:
        """Reads ``to_json``'s output; a file for other features or types is refused.

        Raises:
            WeightsError: the JSON is unreadable or does not fit this code.
        """
        return _read(cls, text, {"features": list(FEATURE_NAMES), "types": list(TYPE_NAMES)}, source, "a type fusion")

    @classmethod
    def from_file(cls, path: str | Path) -> TypeFusion:
        """``from_json`` on a file (the caller verifies its sha256 first)."""
        return cls.from_json(Path(path).read_text(), source=Path(path).name)


def _write(fusion, header: dict) -> str:
    """A fusion's JSON: ``header`` (what the code it fits checks), then its coefficients (``_read`` reads it)."""
    doc = {
        **header,
        "mean": fusion.mean.tolist(),
        "scale": fusion.scale.tolist(),
        "coef": fusion.coef.tolist(),
        "intercept": np.asarray(fusion.intercept).tolist(),
        "fitted_on": fusion.fitted_on,
    }
    return json.dumps(doc, indent=1) + "\n"


def _read(cls, text: str, expected: dict, source: str, what: str):
    """A fusion of class ``cls`` from its JSON, refused unless its keys in ``expected`` match this code.

    Raises:
        WeightsError: the JSON is unreadable or does not fit this code.
    """
    try:
        doc = json.loads(text)
        for key, value in expected.items():
            if doc[key] != value:
                raise ValueError(f"{key} {doc[key]} do not match this code")
        intercept = doc["intercept"]
        return cls(
            mean=np.array(doc["mean"]),
            scale=np.array(doc["scale"]),
            coef=np.array(doc["coef"]),
            intercept=np.array(intercept) if isinstance(intercept, list) else float(intercept),
            fitted_on=str(doc.get("fitted_on", "")),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise WeightsError(f"{source} could not be read as {what}: {err}") from err


# --- segmentation-guided detection (greyscale slices) --------------------------------

DETECTION_FEATURES: tuple[str, ...] = ("logit_p_tumor", "map_max", "log_map_mean", "log_share_half")
DETECTION_MAP_FLOOR = 0.05  # map values under this count as background in log_map_mean
DETECTION_EPS = 1e-4


def detection_features(p_tumor: float, prob_map: np.ndarray) -> np.ndarray:
    """The detection fusion's inputs for one slice, float64 in ``DETECTION_FEATURES`` order.

    Args:
        p_tumor: the classifiers' P(tumour).
        prob_map: the greyscale segmenters' tumour probability (H, W) in [0, 1].
    """
    p = float(np.clip(p_tumor, DETECTION_EPS, 1 - DETECTION_EPS))
    m = np.asarray(prob_map, dtype=np.float64)
    if m.ndim != 2 or not m.size:
        raise ValueError(f"Expected a tumour map of shape (H, W). Received: shape={m.shape}")
    return np.array(
        [
            np.log(p / (1 - p)),
            m.max(),
            np.log(np.where(m >= DETECTION_MAP_FLOOR, m, 0.0).mean() + DETECTION_EPS),
            np.log((m >= 0.5).mean() + DETECTION_EPS),
        ]
    )


@dataclass(frozen=True)
class DetectionFusion:
    """P(tumour) of a greyscale slice from the classifiers' P(tumour) and the greyscale segmenters' map.

    A logistic regression over standardised ``detection_features``. Its
    intercept is shifted so that the greyscale threshold chosen on validation
    falls on the shipped tumour threshold: the app's one threshold then applies
    to every slice, and P(tumour) reads on one scale.

    Attributes:
        mean: (F,) feature means used for standardising.
        scale: (F,) feature scales (never 0).
        coef: (F,) coefficients.
        intercept: the shifted intercept.
        fitted_on: what the coefficients were fitted on, in words.
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    fitted_on: str = ""

    def __post_init__(self) -> None:
        f = len(DETECTION_FEATURES)
        for name in ("mean", "scale", "coef"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != (f,) or not np.all(np.isfinite(value)):
                raise ValueError(f"DetectionFusion.{name} must be a finite array of shape ({f},). Received: {value!r}")
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        if np.any(self.scale <= 0) or not np.isfinite(self.intercept):
            raise ValueError(f"DetectionFusion needs positive scales and a finite intercept. Received: {self!r}")
        object.__setattr__(self, "intercept", float(self.intercept))

    def p_tumor(self, features: np.ndarray) -> float:
        """P(tumour) for one slice's (F,) ``detection_features``."""
        z = float(((np.asarray(features, dtype=np.float64) - self.mean) / self.scale) @ self.coef + self.intercept)
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0))))

    def to_json(self) -> str:
        """The coefficients as JSON (``from_json`` reads it back)."""
        return _write(self, {"features": list(DETECTION_FEATURES)})

    @classmethod
    def from_json(cls, text: str, *, source: str = "the detection fusion file") -> DetectionFusion:
        """Reads ``to_json``'s output; a file for other features is refused.

        Raises:
            WeightsError: the JSON is unreadable or does not fit this code.
        """
        return _read(cls, text, {"features": list(DETECTION_FEATURES)}, source, "a detection fusion")

    @classmethod
    def from_file(cls, path: str | Path) -> DetectionFusion:
        """``from_json`` on a file (the caller verifies its sha256 first)."""
        return cls.from_json(Path(path).read_text(), source=Path(path).name)
