"""A tiny training run lowers the loss; evaluate gives the expected JSON."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from tumor import models
from tumor.lab import data, train

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "gallery"
HAS_WEIGHTS = (ROOT / "weights" / "manifest.json").is_file()


def _gallery_manifest(tmp_path: Path) -> Path:
    index = pd.read_csv(GALLERY / "index.csv", dtype=str, keep_default_na=False)
    source = {"lgg": "lgg_kaggle_3m", "figshare": "figshare_cheng"}
    rows = [
        {
            "image_path": str(GALLERY / r["image"]),
            "mask_path": str(GALLERY / r["mask"]) if r["mask"] else "",
            "patient_id": r["orig_name"].split("/")[0][:12] if r["source"] == "lgg" else "",
            "label": r["label"],
            "source": source[r["source"]],
            "group_id": r["id"],
            "cv_fold": "",
        }
        for _, r in index.iterrows()
    ]
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_a_few_segmenter_steps_lower_the_loss(tmp_path):
    keras.utils.set_random_seed(0)
    df = data.read_manifest(_gallery_manifest(tmp_path))
    df = df[df["label"] != "no_tumor"].head(6)
    arrays = data.load_arrays(df, size=64)
    x = np.concatenate([arrays["images"], arrays["masks"][..., None]], axis=-1)
    net = models.build_segmenter(64, base_filters=8, depth=2)
    model = train.SegmenterTrainer(net, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=train.dice_bce_loss)
    before = model.evaluate(x, x[..., 3:], verbose=0)
    model.fit(x, x[..., 3:], batch_size=3, epochs=12, verbose=0)
    after = model.evaluate(x, x[..., 3:], verbose=0)
    assert after < before - 0.05


def test_dice_bce_loss_is_low_for_a_perfect_prediction_and_high_for_the_inverse():
    target = np.zeros((1, 8, 8, 1), np.float32)
    target[0, 2:6, 2:6] = 1
    perfect = np.concatenate([target, target], axis=-1)
    inverse = np.concatenate([1 - target, target], axis=-1)
    good = float(train.dice_bce_loss(None, perfect))
    bad = float(train.dice_bce_loss(None, inverse))
    assert good < 0.01 and bad > 1.5


def test_segmenter_subset_keeps_every_positive_and_some_negatives():
    masks = np.zeros((10, 4, 4), np.uint8)
    masks[:4, 1, 1] = 1
    arrays = {"masks": masks, "labels": np.array([1, 1, 2, 3, 0, 0, 0, 0, 0, 0])}
    idx = train.segmenter_subset(arrays, seed=0, negative_fraction=0.5)
    assert set(range(4)) <= set(idx) and len(idx) == 6


@pytest.mark.slow
@pytest.mark.skipif(not HAS_WEIGHTS, reason="trained weights not present in weights/")
def test_evaluate_on_a_gallery_manifest_gives_the_expected_keys(tmp_path):
    from tumor.lab import evaluate

    out = tmp_path / "metrics.json"
    evaluate.main(["--manifest", str(_gallery_manifest(tmp_path)), "--out", str(out)])
    m = json.loads(out.read_text())
    assert m["n_slices"] == 14
    assert 0.0 <= m["detection"]["auc"] <= 1.0
    for key in ("sensitivity", "specificity", "threshold"):
        assert 0.0 <= m["detection"][key] <= 1.0
    assert 0.0 <= m["type"]["accuracy"] <= 1.0
    assert m["type"]["labels"] == list(models.CLASS_NAMES)
    assert np.array(m["type"]["confusion"]).sum() == 14
    for key in ("lgg_patient_dice_mean", "figshare_slice_dice_mean", "tumor_slice_dice_mean"):
        assert 0.0 <= m["segmentation"][key] <= 1.0
    assert set(m["per_source"]) == {"lgg_kaggle_3m", "figshare_cheng"}
    assert m["per_source"]["figshare_cheng"]["n_slices"] == 9
    intervals = m["confidence"]["intervals"]
    assert set(intervals) == {
        "auc",
        "sensitivity",
        "specificity",
        "type_accuracy",
        "lgg_patient_dice_mean",
        "figshare_slice_dice_mean",
    }
    assert all(0.0 <= low <= high <= 1.0 for low, high in intervals.values())


def test_train_cli_runs_on_packed_slices_and_writes_its_artefacts(tmp_path):
    df = data.read_manifest(_gallery_manifest(tmp_path))
    packed = tmp_path / "packed"
    packed.mkdir()
    for split, rows in (("train", df.iloc[::2]), ("val", df.iloc[1::2])):
        arrays = data.load_arrays(rows, size=64)
        arrays["sources"] = rows["source"].to_numpy()
        data.pack_arrays(arrays, packed / f"{split}.npz")
    out = tmp_path / "run"
    args = ["segmenter", "--packed", str(packed), "--out", str(out), "--size", "64", "--batch", "2"]
    summary = train.train(train.parse_args([*args, "--max-epochs", "3", "--budget-s", "600", "--precision", "float32"]))

    assert summary["epochs_run"] == 3 and summary["backend"] == "tensorflow" and summary["precision"] == "float32"
    log = pd.read_csv(out / "training_log_segmenter.csv")
    assert list(log["epoch"]) == [0, 1, 2]
    assert np.isfinite(log["loss"]).all() and log["val_hard_dice_metric"].between(0, 1).all()
    assert json.loads((out / "segmenter_args.json").read_text())["size"] == 64
    net = models.build_segmenter(64)
    net.load_weights(out / "segmenter.weights.h5")  # the best-on-val inner network, loadable as shipped
    assert net.predict(np.zeros((1, 64, 64, 3), np.float32), verbose=0).shape == (1, 64, 64, 1)


def test_calibrate_keeps_the_sensitivity_floor_and_drops_specks_only_when_dice_gains():
    from tumor.lab import evaluate

    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        tumour = i < 30
        truth = np.zeros((64, 64), bool)
        pm = np.zeros((64, 64), np.float32)
        if tumour:
            truth[20:36, 20:36] = True
            pm[18:36, 20:36] = 0.7  # two rows too many above 0.5; a perfect fit at 0.75
            pm[20:36, 20:36] = 0.8
            pm[2:4, 2:4] = 0.9  # a 4 px false speck, far from the tumour
        p = rng.uniform(0.6, 1.0) if tumour else rng.uniform(0.0, 0.55)
        rows.append({"label": "glioma" if tumour else "no_tumor", "p_tumor": p, "truth": truth, "prob_map": pm})
    tumor_t, mask_t, min_frac = evaluate.calibrate(pd.DataFrame(rows))
    p = np.array([r["p_tumor"] for r in rows])
    assert ((p >= tumor_t)[:30]).mean() >= 0.95
    assert mask_t == 0.75
    assert min_frac > 0 and 4 < min_frac * 64 * 64 <= 256  # the speck goes, the tumour stays

    for r in rows:
        r["prob_map"][2:4, 2:4] = 0.0
    assert evaluate.calibrate(pd.DataFrame(rows))[2] == 0.0  # nothing to gain: keep every component


def test_segmentation_score_pools_lgg_patients_applies_the_cascade_and_averages_the_scored_sources():
    from tumor.lab import evaluate

    def row(source, patient, p, truth_px, pred_px):
        truth = np.zeros((10, 10), bool)
        truth.flat[truth_px] = True
        pm = np.zeros((10, 10), np.float32)
        pm.flat[pred_px] = 0.9
        return {"source": source, "patient_id": patient, "p_tumor": p, "truth": truth, "prob_map": pm}

    rows = [
        # LGG patient A: slice 1 found exactly (10 px); slice 2 (10 px) is a classifier miss -> empty mask.
        row("lgg_kaggle_3m", "A", 0.9, range(10), range(10)),
        row("lgg_kaggle_3m", "A", 0.1, range(20, 30), range(20, 30)),
        # LGG patient B: no tumour anywhere, nothing drawn -> Dice 1 by convention.
        row("lgg_kaggle_3m", "B", 0.9, [], []),
        # figshare: 8 of 10 truth pixels found, no false pixels -> 16 / 18.
        row("figshare_cheng", "C", 0.9, range(10), range(8)),
    ]
    res = pd.DataFrame(rows)
    lgg = np.mean([2 * 10 / (10 + 20), 1.0])
    assert evaluate.segmentation_score(res, 0.5, 0.5, 0.0) == pytest.approx((lgg + 16 / 18) / 2)
    # With the tumour threshold below every P(tumour), patient A's second slice is segmented too.
    assert evaluate.segmentation_score(res, 0.05, 0.5, 0.0) == pytest.approx((1.0 + 16 / 18) / 2)
    # Above the map's values, nothing is drawn: patient A scores 0, patient B still 1, figshare 0.
    assert evaluate.segmentation_score(res, 0.5, 0.95, 0.0) == pytest.approx((0.5 + 0.0) / 2)
    # A manifest from neither source falls back to the mean Dice over tumour slices.
    other = res.assign(source="new_site")
    assert evaluate.segmentation_score(other, 0.5, 0.5, 0.0) == pytest.approx(np.mean([1.0, 0.0, 16 / 18]))
    # The cascade view that `evaluate` reports matches: negative rows lose their map.
    assert [pm is None for pm in evaluate.apply_cascade(res, 0.5)["prob_map"]] == [False, True, False, False]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_WEIGHTS, reason="trained weights not present in weights/")
def test_calibrate_cli_writes_its_choice_into_a_copy_of_the_weights_folder(tmp_path):
    import shutil

    from tumor import weights
    from tumor.lab import evaluate

    wdir = tmp_path / "weights"
    wdir.mkdir()
    shipped = [*(ROOT / "weights").glob("*.weights.h5"), *(ROOT / "weights").glob("*_fusion.json")]
    for path in [*shipped, ROOT / "weights" / "manifest.json"]:
        shutil.copy(path, wdir / path.name)  # every network of the ensemble, and the fusions
    manifest = _gallery_manifest(tmp_path)
    evaluate.main(["--manifest", str(manifest), "--weights", str(wdir), "--calibrate", "--flip-tta", "off"])
    written = json.loads((wdir / "manifest.json").read_text())
    report = json.loads((wdir / "calibration.json").read_text())
    assert written["flip_tta"] is False and [c["flip_tta"] for c in report["candidates"]] == [False]
    chosen = report["chosen"]
    assert written["thresholds"]["mask"] == chosen["mask_threshold"]
    assert float(chosen["mask_threshold"]) in [float(t) for t in evaluate.MASK_THRESHOLDS]
    cand = report["candidates"][0]
    # The chosen mask threshold is the best of the grid (the speck filter can only add to it),
    # and the folder still loads: the weights' hashes are untouched.
    by_t = cand["val_objective_by_mask_threshold"]
    assert by_t[str(float(chosen["mask_threshold"]))] == pytest.approx(max(by_t.values()), abs=1e-4)
    assert cand["val_segmentation_objective"] >= max(by_t.values()) - 1e-4
    assert weights.read_registry(wdir).version == written["version"]


def _brain(gains=(1.0, 1.0, 1.0)) -> np.ndarray:
    """A synthetic slice: black background, a textured disc, each channel scaled by its gain."""
    y, x = np.mgrid[:64, :64]
    disc = np.hypot(y - 32, x - 32) < 24
    texture = 60 + 40 * np.sin(x / 3.0) * np.cos(y / 5.0)
    img = np.where(disc[..., None], texture[..., None] * np.array(gains), 0)
    return np.clip(img, 0, 255).astype(np.float32)[None]


def test_foreground_mean_scaling_sets_each_channel_mean_and_undoes_a_channel_gain():
    out = np.asarray(models.preprocess_segmenter(_brain(), "foreground_mean"))
    fg = _brain()[0].max(-1) > 10
    np.testing.assert_allclose(out[0][fg].mean(0), models.FOREGROUND_TARGET, rtol=1e-4)
    assert (out[0][~fg] == 0).all()
    # A darker FLAIR channel (as in the LGG test patients the 1.2 models missed) comes out the same.
    dim = np.asarray(models.preprocess_segmenter(_brain((1.0, 0.3, 1.0)), "foreground_mean"))
    np.testing.assert_allclose(dim, out, atol=2e-3)
    # Unit scaling keeps the difference.
    assert np.abs(np.asarray(models.preprocess_segmenter(_brain((1.0, 0.3, 1.0)))) - _brain() / 255).max() > 0.1


def test_foreground_mean_scaling_leaves_a_nearly_black_slice_alone_and_refuses_an_unknown_mode():
    dark = np.full((1, 64, 64, 3), 2, np.float32)  # brightest pixel 2 of 255: no foreground
    np.testing.assert_allclose(np.asarray(models.preprocess_classifier(dark, "foreground_mean")), dark / 255)
    with pytest.raises(ValueError, match="intensity must be one of"):
        models.preprocess_classifier(dark, "zscore")


def test_modality_drop_copies_the_middle_channel_into_the_outer_ones():
    x = np.stack([np.full((2, 8, 8), c, np.float32) for c in (10.0, 20.0, 30.0)], axis=-1)
    seed = keras.random.SeedGenerator(0)
    np.testing.assert_array_equal(np.asarray(train.drop_modalities(x, 1.0, seed)), np.full_like(x, 20.0))
    np.testing.assert_array_equal(np.asarray(train.drop_modalities(x, 0.0, seed)), x)
    many = np.asarray(train.drop_modalities(np.repeat(x, 200, axis=0), 0.5, seed))
    replaced = (many[:, 0, 0, [0, 2]] == 20.0).mean()
    assert 0.35 < replaced < 0.65
    assert (many[:, ..., 1] == 20.0).all()


def test_grey_probability_turns_whole_slices_grey_and_never_one_channel_alone():
    x = np.stack([np.full((400, 4, 4), c, np.float32) for c in (10.0, 20.0, 30.0)], axis=-1)
    out = np.asarray(train.drop_modalities(x, 0.0, keras.random.SeedGenerator(1), p_all=0.3))
    first, last = out[:, 0, 0, 0] == 20.0, out[:, 0, 0, 2] == 20.0
    np.testing.assert_array_equal(first, last)  # both outer channels go together
    assert 0.2 < first.mean() < 0.4
    assert (out[~first] == x[~first]).all()


def test_auto_precision_takes_bfloat16_only_where_it_is_native():
    assert train.resolve_precision("auto", {"avx2", "avx512f", "avx512_bf16"}, accelerator=False) == "mixed_bfloat16"
    assert train.resolve_precision("auto", {"avx2", "amx_bf16"}, accelerator=False) == "mixed_bfloat16"
    assert train.resolve_precision("auto", {"avx2", "fma"}, accelerator=False) == "float32"
    assert train.resolve_precision("auto", set(), accelerator=True) == "mixed_bfloat16"
    assert train.resolve_precision("float32", {"amx_bf16"}, accelerator=True) == "float32"
    assert train.resolve_precision("auto") in {"mixed_bfloat16", "float32"}  # this machine, whatever it is


def test_oversample_repeats_only_the_chosen_source_and_label():
    arrays = {
        "labels": np.array([1, 1, 2, 1, 0]),
        "sources": np.array(["figshare_cheng", "lgg_kaggle_3m", "figshare_cheng", "figshare_cheng", "x"]),
    }
    idx = train.oversample(np.array([0, 1, 2, 4]), arrays, ["figshare_cheng:glioma=3"])
    np.testing.assert_array_equal(idx, [0, 0, 0, 1, 2, 4])  # row 3 is not in the training indices
    np.testing.assert_array_equal(train.oversample(np.array([0, 1]), arrays, []), [0, 1])
    for bad in ("figshare_cheng:glioma", "figshare_cheng:astrocytoma=2", "figshare_cheng:glioma=0", "nowhere:glioma=2"):
        with pytest.raises(ValueError, match="oversample"):
            train.oversample(np.array([0, 1]), arrays, [bad])


def test_keep_sources_keeps_every_array_aligned_and_refuses_an_unknown_source():
    arrays = {
        "images": np.arange(5)[:, None, None, None] * np.ones((5, 2, 2, 3), np.uint8),
        "labels": np.array([1, 0, 2, 1, 0]),
        "sources": np.array(["figshare_cheng", "lgg_kaggle_3m", "figshare_cheng", "lgg_kaggle_3m", "navoneel_no"]),
    }
    kept = train.keep_sources(arrays, ["figshare_cheng", "navoneel_no"])
    np.testing.assert_array_equal(kept["images"][:, 0, 0, 0], [0, 2, 4])
    np.testing.assert_array_equal(kept["labels"], [1, 2, 0])
    assert list(kept["sources"]) == ["figshare_cheng", "figshare_cheng", "navoneel_no"]
    assert train.keep_sources(arrays, []) is arrays
    with pytest.raises(ValueError, match="--source figshare matches no slice"):
        train.keep_sources(arrays, ["figshare"])
    assert train.parse_args(["segmenter", "--source", "a", "--source", "b"]).source == ["a", "b"]


def test_train_reads_every_manifest_it_is_given(tmp_path):
    df = data.read_manifest(_gallery_manifest(tmp_path))
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    df.iloc[::2].to_csv(first, index=False)
    df.iloc[1::2].to_csv(second, index=False)
    assert train.parse_args(["segmenter"]).manifest == ["../shared/data/manifest.csv"] == [train.DEFAULT_MANIFEST]
    both = train.parse_args(["segmenter", "--manifest", str(first), "--manifest", str(second), "--size", "32"])
    assert both.manifest == [str(first), str(second)]
    one = train.parse_args(["segmenter", "--manifest", str(first), "--size", "32"])
    for split in ("train", "val", "test"):
        expected = (data.load_split(df)["split"] == split).sum()
        assert len(train._load(both, split)["labels"]) == expected
    assert sum(len(train._load(one, s)["labels"]) for s in ("train", "val", "test")) == len(df.iloc[::2])


def test_val_grey_makes_only_the_validation_slices_greyscale(tmp_path):
    from tumor.lab import data

    colour = np.zeros((2, 8, 8, 3), np.uint8)
    colour[..., 0], colour[..., 1], colour[..., 2] = 40, 120, 220
    arrays = {"images": colour, "masks": np.zeros((2, 8, 8), np.uint8), "labels": np.array([1, 0])}
    for split in ("train", "val"):
        data.pack_arrays(arrays, tmp_path / f"{split}.npz", quality=100)
    args = train.parse_args(["segmenter", "--packed", str(tmp_path), "--val-grey"])
    tr, va = train._load(args, "train"), train._load(args, "val")
    assert np.ptp(tr["images"][..., 0]) < 4 and abs(int(tr["images"][0, 0, 0, 2]) - int(tr["images"][0, 0, 0, 0])) > 100
    np.testing.assert_array_equal(va["images"][..., 0], va["images"][..., 1])
    np.testing.assert_array_equal(va["images"][..., 2], va["images"][..., 1])
    assert abs(int(va["images"][0, 0, 0, 1]) - 120) < 6
    assert not train.parse_args(["segmenter"]).val_grey


def test_flair_only_evaluation_feeds_the_pipeline_grey_slices(tmp_path):
    from tumor.lab import evaluate
    from tumor.pipeline import Member, Pipeline, Settings

    seen = []

    def classifier(x, training=False):
        seen.append(np.asarray(x))
        return np.tile(np.array([[0.9, 0.05, 0.03, 0.02]], np.float32), (len(x), 1))

    def segmenter(x, training=False):
        return np.zeros((*x.shape[:3], 1), np.float32)

    df = data.read_manifest(_gallery_manifest(tmp_path))
    lgg = df[df["source"] == "lgg_kaggle_3m"].head(2)
    pipeline = Pipeline((Member(classifier, 32),), (Member(segmenter, 32),), Settings(tumor_threshold=0.5))
    evaluate.run_pipeline(pipeline, lgg)
    assert any(not np.allclose(b[..., 0], b[..., 1]) for b in seen)  # the colour composites as they are
    seen.clear()
    evaluate.run_pipeline(pipeline, lgg, transform=evaluate.flair_only)
    assert len(seen) == 2 and all(np.allclose(b[..., 0], b[..., 1]) and np.allclose(b[..., 2], b[..., 1]) for b in seen)
    rgb = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    np.testing.assert_array_equal(evaluate.flair_only(rgb)[..., 0], rgb[..., 1])


def test_evaluate_leaves_out_and_counts_the_slices_the_app_refuses(tmp_path):
    from PIL import Image

    from tumor.lab import evaluate
    from tumor.pipeline import Member, Pipeline, Settings

    manifest = _gallery_manifest(tmp_path)
    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False).head(3)
    dark = np.zeros((64, 64, 3), np.uint8)
    dark[16:48, 16:48] = 2  # as the navoneel_no slices: brightest pixel 2 of 255
    Image.fromarray(dark).save(tmp_path / "dark.png")
    extra = {"image_path": str(tmp_path / "dark.png"), "mask_path": "", "label": "no_tumor", "source": "navoneel_no"}
    rows = pd.concat([rows, pd.DataFrame([{**dict.fromkeys(rows.columns, ""), **extra, "group_id": "d"}])])
    rows.to_csv(manifest, index=False)

    def classifier(x, training=False):
        return np.tile(np.array([[0.9, 0.05, 0.03, 0.02]], np.float32), (len(x), 1))

    def segmenter(x, training=False):
        return np.zeros((*x.shape[:3], 1), np.float32)

    pipeline = Pipeline((Member(classifier, 32),), (Member(segmenter, 32),), Settings(tumor_threshold=0.5))
    res = evaluate.run_pipeline(pipeline, data.read_manifest(manifest))
    assert len(res) == 3 and "dark.png" not in " ".join(res["image_file"])
    summary = evaluate.refused_summary(res)
    assert summary == {
        "n": 1,
        "by_source": {"navoneel_no": 1},
        "by_label": {"no_tumor": 1},
        "reasons": ["The image is almost entirely black"],
    }
    assert evaluate.compute_metrics(res, 0.5, 0.5)["n_slices"] == 3


@pytest.mark.skipif(not HAS_WEIGHTS, reason="trained weights not present in weights/")
def test_card_states_how_many_slices_the_app_refused():
    from tumor.lab import card

    metrics = json.loads((ROOT / "weights" / "metrics.json").read_text())
    metrics["refused"] = {
        "n": 3,
        "by_source": {"lgg_kaggle_3m": 1, "navoneel_no": 2},
        "by_label": {"no_tumor": 3},
        "reasons": ["The image is almost entirely black"],
    }
    text = card.render(metrics)
    assert "refuses 3 of the test slices (1 lgg_kaggle_3m, 2 navoneel_no; labels: 3 no_tumor)" in text
    metrics["refused"]["n"] = 0
    assert "refuses" not in card.render(metrics)


def test_calibrated_tumour_threshold_keeps_the_sensitivity_floor_after_rounding():
    from tumor.lab import evaluate

    # 19 of 20 tumour slices must stay positive; the 19th-highest sits at 0.37937,
    # which rounding to 4 decimals would lift to 0.3794, past the slice.
    p_tumour = np.r_[np.linspace(0.9, 0.5, 18), 0.37937, 0.1]
    res = pd.DataFrame(
        {
            "label": ["glioma"] * 20 + ["no_tumor"] * 20,
            "p_tumor": np.r_[p_tumour, np.linspace(0.0, 0.3, 20)],
            "truth": [np.zeros((4, 4), bool)] * 40,
            "prob_map": [np.zeros((4, 4), np.float32)] * 40,
        }
    )
    tumor_t, _, _ = evaluate.calibrate(res, min_sensitivity=0.95)
    assert tumor_t == 0.3793
    assert (p_tumour >= tumor_t).mean() >= 0.95


def test_training_benchmark_times_a_real_step_and_restores_the_dtype_policy():
    from tumor.lab import benchmark

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        seconds = benchmark.training_step_seconds("segmenter", "float32", 64, batch=1, steps=1)
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(seconds) and seconds > 0


class _FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run_budget(epoch_s: list[float], budget_s: float, warmup: int, max_epochs: int = 100) -> tuple[list, int]:
    """Drives TimeBudget through epochs of the given lengths; returns (learning rates, epochs run)."""
    from types import SimpleNamespace

    clock = _FakeClock()
    cb = train.TimeBudget(1.0, budget_s, warmup_epochs=warmup, min_lr_fraction=0.01, max_epochs=max_epochs, clock=clock)
    model = SimpleNamespace(optimizer=SimpleNamespace(learning_rate=None), stop_training=False)
    cb.set_model(model)
    cb.on_train_begin()
    lrs = []
    for epoch, seconds in enumerate(epoch_s):
        cb.on_epoch_begin(epoch)
        lrs.append(model.optimizer.learning_rate)
        clock.now += seconds
        logs = {}
        cb.on_epoch_end(epoch, logs)
        assert logs["lr"] == pytest.approx(lrs[-1]) and logs["elapsed_s"] == pytest.approx(clock.now)
        if model.stop_training:
            return lrs, epoch + 1
    return lrs, len(epoch_s)


def test_time_budget_anneals_to_the_floor_on_the_last_epoch_that_fits_and_stops_there():
    # 100 s epochs, 450 s budget: four fit. Warm-up, peak, half-way, floor.
    lrs, ran = _run_budget([100.0] * 10, 450.0, warmup=1)
    assert ran == 4
    assert lrs == pytest.approx([0.5, 1.0, 0.505, 0.01])


def test_time_budget_follows_a_slower_pace_and_respects_max_epochs():
    # The pace halves after the first epoch: the plan shrinks from nine epochs
    # to five as the median catches up, and the fifth still runs at the floor.
    lrs, ran = _run_budget([100.0] + [200.0] * 9, 900.0, warmup=1)
    assert ran == 5 and lrs[-1] == pytest.approx(0.01)
    assert lrs[1] == pytest.approx(1.0) and lrs[1] > lrs[2] > lrs[3] > lrs[4]
    # max_epochs caps the plan: the third of three epochs is the floor, with time to spare.
    lrs, ran = _run_budget([10.0] * 10, 1e6, warmup=1, max_epochs=3)
    assert lrs == pytest.approx([0.5, 1.0, 0.01]) and ran == 3


def test_time_budget_gives_a_lone_epoch_after_the_warm_up_half_the_peak():
    lrs, ran = _run_budget([100.0] * 5, 250.0, warmup=1)
    assert ran == 2 and lrs == pytest.approx([0.5, 0.505])


def _bootstrap_row(source, group, label, p, truth_px, pred_px, type_pred="glioma"):
    truth = np.zeros((10, 10), bool)
    truth.flat[list(truth_px)] = True
    pm = np.zeros((10, 10), np.float32)
    pm.flat[list(pred_px)] = 0.9
    return {
        "source": source,
        "group_id": group,
        "label": label,
        "p_tumor": p,
        "type_pred": type_pred,
        "truth": truth,
        "prob_map": pm if p >= 0.5 else None,
    }


def test_bootstrap_resamples_lgg_patients_healthy_groups_and_figshare_slices():
    from tumor.lab import evaluate

    res = pd.DataFrame(
        [
            _bootstrap_row("lgg_kaggle_3m", "A", "glioma", 0.9, range(10), range(10)),
            _bootstrap_row("lgg_kaggle_3m", "A", "no_tumor", 0.1, [], []),
            _bootstrap_row("figshare_cheng", "figshare_cvfold4", "glioma", 0.9, range(10), range(10)),
            _bootstrap_row("figshare_cheng", "figshare_cvfold4", "glioma", 0.9, range(10), range(10)),
            _bootstrap_row("nickparvar_notumor", "nickparvar_notumor:g1", "no_tumor", 0.1, [], []),
            _bootstrap_row("nickparvar_notumor", "nickparvar_notumor:g1", "no_tumor", 0.2, [], []),
        ]
    )
    units = evaluate.resampling_units(res).tolist()
    assert units == ["A", "A", "slice:2", "slice:3", "nickparvar_notumor:g1", "nickparvar_notumor:g1"]
    assert evaluate.resampling_units(res.drop(columns="group_id")).tolist() == [f"slice:{i}" for i in range(6)]


def test_bootstrap_intervals_are_exact_where_the_units_agree_and_spread_where_they_differ():
    from tumor.lab import evaluate

    # Two LGG patients of two slices each: A outlined exactly (Dice 1), B's tumour slices both missed (Dice 0).
    rows = [
        _bootstrap_row("lgg_kaggle_3m", "A", "glioma", 0.9, range(10), range(10)),
        _bootstrap_row("lgg_kaggle_3m", "A", "no_tumor", 0.1, [], []),
        _bootstrap_row("lgg_kaggle_3m", "B", "glioma", 0.2, range(10), range(10)),
        _bootstrap_row("lgg_kaggle_3m", "B", "glioma", 0.3, range(20, 30), range(20, 30)),
        # figshare: every slice Dice 16/18 and typed right.
        _bootstrap_row("figshare_cheng", "f4", "meningioma", 0.9, range(10), range(8), "meningioma"),
        _bootstrap_row("figshare_cheng", "f4", "meningioma", 0.9, range(10), range(8), "meningioma"),
    ]
    res = pd.DataFrame(rows)
    ci = evaluate.bootstrap_intervals(res, 0.5, 0.5, n_resamples=500, seed=3)
    assert ci["intervals"]["figshare_slice_dice_mean"] == [pytest.approx(16 / 18, abs=1e-4)] * 2
    assert ci["intervals"]["specificity"] == [1.0, 1.0]  # the only negative slice is always below threshold
    # Patients are drawn whole: the mean over two draws is 0, 0.5 or 1 with chances 1/4, 1/2, 1/4,
    # so the central 40% is exactly 0.5 (slice-level draws would give other values).
    narrow = evaluate.bootstrap_intervals(res, 0.5, 0.5, n_resamples=2000, seed=3, level=0.4)
    assert narrow["intervals"]["lgg_patient_dice_mean"] == [0.5, 0.5]
    assert ci["intervals"]["lgg_patient_dice_mean"] == [0.0, 1.0]
    # The same seed gives the same intervals.
    assert evaluate.bootstrap_intervals(res, 0.5, 0.5, n_resamples=500, seed=3) == ci
    # Without negatives, no AUC or specificity interval is claimed.
    only_tumour = evaluate.bootstrap_intervals(res[res["label"] != "no_tumor"], 0.5, 0.5, n_resamples=50)
    assert "auc" not in only_tumour["intervals"] and "specificity" not in only_tumour["intervals"]


@pytest.mark.skipif(not HAS_WEIGHTS, reason="trained weights not present in weights/")
def test_card_shows_each_figures_interval_and_how_it_was_drawn():
    from tumor.lab import card

    metrics = json.loads((ROOT / "weights" / "metrics.json").read_text())
    metrics.pop("confidence", None)
    assert "| detection AUC | " in card.render(metrics) and "bootstrap" not in card.render(metrics)
    metrics["confidence"] = {
        "level": 0.95,
        "n_resamples": 2000,
        "seed": 0,
        "units": "LGG patient",
        "intervals": {"auc": [0.9712, 0.9934], "lgg_patient_dice_mean": [0.61, 0.84]},
    }
    text = card.render(metrics)
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert " | 0.971–0.993 | 0.97 | " in lines["| detection AUC"]
    assert " | 0.610–0.840 | 0.8 | " in lines["| LGG Dice per patient (mean)"]
    assert " | – | 0.9 | " in lines["| sensitivity"]  # no interval given, none shown
    assert "95% percentile bootstrap (2000 resamples, seed 0)" in text


def test_card_gives_each_source_a_wilson_interval_from_its_slice_counts():
    from tumor.lab import card

    figures = {"detection": {"threshold": 0.5}, "type": {}, "segmentation": {"mask_threshold": 0.2}}
    per_source = {
        "n_slices": 30,
        "n_tumor": 10,
        "n_no_tumor": 20,
        "detection": {"auc": 0.9, "sensitivity": 0.5, "specificity": 1.0},
        "type": {"accuracy": None},
        "segmentation": {"tumor_slice_dice_mean": 0.7},
    }
    text = card.render({"n_slices": 30, **figures, "per_source": {"lgg_kaggle_3m": per_source}})
    (row,) = [line for line in text.splitlines() if line.startswith("| lgg_kaggle_3m |")]
    # 5 of 10: Wilson 0.237-0.763; 20 of 20: 0.839-1.000; no type accuracy, no interval.
    assert row == "| lgg_kaggle_3m | 30 | 10 / 20 | 0.900 | 0.500 (0.237–0.763) | 1.000 (0.839–1.000) | – | 0.700 |"
    assert "Wilson intervals over slices" in text


def test_outline_on_request_figures_score_only_the_missed_tumour_slices(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from tumor.lab import evaluate

    img = np.zeros((32, 32, 3), np.uint8)
    img[8:24, 8:24] = 150
    Image.fromarray(img).save(tmp_path / "s.png")
    truth = np.zeros((32, 32), bool)
    truth[8:24, 8:24] = True  # 256 px

    def segment(rgb):
        out = np.zeros(rgb.shape[:2], np.float32)
        out[8:24, 8:16] = 0.9  # half the truth: Dice 2*128/(256+128) = 2/3
        return out

    stub = SimpleNamespace(tumor_threshold=0.5, mask_threshold=0.5, min_component_fraction=0.0, segment=segment)
    res = pd.DataFrame(
        {
            "image_file": [str(tmp_path / "s.png")] * 4,
            "label": ["glioma", "glioma", "no_tumor", "meningioma"],
            "source": ["lgg_kaggle_3m", "figshare_cheng", "lgg_kaggle_3m", "figshare_cheng"],
            "p_tumor": [0.2, 0.9, 0.1, 0.3],  # the second is detected, the third has no tumour
            "truth": [truth, truth, np.zeros((32, 32), bool), truth],
        }
    )
    figures = evaluate.outline_on_request_figures(stub, res)
    assert figures["n_missed_tumour_slices"] == 2
    assert figures["dice_mean"] == pytest.approx(2 / 3)
    assert set(figures["per_source"]) == {"lgg_kaggle_3m", "figshare_cheng"}
    assert figures["per_source"]["figshare_cheng"]["n_missed_tumour_slices"] == 1


def test_card_names_the_manifests_the_figures_came_from_and_lists_brats_per_source():
    from tumor.lab import card

    figures = {
        "n_slices": 4,
        "detection": {"threshold": 0.5, "auc": 0.9, "sensitivity": 1.0, "specificity": 0.5},
        "type": {"accuracy": 1.0},
        "segmentation": {"mask_threshold": 0.5, "lgg_patient_dice_mean": 0.8, "figshare_slice_dice_mean": 0.7},
    }
    brats = {
        "n_slices": 4,
        "n_tumor": 2,
        "n_no_tumor": 2,
        "detection": {"auc": 0.75, "sensitivity": 0.5, "specificity": 1.0},
        "type": {"accuracy": 0.5},
        "segmentation": {"tumor_slice_dice_mean": 0.4},
    }
    text = card.render(
        {**figures, "manifest": "manifest.csv + manifest_brats_flair.csv", "per_source": {"brats_flair": brats}}
    )
    assert (
        "`python -m tumor.lab.evaluate --manifest ../shared/data/manifest.csv "
        "--manifest ../shared/data/manifest_brats_flair.csv --split test" in text
    )
    assert "| brats_flair | 4 | 2 / 2 | 0.750 |" in text
    assert "--manifest ../shared/data/manifest.csv --split test" in card.render(figures)
