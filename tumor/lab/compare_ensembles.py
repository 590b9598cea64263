"""Choose an ensemble on validation from cached per-network outputs.

``python -m tumor.lab.compare_ensembles --manifest M --classifier NAME=PATH ... --segmenter NAME=PATH[@SIZE] ...
--classifier-sets A+B A+C ... --segmenter-sets ... [--baseline A+B/X+Y]``

Each network runs once over the split, through ``Pipeline.analyze`` with the
cascade off (every slice segmented), compiled by ``tumor.runtime`` as the app
runs it (``--precision``, default f32; flip averaging as the manifest says, or
``--flip-tta on|off``), and its per-slice outputs are cached.
Every classifier set is then paired with every segmenter set: the pair's
outputs are the means of its members' outputs, exactly as ``Pipeline`` averages
them, and each pair is calibrated and scored with ``evaluate.calibrated_report``
(AUC + type accuracy + segmentation objective), as ``evaluate --calibrate``
would score it. The rule (MODEL_CARD, "Rule for a 1.5.0 candidate"; 1.6.0 widened ``--tie`` to 0.01):

- a set of three or more networks of one kind must beat the best pair whose
  set of that kind has at most two by ``--margin`` or more;
- pairs within ``--tie`` of the best count as tied, and the tie is broken by
  the validation LGG Dice per patient under ``--flair-only``, at each pair's
  own calibrated thresholds, cascade applied (``--flair-stress`` reports it,
  with the FLAIR-only LGG sensitivity, for every pair).

A segmenter set may be routed, as ``COLOUR|GREY`` (``g+r14|T+U``): colour
slices are segmented by the first set and greyscale ones (``Pipeline``'s
``is_grey``) by the second, as a manifest with ``inputs`` routes them. Its size,
for the margin, is that of its larger half. Segmenters beyond the number of
classifiers run without a classifier (a constant stand-in), and classifiers
beyond the number of segmenters without a segmenter (an empty map at 32 px),
so adding a network of either kind costs one pass of that network only.

``--grey-threshold`` also reports every pair with a tumour threshold of its
own for greyscale slices, chosen on the greyscale and FLAIR-only LGG rows
(``grey_threshold_row``; MODEL_CARD, "Rule for a fifth 1.9.0 candidate").

Writes every pair's figures and the winner to ``--out``; changes nothing in
``weights/`` unless ``--write-calibration`` names a file there: that file gets
the winner's ``calibration.json`` record (the figures ``evaluate --calibrate``
would write, with the objective at every mask threshold).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tumor import runtime
from tumor import weights as weights_lib
from tumor.lab import data
from tumor.lab.evaluate import (
    LGG,
    _summary,
    apply_cascade,
    calibrated_report,
    calibration_document,
    detection_threshold,
    flair_only,
    run_pipeline,
    selection_score,
)
from tumor.pipeline import Member, Pipeline, Settings
from tumor.preprocess import CLASS_NAMES, TUMOR_TYPES

KINDS = ("classifier", "segmenter")


def _entry(
    kind: str, name: str, path: str, template: weights_lib.ModelEntry, size: int | None = None
) -> weights_lib.ModelEntry:
    """A registry entry for a candidate file, with the shipped network's build and scaling.

    Its input side is ``size`` where given (a network fine-tuned at another
    resolution), else the shipped network's.
    """
    path = Path(path)
    return weights_lib.ModelEntry(
        kind=kind,
        name=name,
        path=path,
        sha256=weights_lib.sha256_file(path),
        input_size=size or template.input_size,
        build_kwargs=template.build_kwargs,
        intensity=template.intensity,
    )


def _no_classifier(x):
    """A stand-in classifier for segmenter-only passes: uniform probabilities (never scored)."""
    return np.full((len(x), len(CLASS_NAMES)), 1.0 / len(CLASS_NAMES), np.float32)


def _no_segmenter(x):
    """A stand-in segmenter for classifier-only passes: an empty map (never scored)."""
    return np.zeros(np.shape(x)[:3], np.float32)


NO_SEGMENTER_SIZE = 32  # the stand-in's input side: small, so that it costs nothing


def cache_name(
    classifier: weights_lib.ModelEntry | None,
    segmenter: weights_lib.ModelEntry | None,
    *,
    tag: str,
    flip_tta: bool,
    precision: str = "f32",
) -> str:
    """The file ``network_outputs`` caches this pair's rows in (either network may be None, not both).

    f32 rows keep the names they had under Keras: the compiled f32 networks give
    the same outputs to about 1e-6 (tests/test_runtime.py). Another precision
    is named in the file.
    """
    if classifier is None and segmenter is None:
        raise ValueError("network_outputs needs a classifier, a segmenter or both; received neither.")
    suffix = "" if precision == "f32" else f"-{precision}"
    clf_key = f"{classifier.sha256[:12]}s{classifier.input_size}{suffix}" if classifier else "none"
    seg_key = f"{segmenter.sha256[:12]}s{segmenter.input_size}{suffix}" if segmenter else "none"
    # "r3": names carry the input side; "r2" rows carry the ``grey`` flag. Older caches are not read.
    return f"{tag}_r3_tta{int(flip_tta)}_{clf_key}_{seg_key}.pkl"


def network_outputs(
    classifier: weights_lib.ModelEntry | None,
    segmenter: weights_lib.ModelEntry | None,
    df: pd.DataFrame,
    *,
    flip_tta: bool,
    cache_dir: Path,
    tag: str,
    transform=None,
    precision: str = "f32",
) -> pd.DataFrame:
    """``run_pipeline`` rows of a one-classifier, one-segmenter pipeline, every slice segmented; cached.

    The networks are compiled by ``tumor.runtime`` in ``precision``, as the app
    runs them.

    The cache file is named by both files' hashes and input sides, ``tag``
    (split, source and stress options) and the flip setting, so a changed file,
    or one file run at another side, is never read from an old cache. With
    ``classifier`` None only the segmenter runs: the rows' classifier columns
    are then a constant and must not be used. With ``segmenter`` None only the
    classifier runs: the rows' maps are then empty and must not be used.
    """
    path = cache_dir / cache_name(classifier, segmenter, tag=tag, flip_tta=flip_tta, precision=precision)
    if path.is_file():
        return pd.read_pickle(path)
    entries = [e for e in (classifier, segmenter) if e is not None]
    for entry in entries:
        weights_lib.verify(entry)
    nets = iter(runtime.load_networks([[e] for e in entries], precision=precision))
    clf = Member.from_entry(classifier, next(nets)) if classifier else Member(_no_classifier, segmenter.input_size)
    # Every slice, whatever the entry's route: ``combine`` routes the cached maps.
    seg = Member(next(nets), segmenter.input_size, segmenter.intensity) if segmenter else None
    seg = seg or Member(_no_segmenter, NO_SEGMENTER_SIZE)
    # Every slice segmented (tumour threshold 0), so that any threshold can be applied afterwards.
    pipeline = Pipeline((clf,), (seg,), Settings(tumor_threshold=0.0, flip_tta=flip_tta))
    t0 = time.monotonic()
    res = run_pipeline(pipeline, df, transform=transform)
    names = " + ".join(e.name if e else f"(no {k})" for e, k in ((classifier, "classifier"), (segmenter, "segmenter")))
    print(f"{names} on {tag}: {len(res)} slices, {time.monotonic() - t0:.0f}s", flush=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    res.to_pickle(path)
    return res


def ensemble_outputs(
    classifiers: list[weights_lib.ModelEntry],
    segmenters: list[weights_lib.ModelEntry],
    frame: pd.DataFrame,
    *,
    tag: str,
    flip_tta: bool,
    cache_dir: Path,
    transform=None,
    precision: str = "f32",
) -> dict[str, dict[str, pd.DataFrame]]:
    """``network_outputs`` of every network, ``{kind: {name: rows}}``: the two kinds run side by side, in pairs.

    Pairing halves the passes. Segmenters beyond the classifiers run alone,
    and classifiers beyond the segmenters; so do the two of a pair when either
    has been cached alone (an earlier comparison ran it without a partner) and
    the pair has not.
    """
    out: dict[str, dict[str, pd.DataFrame]] = {"classifier": {}, "segmenter": {}}

    def cached(c, s) -> bool:
        return (cache_dir / cache_name(c, s, tag=tag, flip_tta=flip_tta, precision=precision)).is_file()

    for i in range(max(len(classifiers), len(segmenters))):
        c = classifiers[i] if i < len(classifiers) else None
        s = segmenters[i] if i < len(segmenters) else None
        paired = [(c, s)]
        if c is not None and s is not None and not cached(c, s) and (cached(c, None) or cached(None, s)):
            paired = [(c, None), (None, s)]
        for pc, ps in paired:
            res = network_outputs(
                pc, ps, frame, flip_tta=flip_tta, cache_dir=cache_dir, tag=tag, transform=transform, precision=precision
            )
            if pc is not None:
                out["classifier"].setdefault(pc.name, res)
            if ps is not None:
                out["segmenter"].setdefault(ps.name, res)
    return out


def combine(
    clf_outputs: list[pd.DataFrame],
    seg_outputs: list[pd.DataFrame],
    grey_outputs: list[pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """The rows an ensemble of these networks would give: means of their outputs, as ``Pipeline`` takes them.

    With ``grey_outputs``, greyscale rows (``run_pipeline``'s ``grey`` column)
    take the mean of those segmenters instead (a routed set: ``Pipeline.segmenters_for``).

    Every frame must hold the same rows in the same order (the same split,
    read by ``run_pipeline``).
    """
    base = clf_outputs[0]
    for other in [*clf_outputs, *seg_outputs, *(grey_outputs or [])]:
        if not other["image_file"].equals(base["image_file"]):
            raise ValueError("Cached outputs hold different rows; rerun them on the same split.")
    out = base.drop(columns=["prob_map"]).copy()
    probs = np.mean([np.stack(r["probs"].to_numpy()) for r in clf_outputs], axis=0)
    out["probs"] = list(probs)
    out["p_tumor"] = 1.0 - probs[:, 0]
    out["type_pred"] = [TUMOR_TYPES[int(np.argmax(p[1:]))] for p in probs]
    out["pred"] = out["type_pred"]  # tumour threshold 0: every slice is positive
    maps = zip(*(r["prob_map"] for r in seg_outputs), strict=True)
    out["prob_map"] = [np.clip(np.mean(m, axis=0), 0.0, 1.0).astype(np.float32) for m in maps]
    if grey_outputs:
        if "grey" not in out:
            raise ValueError("A routed segmenter set needs the rows' grey flags; rerun the outputs with run_pipeline.")
        grey = out["grey"].to_numpy(bool)
        grey_maps = zip(*(r["prob_map"] for r in grey_outputs), strict=True)
        for i, m in enumerate(grey_maps):
            if grey[i]:
                out.at[i, "prob_map"] = np.clip(np.mean(m, axis=0), 0.0, 1.0).astype(np.float32)
    return out


def set_size(row: dict, kind: str) -> int:
    """How many networks of ``kind`` a slice of ``row``'s pair meets at most (a routed set: its larger half)."""
    return max(len(row[kind]), len(row.get(f"{kind}_grey") or []))


def pair_label(row: dict) -> str:
    """A pair's name, as ``--baseline`` takes it: ``CLF+CLF/SEG+SEG``, or ``CLF+CLF/SEG+SEG|GREY+GREY`` if routed."""
    grey = f"|{'+'.join(row['segmenter_grey'])}" if row.get("segmenter_grey") else ""
    return f"{'+'.join(row['classifier'])}/{'+'.join(row['segmenter'])}{grey}"


def choose(rows: list[dict], margin: float, tie: float) -> tuple[list[dict], list[str]]:
    """The pairs still in the running after the size margin, best first, and why any were set aside.

    A pair whose set of one kind has three or more networks stays in only if it
    beats the best pair with at most two of that kind by ``margin`` or more.

    Returns:
        ``(tied, notes)``: every eligible pair within ``tie`` of the best
        eligible score, best first; and a sentence per kind where pairs were
        set aside by the margin.
    """
    eligible, notes = list(rows), []
    for kind in KINDS:
        small = [r for r in eligible if set_size(r, kind) <= 2]
        if not small:
            continue
        floor = max(r["val_score"] for r in small) + margin
        dropped = [r for r in eligible if set_size(r, kind) > 2 and r["val_score"] < floor]
        if dropped:
            notes.append(
                f"{len(dropped)} pairs with three or more {kind}s score under the best pair with at most two "
                f"plus {margin} ({floor:.4f}): set aside"
            )
            eligible = [r for r in eligible if r not in dropped]
    top = max(r["val_score"] for r in eligible)
    tied = sorted((r for r in eligible if top - r["val_score"] <= tie), key=lambda r: -r["val_score"])
    return tied, notes


def keep_baseline(tied: list[dict], rows: list[dict], baseline: str, margin: float) -> tuple[list[dict], str]:
    """The baseline pair instead of a new winner that leads it on score by less than ``margin``.

    Returns:
        ``(tied, note)``: ``tied`` unchanged (note empty) when the winner is the
        baseline, leads it by ``margin`` or more, or there is no baseline row;
        else ``[baseline row]`` and a sentence saying why.
    """
    base = next((r for r in rows if pair_label(r) == baseline), None)
    lead = tied[0]["val_score"] - base["val_score"] if base is not None else 0.0
    if base is None or pair_label(tied[0]) == baseline or lead >= margin:
        return tied, ""
    return [base], f"{pair_label(tied[0])} leads the baseline by {lead:.4f}, under --baseline-margin {margin}: kept"


def calibration_record(
    res: pd.DataFrame, row: dict, entries: dict[str, dict[str, weights_lib.ModelEntry]], *, split: str, flip_tta: bool
) -> dict:
    """The ``calibration.json`` record of one pair, from its averaged outputs ``res`` (``combine``).

    The figures are ``calibrated_report``'s, as ``evaluate --calibrate`` writes
    them; the pair's networks are named with their sha256, so the record can be
    matched to the files it was computed from.
    """
    report = {"flip_tta": flip_tta, **calibrated_report(res)}
    if abs(report["val_score"] - row["val_score"]) > 1e-9:  # same outputs, same function: must agree
        raise RuntimeError(
            f"Recomputed score {report['val_score']} differs from {row['val_score']} for {pair_label(row)}"
        )
    doc = calibration_document(
        split,
        [report],
        note=f"computed by python -m tumor.lab.compare_ensembles on the averaged cached per-network {split} outputs "
        f"of {pair_label(row)}, flip averaging {'on' if flip_tta else 'off'}; see MODEL_CARD.md",
    )
    doc["networks"] = {kind: {n: entries[kind][n].sha256 for n in row[kind]} for kind in KINDS}
    if row.get("segmenter_grey"):
        doc["networks"]["segmenter_grey"] = {n: entries["segmenter"][n].sha256 for n in row["segmenter_grey"]}
    return doc


def flair_only_figures(
    stress: pd.DataFrame, tumor_threshold: float, mask_threshold: float, min_fraction: float
) -> dict:
    """FLAIR-only LGG sensitivity and Dice per patient of a pair's ``stress`` outputs, as the app would cascade them."""
    s = _summary(apply_cascade(stress, tumor_threshold), tumor_threshold, mask_threshold, min_fraction)
    return {
        "val_lgg_sensitivity_flair_only": s["detection"]["sensitivity"],
        "val_lgg_patient_dice_flair_only": s["segmentation"]["lgg_patient_dice_mean"],
    }


def split_threshold_figures(
    res: pd.DataFrame,
    stress: pd.DataFrame,
    *,
    tumor_threshold: float,
    grey_threshold: float,
    mask_threshold: float,
    min_fraction: float,
) -> dict:
    """Validation figures with one tumour threshold for colour slices and another for greyscale ones.

    ``res`` holds a pair's averaged outputs on the split as acquired (a map on
    every row, ``grey`` flags); ``stress`` its outputs on the LGG slices made
    FLAIR-only (all greyscale). A slice under its own threshold gets no mask,
    as the app would give it. With ``grey_threshold == tumor_threshold`` the
    figures are those of one threshold for every slice.
    """
    grey = res["grey"].to_numpy(bool)
    thresholds = np.where(grey, grey_threshold, tumor_threshold)
    m = _summary(apply_cascade(res, thresholds), thresholds, mask_threshold, min_fraction)
    healthy_grey = grey & (res["label"] == "no_tumor").to_numpy()
    detected = res["p_tumor"].to_numpy(float) >= thresholds
    return {
        "tumor_threshold": tumor_threshold,
        "grey_threshold": grey_threshold,
        "val_score": selection_score(m),
        "val_sensitivity": m["detection"]["sensitivity"],
        "val_specificity": m["detection"]["specificity"],
        "val_specificity_grey_healthy": float((~detected[healthy_grey]).mean()),
        "n_grey_healthy": int(healthy_grey.sum()),
        "val_lgg_patient_dice": m["segmentation"]["lgg_patient_dice_mean"],
        "val_figshare_slice_dice": m["segmentation"]["figshare_slice_dice_mean"],
        **flair_only_figures(stress, grey_threshold, mask_threshold, min_fraction),
    }


def grey_threshold_row(res: pd.DataFrame, stress: pd.DataFrame, row: dict) -> dict:
    """The fifth 1.9.0 rule's figures for one pair: at its one threshold, and with a greyscale threshold of its own.

    The greyscale threshold is ``detection_threshold`` on the greyscale rows
    of ``res`` together with every row of ``stress``; the colour threshold,
    mask threshold and smallest component stay the pair's (``row``).
    """
    pool = pd.concat([res[res["grey"].to_numpy(bool)], stress], ignore_index=True)
    t_grey = detection_threshold(pool)
    settings = {
        "tumor_threshold": row["tumor_threshold"],
        "mask_threshold": row["mask_threshold"],
        "min_fraction": row["min_component_fraction"],
    }
    return {
        "n_pool": len(pool),
        "one_threshold": split_threshold_figures(res, stress, grey_threshold=row["tumor_threshold"], **settings),
        "grey_threshold": split_threshold_figures(res, stress, grey_threshold=t_grey, **settings),
    }


def _parse_networks(specs: list[str], flag: str) -> dict[str, tuple[str, int | None]]:
    """``NAME=PATH`` or ``NAME=PATH@SIZE`` specs as ``{name: (path, size or None)}``."""
    nets = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or "+" in name or "/" in name:
            raise SystemExit(f"{flag} takes NAME=PATH[@SIZE] with a NAME free of '+' and '/'. Received: {spec!r}")
        path, at, size = path.rpartition("@") if "@" in path else (path, "", "")
        if at and not (size.isdigit() and int(size) >= 32):
            raise SystemExit(f"{flag} {spec!r}: SIZE after '@' must be an input side in pixels, at least 32")
        nets[name] = (path, int(size) if at else None)
    return nets


def _parse_sets(specs: list[str], names: dict[str, str], flag: str, routed: bool = False) -> list[tuple]:
    """``NAME+NAME`` sets as tuples; with ``routed``, ``COLOUR|GREY`` as ``(colour, grey)`` (grey None if absent)."""
    sets = []
    for spec in specs:
        halves = spec.split("|")
        if len(halves) > 1 + routed:
            raise SystemExit(f"{flag} {spec!r}: at most one '|' (COLOUR|GREY), and only in segmenter sets")
        parsed = []
        for half in halves:
            members = tuple(half.split("+"))
            unknown = [m for m in members if m not in names]
            if unknown or len(set(members)) != len(members):
                raise SystemExit(f"{flag} {spec!r} names unknown or repeated networks; known: {sorted(names)}")
            parsed.append(members)
        sets.append((parsed[0], parsed[1] if len(parsed) > 1 else None) if routed else parsed[0])
    return sets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--manifest",
        action="append",
        required=True,
        help="manifest CSV; repeat for several, e.g. the BraTS FLAIR one too (default: none)",
    )
    parser.add_argument(
        "--split", default="val", help="split to choose on, or 'all' for every row (default: %(default)s)"
    )
    parser.add_argument("--weights", default=None, help="shipped weights folder (default: the repository's weights/)")
    parser.add_argument("--classifier", action="append", default=[], metavar="NAME=PATH", help="a candidate classifier")
    parser.add_argument(
        "--segmenter",
        action="append",
        default=[],
        metavar="NAME=PATH[@SIZE]",
        help="a candidate segmenter; @SIZE: its input side, where it differs from the shipped one's",
    )
    parser.add_argument("--classifier-sets", nargs="+", required=True, help="sets to try, as NAME+NAME (default: none)")
    parser.add_argument("--segmenter-sets", nargs="+", required=True, help="sets to try, as NAME+NAME (default: none)")
    parser.add_argument("--baseline", default="", help="the shipped pair, as CLF+CLF/SEG+SEG (default: none)")
    parser.add_argument("--margin", type=float, default=0.005, help="lead a 3-network set needs (default: %(default)s)")
    parser.add_argument("--tie", type=float, default=0.003, help="scores this close are tied (default: %(default)s)")
    parser.add_argument(
        "--baseline-margin",
        type=float,
        default=0.0,
        help="lead over --baseline a new winner needs, else the baseline stays (default: %(default)s)",
    )
    parser.add_argument(
        "--flair-stress",
        action="store_true",
        help="report every pair's LGG figures with FLAIR-only slices, not just the tied ones' (default: off)",
    )
    parser.add_argument(
        "--grey-threshold",
        action="store_true",
        help="also report every pair with a tumour threshold of its own for greyscale slices, chosen on the "
        "greyscale rows and the FLAIR-only LGG rows (MODEL_CARD, fifth 1.9.0 rule; implies --flair-stress)",
    )
    parser.add_argument("--limit", type=int, default=0, help="only the first N rows, 0 = all (default: %(default)s)")
    parser.add_argument(
        "--flip-tta",
        choices=["manifest", "on", "off"],
        default="manifest",
        help="flip averaging of every network: as the shipped manifest says, or on, or off (default: %(default)s)",
    )
    parser.add_argument(
        "--precision",
        choices=["f32", "bf16"],
        default="f32",
        help="precision of the compiled networks (tumor.runtime); bf16 needs a CPU with it (default: %(default)s)",
    )
    parser.add_argument("--cache", default="runs/cache", help="cache folder for outputs (default: %(default)s)")
    parser.add_argument("--out", default="runs/compare_ensembles.json", help="JSON to write (default: %(default)s)")
    parser.add_argument(
        "--write-calibration",
        default="",
        metavar="PATH",
        help="also write the winner's calibration.json record here, e.g. weights/calibration.json (default: none)",
    )
    args = parser.parse_args(argv)

    registry = weights_lib.read_registry(args.weights or weights_lib.DEFAULT_WEIGHTS_DIR)
    paths = {"classifier": _parse_networks(args.classifier, "--classifier")}
    paths["segmenter"] = _parse_networks(args.segmenter, "--segmenter")
    sets = {
        "classifier": _parse_sets(args.classifier_sets, paths["classifier"], "--classifier-sets"),
        "segmenter": _parse_sets(args.segmenter_sets, paths["segmenter"], "--segmenter-sets", routed=True),
    }
    entries = {
        kind: {n: _entry(kind, n, p, registry.models[kind], size) for n, (p, size) in paths[kind].items()}
        for kind in KINDS
    }
    df = data.read_manifests(args.manifest)
    if args.split != "all":
        df = data.load_split(df)
        df = df[df["split"] == args.split]
    if args.limit:
        df = df.head(args.limit)
    cache = Path(args.cache)
    flip_tta = {"manifest": registry.flip_tta, "on": True, "off": False}[args.flip_tta]

    def outputs(frame: pd.DataFrame, tag: str, transform=None) -> dict[str, dict[str, pd.DataFrame]]:
        return ensemble_outputs(
            list(entries["classifier"].values()),
            list(entries["segmenter"].values()),
            frame,
            tag=tag,
            flip_tta=flip_tta,
            cache_dir=cache,
            transform=transform,
            precision=args.precision,
        )

    def pair_outputs(nets: dict, row: dict) -> pd.DataFrame:
        grey_set = row.get("segmenter_grey")
        return combine(
            [nets["classifier"][n] for n in row["classifier"]],
            [nets["segmenter"][n] for n in row["segmenter"]],
            [nets["segmenter"][n] for n in grey_set] if grey_set else None,
        )

    tag = f"{'+'.join(Path(m).stem for m in args.manifest)}_{args.split}_n{len(df)}"
    nets = outputs(df, tag)
    rows = []
    for c_set, (s_set, g_set) in itertools.product(sets["classifier"], sets["segmenter"]):
        row = {"classifier": list(c_set), "segmenter": list(s_set)}
        if g_set:
            row["segmenter_grey"] = list(g_set)
        row.update(calibrated_report(pair_outputs(nets, row), by_mask_threshold=False))
        rows.append(row)
        print(json.dumps({"pair": pair_label(row)} | {k: row[k] for k in ("tumor_threshold", "val_score")}), flush=True)

    stress_every = args.flair_stress or args.grey_threshold
    tied, notes = choose(rows, args.margin, args.tie)
    if len(tied) > 1 or stress_every:  # LGG with every slice made FLAIR-only, at each pair's own thresholds
        lgg = df[df["source"] == LGG]
        stress = outputs(lgg, f"{tag}_lgg_flair", transform=flair_only)
        for row in rows if stress_every else tied:
            res = pair_outputs(stress, row)
            row |= flair_only_figures(res, row["tumor_threshold"], row["mask_threshold"], row["min_component_fraction"])
            if args.grey_threshold:
                row["grey_threshold"] = grey_threshold_row(pair_outputs(nets, row), res, row)
                print(json.dumps({"pair": pair_label(row), **row["grey_threshold"]}), flush=True)
        tied.sort(key=lambda r: -r["val_lgg_patient_dice_flair_only"])  # the tie-break
    tied, note = keep_baseline(tied, rows, args.baseline, args.baseline_margin)
    notes += [note] if note else []
    label = pair_label(tied[0])
    result = {
        "split": args.split,
        "n_slices": len(next(iter(nets["classifier"].values()))),
        "flip_tta": flip_tta,
        "precision": args.precision,
        "networks": {
            kind: {
                n: {"path": str(e.path), "sha256": e.sha256, "input_size": e.input_size}
                for n, e in entries[kind].items()
            }
            for kind in KINDS
        },
        "rule": {"margin": args.margin, "tie": args.tie, "baseline_margin": args.baseline_margin, "notes": notes},
        "pairs": rows,
        "tied": [pair_label(r) for r in tied],
        "winner": label,
        "baseline_wins": bool(args.baseline) and label == args.baseline,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.write_calibration:
        win = tied[0]
        res = pair_outputs(nets, win)
        doc = calibration_record(res, win, entries, split=args.split, flip_tta=flip_tta)
        Path(args.write_calibration).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.write_calibration}: {json.dumps(doc['chosen'])}")
    print(json.dumps({k: result[k] for k in ("tied", "winner", "baseline_wins")} | {"notes": notes}, indent=2))


if __name__ == "__main__":
    main()
