"""Split determinism and group disjointness; slice loading; class weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tumor.lab import data

ROOT = Path(__file__).resolve().parents[1]
SHARED_MANIFEST = ROOT.parent / "shared" / "data" / "manifest.csv"
BRATS_MANIFEST = ROOT.parent / "shared" / "data" / "manifest_brats_flair.csv"
needs_shared = pytest.mark.skipif(
    not (SHARED_MANIFEST.is_file() and BRATS_MANIFEST.is_file()),
    reason=f"training data not present at {SHARED_MANIFEST.parent}",
)


def _toy_manifest() -> pd.DataFrame:
    rows = []
    for g in range(60):
        for s in range(3):
            rows.append(
                {"source": "lgg_kaggle_3m", "group_id": f"TCGA_{g:03d}", "cv_fold": "", "image_path": f"l{g}_{s}"}
            )
    for fold in "1234":
        rows.append({"source": "figshare_cheng", "group_id": f"fold{fold}", "cv_fold": fold, "image_path": f"f{fold}"})
    return pd.DataFrame(rows)


def test_split_is_deterministic_and_follows_figshare_folds():
    df = _toy_manifest()
    first, second = data.assign_split(df), data.assign_split(df.sample(frac=1, random_state=3).sort_index())
    assert first.tolist() == second.tolist()
    fig = df["source"] == "figshare_cheng"
    assert dict(zip(df.loc[fig, "cv_fold"], first[fig], strict=True)) == {
        "1": "train",
        "2": "train",
        "3": "val",
        "4": "test",
    }


def test_split_never_puts_a_group_on_two_sides():
    df = _toy_manifest()
    df["split"] = data.assign_split(df)
    assert (df.groupby("group_id")["split"].nunique() == 1).all()
    assert set(df["split"]) == {"train", "val", "test"}


def test_split_of_a_group_does_not_depend_on_the_other_rows():
    df = _toy_manifest()
    full = data.assign_split(df)
    half = data.assign_split(df.iloc[::2])
    assert (full.iloc[::2].to_numpy() == half.to_numpy()).all()


@needs_shared
def test_committed_split_matches_the_rule_and_is_group_disjoint():
    df = data.load_split(data.read_manifests([SHARED_MANIFEST, BRATS_MANIFEST]))
    committed = pd.read_csv(data.DEFAULT_SPLIT_FILE, dtype=str, keep_default_na=False)
    assert len(committed) == len(df)
    assert (
        df.set_index("image_path")["split"].sort_index() == committed.set_index("image_path")["split"].sort_index()
    ).all()
    assert (df.groupby("group_id")["split"].nunique() == 1).all()
    lgg = df[df["source"] == "lgg_kaggle_3m"].drop_duplicates("group_id")["split"].value_counts(normalize=True)
    assert 0.6 < lgg["train"] < 0.8 and 0.08 < lgg["test"] < 0.25


@needs_shared
def test_brats_patients_shared_with_lgg_sit_on_the_lgg_side_and_old_rows_keep_their_split():
    committed = pd.read_csv(data.DEFAULT_SPLIT_FILE, dtype=str, keep_default_na=False)
    brats = committed[committed["source"] == "brats_flair"]
    assert brats["group_id"].nunique() == 23 and len(brats) == 442
    shared = sorted(set(brats["group_id"]) & set(committed.loc[committed["source"] == "lgg_kaggle_3m", "group_id"]))
    assert shared == ["TCGA_DU_A5TR", "TCGA_DU_A5TW", "TCGA_HT_7473"]
    for group in shared:
        assert committed.loc[committed["group_id"] == group, "split"].nunique() == 1, group
    # Adding the BraTS manifest moved no row of the main one.
    main_only = data.load_split(data.read_manifest(SHARED_MANIFEST), split_file="/nonexistent")
    merged = committed.set_index("image_path")["split"]
    assert (main_only.set_index("image_path")["split"] == merged.loc[main_only["image_path"]]).all()


def test_check_group_disjoint_names_the_groups_on_two_sides():
    df = pd.DataFrame({"group_id": ["a", "a", "b"], "split": ["train", "val", "test"]})
    with pytest.raises(ValueError, match=r"\['a'\]"):
        data.check_group_disjoint(df)
    data.check_group_disjoint(df.iloc[1:])


def test_class_weights_are_inverse_to_frequency_with_mean_one():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 6 + [3] * 4)
    w = data.class_weights(labels)
    assert w[0] < w[1] < w[2] < w[3]
    assert np.isclose(sum(w[int(c)] for c in labels) / len(labels), 1.0)


def test_load_slice_pads_to_square_and_keeps_the_mask_aligned(tmp_path):
    from PIL import Image

    img = np.zeros((40, 80, 3), np.uint8)
    img[10:20, 60:70] = 200
    mask = np.zeros((40, 80), np.uint8)
    mask[10:20, 60:70] = 255
    Image.fromarray(img).save(tmp_path / "i.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    image, m = data.load_slice(str(tmp_path / "i.png"), str(tmp_path / "m.png"), size=80)
    assert image.shape == (80, 80, 3) and m.shape == (80, 80)
    # 20 rows of padding above: the square sits at rows 30-39, columns 60-69.
    assert m.sum() == 100 and m[30:40, 60:70].all()
    assert (image[..., 0] > 100).sum() == 100 and image[30:40, 60:70, 0].min() == 200


def test_packed_arrays_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "images": np.broadcast_to(np.linspace(0, 250, 32, dtype=np.uint8)[None, None, :, None], (3, 32, 32, 3)).copy(),
        "masks": (rng.random((3, 32, 32)) > 0.7).astype(np.uint8),
        "labels": np.array([0, 1, 3], np.int32),
        "sources": np.array(["a", "b", "c"]),
    }
    data.pack_arrays(arrays, tmp_path / "p.npz", quality=100)
    back = data.load_packed(tmp_path / "p.npz")
    assert (back["masks"] == arrays["masks"]).all() and (back["labels"] == arrays["labels"]).all()
    assert np.abs(back["images"].astype(int) - arrays["images"]).mean() < 4


def test_make_dataset_batches_whole_batches_and_reshuffles_each_epoch():
    x = np.arange(10, dtype=np.float32)[:, None]
    y = np.arange(10, dtype=np.int32)
    w = np.linspace(0.5, 1.5, 10).astype(np.float32)
    ds = data.make_dataset(x, y, w, batch=4, shuffle=True, seed=3)
    epochs = [[tuple(t.numpy() for t in b) for b in ds] for _ in range(2)]
    for batches in epochs:
        assert [len(b[0]) for b in batches] == [4, 4]  # the ragged last batch is dropped
        for bx, by, bw in batches:
            np.testing.assert_array_equal(bx[:, 0], by)  # x, y and weight stay paired
            np.testing.assert_allclose(bw, w[by])
    first, second = (np.concatenate([b[1] for b in e]) for e in epochs)
    assert len(set(first)) == 8 and not np.array_equal(first, second)


def test_make_dataset_keeps_order_without_shuffle_and_refuses_mismatched_lengths():
    x = np.zeros((6, 2, 2, 3), np.uint8)
    y = np.arange(6)
    batches = [b[1].numpy() for b in data.make_dataset(x, y, batch=3, shuffle=False)]
    np.testing.assert_array_equal(np.concatenate(batches), y)
    with pytest.raises(ValueError, match="same length"):
        data.make_dataset(x, y[:5], batch=2, shuffle=False)
    with pytest.raises(ValueError, match="batch"):
        data.make_dataset(x, y, batch=0, shuffle=False)
