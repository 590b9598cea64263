"""Model card: test metrics, training curves, intended use and limits.

Reads weights/metrics.json, the CSV training logs and MODEL_CARD.md directly,
so it renders without loading TensorFlow; every missing piece says so. The
held-out figures, intended use, failure modes and licences are sections of
MODEL_CARD.md, shown as written there, so the page and the card cannot disagree.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ui import common as ui
from ui.frame import page_frame

page_frame("Model card")

NOT_AVAILABLE = "Not available yet."

# Headings of weights/MODEL_CARD.md whose text this page shows (tests check the shipped card has them).
HELD_OUT_SECTION = "Validation, test and the independent held-out set"
CARD_SECTIONS = ("Intended use", "Known failure modes", "Licences")
# Shown only when MODEL_CARD.md cannot be read: the two facts no page may omit.
FALLBACK = (
    "**Not for diagnosis**, triage or any decision about a patient. The LGG training data are "
    "CC BY-NC-SA 4.0, so the trained weights inherit the non-commercial restriction."
)


def confusion_figure(confusion, labels) -> go.Figure:
    z = [[int(v) for v in row] for row in confusion]
    names = [ui.label(x) for x in labels] if labels else [str(i) for i in range(len(z))]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=names,
            y=names,
            colorscale="Blues",
            text=z,
            texttemplate="%{text}",
            hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_layout(
        height=360,
        margin={"l": 0, "r": 0, "t": 30, "b": 0},
        xaxis={"title": "Predicted", "side": "bottom"},
        yaxis={"title": "Expert label", "autorange": "reversed"},
    )
    return fig


def roc_figure(fpr, tpr, auc, op_point) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"ROC (AUC {ui.fmt(auc)})"))
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line={"dash": "dot", "color": "gray"},
            name="chance",
        )
    )
    if op_point is not None:
        fig.add_trace(
            go.Scatter(
                x=[op_point[0]],
                y=[op_point[1]],
                mode="markers",
                marker={"size": 10, "color": "#d62728"},
                name="operating point",
            )
        )
    fig.update_layout(
        height=360,
        margin={"l": 0, "r": 0, "t": 30, "b": 0},
        xaxis={"title": "1 − specificity", "range": [0, 1]},
        yaxis={"title": "Sensitivity", "range": [0, 1]},
        legend={"x": 0.45, "y": 0.1},
    )
    return fig


def training_figure(log: pd.DataFrame, title: str) -> go.Figure | None:
    if "epoch" not in log.columns:
        return None
    fig = go.Figure()
    for column in log.columns:
        if column in ("epoch", "stage", "size", "lr", "learning_rate", "elapsed_s"):  # not on the metrics scale
            continue
        dash = "dash" if column.startswith("val_") else "solid"
        fig.add_trace(
            go.Scatter(
                x=log["epoch"] + 1,
                y=log[column],
                mode="lines",
                name=column,
                line={"dash": dash},
            )
        )
    key = "stage" if "stage" in log.columns else "size" if "size" in log.columns else None
    if key:  # a later training stage (a fine-tune, perhaps at a new input size) starts here
        changes = log.index[log[key].ne(log[key].shift()) & log.index.to_series().gt(0)]
        for i in changes:
            label = f"{int(log.loc[i, 'size'])} px" if "size" in log.columns else ""
            if key == "stage":
                label = f"stage {int(log.loc[i, 'stage'])}" + (f", {label}" if label else "")
            fig.add_vline(x=int(log.loc[i, "epoch"]) + 0.5, line_dash="dot", annotation_text=label)
    fig.update_layout(
        title=title,
        height=320,
        margin={"l": 0, "r": 0, "t": 40, "b": 0},
        xaxis={"title": "Epoch"},
        yaxis={"type": "log", "title": "log scale"},  # an early loss spike would flatten the rest
    )
    return fig


def read_stages(kind: str) -> dict[str, str]:
    """``stageN -> what it was`` for one model kind, from the weights manifest (empty if absent)."""
    try:
        stages = json.loads((ui.weights_dir() / "manifest.json").read_text())["stages"][kind]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {str(k): str(v) for k, v in stages.items()} if isinstance(stages, dict) else {}


def card_sections(text: str) -> dict[str, str]:
    """``heading -> body`` for every ``##`` and ``###`` heading of a markdown card.

    A body runs to the next heading of the same or a higher level, so a ``##``
    section keeps its ``###`` subsections.
    """
    heads = [
        (m.start(), m.end(), len(m.group(1)), m.group(2).strip()) for m in re.finditer(r"^(#{2,3}) (.+)$", text, re.M)
    ]
    sections = {}
    for i, (_, end, level, title) in enumerate(heads):
        stop = next((start for start, _, lvl, _ in heads[i + 1 :] if lvl <= level), len(text))
        sections[title] = text[end:stop].strip()
    return sections


def read_card() -> str | None:
    try:
        return (ui.weights_dir() / "MODEL_CARD.md").read_text(encoding="utf-8")
    except OSError:
        return None


def show_section(sections: dict[str, str], title: str) -> None:
    body = sections.get(title)
    if body:
        st.markdown(body)
    else:
        st.caption(f"MODEL_CARD.md has no section {title!r}.")


def read_log(name: str) -> pd.DataFrame | None:
    path = ui.weights_dir() / name
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):
        return None


st.title("Model card")
card_text = read_card()
sections = card_sections(card_text) if card_text is not None else {}
metrics = ui.load_metrics()
if metrics is None:
    st.info("weights/metrics.json is not available yet: test metrics cannot be shown.")

st.subheader("Test split results")
n = ui.get_path(metrics, "n_slices")
refused = ui.get_path(metrics, "refused", "n")
st.caption(
    f"Test split: {n if n is not None else 'size not available'} slices."
    + (
        f" A further {refused} slices are left out because the app refuses them "
        f"({'; '.join(ui.get_path(metrics, 'refused', 'reasons') or [])})."
        if isinstance(refused, int) and refused > 0
        else ""
    )
)
cols = st.columns(5)
for col, (name, value) in zip(cols, ui.headline_metrics(metrics), strict=False):
    col.metric(name, value)
if intervals := ui.interval_caption(metrics):
    st.caption(intervals)

left, right = st.columns(2)
with left:
    st.markdown("##### Tumour type (confusion matrix)")
    confusion = ui.get_path(metrics, "type", "confusion")
    try:
        st.plotly_chart(
            confusion_figure(confusion, ui.get_path(metrics, "type", "labels")),
            key="confusion",
        )
    except (TypeError, ValueError):
        st.caption(NOT_AVAILABLE)
with right:
    st.markdown("##### Tumour detection (ROC)")
    fpr = ui.get_path(metrics, "detection", "roc", "fpr")
    tpr = ui.get_path(metrics, "detection", "roc", "tpr")
    if isinstance(fpr, list) and isinstance(tpr, list) and len(fpr) == len(tpr) > 1:
        sens = ui.get_path(metrics, "detection", "sensitivity")
        spec = ui.get_path(metrics, "detection", "specificity")
        op = (1 - float(spec), float(sens)) if sens is not None and spec is not None else None
        st.plotly_chart(
            roc_figure(fpr, tpr, ui.get_path(metrics, "detection", "auc"), op),
            key="roc",
        )
        st.caption(f"Operating threshold {ui.fmt(ui.get_path(metrics, 'detection', 'threshold'))}.")
    else:
        st.caption(NOT_AVAILABLE)

left, right = st.columns(2)
with left:
    st.markdown("##### Segmentation (Dice per tumour slice)")
    dice_values = ui.get_path(metrics, "segmentation", "dice_values")
    if isinstance(dice_values, list) and dice_values:
        fig = go.Figure(go.Histogram(x=dice_values, xbins={"start": 0, "end": 1.0001, "size": 0.05}))
        fig.update_layout(
            height=300,
            margin={"l": 0, "r": 0, "t": 10, "b": 0},
            xaxis={"title": "Dice", "range": [0, 1]},
            yaxis={"title": "Slices"},
        )
        st.plotly_chart(fig, key="dice_hist")
    else:
        st.caption(NOT_AVAILABLE)
    seg = ui.get_path(metrics, "segmentation") or {}
    st.caption(
        f"LGG per-patient Dice {ui.fmt(seg.get('lgg_patient_dice_mean'))} · "
        f"figshare per-slice Dice {ui.fmt(seg.get('figshare_slice_dice_mean'))} · "
        f"all tumour slices {ui.fmt(seg.get('tumor_slice_dice_mean'))}"
    )
with right:
    st.markdown("##### Per source")
    per_source = ui.get_path(metrics, "per_source")
    if isinstance(per_source, dict) and per_source:
        rows = []
        for source, values in per_source.items():
            row = {"Source": source}
            if isinstance(values, dict):
                for key, value in values.items():
                    if isinstance(value, (int, float)):
                        row[key.replace("_", " ")] = value
                    elif isinstance(value, dict):
                        row.update(
                            {f"{key} {k}".replace("_", " "): v for k, v in value.items() if isinstance(v, (int, float))}
                        )
            rows.append(row)
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    else:
        st.caption(NOT_AVAILABLE)

st.subheader("Independent held-out evaluation")
if card_text is None:
    st.caption(f"MODEL_CARD.md: {NOT_AVAILABLE}")
else:
    show_section(sections, HELD_OUT_SECTION)

st.subheader("Training curves")
left, right = st.columns(2)
for col, (file, title) in zip(
    (left, right),
    (
        ("training_log_classifier.csv", "Classifier"),
        ("training_log_segmenter.csv", "Segmenter"),
    ),
    strict=False,
):
    with col:
        log = read_log(file)
        figure = training_figure(log, title) if log is not None else None
        if figure is None:
            st.caption(f"{title}: {NOT_AVAILABLE}")
        else:
            st.plotly_chart(figure, key=f"log_{file}")
        stages = read_stages(title.lower())
        if stages:
            st.caption(" · ".join(f"**{k.replace('stage', 'stage ')}**: {v}" for k, v in stages.items()))

if card_text is None:
    st.subheader("Intended use and licence")
    st.markdown(FALLBACK)
else:
    for title in CARD_SECTIONS:
        st.subheader(title)
        show_section(sections, title)

with st.expander("MODEL_CARD.md", expanded=False):
    if card_text is None:
        st.caption(NOT_AVAILABLE)
    else:
        st.markdown(card_text)
