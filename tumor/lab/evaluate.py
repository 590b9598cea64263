"""Evaluation CLI: ``python -m tumor.lab.evaluate --manifest PATH [--split test|val|all] --out metrics.json``.

Runs the shipped pipeline exactly as the app does (``Pipeline.analyze`` on
each slice read by ``tumor.io``, on the compiled networks of ``tumor.runtime``
in the precision the app picks on this machine, or ``--precision``) over every
row of a manifest, or over one split of it, and writes detection, type and
segmentation metrics overall and per source. ``--calibrate`` instead picks the tumour and mask thresholds, the
smallest kept mask component and flip averaging on the validation split, writes
them into ``weights/manifest.json`` and the validation figures behind the
choice into ``weights/calibration.json``. ``--flair-only`` is a stress test:
every slice is replaced by its middle channel (for LGG, FLAIR), as for a
patient whose pre- and post-contrast sequences are missing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from tumor import metrics
from tumor.errors import InputError
from tumor.io import read_image
from tumor.lab import data
from tumor.pipeline import Pipeline, is_grey, threshold_mask
from tumor.preprocess import CLASS_NAMES, TUMOR_TYPES

ROC_POINTS = 101  # points kept of the ROC curve, for plotting
MASK_THRESHOLDS = np.round(np.arange(0.05, 0.81, 0.05), 2)
FIGSHARE, LGG = "figshare_cheng", "lgg_kaggle_3m"  # the sources behind the scored segmentation figures
# Smallest kept mask component, as a fraction of the slice (512 px: 0 to ~1,000 px).
MIN_COMPONENT_FRACTIONS = (0.0, 0.0005, 0.001, 0.002, 0.004)
BOOTSTRAP_RESAMPLES = 2000  # replicates behind the 95% intervals of the test figures


def read_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    """A manifest's expert mask as bool (H, W); all False when ``path`` is empty."""
    if not path:
        return np.zeros(shape, bool)
    from PIL import Image

    with Image.open(path) as img:
        mask = np.array(img.convert("L")) > 0
    if mask.shape != shape:
        raise ValueError(f"Mask {path} has shape {mask.shape} but its image has {shape}")
    return mask


def flair_only(rgb: np.ndarray) -> np.ndarray:
    """The slice with every channel replaced by the middle one (LGG: FLAIR); grey slices are unchanged."""
    return np.repeat(rgb[..., 1:2], 3, axis=-1)


def run_pipeline(pipeline, df: pd.DataFrame, progress_every: int = 200, transform=None) -> pd.DataFrame:
    """Analyses every row the app would accept; returns per-row predictions and probability maps.

    ``transform``, if given, maps each RGB slice after reading (``flair_only``).

    Returns:
        A copy of the accepted rows of ``df`` with ``probs`` (4,), ``p_tumor``,
        ``pred`` (cascade class), ``type_pred`` (argmax over the three tumour
        types), ``truth`` (bool mask), ``prob_map`` (None when negative) and
        ``grey`` (the slice, as the pipeline saw it, is greyscale: ``is_grey``)
        columns. Rows whose image the app refuses (``InputError``, e.g. an
        almost black image) are left out; their source, label and the app's
        message are listed in ``attrs["refused"]``.
    """
    rows, accepted, refused = [], [], []
    t0 = time.monotonic()
    sources = df["source"] if "source" in df else pd.Series("", index=df.index)
    rows_in = zip(df.index, df["image_file"], df["mask_file"], sources, df["label"], strict=True)
    for i, (idx, image_file, mask_file, source, label) in enumerate(rows_in):
        try:
            rgb = read_image(image_file)
        except InputError as err:
            refused.append({"source": str(source), "label": str(label), "reason": str(err)})
            continue
        if transform is not None:
            rgb = transform(rgb)
        a = pipeline.analyze(rgb)
        probs = np.array([a.probabilities[c] for c in CLASS_NAMES])
        accepted.append(idx)
        rows.append(
            {
                "probs": probs,
                "p_tumor": a.p_tumor,
                "pred": a.predicted_class,
                "type_pred": TUMOR_TYPES[int(np.argmax(probs[1:]))],
                "truth": read_mask(mask_file, rgb.shape[:2]),
                "prob_map": a.prob_map,
                "grey": is_grey(rgb),
            }
        )
        if progress_every and (i + 1) % progress_every == 0:
            print(f"  {i + 1}/{len(df)} slices, {time.monotonic() - t0:.0f}s", flush=True)
    out = df.loc[accepted].reset_index(drop=True).copy()
    for key in rows[0] if rows else []:
        out[key] = [r[key] for r in rows]
    out.attrs["refused"] = refused
    return out


def runtime_record(pipeline) -> dict:
    """What ran the networks: the engine and its version, and each kind's precision."""
    from importlib import metadata

    precisions = {}
    for kind, members in (("classifier", pipeline.classifiers), ("segmenter", pipeline.segmenters)):
        precisions[kind] = sorted({getattr(m.network, "precision", "stand-in") for m in members})
    return {"engine": f"openvino {metadata.version('openvino')}", "precision": precisions}


def outline_on_request_figures(pipeline, res: pd.DataFrame, transform=None) -> dict:
    """Dice of the outline on request on the tumour slices the classifier missed (``run_pipeline``'s rows).

    These are the slices where the Analyze page's "Outline anyway" button
    matters: the cascade left them unoutlined. Dice per slice at the shipped
    mask threshold, overall and per source.
    """
    missed = res[(res["label"] != "no_tumor") & (res["p_tumor"] < pipeline.tumor_threshold)]
    dices, sources = [], []
    for image_file, truth, source in zip(missed["image_file"], missed["truth"], missed["source"], strict=True):
        rgb = read_image(image_file)
        if transform is not None:
            rgb = transform(rgb)
        predicted = threshold_mask(pipeline.segment(rgb), pipeline.mask_threshold, pipeline.min_component_fraction)
        dices.append(metrics.dice(truth, predicted))
        sources.append(source)
    frame = pd.DataFrame({"dice": dices, "source": sources})

    def figures(part: pd.DataFrame) -> dict:
        return {
            "n_missed_tumour_slices": len(part),
            "dice_mean": float(part["dice"].mean()) if len(part) else None,
            "dice_median": float(part["dice"].median()) if len(part) else None,
            "share_dice_at_least_0_5": float((part["dice"] >= 0.5).mean()) if len(part) else None,
        }

    out = figures(frame)
    out["per_source"] = {src: figures(part) for src, part in frame.groupby("source")}
    return out


def refused_summary(res: pd.DataFrame) -> dict:
    """Counts of the rows the app refused, by source and label, and the distinct messages (first clause)."""
    refused = pd.DataFrame(res.attrs.get("refused", []), columns=["source", "label", "reason"])
    return {
        "n": len(refused),
        "by_source": {k: int(v) for k, v in refused["source"].value_counts().sort_index().items()},
        "by_label": {k: int(v) for k, v in refused["label"].value_counts().sort_index().items()},
        "reasons": sorted({r.split(":")[0] for r in refused["reason"]}),
    }


def _mask(
    prob_map: np.ndarray | None, shape: tuple[int, int], threshold: float, min_fraction: float = 0.0
) -> np.ndarray:
    """The mask as ``Analysis.mask`` makes it; all False where the segmenter did not run."""
    return np.zeros(shape, bool) if prob_map is None else threshold_mask(prob_map, threshold, min_fraction)


def _summary(
    res: pd.DataFrame, tumor_threshold: float | np.ndarray, mask_threshold: float, min_fraction: float = 0.0
) -> dict:
    """Detection, type and segmentation figures for the rows of ``res`` (one tumour threshold, or one per row)."""
    y = (res["label"] != "no_tumor").to_numpy()
    p = res["p_tumor"].to_numpy(dtype=float)
    out: dict = {"n_slices": len(res), "n_tumor": int(y.sum()), "n_no_tumor": int((~y).sum())}

    detected = p >= tumor_threshold
    sens, spec = metrics.sensitivity_specificity(y, detected)
    det = {
        "threshold": tumor_threshold,
        "sensitivity": None if np.isnan(sens) else float(sens),
        "specificity": None if np.isnan(spec) else float(spec),
        "auc": None,
    }
    if y.any() and (~y).any():
        det["auc"] = float(roc_auc_score(y, p))
        fpr, tpr, _ = roc_curve(y, p)
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(ROC_POINTS, len(fpr))).round().astype(int))
        det["roc"] = {"fpr": fpr[keep].round(4).tolist(), "tpr": tpr[keep].round(4).tolist()}
    out["detection"] = det

    tumour = res[y]
    type_acc = float((tumour["type_pred"] == tumour["label"]).mean()) if len(tumour) else None
    cm = confusion_matrix(res["label"], res["pred"], labels=list(CLASS_NAMES))
    out["type"] = {
        "accuracy": type_acc,
        "cascade_accuracy": float((res["pred"] == res["label"]).mean()) if len(res) else None,
        "labels": list(CLASS_NAMES),
        "confusion": cm.tolist(),
    }

    out["segmentation"] = _segmentation(res, mask_threshold, min_fraction)
    return out


def _overlaps(res: pd.DataFrame, mask_threshold: float, min_fraction: float = 0.0) -> np.ndarray:
    """Per row, the pixel counts (intersection, predicted, expert) of the app's mask against the expert one."""
    counts = np.zeros((len(res), 3), np.int64)
    for k, (prob_map, truth) in enumerate(zip(res["prob_map"], res["truth"], strict=True)):
        pred = _mask(prob_map, truth.shape, mask_threshold, min_fraction)
        counts[k] = (np.logical_and(pred, truth).sum(), pred.sum(), truth.sum())
    return counts


def _dice_from_counts(counts: np.ndarray) -> np.ndarray:
    """Dice 2|A∩B| / (|A| + |B|) of each (intersection, predicted, expert) row; 1.0 where both are empty."""
    counts = np.atleast_2d(counts)
    total = counts[:, 1] + counts[:, 2]
    return np.where(total > 0, 2.0 * counts[:, 0] / np.maximum(total, 1), 1.0)


def _segmentation(res: pd.DataFrame, mask_threshold: float, min_fraction: float = 0.0) -> dict:
    """Dice figures of the rows' masks; a row without a map (segmenter not run) has an empty mask.

    Every tumour slice's Dice, their mean and the figshare mean, and the LGG Dice
    per patient with pixels pooled over all of that patient's slices (1.0 for a
    patient with no tumour and nothing drawn). Missing ``source`` or
    ``patient_id`` columns count as neither source.
    """
    blank = pd.Series("", index=res.index)
    sources, patients = res.get("source", blank), res.get("patient_id", blank)
    counts = _overlaps(res, mask_threshold, min_fraction)
    dices, fig, pooled = {}, [], {}
    for i, row_counts, source, patient in zip(res.index, counts, sources, patients, strict=True):
        if source == LGG:
            pooled[patient] = pooled.get(patient, 0) + row_counts
        if row_counts[2]:  # the expert marked tumour on this slice
            dices[i] = float(_dice_from_counts(row_counts)[0])
            if source == FIGSHARE:
                fig.append(dices[i])
    patient_dice = {p: float(_dice_from_counts(c)[0]) for p, c in sorted(pooled.items())}
    return {
        "mask_threshold": mask_threshold,
        "min_component_fraction": min_fraction,
        "tumor_slice_dice_mean": float(np.mean(list(dices.values()))) if dices else None,
        "dice_values": [round(float(v), 4) for v in dices.values()],
        "figshare_slice_dice_mean": float(np.mean(fig)) if fig else None,
        "lgg_patient_dice_mean": float(np.mean(list(patient_dice.values()))) if patient_dice else None,
        "lgg_patient_dice": {k: round(float(v), 4) for k, v in patient_dice.items()},
    }


def resampling_units(res: pd.DataFrame) -> pd.Series:
    """The unit each row is resampled with in ``bootstrap_intervals``.

    LGG rows go by patient and healthy rows by near-duplicate group (their
    ``group_id``); figshare rows by slice, because no patient IDs survive in
    that dataset (its groups are whole folds). Rows without a ``group_id``
    column count as single slices.
    """
    slice_ids = pd.Series([f"slice:{i}" for i in res.index], index=res.index)
    if "group_id" not in res:
        return slice_ids
    units = res["group_id"].astype(str)
    by_slice = (res.get("source", pd.Series("", index=res.index)) == FIGSHARE) | res["group_id"].isna()
    return units.where(~by_slice, slice_ids)


def bootstrap_intervals(
    res: pd.DataFrame,
    tumor_threshold: float,
    mask_threshold: float,
    min_fraction: float = 0.0,
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile bootstrap intervals of the headline figures, resampling whole units within each source.

    A unit is an LGG patient, a healthy near-duplicate group, or a figshare
    slice (``resampling_units``); figshare slices of one patient are not
    independent, so its intervals are too narrow. Each replicate draws, for each
    source, as many units as it has, with replacement.

    Args:
        res: ``run_pipeline`` rows with the cascade applied (``prob_map`` None
            where the segmenter did not run).
        tumor_threshold, mask_threshold, min_fraction: the shipped settings.
        n_resamples: bootstrap replicates.
        seed: seed of the replicates, so a rerun gives the same intervals.
        level: coverage of the intervals.

    Returns:
        ``{"level", "n_resamples", "seed", "units", "intervals": {name: [low, high]}}``
        for ``auc``, ``sensitivity``, ``specificity``, ``type_accuracy``,
        ``lgg_patient_dice_mean`` and ``figshare_slice_dice_mean``; a figure
        that the rows cannot give (no negatives, no LGG) is left out.
    """
    y = (res["label"] != "no_tumor").to_numpy()
    p = res["p_tumor"].to_numpy(dtype=float)
    detected = p >= tumor_threshold
    type_ok = (res["type_pred"] == res["label"]).to_numpy()
    sources = res.get("source", pd.Series("", index=res.index)).to_numpy()
    counts = _overlaps(res, mask_threshold, min_fraction)
    dice = np.where(counts[:, 2] > 0, _dice_from_counts(counts), np.nan)  # NaN: no expert tumour on the slice
    units = resampling_units(res).to_numpy()
    rows_of = {u: np.flatnonzero(units == u) for u in dict.fromkeys(units)}
    strata = [[u for u in rows_of if sources[rows_of[u][0]] == s] for s in dict.fromkeys(sources)]
    fig, lgg = sources == FIGSHARE, sources == LGG

    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        picked = [stratum[j] for stratum in strata for j in rng.choice(len(stratum), len(stratum))]
        idx = np.concatenate([rows_of[u] for u in picked])
        yy, dd = y[idx], detected[idx]
        figures = {}
        if yy.any() and (~yy).any():
            figures["auc"] = roc_auc_score(yy, p[idx])
        if yy.any():
            figures["sensitivity"] = dd[yy].mean()
            figures["type_accuracy"] = type_ok[idx][yy].mean()
        if (~yy).any():
            figures["specificity"] = (~dd[~yy]).mean()
        fig_dice = dice[idx][fig[idx] & ~np.isnan(dice[idx])]
        if len(fig_dice):
            figures["figshare_slice_dice_mean"] = fig_dice.mean()
        lgg_units = [u for u in picked if lgg[rows_of[u][0]]]
        if lgg_units:
            pooled = np.array([counts[rows_of[u]].sum(axis=0) for u in lgg_units])
            figures["lgg_patient_dice_mean"] = _dice_from_counts(pooled).mean()
        for name, value in figures.items():
            draws.setdefault(name, []).append(float(value))
    tail = 100 * (1 - level) / 2
    return {
        "level": level,
        "n_resamples": n_resamples,
        "seed": seed,
        "units": "LGG patient; healthy near-duplicate group; figshare slice (no patient IDs)",
        "intervals": {
            name: [round(float(np.percentile(v, tail)), 4), round(float(np.percentile(v, 100 - tail)), 4)]
            for name, v in draws.items()
        },
    }


def compute_metrics(
    res: pd.DataFrame, tumor_threshold: float, mask_threshold: float, min_fraction: float = 0.0
) -> dict:
    """Overall figures plus ``per_source.<source>`` for the analysed rows."""
    result = _summary(res, tumor_threshold, mask_threshold, min_fraction)
    result["per_source"] = {
        source: _summary(part, tumor_threshold, mask_threshold, min_fraction) for source, part in res.groupby("source")
    }
    for part in result["per_source"].values():
        part["segmentation"].pop("dice_values", None)
    return result


def apply_cascade(res: pd.DataFrame, tumor_threshold: float | np.ndarray) -> pd.DataFrame:
    """``res`` as the app would have it at ``tumor_threshold``: no map where the slice is negative.

    ``tumor_threshold`` is one threshold for every row, or one per row.
    """
    out = res.copy()
    detected = res["p_tumor"].to_numpy(dtype=float) >= np.asarray(tumor_threshold, dtype=float)
    out["prob_map"] = [pm if d else None for pm, d in zip(res["prob_map"], detected, strict=True)]
    return out


def segmentation_score(res: pd.DataFrame, tumor_threshold: float, mask_threshold: float, min_fraction: float) -> float:
    """What mask calibration maximises: the scored segmentation figures, cascade applied.

    A slice with P(tumour) below ``tumor_threshold`` gets an empty mask, as in
    the app; the figures are then combined by ``_objective``.
    """
    return _objective(_segmentation(apply_cascade(res, tumor_threshold), mask_threshold, min_fraction))


def _objective(seg: dict) -> float:
    """The mean of the figshare per-slice Dice and the LGG per-patient Dice, over
    whichever of the two sources the rows hold; the mean Dice over tumour slices
    when they hold neither (a new site's manifest)."""
    parts = [v for v in (seg["figshare_slice_dice_mean"], seg["lgg_patient_dice_mean"]) if v is not None]
    if not parts and seg["tumor_slice_dice_mean"] is not None:
        parts = [seg["tumor_slice_dice_mean"]]
    return float(np.mean(parts)) if parts else 0.0


def selection_score(summary: dict) -> float:
    """The score that chooses between settings or models: AUC + type accuracy + segmentation objective.

    ``summary`` is ``_summary``'s output at the settings being scored.
    """
    return summary["detection"]["auc"] + summary["type"]["accuracy"] + _objective(summary["segmentation"])


def detection_threshold(res: pd.DataFrame, min_sensitivity: float = 0.95) -> float:
    """The tumour threshold ``calibrate`` picks on these rows' P(tumour) and labels.

    The largest Youden's J among thresholds that keep sensitivity at
    ``min_sensitivity`` or more, rounded down to 4 decimals, within 0.05-0.95.
    """
    y = (res["label"] != "no_tumor").to_numpy()
    p = res["p_tumor"].to_numpy(dtype=float)
    fpr, tpr, thr = roc_curve(y, p)
    ok = tpr >= min_sensitivity
    j = np.where(ok, tpr - fpr, -np.inf)
    # Rounded down to 4 decimals: rounding up could pass the tumour slice that
    # sits on the threshold and break the sensitivity floor.
    return float(np.clip(np.floor(thr[int(np.argmax(j))] * 1e4) / 1e4, 0.05, 0.95))


def calibrate(res: pd.DataFrame, min_sensitivity: float = 0.95) -> tuple[float, float, float]:
    """Picks thresholds on validation rows.

    The tumour threshold maximises Youden's J among thresholds that keep
    sensitivity at ``min_sensitivity`` or more (a missed tumour costs more than a
    false alarm). With it applied as in the app, the mask threshold maximises
    ``segmentation_score`` (the figures the bars are set on); then, at that
    threshold, so does the smallest kept component (0 = keep all).

    ``res`` must hold a probability map for every row (run with a tumour
    threshold of 0), so that any tumour threshold can be applied afterwards.

    Returns:
        ``(tumor_threshold, mask_threshold, min_component_fraction)``.
    """
    tumor_t = detection_threshold(res, min_sensitivity)
    if not any(t.any() for t in res["truth"]):
        return tumor_t, 0.5, 0.0
    mask_t = max((float(t) for t in MASK_THRESHOLDS), key=lambda t: segmentation_score(res, tumor_t, t, 0.0))
    min_frac = max(MIN_COMPONENT_FRACTIONS, key=lambda f: segmentation_score(res, tumor_t, mask_t, f))
    return tumor_t, mask_t, float(min_frac)


def calibrated_report(res: pd.DataFrame, *, by_mask_threshold: bool = True) -> dict:
    """Calibrates on ``res`` (a map on every row) and returns the figures behind the choice.

    The score that chooses between settings or models is AUC + type accuracy +
    segmentation objective, with the chosen thresholds applied as in the app.

    Returns:
        ``tumor_threshold``, ``mask_threshold``, ``min_component_fraction``,
        ``val_score`` and the validation figures at those settings; with
        ``by_mask_threshold``, also the objective at every mask threshold.
    """
    tumor_t, mask_t, min_frac = calibrate(res)
    shipped = apply_cascade(res, tumor_t)  # the val figures `evaluate --split val` gives at these settings
    m = _summary(shipped, tumor_t, mask_t, min_frac)
    seg = m["segmentation"]
    every = _segmentation(res, mask_t, min_frac)
    objective = _objective(seg)
    report = {
        "tumor_threshold": tumor_t,
        "mask_threshold": mask_t,
        "min_component_fraction": min_frac,
        "val_score": selection_score(m),
        "val_auc": m["detection"]["auc"],
        "val_sensitivity": m["detection"]["sensitivity"],
        "val_specificity": m["detection"]["specificity"],
        "val_type_accuracy": m["type"]["accuracy"],
        "val_segmentation_objective": objective,
        "val_lgg_patient_dice": seg["lgg_patient_dice_mean"],
        "val_figshare_slice_dice": seg["figshare_slice_dice_mean"],
        "val_tumor_slice_dice": seg["tumor_slice_dice_mean"],
        "val_lgg_patient_dice_every_slice_segmented": every["lgg_patient_dice_mean"],
    }
    if by_mask_threshold:
        report["val_objective_by_mask_threshold"] = {
            str(float(t)): round(segmentation_score(res, tumor_t, float(t), 0.0), 4) for t in MASK_THRESHOLDS
        }
    return report


def calibration_document(split: str, candidates: list[dict], note: str = "") -> dict:
    """The ``calibration.json`` record: every candidate's figures and the settings of the best one.

    Args:
        split: the split the figures come from (``"val"``).
        candidates: ``{"flip_tta": bool, **calibrated_report(...)}`` per setting tried.
        note: where the figures come from, kept in the file when given.

    Returns:
        ``{"split", "candidates", "chosen"[, "note"]}``; ``chosen`` holds the
        flip setting and thresholds of the candidate with the highest ``val_score``.
    """
    best = max(candidates, key=lambda c: c["val_score"])
    keys = ("flip_tta", "tumor_threshold", "mask_threshold", "min_component_fraction")
    doc = {"split": split, "candidates": candidates, "chosen": {k: best[k] for k in keys}}
    if note:
        doc["note"] = note
    return doc


def _calibrate_cli(pipeline, df: pd.DataFrame, args: argparse.Namespace) -> None:
    """Chooses thresholds and flip-TTA on ``df`` and writes them to the weights manifest."""
    from tumor import weights as weights_lib

    candidates = {}
    for tta in {"both": (False, True), "on": (True,), "off": (False,)}[args.flip_tta]:
        # Every slice segmented (tumour threshold 0), so that the mask threshold can be chosen.
        trial = pipeline.with_settings(tumor_threshold=0.0, flip_tta=tta)
        candidates[tta] = {"flip_tta": tta, **calibrated_report(run_pipeline(trial, df))}
        print(json.dumps(candidates[tta]), flush=True)
    doc = calibration_document(args.split, list(candidates.values()))
    chosen = doc["chosen"]
    tta = chosen["flip_tta"]
    tumor_t, mask_t, min_frac = chosen["tumor_threshold"], chosen["mask_threshold"], chosen["min_component_fraction"]
    wdir = Path(args.weights or weights_lib.DEFAULT_WEIGHTS_DIR)
    manifest = json.loads((wdir / weights_lib.MANIFEST_NAME).read_text())
    manifest["thresholds"] = {
        "tumor": tumor_t,
        "mask": mask_t,
        "min_component_fraction": min_frac,
        "chosen_on": f"{args.split} split",
    }
    manifest["flip_tta"] = tta
    (wdir / weights_lib.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    (wdir / "calibration.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({"chosen": chosen}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--manifest",
        action="append",
        required=True,
        help="manifest CSV to evaluate; repeat for several, e.g. the BraTS FLAIR one too (default: none)",
    )
    parser.add_argument(
        "--outline-missed",
        action="store_true",
        help="also run the segmenter on the tumour slices the classifier missed (the outline on request) and report "
        "their Dice (default: off)",
    )
    parser.add_argument(
        "--split",
        choices=["train", "val", "test", "all"],
        default="all",
        help="rows to evaluate, by the committed split; 'all' takes every row (default: %(default)s)",
    )
    parser.add_argument("--weights", default=None, help="weights folder (default: the repository's weights/)")
    parser.add_argument("--out", default="metrics.json", help="JSON file to write (default: %(default)s)")
    parser.add_argument(
        "--limit", type=int, default=0, help="evaluate only the first N rows, 0 = all (default: %(default)s)"
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="choose thresholds on these rows and write them to the weights manifest (default: off)",
    )
    parser.add_argument(
        "--flip-tta",
        choices=["both", "on", "off"],
        default="both",
        help="with --calibrate: try flip averaging on and off, or fix it (default: %(default)s)",
    )
    parser.add_argument(
        "--source", default="", help="evaluate only the rows of this source, e.g. lgg_kaggle_3m (default: every source)"
    )
    parser.add_argument(
        "--flair-only",
        action="store_true",
        help="stress test: replace every slice by its middle (FLAIR) channel before analysis (default: off)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "f32", "bf16"],
        default="auto",
        help="precision of the compiled networks; 'auto' is what the app runs here (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.calibrate and args.flair_only:
        parser.error("--flair-only is a stress test; thresholds are chosen on the slices as they are")

    df = data.read_manifests(args.manifest)
    if args.split != "all":
        df = data.load_split(df)
        df = df[df["split"] == args.split]
    if args.source:
        if args.source not in set(df["source"]):
            parser.error(f"--source {args.source!r} matches no row; its sources: {sorted(set(df['source']))}")
        df = df[df["source"] == args.source]
    if args.limit:
        df = df.head(args.limit)
    pipeline = Pipeline.from_weights_dir(args.weights, precision=args.precision)
    t0 = time.monotonic()
    if args.calibrate:
        if pipeline.detect_fusion is not None:
            # The fusion's intercept maps its greyscale threshold onto the shipped tumour threshold: a new
            # tumour threshold moves the greyscale operating point too, unchosen, until the fusion is refitted.
            print(
                "note: these weights ship a detection fusion; after a new tumour threshold, refit it with "
                "python -m tumor.lab.detect_fusion --write <weights>/detect_fusion.json",
                flush=True,
            )
        _calibrate_cli(pipeline, df, args)
        return
    res = run_pipeline(pipeline, df, transform=flair_only if args.flair_only else None)
    result = compute_metrics(res, pipeline.tumor_threshold, pipeline.mask_threshold, pipeline.min_component_fraction)
    result["refused"] = refused_summary(res)
    result["confidence"] = bootstrap_intervals(
        res, pipeline.tumor_threshold, pipeline.mask_threshold, pipeline.min_component_fraction
    )
    result["model_version"] = pipeline.version
    result["weights_sha256"] = pipeline.weights_sha256
    result["manifest"] = " + ".join(Path(m).name for m in args.manifest)
    if args.outline_missed:
        result["outline_on_request"] = outline_on_request_figures(
            pipeline, res, transform=flair_only if args.flair_only else None
        )
    result["split"] = args.split
    result["source"] = args.source or "all"
    result["flair_only"] = args.flair_only
    result["runtime"] = runtime_record(pipeline)
    result["seconds"] = round(time.monotonic() - t0, 1)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    headline = {
        "n_slices": result["n_slices"],
        "n_refused": result["refused"]["n"],
        "detection.auc": result["detection"]["auc"],
        "sensitivity": result["detection"]["sensitivity"],
        "specificity": result["detection"]["specificity"],
        "type.accuracy": result["type"]["accuracy"],
        "lgg_patient_dice_mean": result["segmentation"]["lgg_patient_dice_mean"],
        "figshare_slice_dice_mean": result["segmentation"]["figshare_slice_dice_mean"],
    }
    print(json.dumps(headline, indent=2))


if __name__ == "__main__":
    main()
