"""Segmentation-guided typing: features from hand-built slices, the fusion's JSON, the cross-fitting folds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tumor.errors import WeightsError
from tumor.fusion import (
    DETECTION_FEATURES,
    FEATURE_NAMES,
    TYPE_NAMES,
    DetectionFusion,
    TypeFusion,
    detection_features,
    location_features,
)
from tumor.lab import detect_fusion as lab_detect
from tumor.lab import fusion as lab_fusion
from tumor.measure import brain_mask


def head_slice(size: int = 128) -> np.ndarray:
    """A grey disc of radius 50 (the head) on black."""
    yy, xx = np.mgrid[:size, :size]
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[(yy - 64) ** 2 + (xx - 64) ** 2 <= 50**2] = 100
    return rgb


def blob(cy: int, cx: int, r: int = 6, size: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r**2).astype(np.float32)


def feature(vec: np.ndarray, name: str) -> float:
    return float(vec[FEATURE_NAMES.index(name)])


def test_location_features_place_a_central_low_blob_and_a_rim_blob_apart():
    rgb = head_slice()
    central = location_features(rgb, blob(100, 64), [0.2, 0.3, 0.5])
    rim = location_features(rgb, blob(64, 110), [0.2, 0.3, 0.5])
    assert abs(feature(central, "centroid_x")) < 0.05 and feature(central, "centroid_y") > 0.6
    assert feature(rim, "centroid_x") > 0.8 and abs(feature(rim, "centroid_y")) < 0.05
    assert feature(rim, "edge_distance") < feature(central, "edge_distance")
    np.testing.assert_allclose(central[:3], np.log([0.2, 0.3, 0.5]))
    assert feature(central, "grey") == 1.0
    # mass fraction: blob pixels over head pixels
    head = brain_mask(rgb)
    assert feature(central, "mass_fraction") == pytest.approx(blob(100, 64).sum() / head.sum(), rel=1e-9)


def test_an_empty_map_leaves_only_the_classifier():
    vec = location_features(head_slice(), np.zeros((128, 128), np.float32), [1.0, 1.0, 2.0])
    np.testing.assert_allclose(vec[:3], np.log([0.25, 0.25, 0.5]))
    assert not vec[3:10].any()


def test_location_features_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="map"):
        location_features(head_slice(), np.zeros((64, 64)), [1, 1, 1])


def toy_fusion() -> TypeFusion:
    f = len(FEATURE_NAMES)
    coef = np.zeros((3, f))
    coef[2, FEATURE_NAMES.index("centroid_y")] = 5.0  # low and central: pituitary
    return TypeFusion(mean=np.zeros(f), scale=np.ones(f), coef=coef, intercept=np.zeros(3), fitted_on="toy")


def test_fusion_json_round_trip_and_probabilities_sum_to_one():
    fusion = toy_fusion()
    back = TypeFusion.from_json(fusion.to_json())
    x = np.zeros((2, len(FEATURE_NAMES)))
    x[1, FEATURE_NAMES.index("centroid_y")] = 1.0
    p = back.type_probabilities(x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], 1 / 3)
    assert np.argmax(p[1]) == TYPE_NAMES.index("pituitary")
    assert back.fitted_on == "toy"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(features=d["features"][:-1]), "do not match"),
        (lambda d: d.update(coef=[[1.0]]), "shape"),
        (lambda d: d.update(scale=[0.0] * len(FEATURE_NAMES)), "positive"),
        (lambda d: d.pop("mean"), "mean"),
    ],
)
def test_fusion_json_that_does_not_fit_the_code_is_refused(edit, match):
    import json

    doc = json.loads(toy_fusion().to_json())
    edit(doc)
    with pytest.raises(WeightsError, match=match):
        TypeFusion.from_json(json.dumps(doc))


def toy_arrays(informative: bool, n_per_type: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    """figshare-like rows whose classifier is right 60% of the time; the location features say the type or not."""
    rng = np.random.default_rng(seed)
    labels, probs, feats = [], [], []
    for t, name in enumerate(TYPE_NAMES):
        for _ in range(n_per_type):
            p = np.full(4, 0.05)
            guess = t if rng.random() < 0.6 else (t + 1) % 3
            p[1 + guess] = 0.85
            f = np.zeros(len(FEATURE_NAMES))
            f[:3] = np.log(p[1:] / p[1:].sum())
            f[3:] = rng.normal(size=len(FEATURE_NAMES) - 3)
            if informative:
                f[FEATURE_NAMES.index("centroid_y")] = t + 0.2 * rng.normal()
            labels.append(name)
            probs.append(p)
            feats.append(f)
    n = len(labels)
    order = rng.permutation(n)
    return {
        "probs": np.array(probs)[order],
        "features": np.array(feats)[order],
        "label": np.array(labels)[order],
        "source": np.array(["figshare_cheng"] * n),
        "group_id": np.array(["figshare_cvfold3"] * n),
        "orig_name": np.array([f"{i + 1}.mat" for i in range(n)]),
        "image_path": np.array([f"{i}.jpg" for i in range(n)]),
    }


def test_crossfit_adopts_an_informative_fusion_and_refuses_a_useless_one():
    good = lab_fusion.crossfit(toy_arrays(informative=True), tumor_threshold=0.5)
    assert good["type_accuracy"]["classifier"] == pytest.approx(0.6, abs=0.1)
    assert good["type_accuracy"]["fusion"] > 0.9 and good["adopt"]
    useless = lab_fusion.crossfit(toy_arrays(informative=False), tumor_threshold=0.5)
    assert useless["gain"] < lab_fusion.ADOPT_MIN_GAIN and not useless["adopt"]


def test_folds_keep_patients_together_and_cut_figshare_into_contiguous_blocks_within_each_type():
    numbers = (5, 1, 9, 3, 7, 2, 10, 4, 8, 6)
    types = ["meningioma"] * 5 + ["pituitary"] * 5  # file order runs type by type, as in the release
    arrays = {
        "source": np.array(["figshare_cheng"] * 10 + ["lgg_kaggle_3m"] * 6),
        "group_id": np.array(["figshare_cvfold3"] * 10 + ["A", "A", "B", "B", "C", "C"]),
        "orig_name": np.array([f"{n}.mat" for n in numbers] + [""] * 6),
        "label": np.array([types[n - 1] for n in numbers] + ["glioma"] * 6),
    }
    fold = lab_fusion.folds(arrays, n_folds=5)
    by_number = dict(zip(numbers, fold[:10], strict=True))
    assert [by_number[n] for n in range(1, 6)] == [0, 1, 2, 3, 4]  # meningiomas 1-5, in order
    assert [by_number[n] for n in range(6, 11)] == [0, 1, 2, 3, 4]  # pituitary 6-10: every fold has both types
    lgg = fold[10:]
    assert lgg[0] == lgg[1] and lgg[2] == lgg[3] and lgg[4] == lgg[5]


# --- segmentation-guided detection ----------------------------------------------------


def test_detection_features_on_a_hand_built_map():
    m = np.zeros((10, 10))
    m[0, :5] = 0.8  # 5 pixels at 0.8: 5% of the slice at or above 0.5
    m[1, :5] = 0.02  # under the floor: background
    f = detection_features(0.2, m)
    assert f.tolist() == pytest.approx([np.log(0.25), 0.8, np.log(0.04 + 1e-4), np.log(0.05 + 1e-4)])
    assert detection_features(0.0, np.zeros((4, 4)))[0] == pytest.approx(np.log(1e-4 / (1 - 1e-4)))
    with pytest.raises(ValueError, match=r"shape \(H, W\)"):
        detection_features(0.5, np.zeros((2, 2, 3)))


def test_detection_fusion_json_round_trip_and_refusals():
    f = len(DETECTION_FEATURES)
    fusion = DetectionFusion(mean=np.arange(f), scale=np.ones(f), coef=np.array([1.0, 2.0, 0.0, 0.0]), intercept=-1.0)
    back = DetectionFusion.from_json(fusion.to_json())
    x = np.array([1.0, 1.5, 7.0, -3.0])  # standardised: [1, 0.5, 5, -6]
    assert back.p_tumor(x) == pytest.approx(fusion.p_tumor(x)) == pytest.approx(1 / (1 + np.exp(-(1 + 1 - 1))))
    doc = json.loads(fusion.to_json())
    doc["features"] = doc["features"][::-1]
    with pytest.raises(WeightsError, match="do not match this code"):
        DetectionFusion.from_json(json.dumps(doc))
    with pytest.raises(ValueError, match="positive scales"):
        DetectionFusion(mean=np.zeros(f), scale=np.zeros(f), coef=np.zeros(f), intercept=0.0)


def test_detect_fusion_threshold_keeps_the_specificity_floor():
    pool = pd.DataFrame(
        {"label": ["glioma"] * 4 + ["no_tumor"] * 4, "p_tumor": [0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05]}
    )
    healthy = np.array([0.7, 0.2, 0.1, 0.05])
    # Youden's J is largest at 0.3 (every tumour, and the healthy 0.7, at or over it): allowed by a floor of 0.75.
    assert lab_detect.threshold_within_specificity(pool, healthy, 0.75) == pytest.approx(0.3)
    # A floor of 1.0 needs every healthy row under the threshold: the best J above 0.7 is at 0.8.
    assert lab_detect.threshold_within_specificity(pool, healthy, 1.0) == pytest.approx(0.8)


def test_detect_fusion_crossfit_never_scores_a_row_with_a_regression_that_saw_it():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    y = x[:, 0] > 0
    fold = np.arange(40) % 4
    p = lab_detect.crossfit_probabilities(x, y, fold)
    flipped = y.copy()
    flipped[fold == 0] = ~flipped[fold == 0]  # other labels in fold 0 change only fold 0's own fit's data
    q = lab_detect.crossfit_probabilities(x, flipped, fold)
    assert np.allclose(p[fold == 0], q[fold == 0])
    assert not np.allclose(p[fold != 0], q[fold != 0])
    assert ((p > 0.5) == y).mean() > 0.9


def test_detect_fusion_brats_figures_apply_the_cascade():
    truth = np.zeros((8, 8), bool)
    truth[2:6, 2:6] = True  # 16 pixels
    hit = truth.astype(np.float32)  # the map draws the expert's mask exactly
    half = np.zeros((8, 8), np.float32)
    half[2:4, 2:6] = 1.0  # 8 of the 16 pixels: Dice 2*8 / (8 + 16) = 2/3
    rows = pd.DataFrame(
        {
            "label": ["glioma", "glioma", "glioma", "no_tumor"],
            "source": ["brats_flair"] * 4,
            "p_tumor": [0.9, 0.8, 0.2, 0.9],
            "prob_map": [hit, half, hit, hit],
            "truth": [truth, truth, truth, np.zeros((8, 8), bool)],
        }
    )
    got = lab_detect.brats_figures(rows, 0.5, mask_threshold=0.5, min_fraction=0.0)
    # The third tumour slice is under the threshold: no mask, Dice 0, although its map was right.
    assert got["n_brats_tumour"] == 3 and got["brats_sensitivity"] == pytest.approx(2 / 3)
    assert got["brats_slice_dice"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert lab_detect.brats_figures(rows, 0.1, mask_threshold=0.5, min_fraction=0.0)[
        "brats_slice_dice"
    ] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert (
        lab_detect.brats_figures(rows.iloc[3:], 0.5, mask_threshold=0.5, min_fraction=0.0)["brats_slice_dice"] is None
    )


def _detect_block(**changes) -> dict:
    block = {
        "score_manifest_val": 2.69,
        "sensitivity": 0.93,
        "specificity": 0.966,
        "specificity_grey_healthy": 0.954,
        "brats_sensitivity": 0.42,
        "brats_slice_dice": 0.30,
        "flair_only_lgg_sensitivity": 0.83,
        "flair_only_lgg_patient_dice": 0.78,
        "lgg_patient_dice": 0.80,
        "figshare_slice_dice": 0.74,
        "grey_threshold": 0.7,
    }
    return {"candidate": {**block, **changes}}


def _type_block(accuracy: float) -> dict:
    return {"type_accuracy": {"fusion": accuracy}, "per_source": {"brats_flair": {"fusion": accuracy}}}


@pytest.mark.parametrize(
    ("changes", "type_accuracy", "failing"),
    [
        ({"brats_slice_dice": 0.35}, 0.91, None),  # +0.05 exactly: in
        ({"brats_slice_dice": 0.34}, 0.91, "brats_dice_gain"),
        ({"brats_slice_dice": 0.40, "brats_sensitivity": 0.40}, 0.91, "brats_sensitivity_not_lower"),
        ({"brats_slice_dice": 0.40, "score_manifest_val": 2.687}, 0.91, "score"),
        ({"brats_slice_dice": 0.40, "flair_only_lgg_sensitivity": 0.815}, 0.91, "flair_only_sensitivity"),
        ({"brats_slice_dice": 0.40, "flair_only_lgg_patient_dice": 0.769}, 0.91, "flair_only_dice"),
        ({"brats_slice_dice": 0.40, "specificity_grey_healthy": 0.94}, 0.91, "grey_specificity"),
        ({"brats_slice_dice": 0.40}, 0.904, "type_accuracy"),
    ],
)
def test_greyscale_candidate_rule_fails_on_each_guard(changes, type_accuracy, failing):
    from tumor.lab import greyscale_candidate

    got = greyscale_candidate.judge(
        _detect_block(), _detect_block(**changes), _type_block(0.91), _type_block(type_accuracy)
    )
    assert [k for k, ok in got["checks"].items() if not ok] == ([failing] if failing else [])
    assert got["adopt"] is (failing is None)
    assert got["figures"]["brats_slice_dice"]["candidate"] == changes["brats_slice_dice"]
