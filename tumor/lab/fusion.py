"""Fits and judges segmentation-guided typing (``tumor.fusion``): ``python -m tumor.lab.fusion``.

Steps, each a subcommand:

- ``collect --split val``: runs the shipped pipeline over a split and stores,
  per slice, the classifier's probabilities and ``location_features`` of the
  segmenter's map (the segmenter runs on every slice here, as the outline on
  request does). Writes ``runs/fusion/<split>.npz``.
- ``crossfit``: judges the fusion on validation predictions only, with
  cross-fitting: the rows are cut into folds, each fold's fusion is fitted on
  the other folds, so no row is scored by a fusion that saw it. figshare fold 3
  carries no patient IDs, so its slices are cut into contiguous blocks of the
  release's file order within each tumour type (slices of one patient are
  stored together there); LGG and BraTS rows are grouped by patient.
- ``fit``: fits the fusion on every validation row and writes the JSON that ships.

The rule (fixed before any cross-fitted figure was seen): adopt the fusion only
if the cross-fitted validation type accuracy (argmax over the three types on
every true tumour slice; the fusion applies where the cascade detects a tumour,
as in the app) rises by at least ``ADOPT_MIN_GAIN`` over the classifier alone,
and no source's type accuracy falls by more than ``MAX_SOURCE_DROP``.
The fusion is never fitted on training-split predictions: the networks trained
on those slices, so their probabilities there are overconfident.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from tumor.fusion import FEATURE_NAMES, TYPE_NAMES, TypeFusion, location_features
from tumor.lab import data

# The rule and the fit's settings, fixed before the first cross-fitted figure.
ADOPT_MIN_GAIN = 0.01
MAX_SOURCE_DROP = 0.01
N_FOLDS = 5
C = 1.0  # inverse L2 strength of the logistic regression
RUNS_DIR = Path("runs/fusion")
DEFAULT_MANIFESTS = data.DEFAULT_MANIFESTS


def collect(pipeline, df: pd.DataFrame, batch: int = 16, progress_every: int = 160) -> dict[str, np.ndarray]:
    """Classifier probabilities and location features of every readable row of ``df``.

    Slices go through the pipeline's batched calls (``classify_batch``,
    ``segment_batch``), ``batch`` at a time.

    Returns:
        Arrays ``probs`` (N, 4), ``features`` (N, F), ``label``, ``source``,
        ``group_id``, ``image_path`` and ``orig_name`` (N,).
    """
    from tumor.errors import InputError
    from tumor.io import read_image

    keep, probs, feats = [], [], []
    t0 = time.monotonic()
    pending: list[tuple[object, np.ndarray]] = []

    def flush() -> None:
        rgbs = [rgb for _, rgb in pending]
        p = pipeline.classify_batch(rgbs)
        maps = pipeline.segment_batch(rgbs)
        for (idx, rgb), pi, prob_map in zip(pending, p, maps, strict=True):
            feats.append(location_features(rgb, prob_map, pi[1:]))
            probs.append(pi)
            keep.append(idx)
        pending.clear()

    for i, (idx, image_file) in enumerate(zip(df.index, df["image_file"], strict=True)):
        try:
            pending.append((idx, read_image(image_file)))
        except InputError:
            continue
        if len(pending) == batch:
            flush()
        if progress_every and (i + 1) % progress_every == 0:
            print(f"  {i + 1}/{len(df)} slices, {time.monotonic() - t0:.0f}s", flush=True)
    if pending:
        flush()
    rows = df.loc[keep]
    out = {"probs": np.array(probs), "features": np.array(feats)}
    for col in ("label", "source", "group_id", "image_path", "orig_name"):
        out[col] = np.array(rows[col].astype(str).tolist() if col in rows else [""] * len(rows), dtype=str)
    return out


def folds(arrays: dict[str, np.ndarray], n_folds: int = N_FOLDS) -> np.ndarray:
    """A fold index per row: figshare in contiguous file-order blocks within each type, other sources by patient.

    figshare's release stores a patient's slices together and each patient has
    one tumour type, so blocks of file order within a type keep patients
    (nearly) whole while every fold holds every type. (The first candidate cut
    file order across types; its folds then lacked whole types: see
    docs/experiments.md.)
    """
    n = len(arrays["label"])
    fold = np.zeros(n, int)
    fig = arrays["source"] == "figshare_cheng"
    for label in sorted(set(arrays["label"][fig])):
        rows = np.flatnonzero(fig & (arrays["label"] == label))
        order = np.argsort([_file_number(s) for s in arrays["orig_name"][rows]], kind="stable")
        fold[rows[order]] = np.arange(len(rows)) * n_folds // len(rows)
    others = ~fig
    groups = sorted(set(arrays["group_id"][others]))
    rank = {g: i % n_folds for i, g in enumerate(groups)}
    fold[others] = [rank[g] for g in arrays["group_id"][others]]
    return fold


def _file_number(name: str) -> float:
    digits = "".join(c for c in Path(name).stem if c.isdigit())
    return float(digits) if digits else float("inf")


def fit_fusion(features: np.ndarray, labels: np.ndarray, fitted_on: str = "") -> TypeFusion:
    """A ``TypeFusion`` fitted on tumour rows (labels among ``TYPE_NAMES``)."""
    y = np.array([TYPE_NAMES.index(lbl) for lbl in labels])
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    model = LogisticRegression(C=C, max_iter=2000)
    model.fit((features - mean) / scale, y)
    coef = np.zeros((len(TYPE_NAMES), features.shape[1]))
    intercept = np.zeros(len(TYPE_NAMES))
    coef[model.classes_] = model.coef_ if len(model.classes_) > 2 else np.vstack([-model.coef_, model.coef_])
    intercept[model.classes_] = (
        model.intercept_ if len(model.classes_) > 2 else np.array([-model.intercept_[0], model.intercept_[0]])
    )
    absent = np.setdiff1d(np.arange(len(TYPE_NAMES)), model.classes_)
    intercept[absent] = -1e3  # a type absent from the fit is never predicted
    return TypeFusion(mean=mean, scale=scale, coef=coef, intercept=intercept, fitted_on=fitted_on)


def type_predictions(
    arrays: dict[str, np.ndarray], fusion_probs: np.ndarray | None, tumor_threshold: float
) -> np.ndarray:
    """The predicted type per row: the fusion's where the cascade detects a tumour, else the classifier's."""
    base = np.array(TYPE_NAMES)[np.argmax(arrays["probs"][:, 1:], axis=1)]
    if fusion_probs is None:
        return base
    detected = 1.0 - arrays["probs"][:, 0] >= tumor_threshold
    fused = np.array(TYPE_NAMES)[np.argmax(fusion_probs, axis=1)]
    return np.where(detected, fused, base)


def crossfit(arrays: dict[str, np.ndarray], tumor_threshold: float, n_folds: int = N_FOLDS) -> dict:
    """Cross-fitted type accuracy with and without the fusion, overall and per source, and the rule's verdict."""
    tumour = arrays["label"] != "no_tumor"
    fold = folds(arrays, n_folds)
    fused = np.zeros((len(fold), len(TYPE_NAMES)))
    for k in range(n_folds):
        train = tumour & (fold != k)
        test = fold == k
        fusion = fit_fusion(arrays["features"][train], arrays["label"][train])
        fused[test] = fusion.type_probabilities(arrays["features"][test])
    base = type_predictions(arrays, None, tumor_threshold)
    with_fusion = type_predictions(arrays, fused, tumor_threshold)
    truth = arrays["label"]

    def acc(pred: np.ndarray, rows: np.ndarray) -> float | None:
        return float((pred[rows] == truth[rows]).mean()) if rows.any() else None

    result = {
        "n_tumour_slices": int(tumour.sum()),
        "n_folds": n_folds,
        "tumor_threshold": tumor_threshold,
        "type_accuracy": {"classifier": acc(base, tumour), "fusion": acc(with_fusion, tumour)},
        "per_source": {},
        "per_type": {},
    }
    for source in sorted(set(arrays["source"][tumour])):
        rows = tumour & (arrays["source"] == source)
        result["per_source"][source] = {
            "n": int(rows.sum()),
            "classifier": acc(base, rows),
            "fusion": acc(with_fusion, rows),
        }
    for name in TYPE_NAMES:
        rows = truth == name
        result["per_type"][name] = {
            "n": int(rows.sum()),
            "classifier": acc(base, rows),
            "fusion": acc(with_fusion, rows),
        }
    gain = result["type_accuracy"]["fusion"] - result["type_accuracy"]["classifier"]
    worst_drop = max(
        (v["classifier"] - v["fusion"] for v in result["per_source"].values()),
        default=0.0,
    )
    result["gain"] = gain
    result["worst_source_drop"] = worst_drop
    result["adopt"] = bool(gain >= ADOPT_MIN_GAIN and worst_drop <= MAX_SOURCE_DROP)
    result["rule"] = (
        f"adopt if the cross-fitted val type accuracy gains >= {ADOPT_MIN_GAIN} and no source drops by more than "
        f"{MAX_SOURCE_DROP}"
    )
    return result


def _figures(rows: np.ndarray, base: np.ndarray, fused: np.ndarray, acc) -> dict:
    return {"n": int(rows.sum()), "classifier": acc(base, rows), "fusion": acc(fused, rows)}


def save_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Segmentation-guided typing: collect, cross-fit, fit.")
    parser.add_argument("step", choices=("collect", "crossfit", "fit"), help="what to do")
    parser.add_argument("--split", default="val", help="split to collect (default: %(default)s)")
    parser.add_argument(
        "--manifest",
        action="append",
        help=f"manifest CSV; repeat for several (default: {' and '.join(DEFAULT_MANIFESTS)})",
    )
    parser.add_argument("--weights", default=None, help="weights folder (default: the shipped one)")
    parser.add_argument("--runs", default=str(RUNS_DIR), help="where collected arrays live (default: %(default)s)")
    parser.add_argument("--out", default=None, help="crossfit: JSON report; fit: fusion JSON (default: print / none)")
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    if args.step == "collect":
        from tumor.pipeline import Pipeline

        df = data.load_split(data.read_manifests(args.manifest or list(DEFAULT_MANIFESTS)))
        df = df[df["split"] == args.split]
        pipeline = Pipeline.from_weights_dir(args.weights)
        arrays = collect(pipeline, df)
        save_arrays(arrays, runs / f"{args.split}.npz")
        print(f"{len(arrays['label'])} slices -> {runs / f'{args.split}.npz'}")
        return
    from tumor import weights as weights_lib

    registry = weights_lib.read_registry(args.weights or weights_lib.DEFAULT_WEIGHTS_DIR)
    arrays = load_arrays(runs / "val.npz")
    if args.step == "crossfit":
        result = crossfit(arrays, registry.tumor_threshold)
        text = json.dumps(result, indent=2)
        if args.out:
            Path(args.out).write_text(text + "\n")
        print(text)
        return
    tumour = arrays["label"] != "no_tumor"
    fusion = fit_fusion(
        arrays["features"][tumour],
        arrays["label"][tumour],
        fitted_on=f"{int(tumour.sum())} tumour slices of the weights/split.csv val split, model {registry.version}",
    )
    out = Path(args.out or "runs/fusion/type_fusion.json")
    out.write_text(fusion.to_json())
    print(f"fusion over {list(FEATURE_NAMES)} -> {out}")


if __name__ == "__main__":
    main()
