"""Streamlit AppTest of the pages: rendering, uploads, controls, weights errors.

Most tests run the pages against ``FakePipeline`` (tests/conftest.py), so they
are fast and need no weights; the ``slow`` ones load the real models and skip
when weights/manifest.json is missing.
"""

from __future__ import annotations

import re

import pytest
from conftest import (
    HAS_GALLERY,
    HAS_WEIGHTS,
    ROOT,
    dicom_bytes,
    nifti_bytes,
    phantom,
    png_bytes,
)
from streamlit.testing.v1 import AppTest

TIMEOUT = 180  # seconds per script run: loading TensorFlow on a 2-core CPU is slow
APP = str(ROOT / "app.py")
DISCLAIMER = "Research demo, not for diagnosis"


def run_app(page: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page is not None:
        at.switch_page(page).run()
    return at


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [w.value for w in at.warning]
    parts += [e.value for e in at.error] + [i.value for i in at.info] + [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r}; metrics: {[m.label for m in at.metric]}"
    return values[0]


def area_px(at: AppTest) -> int:
    return int(re.sub(r"[^\d]", "", metric(at, "Tumour area")))


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader[0].upload(name, data).run()
    assert not at.exception, at.exception
    return at


MENU = ["Analyze", "Gallery", "Model card", "About"]


@pytest.mark.parametrize(
    ("page", "heading"),
    [
        (None, "Analyse a brain MRI"),
        ("pages/gallery.py", "Gallery of real test cases"),
        ("pages/model_card.py", "Model card"),
        ("pages/about.py", "About this demo"),
    ],
)
def test_every_page_renders_its_heading_the_notice_and_the_menu(fake_pipeline, page, heading):
    at = run_app(page)
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == [heading]
    assert DISCLAIMER in texts(at)
    assert [link.value for link in at.page_link][: len(MENU)] == MENU


def test_png_upload_gives_verdict_and_slider_only_redraws(fake_pipeline):
    at = upload(run_app(), "slice.png", png_bytes(phantom()))
    assert "Tumour detected" in texts(at)
    assert metric(at, "P(tumour)") == "95.0%"
    assert fake_pipeline.runs == 1
    at.slider(key="mask_threshold").set_value(0.3).run()
    low = area_px(at)
    at.slider(key="mask_threshold").set_value(0.8).run()
    high = area_px(at)
    assert low > high > 0
    at.radio(key="overlay_mode").set_value("fill").run()
    assert fake_pipeline.runs == 1, "a display control re-ran the model"
    assert "Pixel spacing unknown" in texts(at)
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Overlay PNG", "Mask PNG", "JSON report", "PDF report"]


def test_grad_cam_is_computed_once_on_demand(fake_pipeline):
    at = upload(run_app(), "slice.png", png_bytes(phantom()))
    assert fake_pipeline.runs == 1
    at.toggle(key="grad_cam").set_value(True).run()
    assert fake_pipeline.runs == 2
    at.slider(key="mask_threshold").set_value(0.7).run()
    assert fake_pipeline.runs == 2
    assert any("Grad-CAM" in c for c in _captions(at))


def _captions(at: AppTest) -> list[str]:
    return [c for image in at.get("image") for c in image.captions]


def test_dicom_upload_shows_mm_window_and_no_identifiers(fake_pipeline):
    at = upload(run_app(), "IM0001", dicom_bytes(phantom(), spacing=0.5))
    assert "mm²" in metric(at, "Area")
    assert metric(at, "Long × short axis").endswith(" mm")
    assert at.number_input(key=next(k for k in _keys(at) if k.startswith("wc_")))
    shown = texts(at) + str([d.value for d in at.dataframe])
    assert "Doe" not in shown and "SECRET" not in shown


def _keys(at: AppTest) -> list[str]:
    return [w.key for w in at.number_input if w.key]


@pytest.mark.parametrize(
    "name, data",
    [
        ("notes.txt", b"this is not an image"),
        ("empty.png", b""),
        ("broken.nii.gz", b"\x1f\x8b\x08garbage"),
        ("tiny.png", png_bytes(phantom(4))),
    ],
)
def test_bad_upload_shows_friendly_error(fake_pipeline, name, data):
    at = upload(run_app(), name, data)
    assert any("cannot be analysed" in e.value for e in at.error)
    assert fake_pipeline.runs == 0
    assert not at.metric


def test_nifti_volume_slices_and_sweep(fake_pipeline):
    at = upload(run_app(), "head.nii.gz", nifti_bytes())
    slider = next(s for s in at.slider if s.label == "Slice")
    assert slider.value == 4
    assert "Tumour detected" in texts(at)
    at.radio(key=next(r.key for r in at.radio if r.label == "Plane")).set_value("coronal").run()
    assert not at.exception, at.exception
    next(b for b in at.button if b.label.startswith("Analyse the whole volume")).click().run()
    assert not at.exception, at.exception
    assert metric(at, "Tumour volume") == "1.5 ml"
    assert metric(at, "Largest-tumour slice") == "32"


def test_gallery_pick_opens_analysis_with_expert_outline(fake_pipeline, tiny_gallery):
    at = run_app("pages/gallery.py")
    assert not at.exception, at.exception
    at.button(key="open_t1").click().run()
    assert not at.exception, at.exception
    assert "Gallery case **t1**" in texts(at)
    assert any("Dice" in c for c in _captions(at))


def test_weights_error_stops_before_prediction(monkeypatch, tmp_path):
    pytest.importorskip("tumor.pipeline", reason="tumor/pipeline.py not written yet")
    import streamlit as st

    st.cache_resource.clear()
    monkeypatch.setenv("TUMOR_WEIGHTS_DIR", str(tmp_path))
    at = run_app()
    assert not at.exception, at.exception
    assert any("cannot be loaded" in e.value for e in at.error)
    assert not at.file_uploader, "the upload widget must not appear without weights"
    assert not at.metric


@pytest.mark.slow
@pytest.mark.skipif(not HAS_WEIGHTS, reason="weights/manifest.json missing: no trained weights")
@pytest.mark.skipif(not HAS_GALLERY, reason="gallery/index.csv missing: gallery not built")
def test_real_models_on_a_gallery_tumour_slice():
    import csv

    with (ROOT / "gallery" / "index.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["label"] != "no_tumor" and r["mask"]]
    assert rows, "the gallery has no tumour case"
    at = run_app(None, gallery_pick=rows[0]["id"])
    assert not at.exception, at.exception
    assert re.search(r"(Tumour|No tumour) detected", texts(at))
    if "Tumour detected" in texts(at):
        at.slider(key="mask_threshold").set_value(0.1).run()
        low = area_px(at)
        at.slider(key="mask_threshold").set_value(0.9).run()
        assert not at.exception, at.exception
        high = area_px(at) if any(m.label == "Tumour area" for m in at.metric) else 0
        assert low > high


@pytest.mark.slow
@pytest.mark.skipif(not HAS_WEIGHTS, reason="weights/manifest.json missing: no trained weights")
def test_real_models_on_an_uploaded_png():
    at = upload(run_app(), "slice.png", png_bytes(phantom(256)))
    assert re.search(r"(Tumour|No tumour) detected", texts(at))
    assert metric(at, "P(tumour)").endswith("%")


METRICS = {
    "n_slices": 812,
    "detection": {
        "auc": 0.97,
        "sensitivity": 0.93,
        "specificity": 0.9,
        "threshold": 0.5,
        "roc": {"fpr": [0.0, 0.1, 1.0], "tpr": [0.0, 0.9, 1.0]},
    },
    "type": {
        "accuracy": 0.91,
        "confusion": [[5, 1], [0, 7]],
        "labels": ["glioma", "meningioma"],
    },
    "segmentation": {"tumor_slice_dice_mean": 0.77, "dice_values": [0.5, 0.8, 0.9]},
    "per_source": {"lgg": {"n": 3, "detection": {"auc": 0.98}}},
}


@pytest.mark.parametrize(
    "metrics, expected",
    [
        (METRICS, {"Detection AUC": "0.970", "Type accuracy": "0.910"}),
        (
            {"detection": {"auc": 0.5}},
            {"Detection AUC": "0.500", "Sensitivity": "not available"},
        ),
        ("{not json", {"Detection AUC": "not available"}),
    ],
)
def test_model_card_renders_what_it_has(monkeypatch, tmp_path, metrics, expected):
    import json

    text = metrics if isinstance(metrics, str) else json.dumps(metrics)
    (tmp_path / "metrics.json").write_text(text)
    (tmp_path / "training_log_classifier.csv").write_text(
        "epoch,acc,loss,val_acc,val_loss,lr\n0,0.6,1.0,0.6,0.9,0.001\n1,0.8,0.6,0.7,0.7,0.001\n"
    )
    monkeypatch.setenv("TUMOR_WEIGHTS_DIR", str(tmp_path))
    at = run_app("pages/model_card.py")
    assert not at.exception, at.exception
    for label, value in expected.items():
        assert metric(at, label) == value
    assert "Segmenter: Not available yet." in texts(at)
    assert "non-commercial" in texts(at)


@pytest.mark.parametrize(
    "confidence, shown, hidden",
    [
        (
            {"level": 0.95, "intervals": {"auc": [0.96, 0.99], "lgg_patient_dice_mean": [0.61, 0.84]}},
            ["95% bootstrap intervals", "AUC 0.960–0.990", "LGG Dice per patient 0.610–0.840"],
            ["sensitivity 0."],
        ),
        (None, [], ["bootstrap intervals"]),
        ({"level": 0.95, "intervals": {"auc": "wide"}}, [], ["bootstrap intervals"]),
    ],
)
def test_model_card_shows_the_test_intervals_it_has(monkeypatch, tmp_path, confidence, shown, hidden):
    import json

    metrics = dict(METRICS) if confidence is None else {**METRICS, "confidence": confidence}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    monkeypatch.setenv("TUMOR_WEIGHTS_DIR", str(tmp_path))
    at = run_app("pages/model_card.py")
    assert not at.exception, at.exception
    for words in shown:
        assert words in texts(at)
    for words in hidden:
        assert words not in texts(at)


def test_multiframe_dicom_has_a_frame_selector(fake_pipeline):
    at = upload(run_app(), "multi.dcm", dicom_bytes(phantom(), frames=3))
    frame = next(s for s in at.slider if s.label == "Frame")
    assert (frame.min, frame.max) == (0, 2)
    frame.set_value(2).run()
    assert not at.exception, at.exception
    assert fake_pipeline.runs == 2
    assert "Tumour detected" in texts(at)


def test_model_card_marks_where_each_training_stage_starts(monkeypatch, tmp_path):
    (tmp_path / "training_log_segmenter.csv").write_text(
        "epoch,stage,size,loss,val_loss\n0,1,128,0.9,0.95\n1,1,128,0.5,0.6\n2,2,256,0.4,0.5\n3,3,256,0.3,0.45\n"
    )
    monkeypatch.setenv("TUMOR_WEIGHTS_DIR", str(tmp_path))
    at = run_app("pages/model_card.py")
    assert not at.exception, at.exception
    (chart,) = at.get("plotly_chart")
    spec = chart.proto.spec
    # One marker per stage change, the size-preserving one included; none at the start.
    assert "stage 2, 256 px" in spec and "stage 3, 256 px" in spec and "128 px" not in spec
    assert '"name":"stage"' not in spec.replace(" ", "") and '"name":"loss"' in spec.replace(" ", "")


def test_model_card_says_how_many_test_slices_the_app_refused(monkeypatch, tmp_path):
    import json

    refused = {
        "n": 7,
        "by_source": {"navoneel_no": 7},
        "by_label": {"no_tumor": 7},
        "reasons": ["The image is almost entirely black"],
    }
    (tmp_path / "metrics.json").write_text(json.dumps({**METRICS, "n_slices": 100, "refused": refused}))
    monkeypatch.setenv("TUMOR_WEIGHTS_DIR", str(tmp_path))
    at = run_app("pages/model_card.py")
    assert not at.exception, at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "Test split: 100 slices. A further 7 slices are left out" in captions
    assert "almost entirely black" in captions


def test_model_card_says_what_each_training_stage_was_from_the_manifest(monkeypatch, tmp_path):
    import json

    (tmp_path / "training_log_segmenter.csv").write_text("epoch,stage,size,loss,val_loss\n0,1,128,0.9,0.95\n")
    stages = {"segmenter": {"stage1": "128 px from random init", "stage2": "warm restart: the second segmenter"}}
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": stages}))
    monkeypatch.setenv("TUMOR_WEIGHTS_DIR", str(tmp_path))
    at = run_app("pages/model_card.py")
    assert not at.exception, at.exception
    shown = texts(at)
    assert "**stage 1**: 128 px from random init" in shown
    assert "**stage 2**: warm restart: the second segmenter" in shown


CARD = """# Model card

## Intended use

Teaching only.

## Metrics

### Test split

Not shown apart.

### Validation, test and the independent held-out set

| metric | held-out |
|---|---|
| AUC | 0.5 |

## Known failure modes

- FLAIR-only slices are missed.

## Licences

- LGG: CC BY-NC-SA 4.0, non-commercial.
"""


def test_model_card_page_shows_the_cards_own_sections(monkeypatch, tmp_path):
    (tmp_path / "MODEL_CARD.md").write_text(CARD)
    monkeypatch.setenv("TUMOR_WEIGHTS_DIR", str(tmp_path))
    at = run_app("pages/model_card.py")
    assert not at.exception, at.exception
    shown = [m.value for m in at.markdown]
    for body in ("Teaching only.", "- FLAIR-only slices are missed.", "- LGG: CC BY-NC-SA 4.0, non-commercial."):
        assert body in shown
    assert "| metric | held-out |\n|---|---|\n| AUC | 0.5 |" in shown  # the subsection alone, not its parent
    assert CARD.strip() in [v.strip() for v in shown]  # and the whole card in the expander
    headings = [s.value for s in at.subheader]
    assert headings[-4:] == ["Training curves", "Intended use", "Known failure modes", "Licences"]
    assert "Independent held-out evaluation" in headings
    assert "inherit the non-commercial restriction" not in texts(at)  # the fallback is for a missing card only


def test_model_card_page_names_a_section_the_card_lacks_and_falls_back_without_a_card(monkeypatch, tmp_path):
    (tmp_path / "MODEL_CARD.md").write_text(CARD.replace("## Known failure modes", "## Failures"))
    monkeypatch.setenv("TUMOR_WEIGHTS_DIR", str(tmp_path))
    at = run_app("pages/model_card.py")
    assert not at.exception, at.exception
    assert "MODEL_CARD.md has no section 'Known failure modes'." in texts(at)

    (tmp_path / "MODEL_CARD.md").unlink()
    at = run_app("pages/model_card.py")
    assert not at.exception, at.exception
    assert "Not for diagnosis" in texts(at) and "inherit the non-commercial restriction" in texts(at)


def test_shipped_model_card_has_every_section_the_page_shows(fake_pipeline):
    if not (ROOT / "weights" / "MODEL_CARD.md").is_file():
        pytest.skip("weights/MODEL_CARD.md missing")
    at = run_app("pages/model_card.py")
    assert not at.exception, at.exception
    assert "has no section" not in texts(at)
    assert "held-out set" in texts(at) and "Intended use and licence" not in [s.value for s in at.subheader]


def test_outline_on_request_runs_the_segmenter_once_and_says_the_classifier_found_no_tumour(fake_pipeline):
    fake_pipeline.negative = True
    at = upload(run_app(), "slice.png", png_bytes(phantom()))
    assert "No tumour detected" in texts(at) and fake_pipeline.runs == 1
    assert not [m for m in at.metric if m.label == "Tumour area"]
    button = next(b for b in at.button if b.label.startswith("Outline anyway"))
    button.click().run()
    assert not at.exception, at.exception
    assert fake_pipeline.runs == 2
    shown = texts(at)
    assert "No tumour detected" in shown
    assert "requested by the user; the classifier found no tumour" in shown
    assert any(c.startswith("Outline requested by the user") for c in _captions(at))
    assert area_px(at) > 0
    at.slider(key="mask_threshold").set_value(0.8).run()
    assert fake_pipeline.runs == 2, "the slider re-ran a model"
    assert not [b for b in at.button if b.label.startswith("Outline anyway")]


def test_positive_slice_offers_no_outline_button(fake_pipeline):
    at = upload(run_app(), "slice.png", png_bytes(phantom()))
    assert not [b for b in at.button if b.label.startswith("Outline anyway")]


def test_dicom_upload_with_geometry_offers_a_dicom_seg_and_one_without_says_why(fake_pipeline):
    from tests.test_batch import dicom_series

    at = upload(run_app(), "IM0001", dicom_series([phantom()])[0])
    labels = [b.label for b in at.get("download_button")]
    assert any(label.startswith("DICOM SEG") for label in labels), labels
    at = upload(run_app(), "IM0002", dicom_bytes(phantom(), spacing=0.5))
    assert not any(b.label.startswith("DICOM SEG") for b in at.get("download_button"))
    assert any("No DICOM SEG for this file" in c.value for c in at.caption)
    png = upload(run_app(), "slice.png", png_bytes(phantom()))
    assert not any(b.label.startswith("DICOM SEG") for b in png.get("download_button"))
