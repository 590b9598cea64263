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
it. The greyscale tumour threshold is then chosen by the shipped rule
(``evaluate.detection_threshold``) on the cross-fitted rows, and the figures
are compared with the shipped set at its one threshold.

Writes the figures and the verdict to ``--out``; changes nothing in
``weights/``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from tumor import weights as weights_lib
from tumor.lab import data
from tumor.lab.compare_ensembles import combine, network_outputs, split_threshold_figures
from tumor.lab.evaluate import LGG, detection_threshold, flair_only
from tumor.lab.fusion import folds

# The rule and the fit, fixed before the first figure (docs/experiments.md, 1.10.0 a).
FEATURES = ("logit_p_tumor", "map_max", "log_map_mean", "log_share_half")
MAP_FLOOR = 0.05  # map values under this count as background in log_map_mean
EPS = 1e-4
C = 1.0
N_FOLDS = 5
MIN_FLAIR_SENSITIVITY_GAIN = 0.05
MAX_GREY_SPECIFICITY_DROP = 0.01
MAX_SCORE_DROP = 0.002
CLASSIFIERS = ("classifier", "classifier_2")
COLOUR_SEGMENTERS = ("segmenter", "segmenter_2")
GREY_SEGMENTERS = ("segmenter_3", "segmenter_4")


def detection_features(p_tumor: np.ndarray, maps: list[np.ndarray]) -> np.ndarray:
    """``FEATURES`` of each row: (N,) classifier P(tumour) and N maps in [0, 1] -> (N, 4) float64."""
    p = np.clip(np.asarray(p_tumor, dtype=np.float64), EPS, 1 - EPS)
    out = np.zeros((len(p), len(FEATURES)))
    out[:, 0] = np.log(p / (1 - p))
    for i, m in enumerate(maps):
        m = np.asarray(m, dtype=np.float64)
        out[i, 1] = m.max() if m.size else 0.0
        out[i, 2] = np.log(np.where(m >= MAP_FLOOR, m, 0.0).mean() + EPS)
        out[i, 3] = np.log((m >= 0.5).mean() + EPS)
    return out


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


def _fold_arrays(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    return {k: rows[k].astype(str).to_numpy() for k in ("label", "source", "group_id", "orig_name")}


def judge(res: pd.DataFrame, stress: pd.DataFrame, registry: weights_lib.Registry) -> dict:
    """The rule's figures: the shipped set at its one threshold against the cross-fitted candidate.

    ``res`` holds the shipped set's outputs on the validation rows as acquired
    (a map on every row, ``grey`` flags, ``source``), ``stress`` on the LGG
    rows made FLAIR-only.
    """
    settings = {"mask_threshold": registry.mask_threshold, "min_fraction": registry.min_component_fraction}
    t = registry.tumor_threshold
    main_rows = res["source"] != "brats_flair"

    def figures(r: pd.DataFrame, s: pd.DataFrame, t_grey: float) -> dict:
        every = split_threshold_figures(r, s, tumor_threshold=t, grey_threshold=t_grey, **settings)
        main = split_threshold_figures(
            r[main_rows].reset_index(drop=True), s, tumor_threshold=t, grey_threshold=t_grey, **settings
        )
        brats = r[~main_rows]
        brats_pos = brats[brats["label"] != "no_tumor"]
        return {
            "grey_threshold": t_grey,
            "score_manifest_val": main["val_score"],
            "sensitivity": every["val_sensitivity"],
            "specificity": every["val_specificity"],
            "specificity_grey_healthy": every["val_specificity_grey_healthy"],
            "n_grey_healthy": every["n_grey_healthy"],
            "brats_sensitivity": float((brats_pos["p_tumor"] >= t_grey).mean()) if len(brats_pos) else None,
            "n_brats_tumour": len(brats_pos),
            "flair_only_lgg_sensitivity": every["val_lgg_sensitivity_flair_only"],
            "flair_only_lgg_patient_dice": every["val_lgg_patient_dice_flair_only"],
            "lgg_patient_dice": main["val_lgg_patient_dice"],
            "figshare_slice_dice": main["val_figshare_slice_dice"],
        }

    shipped = figures(res, stress, t)
    grey = res["grey"].to_numpy(bool)
    pool = pd.concat([res[grey], stress], ignore_index=True)
    x = detection_features(pool["p_tumor"].to_numpy(), list(pool["prob_map"]))
    y = (pool["label"] != "no_tumor").to_numpy()
    p = crossfit_probabilities(x, y, folds(_fold_arrays(pool), N_FOLDS))
    fused_res, fused_stress = res.copy(), stress.copy()
    fused_res.loc[grey, "p_tumor"] = p[: grey.sum()]
    fused_stress["p_tumor"] = p[grey.sum() :]
    t_grey = detection_threshold(pd.concat([fused_res[grey], fused_stress], ignore_index=True))
    candidate = figures(fused_res, fused_stress, t_grey)
    checks = {
        "flair_only_sensitivity_gain": candidate["flair_only_lgg_sensitivity"] - shipped["flair_only_lgg_sensitivity"]
        >= MIN_FLAIR_SENSITIVITY_GAIN,
        "flair_only_dice_not_lower": candidate["flair_only_lgg_patient_dice"] >= shipped["flair_only_lgg_patient_dice"],
        "brats_sensitivity_not_lower": (candidate["brats_sensitivity"] or 0) >= (shipped["brats_sensitivity"] or 0),
        "grey_specificity": candidate["specificity_grey_healthy"]
        >= shipped["specificity_grey_healthy"] - MAX_GREY_SPECIFICITY_DROP,
        "score": candidate["score_manifest_val"] >= shipped["score_manifest_val"] - MAX_SCORE_DROP,
    }
    return {
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
    p.add_argument("--out", default="runs/detect_fusion.json", help="JSON to write (default: %(default)s)")
    args = p.parse_args(argv)

    registry = weights_lib.read_registry(args.weights)
    entries = registry.models
    cache = Path(args.cache)

    def shipped_rows(frame: pd.DataFrame, tag: str, transform=None) -> pd.DataFrame:
        outs = {}
        for c, s in ((CLASSIFIERS[0], COLOUR_SEGMENTERS[0]), (CLASSIFIERS[1], COLOUR_SEGMENTERS[1])):
            outs[c] = outs[s] = network_outputs(
                entries[c], entries[s], frame, flip_tta=registry.flip_tta, cache_dir=cache, tag=tag, transform=transform
            )
        for s in GREY_SEGMENTERS:
            outs[s] = network_outputs(
                None, entries[s], frame, flip_tta=registry.flip_tta, cache_dir=cache, tag=tag, transform=transform
            )
        return combine(
            [outs[n] for n in CLASSIFIERS], [outs[n] for n in COLOUR_SEGMENTERS], [outs[n] for n in GREY_SEGMENTERS]
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
    result = judge(pd.concat(parts, ignore_index=True), stress, registry)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
