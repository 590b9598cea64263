"""Tests for tumor.measure on drawn shapes with known geometry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tumor.measure import NO_TUMOUR, Measurements, brain_mask, drop_small_components, measure


def _ellipse(angle: float, axes=(40, 20), center=(100, 100), size=(200, 200)) -> np.ndarray:
    mask = np.zeros(size, np.uint8)
    cv2.ellipse(mask, center, axes, angle, 0, 360, 1, thickness=-1)
    return mask.astype(bool)


@pytest.mark.parametrize("angle", [0, 30, 45, 90, 135])
def test_ellipse_axes_in_pixels(angle):
    m = measure(_ellipse(angle))
    assert m.long_axis_px == pytest.approx(80, abs=2)
    assert m.short_axis_px == pytest.approx(40, abs=2)
    assert m.long_axis_mm is None and m.short_axis_mm is None
    assert m.area_mm2 is None
    assert m.n_components == 1


@pytest.mark.parametrize(
    ("angle", "spacing", "long_mm", "short_mm"),
    [
        (0, (0.5, 0.5), 40.0, 20.0),
        (45, (0.5, 0.5), 40.0, 20.0),
        # Anisotropic: horizontal long axis scaled by the column spacing,
        # vertical short axis by the row spacing.
        (0, (2.0, 0.5), 40.0, 80.0),
    ],
)
def test_ellipse_axes_in_mm(angle, spacing, long_mm, short_mm):
    m = measure(_ellipse(angle), spacing_mm=spacing)
    # With (2.0, 0.5) the vertical axis becomes the longer one in mm.
    assert max(m.long_axis_mm, m.short_axis_mm) == pytest.approx(max(long_mm, short_mm), abs=2)
    assert min(m.long_axis_mm, m.short_axis_mm) == pytest.approx(min(long_mm, short_mm), abs=2)
    assert m.long_axis_mm >= m.short_axis_mm


@pytest.mark.parametrize("spacing", [(0.5, 0.5), (0.9, 1.2), (2.0, 0.25)])
def test_area_mm2_is_pixels_times_spacing(spacing):
    mask = np.zeros((50, 60), bool)
    mask[10:20, 5:35] = True
    m = measure(mask, spacing_mm=spacing)
    assert m.area_px == 300
    assert m.area_mm2 == pytest.approx(300 * spacing[0] * spacing[1])
    assert m.bbox == (5, 10, 30, 10)
    assert m.centroid == pytest.approx((19.5, 14.5))
    assert m.long_axis_px == pytest.approx(np.hypot(29, 9))


def test_empty_mask():
    m = measure(np.zeros((30, 30), bool), spacing_mm=(1.0, 1.0))
    assert m == Measurements(
        area_px=0,
        area_mm2=0.0,
        percent_of_brain=None,
        bbox=None,
        centroid=None,
        n_components=0,
        long_axis_px=None,
        short_axis_px=None,
        long_axis_mm=None,
        short_axis_mm=None,
        position=NO_TUMOUR,
    )


def test_two_components_axes_from_largest():
    mask = np.zeros((100, 100), bool)
    mask[10:20, 10:60] = True  # 50 x 10, the largest
    mask[70:75, 70:75] = True
    m = measure(mask)
    assert m.n_components == 2
    assert m.area_px == 500 + 25
    assert m.long_axis_px == pytest.approx(np.hypot(49, 9))
    assert m.bbox == (10, 10, 65, 65)


def _square_at(row: int, col: int, size=(90, 90)) -> np.ndarray:
    mask = np.zeros(size, bool)
    y, x = 15 + 30 * row, 15 + 30 * col
    mask[y - 3 : y + 4, x - 3 : x + 4] = True
    return mask


@pytest.mark.parametrize(
    ("row", "col", "image_words", "anatomical_words"),
    [
        (0, 0, "upper left of the image", "patient's right, anterior"),
        (0, 2, "upper right of the image", "patient's left, anterior"),
        (2, 0, "lower left of the image", "patient's right, posterior"),
        (2, 2, "lower right of the image", "patient's left, posterior"),
        (1, 1, "centre of the image", "midline, central"),
        (1, 0, "middle left of the image", "patient's right, central"),
        (0, 1, "upper centre of the image", "midline, anterior"),
    ],
)
def test_position_words(row, col, image_words, anatomical_words):
    mask = _square_at(row, col)
    assert measure(mask).position == image_words
    assert measure(mask, orientation=("L", "P")).position == anatomical_words


def test_position_follows_orientation_letters():
    mask = _square_at(0, 2)  # image upper right
    assert measure(mask, orientation=("R", "A")).position == "patient's right, posterior"
    assert measure(mask, orientation=("P", "I")).position == "posterior, superior"


def test_position_relative_to_brain():
    brain = np.zeros((90, 90), bool)
    brain[0:30, 0:30] = True  # brain fills only the upper-left ninth
    mask = np.zeros((90, 90), bool)
    mask[24:28, 24:28] = True  # lower right of the brain, upper left of the image
    assert measure(mask).position == "upper left of the image"
    assert measure(mask, brain=brain).position == "lower right of the image"


def test_percent_of_brain():
    brain = np.zeros((40, 40), bool)
    brain[0:20, 0:20] = True
    mask = np.zeros((40, 40), bool)
    mask[0:10, 0:10] = True
    assert measure(mask, brain=brain).percent_of_brain == pytest.approx(25.0)
    assert measure(mask).percent_of_brain is None


def test_mask_not_modified():
    mask = _ellipse(30).astype(np.uint8) * 255
    before = mask.copy()
    measure(mask, brain=mask > 0)
    np.testing.assert_array_equal(mask, before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing_mm": (0.0, 1.0)}, r"spacing_mm.*\(0\.0, 1\.0\)"),
        ({"spacing_mm": (1.0,)}, "spacing_mm"),
        ({"orientation": ("L", "R")}, r"orientation.*\('L', 'R'\)"),
        ({"orientation": ("X", "P")}, "orientation"),
        ({"brain": np.zeros((5, 5), bool)}, r"brain.shape=\(5, 5\)"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        measure(np.ones((10, 10), bool), **kwargs)


def test_brain_mask_finds_filled_head():
    rgb = np.zeros((120, 120, 3), np.uint8)
    cv2.circle(rgb, (60, 60), 40, (180, 180, 180), thickness=-1)
    cv2.circle(rgb, (60, 60), 10, (0, 0, 0), thickness=-1)  # dark ventricle: a hole
    cv2.circle(rgb, (5, 5), 3, (200, 200, 200), thickness=-1)  # small bright speck
    brain = brain_mask(rgb)
    assert brain.dtype == bool and brain.shape == (120, 120)
    assert brain[60, 60]  # the hole is filled
    assert not brain[5, 5]  # only the largest region is kept
    assert brain.sum() == pytest.approx(np.pi * 40**2, rel=0.05)


def test_brain_mask_of_blank_image_is_empty():
    assert not brain_mask(np.zeros((20, 20, 3), np.uint8)).any()


def test_drop_small_components_keeps_exactly_the_components_at_or_above_the_cut():
    mask = np.zeros((100, 100), bool)
    mask[10:20, 10:20] = True  # 100 px
    mask[50:55, 50:55] = True  # 25 px
    mask[90, 90] = True  # 1 px
    assert drop_small_components(mask, 0.0).sum() == 126
    assert drop_small_components(mask, 0.0025).sum() == 125  # cut at 25 px keeps the 25 px square
    kept = drop_small_components(mask, 0.0026)
    assert kept.sum() == 100 and kept[10:20, 10:20].all()
    assert not drop_small_components(mask, 0.02).any()
    assert mask.sum() == 126  # input untouched
    with pytest.raises(ValueError, match="min_fraction"):
        drop_small_components(mask, 1.0)
