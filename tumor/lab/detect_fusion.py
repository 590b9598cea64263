"""Segmentation-guided detection on greyscale slices, judged on validation: ``python -m tumor.lab.detect_fusion``.

The candidate of rule 1.10.0 a (``docs/experiments.md``, fixed before any
figure): on a greyscale slice the greyscale segmenters see tumours that the
classifiers miss (the outline on request finds them), so there P(tumour)
becomes a logistic regression over ``FEATURES``: the classifiers' logit
P(tumour) and three numbers of the greyscale segmenters' map. Colour slices
keep the classifiers' P(tumour).

It reads the shipped set's per-network outputs that
``tumor.lab.compare_ensembles`` caches (every slice segmented, flip averaging
as shipped, f32) for the validation split of each manifest and for the
validation LGG slices made FLAIR-only (run that command first; this one runs
any network whose outputs are missing). The regression is fitted on the
greyscale rows and the FLAIR-only rows, and judged by cross-fitting with the
type fusion's folds (``tumor.lab.fusion.folds``: patients whole, figshare in
file-order blocks within each type): no row is scored by a regression that saw
it. The greyscale tumour threshold is then chosen on the cross-fitted rows,
by the shipped rule (``evaluate.detection_threshold``; rule 1.10.0 a) or within
the specificity guard (``threshold_within_specificity``; rule 1.10.0 b, the
default), and the figures are compared with the shipped set at its one
threshold.

Writes the figures and the verdict to ``--out``. With ``--write PATH``, and
only when the rule adopts it, also the fusion fitted on every pool row
(``shipped_fusion``): the file ``weights/detect_fusion.json`` came from that.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve

from tumor import fusion as fusion_lib
from tumor import weights as weights_lib
from tumor.lab import data
from tumor.lab.compare_ensembles import combine, ensemble_outputs, split_threshold_figures
from tumor.lab.evaluate import LGG, _segmentation, apply_cascade, detection_threshold, flair_only
from tumor.lab.fusion import folds
from tumor.metrics import at_least

# The rule and the fit, fixed before the first figure (docs/experiments.md, 1.10.0 a).
FEATURES = fusion_lib.DETECTION_FEATURES
C = 1.0
N_FOLDS = 5
MIN_FLAIR_SENSITIVITY_GAIN = 0.05
MAX_GREY_SPECIFICITY_DROP = 0.01
MAX_SCORE_DROP = 0.002


def detection_features(p_tumor: np.ndarray, maps: list[np.ndarray]) -> np.ndarray:
    """``tumor.fusion.detection_features`` of each row: (N,) P(tumour) and N maps -> (N, F) float64."""
    return np.stack([fusion_lib.detection_features(p, m) for p, m in zip(p_tumor, maps, strict=True)])


def fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, LogisticRegression]:
    """Standardisation and a logistic regression fitted on ``x`` (N, F) and tumour labels ``y`` (N,) bool."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    model = LogisticRegression(C=C, max_iter=1000).fit((x - mean) / scale, y.astype(int))
    return mean, scale, model


def crossfit_probabilities(x: np.ndarray, y: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """P(tumour) of every row from a regression fitted on the other folds only."""
    out = np.zeros(len(y))
    for k in np.unique(fold):
        held = fold == k
        mean, scale, model = fit(x[~held], y[~held])
        out[held] = model.predict_proba((x[held] - mean) / scale)[:, 1]
    return out


def threshold_within_specificity(pool: pd.DataFrame, healthy_grey_p: np.ndarray, min_specificity: float) -> float:
    """Rule 1.10.0 b: the largest Youden's J on ``pool`` among thresholds that keep a specificity floor.

    ``healthy_grey_p`` holds P(tumour) of the validation greyscale tumour-free
    rows; a threshold qualifies when at least ``min_specificity`` of them stay
    under it. Rounded up to 4 decimals (rounding down could let one of those
    rows pass and break the floor), within 0.05-0.95.
    """
    y = (pool["label"] != "no_tumor").to_numpy()
    fpr, tpr, thr = roc_curve(y, pool["p_tumor"].to_numpy(dtype=float))
    thr = np.clip(np.ceil(np.minimum(thr, 1.0) * 1e4) / 1e4, 0.05, 0.95)
    spec = np.array([(healthy_grey_p < t).mean() for t in thr])
    j = np.where(spec >= min_specificity, tpr - fpr, -np.inf)
    if not np.isfinite(j).any():
        return 0.95
    return float(thr[int(np.argmax(j))])


def pool_rows(res: pd.DataFrame, stress: pd.DataFrame) -> pd.DataFrame:
    """The rows the regression is fitted on: the greyscale rows as acquired, then the FLAIR-only LGG rows."""
    return pd.concat([res[res["grey"].to_numpy(bool)], stress], ignore_index=True)


def shipped_fusion(pool: pd.DataFrame, grey_threshold: float, tumor_threshold: float, fitted_on: str):
    """The shipped fusion: fitted on every pool row, intercept shifted so ``grey_threshold`` is ``tumor_threshold``."""
    x = detection_features(pool["p_tumor"].to_numpy(), list(pool["prob_map"]))
    mean, scale, model = fit(x, (pool["label"] != "no_tumor").to_numpy())

    def logit(q: float) -> float:
        return float(np.log(q / (1 - q)))

    return fusion_lib.DetectionFusion(
        mean=mean,
        scale=scale,
        coef=model.coef_[0],
        intercept=float(model.intercept_[0]) - logit(grey_threshold) + logit(tumor_threshold),
        fitted_on=fitted_on,
    )


def _fold_arrays(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    return {k: rows[k].astype(str).to_numpy() for k in ("label", "source", "group_id", "orig_name")}


def brats_figures(rows: pd.DataFrame, grey_threshold: float, mask_threshold: float, min_fraction: float) -> dict:
    """Sensitivity and mean Dice over the tumour slices of ``rows`` (BraTS: all greyscale), cascade applied.

    A tumour slice under ``grey_threshold`` gets no mask and a Dice of 0, as
    in the app. ``None`` for both where ``rows`` hold no tumour slice.
    """
    tumour = rows[rows["label"] != "no_tumor"].reset_index(drop=True)
    if tumour.empty:
        return {"brats_sensitivity": None, "n_brats_tumour": 0, "brats_slice_dice": None}
    seg = _segmentation(apply_cascade(tumour, grey_threshold), mask_threshold, min_fraction)
    return {
        "brats_sensitivity": float((tumour["p_tumor"] >= grey_threshold).mean()),
        "n_brats_tumour": len(tumour),
        "brats_slice_dice": seg["tumor_slice_dice_mean"],
    }


def judge(res: pd.DataFrame, stress: pd.DataFrame, registry: weights_lib.Registry, threshold_rule: str = "b") -> dict:
    """The rule's figures: the shipped set at its one threshold against the cross-fitted candidate.

    ``res`` holds the shipped set's outputs on the validation rows as acquired
    (a map on every row, ``grey`` flags, ``source``), ``stress`` on the LGG
    rows made FLAIR-only. ``threshold_rule`` "a" picks the greyscale threshold
    by the shipped rule (sensitivity at least 0.95 first), "b" within the
    specificity guard (``threshold_within_specificity``).
    """
    settings = {"mask_threshold": registry.mask_threshold, "min_fraction": registry.min_component_fraction}
    t = registry.tumor_threshold
    main_rows = res["source"] != "brats_flair"

    def figures(r: pd.DataFrame, s: pd.DataFrame, t_grey: float) -> dict:
        every = split_threshold_figures(r, s, tumor_threshold=t, grey_threshold=t_grey, **settings)
        main = split_threshold_figures(
            r[main_rows].reset_index(drop=True), s, tumor_threshold=t, grey_threshold=t_grey, **settings
        )
        brats = brats_figures(r[~main_rows], t_grey, **settings)
        return {
            "grey_threshold": t_grey,
            "score_manifest_val": main["val_score"],
            "sensitivity": every["val_sensitivity"],
            "specificity": every["val_specificity"],
            "specificity_grey_healthy": every["val_specificity_grey_healthy"],
            "n_grey_healthy": every["n_grey_healthy"],
            **brats,
            "flair_only_lgg_sensitivity": every["val_lgg_sensitivity_flair_only"],
            "flair_only_lgg_patient_dice": every["val_lgg_patient_dice_flair_only"],
            "lgg_patient_dice": main["val_lgg_patient_dice"],
            "figshare_slice_dice": main["val_figshare_slice_dice"],
        }

    shipped = figures(res, stress, t)
    grey = res["grey"].to_numpy(bool)
    pool = pool_rows(res, stress)
    x = detection_features(pool["p_tumor"].to_numpy(), list(pool["prob_map"]))
    y = (pool["label"] != "no_tumor").to_numpy()
    p = crossfit_probabilities(x, y, folds(_fold_arrays(pool), N_FOLDS))
    fused_res, fused_stress = res.copy(), stress.copy()
    fused_res.loc[grey, "p_tumor"] = p[: grey.sum()]
    fused_stress["p_tumor"] = p[grey.sum() :]
    fused_pool = pool_rows(fused_res, fused_stress)
    if threshold_rule == "a":
        t_grey = detection_threshold(fused_pool)
    else:
        healthy = fused_res[grey & (res["label"] == "no_tumor").to_numpy()]["p_tumor"].to_numpy(float)
        floor = shipped["specificity_grey_healthy"] - MAX_GREY_SPECIFICITY_DROP
        t_grey = threshold_within_specificity(fused_pool, healthy, floor)
    candidate = figures(fused_res, fused_stress, t_grey)
    checks = {
        "flair_only_sensitivity_gain": at_least(
            candidate["flair_only_lgg_sensitivity"] - shipped["flair_only_lgg_sensitivity"], MIN_FLAIR_SENSITIVITY_GAIN
        ),
        "flair_only_dice_not_lower": at_least(
            candidate["flair_only_lgg_patient_dice"], shipped["flair_only_lgg_patient_dice"]
        ),
        "brats_sensitivity_not_lower": at_least(candidate["brats_sensitivity"] or 0, shipped["brats_sensitivity"] or 0),
        "grey_specificity": at_least(
            candidate["specificity_grey_healthy"], shipped["specificity_grey_healthy"] - MAX_GREY_SPECIFICITY_DROP
        ),
        "score": at_least(candidate["score_manifest_val"], shipped["score_manifest_val"] - MAX_SCORE_DROP),
    }
    return {
        "threshold_rule": threshold_rule,
        "features": list(FEATURES),
        "n_pool": len(pool),
        "n_pool_tumour": int(y.sum()),
        "shipped": shipped,
        "candidate": candidate,
        "checks": checks,
        "adopt": all(checks.values()),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--manifest",
        action="append",
        default=None,
        help=f"manifest CSV; repeat for several (default: {' and '.join(data.DEFAULT_MANIFESTS)})",
    )
    p.add_argument(
        "--weights", default=str(weights_lib.DEFAULT_WEIGHTS_DIR), help="shipped weights (default: %(default)s)"
    )
    p.add_argument("--cache", default="runs/cache", help="compare_ensembles' output cache (default: %(default)s)")
    p.add_argument(
        "--threshold-rule",
        choices=["a", "b"],
        default="b",
        help="greyscale threshold: a = the shipped rule (1.10.0 a), b = within the specificity guard (default: b)",
    )
    p.add_argument("--out", default="runs/detect_fusion.json", help="JSON to write (default: %(default)s)")
    p.add_argument(
        "--write",
        default="",
        metavar="PATH",
        help="when the rule adopts it, also fit the fusion on every pool row and write it here, e.g. "
        "weights/detect_fusion.json (default: none)",
    )
    args = p.parse_args(argv)

    registry = weights_lib.read_registry(args.weights)
    classifiers, segmenters = registry.members("classifier"), registry.members("segmenter")
    cache = Path(args.cache)

    def shipped_rows(frame: pd.DataFrame, tag: str, transform=None) -> pd.DataFrame:
        """The shipped set's rows, its networks run (or read from the cache) as compare_ensembles runs them."""
        nets = ensemble_outputs(
            classifiers, segmenters, frame, tag=tag, flip_tta=registry.flip_tta, cache_dir=cache, transform=transform
        )

        def rows(kind: str, entries) -> list[pd.DataFrame]:
            return [nets[kind][e.name] for e in entries]

        return combine(
            rows("classifier", classifiers),
            rows("segmenter", [e for e in segmenters if e.inputs in ("all", "colour")]),
            rows("segmenter", [e for e in segmenters if e.inputs in ("all", "grey")]),
        )

    parts, stress = [], None
    for manifest in args.manifest or data.DEFAULT_MANIFESTS:
        df = data.load_split(data.read_manifest(manifest))
        df = df[df["split"] == "val"]
        tag = f"{Path(manifest).stem}_val_n{len(df)}"
        parts.append(shipped_rows(df, tag))
        if (df["source"] == LGG).any():
            stress = shipped_rows(df[df["source"] == LGG], f"{tag}_lgg_flair", transform=flair_only)
    if stress is None:
        raise SystemExit("No LGG rows among the manifests: the FLAIR-only figures need them.")
    res = pd.concat(parts, ignore_index=True)
    result = judge(res, stress, registry, args.threshold_rule)
    if args.write and result["adopt"]:
        fused = shipped_fusion(
            pool_rows(res, stress),
            result["candidate"]["grey_threshold"],
            registry.tumor_threshold,
            f"validation greyscale rows ({', '.join(Path(m).name for m in args.manifest or data.DEFAULT_MANIFESTS)}) "
            f"and validation LGG made FLAIR-only, {result['n_pool']} rows; greyscale threshold "
            f"{result['candidate']['grey_threshold']} (rule 1.10.0 {args.threshold_rule}, cross-fitted) shifted onto "
            f"the tumour threshold {registry.tumor_threshold}",
        )
        Path(args.write).write_text(fused.to_json())
        result["written"] = args.write
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
