"""Agreement metrics between masks and between label vectors."""

from __future__ import annotations

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two masks.

    Args:
        a: array of any shape, nonzero inside.
        b: array of the same shape, nonzero inside.

    Returns:
        A float in [0, 1]; 1.0 when both masks are empty.
    """
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    if a.shape != b.shape:
        raise ValueError(f"Masks must have the same shape. Received: {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def sensitivity_specificity(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Sensitivity TP / (TP + FN) and specificity TN / (TN + FP).

    Args:
        y_true: binary labels of any shape, nonzero = positive.
        y_pred: binary predictions of the same shape.

    Returns:
        (sensitivity, specificity); a value is NaN when its denominator is 0
        (no positives, or no negatives, in ``y_true``).
    """
    t, p = np.asarray(y_true) != 0, np.asarray(y_pred) != 0
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same shape. Received: {t.shape} and {p.shape}")
    tp = int(np.sum(t & p))
    fn = int(np.sum(t & ~p))
    tn = int(np.sum(~t & ~p))
    fp = int(np.sum(~t & p))
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    return sensitivity, specificity


__all__ = ["dice", "sensitivity_specificity"]


RATIO_TOLERANCE = 1e-9  # float slack when comparing ratios of counts


def at_least(value: float, bound: float) -> bool:
    """``value >= bound`` for figures that are ratios of slice counts: 166/200 - 156/200 is 0.05, not 0.0499...

    The rules in ``tumor.lab`` compare such figures; a slack of ``RATIO_TOLERANCE``
    keeps a gain of exactly the asked size from reading as a miss.
    """
    return value >= bound - RATIO_TOLERANCE
