"""Judges a greyscale-segmenter candidate against the shipped set: ``python -m tumor.lab.greyscale_candidate``.

Rules 1.11.0 a and b (``docs/experiments.md``, one set of guards, fixed
before each candidate trained). The candidate's weights folder is a copy of
``weights/`` with the candidate's file in place of one greyscale segmenter and
its sha256 pinned again in ``manifest.json``; thresholds and fusions are left
as shipped. Both folders are scored by the same two commands, each
cross-fitted on validation, so neither fusion is judged on rows it was fitted
on:

- ``python -m tumor.lab.detect_fusion --weights DIR --out D.json`` (rule b's
  greyscale threshold): detection, Dice and FLAIR-only figures, in its
  ``candidate`` block;
- ``python -m tumor.lab.fusion collect`` then ``crossfit --out T.json``: the
  type accuracy with the type fusion.

This module only reads those four JSON files and applies the rule.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tumor.metrics import at_least

# Rules 1.11.0 a and b, as committed before training.
MIN_BRATS_DICE_GAIN = 0.05
MAX_SCORE_DROP = 0.002
MAX_FLAIR_DROP = 0.01
MAX_GREY_SPECIFICITY_DROP = 0.01
MAX_TYPE_ACCURACY_DROP = 0.005


def judge(shipped_detect: dict, candidate_detect: dict, shipped_type: dict, candidate_type: dict) -> dict:
    """The rule's verdict from ``detect_fusion`` and ``fusion crossfit`` outputs of both sets."""
    s, c = shipped_detect["candidate"], candidate_detect["candidate"]
    s_type, c_type = shipped_type["type_accuracy"]["fusion"], candidate_type["type_accuracy"]["fusion"]
    checks = {
        "brats_dice_gain": at_least(c["brats_slice_dice"] - s["brats_slice_dice"], MIN_BRATS_DICE_GAIN),
        "brats_sensitivity_not_lower": at_least(c["brats_sensitivity"], s["brats_sensitivity"]),
        "score": at_least(c["score_manifest_val"], s["score_manifest_val"] - MAX_SCORE_DROP),
        "flair_only_sensitivity": at_least(
            c["flair_only_lgg_sensitivity"], s["flair_only_lgg_sensitivity"] - MAX_FLAIR_DROP
        ),
        "flair_only_dice": at_least(
            c["flair_only_lgg_patient_dice"], s["flair_only_lgg_patient_dice"] - MAX_FLAIR_DROP
        ),
        "grey_specificity": at_least(
            c["specificity_grey_healthy"], s["specificity_grey_healthy"] - MAX_GREY_SPECIFICITY_DROP
        ),
        "type_accuracy": at_least(c_type, s_type - MAX_TYPE_ACCURACY_DROP),
    }
    figures = {k: {"shipped": s[k], "candidate": v} for k, v in c.items()}
    figures["type_accuracy_fusion"] = {"shipped": s_type, "candidate": c_type}
    figures["type_accuracy_per_source"] = {
        src: {"shipped": shipped_type["per_source"][src]["fusion"], "candidate": v["fusion"]}
        for src, v in candidate_type["per_source"].items()
    }
    return {"rule": "1.11.0 a/b", "figures": figures, "checks": checks, "adopt": all(checks.values())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shipped-detect", required=True, help="detect_fusion JSON of the shipped set")
    p.add_argument("--candidate-detect", required=True, help="detect_fusion JSON of the candidate")
    p.add_argument("--shipped-type", required=True, help="fusion crossfit JSON of the shipped set")
    p.add_argument("--candidate-type", required=True, help="fusion crossfit JSON of the candidate")
    p.add_argument("--out", default="", help="JSON to write (default: print only)")
    args = p.parse_args(argv)

    def read(path: str) -> dict:
        return json.loads(Path(path).read_text())

    result = judge(
        read(args.shipped_detect), read(args.candidate_detect), read(args.shipped_type), read(args.candidate_type)
    )
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
