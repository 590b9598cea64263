"""The cascade with stub networks, the weights registry, and real-weights checks.

A stub network takes what a compiled one takes, uint8 model squares
(N, S, S, 3), and returns (N, 4) probabilities or (N, S, S[, 1]) maps.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tumor import weights as weights_lib
from tumor.errors import WeightsError
from tumor.pipeline import Member, Pipeline, Settings

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"
GALLERY = ROOT / "gallery"
HAS_WEIGHTS = (WEIGHTS / "manifest.json").is_file()
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="trained weights not present in weights/")


class StubClassifier:
    """Returns fixed probabilities and counts its calls."""

    def __init__(self, probs):
        self.probs = np.asarray(probs, np.float32)[None]
        self.calls = 0

    def __call__(self, x):
        assert x.dtype == np.uint8 and x.ndim == 4, "networks take uint8 model squares"
        self.calls += 1
        return np.repeat(self.probs, x.shape[0], axis=0)


class StubSegmenter:
    """Returns a radial probability map: 1 at the centre falling to 0 at the edge."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        assert x.dtype == np.uint8 and x.ndim == 4, "networks take uint8 model squares"
        self.calls += 1
        s = x.shape[1]
        y, xx = np.mgrid[:s, :s]
        r = np.hypot(y - s / 2, xx - s / 2) / (s / 2)
        one = np.clip(1 - r, 0, 1).astype(np.float32)[..., None]
        return np.repeat(one[None], x.shape[0], axis=0)


def _make(classifier, segmenter, size=32, seg_size=None, **settings) -> Pipeline:
    """A one-classifier, one-segmenter pipeline of stub networks."""
    return Pipeline((Member(classifier, size),), (Member(segmenter, seg_size or size),), Settings(**settings))


def _pipeline(probs):
    return _make(StubClassifier(probs), StubSegmenter(), tumor_threshold=0.5)


def _calls(pipe: Pipeline) -> tuple[int, int]:
    return pipe.classifiers[0].network.calls, pipe.segmenters[0].network.calls


def _slice(h=60, w=90):
    img = np.zeros((h, w, 3), np.uint8)
    img[10:-10, 10:-10] = 120
    return img


@pytest.mark.parametrize(
    ("probs", "detected", "predicted", "seg_calls"),
    [
        ((0.9, 0.05, 0.03, 0.02), False, "no_tumor", 0),
        ((0.51, 0.1, 0.3, 0.09), False, "no_tumor", 0),  # P(tumour) 0.49 < 0.5
        ((0.2, 0.1, 0.6, 0.1), True, "meningioma", 1),
        ((0.4, 0.35, 0.05, 0.2), True, "glioma", 1),
        ((0.0, 0.0, 0.0, 1.0), True, "pituitary", 1),
    ],
)
def test_cascade_runs_the_segmenter_only_on_positives(probs, detected, predicted, seg_calls):
    pipe = _pipeline(probs)
    a = pipe.analyze(_slice())
    assert _calls(pipe) == (1, seg_calls)
    assert a.tumor_detected is detected and a.predicted_class == predicted
    assert a.p_tumor == pytest.approx(1 - probs[0])
    assert (a.prob_map is None) is (not detected)
    assert a.mask().shape == (60, 90)
    if not detected:
        assert not a.mask(0.0).any()


def test_behaviour_wording_reads_as_what_the_type_usually_implies():
    assert "malignant" in _pipeline((0, 1, 0, 0)).analyze(_slice()).behaviour
    assert "usually benign" in _pipeline((0, 0, 1, 0)).analyze(_slice()).behaviour
    assert "benign" in _pipeline((0, 0, 0, 1)).analyze(_slice()).behaviour


def test_prob_map_is_at_the_scan_resolution_and_threshold_never_grows_the_mask():
    pipe = _pipeline((0.1, 0.8, 0.05, 0.05))
    a = pipe.analyze(_slice(60, 90))
    assert a.prob_map.shape == (60, 90)
    areas = [int(a.mask(t).sum()) for t in np.linspace(0, 1, 21)]
    assert all(x >= y for x, y in itertools.pairwise(areas))
    assert areas[2] > areas[-3] > 0


def test_rethresholding_and_drawing_never_rerun_a_model():
    pipe = _pipeline((0.1, 0.8, 0.05, 0.05))
    a = pipe.analyze(_slice())
    for t in (0.2, 0.5, 0.8):
        a.mask(t), a.overlay(t, mode="fill", opacity=0.5), a.measurements(t)
    a.report(0.3)
    assert _calls(pipe) == (1, 1)


def test_outline_on_request_runs_the_segmenter_once_and_keeps_the_negative_verdict():
    pipe = _pipeline((0.9, 0.05, 0.03, 0.02))
    negative = pipe.analyze(_slice())
    assert _calls(pipe) == (1, 0) and negative.prob_map is None
    outlined = pipe.outline_on_request(negative)
    assert _calls(pipe) == (1, 1)
    assert outlined.outline_requested and not negative.outline_requested
    assert not outlined.tumor_detected and outlined.predicted_class == "no_tumor" and outlined.tumor_type is None
    assert outlined.probabilities == negative.probabilities
    assert outlined.mask().any() and not outlined.prob_map.flags.writeable
    report = outlined.report()
    assert report["prediction"]["outline"] == "requested by the user; the classifier found no tumour"
    assert report["measurements"]["area_px"] == int(outlined.mask().sum())
    assert "outline" not in negative.report()["prediction"] and negative.report()["measurements"] is None
    # A positive slice already has its outline: nothing runs again, nothing is flagged.
    positive = _pipeline((0.1, 0.8, 0.05, 0.05))
    a = positive.analyze(_slice())
    assert positive.outline_on_request(a) is a and _calls(positive) == (1, 1)


class RampSegmenter:
    """Probability rising from the left edge (0) to the right edge (1)."""

    def __call__(self, x):
        s = x.shape[1]
        ramp = np.broadcast_to(np.linspace(0, 1, s, dtype=np.float32), (s, s))
        return np.repeat(ramp[None, ..., None], x.shape[0], axis=0)


def test_flip_tta_averages_the_mirrored_prediction_in_one_call():
    clf = StubClassifier((0.1, 0.8, 0.05, 0.05))
    plain = _make(clf, RampSegmenter())
    tta = plain.with_settings(flip_tta=True)
    img = np.full((32, 32, 3), 100, np.uint8)
    a = plain.analyze(img)
    calls = clf.calls
    b = tta.analyze(img)
    assert clf.calls == calls + 1  # the slice and its mirror in one call
    assert a.prob_map[:, -1].mean() > 0.9 and a.prob_map[:, 0].mean() < 0.1
    assert np.allclose(b.prob_map, 0.5, atol=0.02)  # ramp + mirrored ramp
    assert b.probabilities == pytest.approx(a.probabilities)
    assert not plain.flip_tta and tta.flip_tta  # with_settings leaves the original as it was


def test_analysis_is_immutable_and_does_not_alias_the_input():
    img = _slice()
    a = _pipeline((0.1, 0.8, 0.05, 0.05)).analyze(img)
    img[:] = 0
    assert a.image.max() == 120
    with pytest.raises((AttributeError, TypeError)):
        a.p_tumor = 0.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        a.image[0, 0, 0] = 1


@pytest.mark.parametrize(
    "bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((4, 4, 3), np.uint8)]
)
def test_analyze_refuses_malformed_arrays(bad):
    with pytest.raises(ValueError, match="Received"):
        _pipeline((0.1, 0.8, 0.05, 0.05)).analyze(bad)


class TwoBlobSegmenter:
    """A large confident blob and a small one, in the model square."""

    def __call__(self, x):
        s = x.shape[1]
        out = np.zeros((x.shape[0], s, s, 1), np.float32)
        out[:, s // 4 : s // 2, s // 4 : s // 2] = 0.9  # (s/4)^2 pixels
        out[:, -4:-2, -4:-2] = 0.9  # 2x2 pixels
        return out


def test_small_components_are_dropped_and_the_threshold_still_never_grows_the_mask():
    keep_all = _make(StubClassifier((0.1, 0.8, 0.05, 0.05)), TwoBlobSegmenter(), tumor_threshold=0.5)
    filtered = keep_all.with_settings(min_component_fraction=0.01)
    img = np.full((64, 64, 3), 100, np.uint8)  # model square 32 px -> 2x upsampling
    every, big_only = keep_all.analyze(img).mask(0.5), filtered.analyze(img).mask(0.5)
    assert big_only.sum() == 16 * 16  # the 8x8 blob, upsampled
    assert every.sum() == 16 * 16 + 4 * 4  # plus the 2x2 blob (16 px < 1% of 4,096 px)
    assert not (big_only & ~every).any()

    a = _make(StubClassifier((0.1, 0.8, 0.05, 0.05)), StubSegmenter(), tumor_threshold=0.5, min_component_fraction=0.05)
    analysis = a.analyze(_slice(60, 90))
    masks = [analysis.mask(t) for t in np.linspace(0, 1, 41)]
    assert all(not (hi & ~lo).any() for lo, hi in itertools.pairwise(masks))


def test_registry_reads_the_component_filter_and_refuses_a_bad_one(tmp_path):
    d = _fake_weights_dir(tmp_path)
    assert weights_lib.read_registry(d).min_component_fraction == 0.0  # absent: keep all
    raw = json.loads((d / "manifest.json").read_text())
    raw["thresholds"]["min_component_fraction"] = 0.002
    (d / "manifest.json").write_text(json.dumps(raw))
    assert weights_lib.read_registry(d).min_component_fraction == 0.002
    raw["thresholds"]["min_component_fraction"] = 1.5
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match="min_component_fraction"):
        weights_lib.read_registry(d)


def test_mask_threshold_out_of_range_is_refused():
    a = _pipeline((0.1, 0.8, 0.05, 0.05)).analyze(_slice())
    with pytest.raises(ValueError, match="threshold"):
        a.mask(1.5)


def _pituitary_fusion():
    """A fusion that reads every outline as a pituitary adenoma, whatever the classifier says."""
    from tumor.fusion import FEATURE_NAMES, TypeFusion

    f = len(FEATURE_NAMES)
    return TypeFusion(mean=np.zeros(f), scale=np.ones(f), coef=np.zeros((3, f)), intercept=np.array([0.0, 0.0, 9.0]))


def test_type_fusion_retypes_positive_slices_only_and_keeps_p_tumour():
    pipe = _make(StubClassifier((0.1, 0.8, 0.05, 0.05)), StubSegmenter(), tumor_threshold=0.5)
    fused = Pipeline(pipe.classifiers, pipe.segmenters, pipe.settings, type_fusion=_pituitary_fusion())
    plain, a = pipe.analyze(_slice()), fused.analyze(_slice())
    assert plain.tumor_type == "glioma" and plain.typing == "classifier"
    assert a.tumor_type == "pituitary" and a.typing == "classifier and outline location"
    assert a.p_tumor == pytest.approx(plain.p_tumor) and a.probabilities["no_tumor"] == pytest.approx(0.1)
    assert sum(a.probabilities.values()) == pytest.approx(1.0)
    assert a.report()["model"]["typing"] == "classifier and outline location"
    negative = Pipeline(
        (Member(StubClassifier((0.9, 0.05, 0.03, 0.02)), 32),), pipe.segmenters, pipe.settings,
        type_fusion=_pituitary_fusion(),
    ).analyze(_slice())  # fmt: skip
    assert negative.typing == "classifier" and negative.probabilities["glioma"] == pytest.approx(0.05)
    assert fused.with_settings(tumor_threshold=0.3).type_fusion is fused.type_fusion


def _map_max_fusion():
    """A detection fusion that reads P(tumour) from the map's peak alone: sigmoid(10 * max - 5)."""
    from tumor.fusion import DETECTION_FEATURES, DetectionFusion

    f = len(DETECTION_FEATURES)
    return DetectionFusion(mean=np.zeros(f), scale=np.ones(f), coef=np.array([0.0, 10.0, 0.0, 0.0]), intercept=-5.0)


class EmptySegmenter(StubSegmenter):
    def __call__(self, x):
        return 0.0 * super().__call__(x)


def _colour(img):
    img = img.copy()
    img[..., 0] //= 2  # channels differ: a colour composite
    return img


def test_detection_fusion_decides_greyscale_slices_from_the_outline_and_leaves_colour_slices_alone():
    low = (0.9, 0.05, 0.03, 0.02)  # the classifier alone: P(tumour) 0.1, negative
    pipe = _make(StubClassifier(low), StubSegmenter(), tumor_threshold=0.5)
    fused = Pipeline(pipe.classifiers, pipe.segmenters, pipe.settings, detect_fusion=_map_max_fusion())
    a = fused.analyze(_slice())
    assert _calls(fused) == (1, 1), "the greyscale map is computed once and kept for the positive slice"
    peak = 1.0 / (1.0 + np.exp(-(10.0 * a.prob_map.max() - 5.0)))
    assert a.tumor_detected and a.p_tumor == pytest.approx(peak, abs=1e-6) and a.prob_map is not None
    assert a.detection == "classifier and greyscale outline" and a.report()["model"]["detection"] == a.detection
    assert sum(a.probabilities.values()) == pytest.approx(1.0)
    assert a.probabilities["glioma"] / a.probabilities["meningioma"] == pytest.approx(0.05 / 0.03)
    colour = fused.analyze(_colour(_slice()))
    assert _calls(fused) == (2, 1), "a colour slice the classifier calls negative is not segmented"
    assert not colour.tumor_detected and colour.p_tumor == pytest.approx(0.1) and colour.detection == "classifier"
    assert pipe.analyze(_slice()).detection == "classifier" and not pipe.analyze(_slice()).tumor_detected


def test_a_greyscale_slice_the_fusion_calls_negative_shows_no_outline():
    pipe = _make(StubClassifier((0.6, 0.3, 0.05, 0.05)), EmptySegmenter(), tumor_threshold=0.35)
    fused = Pipeline(pipe.classifiers, pipe.segmenters, pipe.settings, detect_fusion=_map_max_fusion())
    a = fused.analyze(_slice())
    assert pipe.analyze(_slice()).tumor_detected, "the classifier alone would call it positive"
    assert not a.tumor_detected and a.prob_map is None and a.predicted_class == "no_tumor"
    assert a.p_tumor == pytest.approx(1.0 / (1.0 + np.exp(5.0)), abs=1e-6)
    calls = _calls(fused)
    shown = fused.outline_on_request(a)
    assert _calls(fused) == calls, "the outline on request reuses the map the verdict read"
    assert shown.outline_requested and shown.prob_map is a.detection_map and not shown.tumor_detected
    assert fused.with_settings(tumor_threshold=0.3).detect_fusion is fused.detect_fusion


# --- weights registry ------------------------------------------------------------------


def _fake_weights_dir(tmp_path: Path, members: dict[str, dict] | None = None) -> Path:
    d = tmp_path / "w"
    d.mkdir()
    for name in [*weights_lib.MODEL_KINDS, *(members or {})]:
        (d / f"{name}.weights.h5").write_bytes(f"not really {name} weights".encode())
    weights_lib.write_manifest(
        d,
        version="t",
        input_sizes={"classifier": 32, "segmenter": 32},
        build_kwargs={},
        tumor_threshold=0.5,
        mask_threshold=0.5,
        members=members,
    )
    return d


def test_registry_verifies_hashes(tmp_path):
    d = _fake_weights_dir(tmp_path)
    reg = weights_lib.read_registry(d)
    for entry in reg.models.values():
        weights_lib.verify(entry)  # untouched files pass


def test_tampered_weights_are_refused(tmp_path):
    d = _fake_weights_dir(tmp_path)
    with open(d / "segmenter.weights.h5", "ab") as f:
        f.write(b"\x00")
    entry = weights_lib.read_registry(d).models["segmenter"]
    with pytest.raises(WeightsError, match="does not match its pinned hash"):
        weights_lib.verify(entry)
    with pytest.raises(WeightsError, match="pinned hash"):
        weights_lib.load_model(entry)


def test_missing_weights_and_manifest_are_refused(tmp_path):
    d = _fake_weights_dir(tmp_path)
    (d / "classifier.weights.h5").unlink()
    with pytest.raises(WeightsError, match="missing"):
        Pipeline.from_weights_dir(d)
    with pytest.raises(WeightsError, match=r"manifest\.json is missing"):
        Pipeline.from_weights_dir(tmp_path / "nowhere")


def test_a_tampered_type_fusion_file_is_refused_before_anything_loads(tmp_path):
    d = _fake_weights_dir(tmp_path)
    (d / "type_fusion.json").write_text(_pituitary_fusion().to_json())
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["type_fusion"] = {"file": "type_fusion.json", "sha256": weights_lib.sha256_file(d / "type_fusion.json")}
    (d / "manifest.json").write_text(json.dumps(manifest))
    entry = weights_lib.read_registry(d).type_fusion
    weights_lib.verify(entry)
    with open(d / "type_fusion.json", "a") as f:
        f.write(" ")
    with pytest.raises(WeightsError, match=r"type fusion .*does not match its pinned hash"):
        Pipeline.from_weights_dir(d)


def test_a_tampered_detection_fusion_file_is_refused_before_anything_loads(tmp_path):
    d = _fake_weights_dir(tmp_path)
    (d / "detect_fusion.json").write_text(_map_max_fusion().to_json())
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["detect_fusion"] = {
        "file": "detect_fusion.json",
        "sha256": weights_lib.sha256_file(d / "detect_fusion.json"),
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    weights_lib.verify(weights_lib.read_registry(d).detect_fusion)
    with open(d / "detect_fusion.json", "a") as f:
        f.write(" ")
    with pytest.raises(WeightsError, match=r"detection fusion .*does not match its pinned hash"):
        Pipeline.from_weights_dir(d)


def test_malformed_manifest_is_refused(tmp_path):
    d = _fake_weights_dir(tmp_path)
    (d / "manifest.json").write_text(json.dumps({"version": "x"}))
    with pytest.raises(WeightsError, match="malformed"):
        weights_lib.read_registry(d)


@needs_weights
def test_shipped_weights_match_their_manifest():
    reg = weights_lib.read_registry(WEIGHTS)
    for entry in reg.models.values():
        weights_lib.verify(entry)
        assert entry.path.stat().st_size < 100 * 1024 * 1024
    if reg.type_fusion is not None:
        weights_lib.verify(reg.type_fusion)
    if reg.detect_fusion is not None:
        weights_lib.verify(reg.detect_fusion)


@needs_weights
def test_a_tampered_copy_of_the_shipped_weights_is_refused(tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(WEIGHTS, d)
    raw = bytearray((d / "classifier.weights.h5").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (d / "classifier.weights.h5").write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="pinned hash"):
        Pipeline.from_weights_dir(d)


# --- real models on fixed gallery slices -------------------------------------------------


@pytest.fixture(scope="module")
def real_pipeline():
    if not HAS_WEIGHTS:
        pytest.skip("trained weights not present in weights/")
    return Pipeline.from_weights_dir(WEIGHTS)


@pytest.mark.slow
@needs_weights
def test_real_pipeline_on_gallery_slices(real_pipeline):
    import pandas as pd

    from tumor.io import read_image
    from tumor.metrics import dice

    index = pd.read_csv(GALLERY / "index.csv", dtype=str, keep_default_na=False)
    detected_right, dices = 0, []
    for _, row in index.iterrows():
        rgb = read_image(GALLERY / row["image"])
        a = real_pipeline.analyze(rgb)
        detected_right += a.tumor_detected == (row["label"] != "no_tumor")
        if row["label"] != "no_tumor":
            truth = np.array(Image.open(GALLERY / row["mask"]).convert("L")) > 0
            dices.append(dice(a.mask(), truth))
        assert sum(a.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert 0.0 <= a.p_tumor <= 1.0
        if a.prob_map is not None:
            assert a.prob_map.shape == rgb.shape[:2] and np.isfinite(a.prob_map).all()
            if row["mask"]:
                truth = np.array(Image.open(GALLERY / row["mask"]).convert("L")) > 0
                assert 0.0 <= dice(a.mask(), truth) <= 1.0
    # Regression floors, well below the test-split figures (sensitivity and
    # specificity 0.94, Dice 0.65): a broken preprocessing or weights file fails.
    assert detected_right >= 11, f"only {detected_right} of {len(index)} gallery slices detected right"
    assert np.mean(dices) >= 0.45, f"mean gallery Dice {np.mean(dices):.3f}"
    heat = real_pipeline.grad_cam(a)
    assert heat.shape == rgb.shape[:2] and np.isfinite(heat).all()


def test_registry_reads_each_models_intensity_scaling_and_refuses_an_unknown_one(tmp_path):
    d = _fake_weights_dir(tmp_path)
    raw = json.loads((d / "manifest.json").read_text())
    for entry in raw["models"].values():
        del entry["intensity"]  # a 1.2-era manifest: unit scaling
    (d / "manifest.json").write_text(json.dumps(raw))
    assert {e.intensity for e in weights_lib.read_registry(d).models.values()} == {"unit"}
    raw["models"]["segmenter"]["intensity"] = "foreground_mean"
    (d / "manifest.json").write_text(json.dumps(raw))
    reg = weights_lib.read_registry(d)
    assert (reg.models["classifier"].intensity, reg.models["segmenter"].intensity) == ("unit", "foreground_mean")
    raw["models"]["classifier"]["intensity"] = "zscore"
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match="intensity scaling 'zscore'"):
        weights_lib.read_registry(d)


class RecordingNetwork:
    """Wraps a stub network and keeps the last batch it was given."""

    def __init__(self, inner):
        self.inner, self.seen = inner, None

    def __call__(self, x):
        self.seen = np.asarray(x).copy()
        return self.inner(x)


@pytest.mark.parametrize("flip", [False, True])
def test_pipeline_feeds_each_network_its_uint8_model_square_and_mirror_in_one_batch(flip):
    from tumor.preprocess import to_model_square

    cls, seg = RecordingNetwork(StubClassifier((0.1, 0.8, 0.05, 0.05))), RecordingNetwork(StubSegmenter())
    p = Pipeline((Member(cls, 32),), (Member(seg, 48),), Settings(tumor_threshold=0.5, flip_tta=flip))
    img = _slice()
    img[20:30, 20:40] = (30, 90, 200)
    p.analyze(img)
    for network, size in ((cls, 32), (seg, 48)):
        square = to_model_square(img, size)[0]
        expected = np.stack([square, square[:, ::-1]]) if flip else square[None]
        np.testing.assert_array_equal(network.seen, expected)  # scaling is the network's own (tumor.runtime)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tumor_threshold": 1.5}, "tumor_threshold=1.5"),
        ({"mask_threshold": -0.1}, "mask_threshold=-0.1"),
        ({"min_component_fraction": 1.0}, "min_component_fraction"),
    ],
)
def test_settings_refuse_values_out_of_range(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Settings(**kwargs)


def test_settings_are_frozen_and_the_pipeline_holds_each_once():
    pipe = _pipeline((0.1, 0.8, 0.05, 0.05))
    with pytest.raises(AttributeError):
        pipe.settings.tumor_threshold = 0.0  # type: ignore[misc]
    assert set(vars(pipe)) == {
        "classifiers",
        "segmenters",
        "settings",
        "metrics",
        "weights_dir",
        "type_fusion",
        "detect_fusion",
    }
    lowered = pipe.with_settings(tumor_threshold=0.0)
    assert (pipe.tumor_threshold, lowered.tumor_threshold) == (0.5, 0.0)
    assert lowered.classifiers is pipe.classifiers and lowered.segmenters is pipe.segmenters


@pytest.mark.parametrize(
    ("member", "match"),
    [
        ({"intensity": "zscore"}, "intensity='zscore'"),
        ({"route": "gray"}, "route='gray'"),
        ({"size": 4}, "size=4"),
    ],
)
def test_members_refuse_unknown_scalings_routes_and_sides(member, match):
    with pytest.raises(ValueError, match=match):
        Member(StubSegmenter(), **({"size": 32} | member))


def test_members_sharing_a_network_must_share_its_side_and_route():
    shared = StubSegmenter()
    clf = (Member(StubClassifier((0, 1, 0, 0)), 32),)
    with pytest.raises(ValueError, match="share its input side and route"):
        Pipeline(clf, (Member(shared, 32), Member(shared, 48)))
    with pytest.raises(ValueError, match="share its input side and route"):
        Pipeline(clf, (Member(shared, 32, route="grey"), Member(shared, 32, route="colour")))
    with pytest.raises(ValueError, match="route 'all'"):
        Pipeline((Member(StubClassifier((0, 1, 0, 0)), 32, route="grey"),), (Member(shared, 32),))
    with pytest.raises(ValueError, match="at least one classifier and one segmenter"):
        Pipeline(clf, ())


def _gallery_case(case: str) -> tuple[np.ndarray, np.ndarray]:
    from tumor.io import read_image

    truth = np.array(Image.open(GALLERY / f"{case}_mask.png").convert("L")) > 0
    return read_image(GALLERY / f"{case}.jpg"), truth


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.mark.slow
@needs_weights
@pytest.mark.parametrize("gains", [(1.0, 0.3, 1.0), (0.4, 0.4, 0.4)], ids=["dim_flair", "dim_slice"])
def test_real_pipeline_reads_a_darker_copy_of_a_slice_as_it_reads_the_slice(real_pipeline, gains):
    # The 1.2 models lost tumours on LGG patients whose slices (or FLAIR channel) were darker than most.
    rgb, truth = _gallery_case("lgg_glioma_1")
    dark = np.clip(rgb * np.array(gains), 0, 255).astype(np.uint8)
    a, b = real_pipeline.analyze(rgb), real_pipeline.analyze(dark)
    assert a.tumor_detected and b.tumor_detected and b.tumor_type == a.tumor_type == "glioma"
    dice_a = _dice(a.mask(a.default_mask_threshold), truth)
    dice_b = _dice(b.mask(b.default_mask_threshold), truth)
    assert dice_a > 0.8 and abs(dice_b - dice_a) < 0.03


@pytest.mark.slow
@needs_weights
def test_real_pipeline_outlines_the_dim_flair_gallery_case(real_pipeline):
    # lgg_glioma_3 is TCGA_HT_A61A (test split), whose FLAIR channel is dim: 1.2.0 called it tumour-free.
    rgb, truth = _gallery_case("lgg_glioma_3")
    a = real_pipeline.analyze(rgb)
    assert a.tumor_type == "glioma"
    assert _dice(a.mask(a.default_mask_threshold), truth) > 0.7


def _ensemble_weights_dir(tmp_path: Path) -> Path:
    return _fake_weights_dir(
        tmp_path,
        members={
            "classifier_2": {"kind": "classifier", "input_size": 48, "intensity": "foreground_mean"},
            "segmenter_2": {"kind": "segmenter", "input_size": 64},
        },
    )


def test_registry_lists_ensemble_members_first_model_first_and_verifies_each(tmp_path):
    d = _ensemble_weights_dir(tmp_path)
    reg = weights_lib.read_registry(d)
    assert [e.name for e in reg.members("classifier")] == ["classifier", "classifier_2"]
    assert [e.name for e in reg.members("segmenter")] == ["segmenter", "segmenter_2"]
    second = reg.models["classifier_2"]
    assert (second.kind, second.input_size, second.intensity) == ("classifier", 48, "foreground_mean")
    for entry in reg.models.values():
        weights_lib.verify(entry)
    with open(d / "classifier_2.weights.h5", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(WeightsError, match=r"classifier_2\.weights\.h5 does not match its pinned hash"):
        weights_lib.verify(weights_lib.read_registry(d).models["classifier_2"])
    with pytest.raises(WeightsError, match="pinned hash"):
        Pipeline.from_weights_dir(d)  # one tampered member stops the whole pipeline


def test_registry_refuses_a_member_of_unknown_kind(tmp_path):
    d = _ensemble_weights_dir(tmp_path)
    raw = json.loads((d / "manifest.json").read_text())
    raw["models"]["classifier_2"]["kind"] = "detector"
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match="kind 'detector'"):
        weights_lib.read_registry(d)


class ScaledSegmenter(StubSegmenter):
    """The radial stub map times a constant."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def __call__(self, x):
        return self.scale * super().__call__(x)


def test_ensemble_averages_each_members_output_at_its_own_size():
    first, second = StubClassifier((0.6, 0.3, 0.05, 0.05)), StubClassifier((0.0, 0.1, 0.1, 0.8))
    seg1, seg2 = StubSegmenter(), ScaledSegmenter(0.5)
    pipe = Pipeline(
        (Member(first, 32), Member(second, 48, "foreground_mean")),
        (Member(seg1, 32), Member(seg2, 64)),
        Settings(tumor_threshold=0.5, flip_tta=True),
    )
    single = _pipeline((0, 0, 0, 1))
    rgb = _slice()
    a = pipe.analyze(rgb)
    np.testing.assert_allclose([a.probabilities[c] for c in a.probabilities], (0.3, 0.2, 0.075, 0.425), atol=1e-6)
    assert a.predicted_class == "pituitary" and a.p_tumor == pytest.approx(0.7)
    assert (first.calls, second.calls, seg1.calls, seg2.calls) == (1, 1, 1, 1)  # one call each, mirror included
    ref = single.analyze(rgb).prob_map  # the unscaled radial map at 32 px
    assert a.prob_map.shape == rgb.shape[:2]
    # The mean of the full map and a half-strength one (resampled from 64 px): about 0.75 of it.
    centre = (slice(25, 35), slice(40, 50))
    np.testing.assert_allclose(a.prob_map[centre], 0.75 * ref[centre], atol=0.05)


class GroupClassifier(StubClassifier):
    """A compiled group's stand-in: one call returns the mean of the members it holds."""


def test_members_sharing_a_network_are_one_call_and_count_once_each_in_the_mean():
    group, solo = GroupClassifier((0.2, 0.6, 0.1, 0.1)), StubClassifier((0.8, 0.0, 0.2, 0.0))
    seg_group, seg_solo = StubSegmenter(), ScaledSegmenter(0.25)
    pipe = Pipeline(
        (Member(group, 32, name="a"), Member(group, 32, name="b"), Member(solo, 32, name="c")),
        (Member(seg_group, 32), Member(seg_group, 32), Member(seg_solo, 32)),
        Settings(tumor_threshold=0.1, flip_tta=True),
    )
    a = pipe.analyze(_slice())
    assert (group.calls, solo.calls, seg_group.calls, seg_solo.calls) == (1, 1, 1, 1)
    np.testing.assert_allclose(list(a.probabilities.values()), (0.4, 0.4, 0.4 / 3, 0.2 / 3), atol=1e-6)
    reference = _pipeline((0, 1, 0, 0)).with_settings(flip_tta=True).segment(_slice())
    np.testing.assert_allclose(a.prob_map, (2 + 0.25) / 3 * reference, atol=1e-6)
    assert len(pipe.networks) == 4


class BrightnessClassifier:
    """P(no tumour) falls as the square's mean brightness rises: an output that depends on the slice."""

    def __call__(self, x):
        m = x.astype(np.float32).mean(axis=(1, 2, 3)) / 255
        no = np.clip(1.0 - 4 * m, 0.02, 0.98)
        return np.stack([no, (1 - no) * 0.5, (1 - no) * 0.3, (1 - no) * 0.2], axis=1).astype(np.float32)


class BrightnessSegmenter:
    """The first channel as the map: depends on the slice and on the mirror."""

    def __call__(self, x):
        return x[..., :1].astype(np.float32) / 255 * np.linspace(0.5, 1, x.shape[2], dtype=np.float32)[:, None]


def _bright_pipeline(**settings) -> Pipeline:
    return _make(BrightnessClassifier(), BrightnessSegmenter(), 32, 48, **({"tumor_threshold": 0.5} | settings))


def _varied_slices() -> list[np.ndarray]:
    out = []
    for k, (h, w) in enumerate([(60, 90), (64, 64), (90, 40), (33, 70)]):
        img = np.zeros((h, w, 3), np.uint8)
        img[5:-5, 5:-5] = 40 + 40 * k
        img[10:20, 10:25] = (200, 120 + k, 90) if k % 2 else 230
        out.append(img)
    return out


def test_analyze_batch_gives_each_slice_what_analyze_gives_it():
    pipe = _bright_pipeline(flip_tta=True)
    slices = _varied_slices()
    batched = pipe.analyze_batch(slices)
    assert [a.tumor_detected for a in batched].count(True) not in (0, len(slices))  # both outcomes covered
    for img, b in zip(slices, batched, strict=True):
        a = pipe.analyze(img)
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-7) and a.predicted_class == b.predicted_class
        assert (a.prob_map is None) == (b.prob_map is None)
        if a.prob_map is not None:
            np.testing.assert_allclose(a.prob_map, b.prob_map, atol=1e-6)
    assert pipe.analyze_batch([]) == []


class _Volume:
    """A stand-in for tumor.io.Volume: the varied slices, repeated along the axial plane."""

    voxel_volume_ml = 0.002

    def __init__(self, n: int):
        base = _varied_slices()
        self.slices = [np.ascontiguousarray(base[i % len(base)][:33, :40]) for i in range(n)]

    def n_slices(self, plane: str = "axial") -> int:
        return len(self.slices)

    def slice(self, i: int, plane: str = "axial"):
        return self.slices[i]


def test_analyze_volume_runs_in_batches_reports_progress_and_matches_slice_by_slice():
    from tumor.pipeline import VOLUME_CHUNK

    clf = BrightnessClassifier()
    calls = []
    counting = RecordingNetwork(lambda x: (calls.append(len(x)), clf(x))[1])
    pipe = Pipeline((Member(counting, 32),), (Member(BrightnessSegmenter(), 48),), Settings(tumor_threshold=0.5))
    n = 2 * VOLUME_CHUNK + 3
    volume, progress = _Volume(n), []
    result = pipe.analyze_volume(volume, progress=lambda done, total: progress.append((done, total)))
    assert calls == [VOLUME_CHUNK, VOLUME_CHUNK, 3]  # one classifier call per batch of slices
    assert progress == [(VOLUME_CHUNK, n), (2 * VOLUME_CHUNK, n), (n, n)]
    one_by_one = [pipe.analyze(s) for s in volume.slices]
    assert result.p_tumor == pytest.approx([a.p_tumor for a in one_by_one])
    assert result.tumor_area_px == [int(a.mask().sum()) for a in one_by_one]
    assert result.largest_slice == int(np.argmax(result.tumor_area_px))
    assert result.tumor_volume_ml == pytest.approx(sum(result.tumor_area_px) * 0.002)


def test_threads_calling_analyze_at_once_get_what_serial_calls_get():
    from concurrent.futures import ThreadPoolExecutor

    pipe = _bright_pipeline(flip_tta=True)
    slices = _varied_slices() * 6
    serial = [pipe.analyze(s) for s in slices]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(pipe.analyze, slices))
    for a, b in zip(serial, threaded, strict=True):
        assert a.probabilities == b.probabilities
        assert (a.prob_map is None and b.prob_map is None) or np.array_equal(a.prob_map, b.prob_map)


# --- routing greyscale and colour slices to their own segmenters ----------------------


def _colour_slice() -> np.ndarray:
    """A composite-like slice: the three channels differ (as in the LGG pre/FLAIR/post composites)."""
    img = _slice()
    img[10:-10, 10:-10] = (90, 140, 110)
    return img


@pytest.mark.parametrize(
    ("make", "grey"),
    [
        (_slice, True),
        (_colour_slice, False),
        # JPEG-like chroma noise of one grey level on a grey slice is still grey.
        (lambda: np.clip(_slice().astype(int) + np.random.default_rng(0).integers(0, 2, (60, 90, 3)), 0, 255), True),
        # One channel changed on a small region only (a coloured annotation): the mean spread stays small.
        (lambda: np.where(np.arange(60)[:, None, None] < 2, _colour_slice(), _slice()), True),
    ],
)
def test_is_grey_tells_single_sequence_slices_from_composites(make, grey):
    from tumor.pipeline import is_grey

    assert is_grey(np.asarray(make(), np.uint8)) is grey


def test_segmenters_are_routed_by_the_slices_kind_and_all_members_see_every_slice():
    colour_seg, grey_seg, every_seg = StubSegmenter(), ScaledSegmenter(0.5), ScaledSegmenter(0.25)
    clf = StubClassifier((0.0, 1.0, 0.0, 0.0))
    pipe = Pipeline(
        (Member(clf, 32),),
        (Member(colour_seg, 32, route="colour"), Member(grey_seg, 32, route="grey"), Member(every_seg, 32)),
        Settings(tumor_threshold=0.5),
    )
    reference = _pipeline((0.0, 1.0, 0.0, 0.0)).segment(_slice())
    grey_map = pipe.segment(_slice())
    assert (colour_seg.calls, grey_seg.calls, every_seg.calls) == (0, 1, 1)
    np.testing.assert_allclose(grey_map, (0.5 + 0.25) / 2 * reference, atol=1e-6)
    colour_map = pipe.segment(_colour_slice())
    assert (colour_seg.calls, grey_seg.calls, every_seg.calls) == (1, 1, 2)
    np.testing.assert_allclose(colour_map, (1.0 + 0.25) / 2 * reference, atol=1e-6)
    # A batch of both kinds routes each slice to its own segmenters.
    both = pipe.segment_batch([_slice(), _colour_slice()])
    np.testing.assert_allclose(both[0], grey_map)
    np.testing.assert_allclose(both[1], colour_map)
    # analyze takes the same route, keeps the routed map and says which route drew it, in the report too.
    grey_analysis = pipe.analyze(_slice())
    np.testing.assert_allclose(grey_analysis.prob_map, grey_map)
    assert grey_analysis.segmenter_route == "grey" and pipe.analyze(_colour_slice()).segmenter_route == "colour"
    assert grey_analysis.report()["model"]["segmenter_route"] == "grey"
    # Unrouted weights, or a negative slice (no segmenter ran), name no route.
    unrouted = _pipeline((0.0, 1.0, 0.0, 0.0))
    assert unrouted.analyze(_slice()).segmenter_route is None
    assert "segmenter_route" not in unrouted.analyze(_slice()).report()["model"]
    clf.probs[:] = (1.0, 0.0, 0.0, 0.0)
    assert pipe.analyze(_slice()).segmenter_route is None


def test_routing_with_no_segmenter_for_a_kind_of_slice_is_an_error():
    pipe = Pipeline(
        (Member(StubClassifier((0.0, 1.0, 0.0, 0.0)), 32),),
        (Member(StubSegmenter(), 32, route="colour"), Member(StubSegmenter(), 32, route="colour")),
    )
    with pytest.raises(RuntimeError, match="No segmenter is routed to grey slices"):
        pipe.segment(_slice())


def test_registry_reads_segmenter_routes_and_the_pipeline_groups_them_into_networks(tmp_path, monkeypatch):
    from tumor import runtime

    d = _fake_weights_dir(
        tmp_path,
        members={
            "segmenter": {"kind": "segmenter", "input_size": 32, "inputs": "colour"},
            "segmenter_2": {"kind": "segmenter", "input_size": 48, "inputs": "grey"},
            "segmenter_3": {"kind": "segmenter", "input_size": 48, "inputs": "grey"},
            "classifier_2": {"kind": "classifier", "input_size": 32},
        },
    )
    raw = json.loads((d / "manifest.json").read_text())
    assert raw["models"]["segmenter_2"]["inputs"] == "grey" and "inputs" not in raw["models"]["classifier"]
    reg = weights_lib.read_registry(d)
    assert {n: e.inputs for n, e in reg.models.items()} == {
        "classifier": "all",
        "segmenter": "colour",
        "segmenter_2": "grey",
        "segmenter_3": "grey",
        "classifier_2": "all",
    }
    seen = []

    def load_networks(groups, **kwargs):
        seen.append([[e.name for e in g] for g in groups])
        return [StubClassifier((0, 1, 0, 0)) if g[0].kind == "classifier" else StubSegmenter() for g in groups]

    monkeypatch.setattr(runtime, "load_networks", load_networks)
    pipe = Pipeline.from_weights_dir(d)
    # One network per kind, route and side: the two classifiers together, the two grey segmenters together.
    assert seen == [[["classifier", "classifier_2"], ["segmenter"], ["segmenter_2", "segmenter_3"]]]
    assert [(m.name, m.size, m.route) for m in pipe.segmenters] == [
        ("segmenter", 32, "colour"),
        ("segmenter_2", 48, "grey"),
        ("segmenter_3", 48, "grey"),
    ]
    assert pipe.segmenters[1].network is pipe.segmenters[2].network
    assert pipe.classifiers[0].network is pipe.classifiers[1].network
    assert pipe.weights_sha256 == {n: e.sha256 for n, e in reg.models.items()}
    assert (pipe.version, pipe.tumor_threshold, pipe.mask_threshold) == ("t", 0.5, 0.5)


@pytest.mark.parametrize(
    ("name", "inputs", "match"),
    [
        ("segmenter_2", "gray", "inputs='gray'"),  # a misspelt route
        ("classifier", "grey", "classifier 'classifier' to inputs='grey'"),  # classifiers see every slice
        ("segmenter", "grey", "no segmenter for colour slices"),  # both segmenters grey: colour has none
    ],
)
def test_registry_refuses_unknown_or_incomplete_routes(tmp_path, name, inputs, match):
    d = _fake_weights_dir(tmp_path, members={"segmenter_2": {"kind": "segmenter", "input_size": 32, "inputs": "grey"}})
    raw = json.loads((d / "manifest.json").read_text())
    raw["models"][name]["inputs"] = inputs
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match=match):
        weights_lib.read_registry(d)


def test_benchmark_compare_runs_every_folder_on_every_slice_and_sorts_by_outcome(monkeypatch, capsys):
    """``benchmark --compare``: each folder's pipeline analyses every gallery slice; positives and negatives apart."""
    from tumor.lab import benchmark

    pipes = {"pos": _pipeline((0.1, 0.8, 0.05, 0.05)), "neg": _pipeline((0.9, 0.05, 0.03, 0.02))}
    monkeypatch.setattr(benchmark.Pipeline, "from_weights_dir", classmethod(lambda cls, d: pipes[d]))
    benchmark.main(["--compare", "pos", "neg", "--repeats", "2"])
    out = capsys.readouterr().out.splitlines()
    n = 2 * len(pd.read_csv(GALLERY / "index.csv"))
    assert out[0].startswith("pos (") and out[3].startswith("neg (")
    assert f"(n={n})" in out[1] and "x1.00 of the first" in out[1] and out[2].endswith("none")
    assert out[4].endswith("none") and f"(n={n})" in out[5]
    # every slice once per repeat, plus the warm-up: classifier and (positive only) segmenter calls
    assert _calls(pipes["pos"]) == (n + 1, n + 1) and _calls(pipes["neg"]) == (n + 1, 0)
    # negatives against a first folder that has negatives too: their ratio is printed as well
    pipes["neg2"] = _pipeline((0.9, 0.05, 0.03, 0.02))
    benchmark.main(["--compare", "neg", "neg2", "--repeats", "1"])
    out = capsys.readouterr().out.splitlines()
    assert "of the first" in out[2] and "of the first" in out[5] and out[4].endswith("none")
