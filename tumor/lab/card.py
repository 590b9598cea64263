"""Renders the metrics tables of the model card: ``python -m tumor.lab.card``.

Reads ``weights/metrics.json`` (written by ``tumor.lab.evaluate``) and replaces
the block between the ``<!-- metrics:begin -->`` and ``<!-- metrics:end -->``
markers of ``weights/MODEL_CARD.md`` and ``README.md``, so the numbers in the
prose are never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from scipy.stats import binomtest

ROOT = Path(__file__).resolve().parents[2]
# name: (group, key, bar, name of its interval in metrics["confidence"]["intervals"], from evaluate.bootstrap_intervals)
BARS = {
    "detection AUC": ("detection", "auc", 0.97, "auc"),
    "sensitivity": ("detection", "sensitivity", 0.90, "sensitivity"),
    "specificity": ("detection", "specificity", 0.90, "specificity"),
    "type accuracy (tumour slices)": ("type", "accuracy", 0.90, "type_accuracy"),
    "LGG Dice per patient (mean)": ("segmentation", "lgg_patient_dice_mean", 0.80, "lgg_patient_dice_mean"),
    "figshare Dice per slice (mean)": ("segmentation", "figshare_slice_dice_mean", 0.75, "figshare_slice_dice_mean"),
    "Dice over all tumour slices (mean)": ("segmentation", "tumor_slice_dice_mean", None, None),
}
SOURCES = ("lgg_kaggle_3m", "figshare_cheng", "brats_flair", "nickparvar_notumor", "navoneel_no")


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _fmt_wilson(value, n: int | None) -> str:
    """``value (low–high)``: the 95% Wilson interval of a proportion of ``n`` slices."""
    if value is None or not n:
        return _fmt(value)
    # metrics.json stores proportions; the counts behind them are exact at this rounding.
    ci = binomtest(round(value * n), n).proportion_ci(confidence_level=0.95, method="wilson")
    return f"{value:.3f} ({ci.low:.3f}–{ci.high:.3f})"


def _component_words(fraction: float) -> str:
    if not fraction:
        return ""
    return f", mask parts under {fraction:.2%} of the slice dropped"


def _refused_words(refused: dict | None) -> list[str]:
    if not refused or not refused.get("n"):
        return []
    where = ", ".join(f"{n} {source}" for source, n in refused["by_source"].items())
    labels = ", ".join(f"{n} {label}" for label, n in refused["by_label"].items())
    return [
        "",
        f"The app refuses {refused['n']} of the test slices ({where}; labels: {labels}) with the message "
        f'"{"; ".join(refused["reasons"])}"; they are left out of every figure above.',
    ]


def _interval_words(confidence: dict | None) -> list[str]:
    if not confidence:
        return []
    return [
        "",
        f"Headline intervals: {confidence['level']:.0%} percentile bootstrap ({confidence['n_resamples']} resamples, "
        f"seed {confidence['seed']}), drawing whole units within each source: {confidence['units']}. "
        "Slices of one figshare patient are not independent, so the figshare intervals are too narrow.",
    ]


def _manifest_args(metrics: dict) -> str:
    """The ``--manifest`` options the figures came from (``metrics["manifest"]``: names joined by " + ")."""
    names = [n.strip() for n in str(metrics.get("manifest") or "manifest.csv").split("+") if n.strip()]
    return " ".join(f"--manifest ../shared/data/{n}" for n in names)


def render(metrics: dict) -> str:
    """Markdown tables: headline figures against the bars, then per source."""
    lines = [
        f"Test split, {metrics['n_slices']} slices never trained on "
        f"(model {metrics.get('model_version', '?')}; tumour threshold "
        f"{metrics['detection']['threshold']}, mask threshold {metrics['segmentation']['mask_threshold']}"
        f"{_component_words(metrics['segmentation'].get('min_component_fraction', 0.0))}, "
        f"all chosen on the validation split). Command: `python -m tumor.lab.evaluate {_manifest_args(metrics)} "
        "--split test --out weights/metrics.json`.",
        "",
        "| metric | test | 95% interval | bar | met |",
        "|---|---|---|---|---|",
    ]
    intervals = metrics.get("confidence", {}).get("intervals", {})
    for name, (group, key, bar, interval_key) in BARS.items():
        value = metrics[group].get(key)
        met = "–" if bar is None or value is None else ("yes" if value >= bar else "**no**")
        interval = intervals.get(interval_key)
        span = "–" if interval is None else f"{interval[0]:.3f}–{interval[1]:.3f}"
        lines.append(f"| {name} | {_fmt(value)} | {span} | {'–' if bar is None else bar} | {met} |")
    lines += [
        "",
        "| source | slices | tumour / none | AUC | sensitivity | specificity | type accuracy | Dice (tumour slices) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for source in SOURCES:
        m = metrics.get("per_source", {}).get(source)
        if not m:
            continue
        d, t, s = m["detection"], m["type"], m["segmentation"]
        lines.append(
            f"| {source} | {m['n_slices']} | {m['n_tumor']} / {m['n_no_tumor']} | {_fmt(d['auc'])} | "
            f"{_fmt_wilson(d['sensitivity'], m['n_tumor'])} | {_fmt_wilson(d['specificity'], m['n_no_tumor'])} | "
            f"{_fmt_wilson(t['accuracy'], m['n_tumor'])} | {_fmt(s['tumor_slice_dice_mean'])} |"
        )
    lines += [
        "",
        "Per source, in brackets: 95% Wilson intervals over slices. Slices of one patient are not independent, "
        "so these are narrower than the truth, most for LGG (few patients, many slices each).",
    ]
    return "\n".join(lines + _interval_words(metrics.get("confidence")) + _refused_words(metrics.get("refused")))


def replace_block(path: Path, block: str) -> bool:
    text = path.read_text()
    new, n = re.subn(
        r"<!-- metrics:begin -->.*?<!-- metrics:end -->",
        f"<!-- metrics:begin -->\n{block}\n<!-- metrics:end -->",
        text,
        flags=re.S,
    )
    if n:
        path.write_text(new)
    return bool(n)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--metrics", default=str(ROOT / "weights" / "metrics.json"), help="metrics JSON (default: %(default)s)"
    )
    args = p.parse_args(argv)
    block = render(json.loads(Path(args.metrics).read_text()))
    for target in (ROOT / "weights" / "MODEL_CARD.md", ROOT / "README.md"):
        if target.exists():
            print(f"{target.name}: {'updated' if replace_block(target, block) else 'no metrics markers'}")
    print(block)


if __name__ == "__main__":
    main()
