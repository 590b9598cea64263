"""Choosing an ensemble from cached per-network outputs: the averages match the pipeline's, and the rule."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from test_train_eval import HAS_WEIGHTS, ROOT, _gallery_manifest

from tumor import runtime
from tumor.lab import compare_ensembles, data, evaluate
from tumor.pipeline import Member, Pipeline, Settings
from tumor.preprocess import scale_intensity


class MeanClassifier:
    """Probabilities that depend on the slice: P(no tumour) falls as the mean brightness rises."""

    def __init__(self, tilt: float):
        self.tilt = tilt

    def __call__(self, x):
        m = scale_intensity(x).mean(axis=(1, 2, 3))
        no = np.clip(1.2 - 3 * m, 0.05, 0.9)
        rest = (1 - no)[:, None] * np.array([[0.5 - self.tilt, 0.3, 0.2 + self.tilt]], np.float32)
        return np.concatenate([no[:, None], rest], axis=1)


class BrightSegmenter:
    """The first channel, raised to a power: a map that depends on the slice and on the mirror."""

    def __init__(self, power: float):
        self.power = power

    def __call__(self, x):
        first = scale_intensity(x)[..., :1]
        return first**self.power * np.linspace(0.5, 1.0, first.shape[2], dtype=np.float32)[None, None, :, None]


SETTINGS = Settings(tumor_threshold=0.0, flip_tta=True)  # every slice segmented, as network_outputs runs them


def _single(clf, seg) -> Pipeline:
    return Pipeline((Member(clf, 32),), (Member(seg, 48),), SETTINGS)


def _compiled(*entries) -> list[Member]:
    """Each entry compiled on its own and shown every slice, as ``network_outputs`` runs it."""
    networks = runtime.load_networks([[e] for e in entries])
    return [
        Member(n, e.input_size, e.intensity, name=e.name, sha256=e.sha256)
        for e, n in zip(entries, networks, strict=True)
    ]


def test_combined_cached_outputs_equal_the_ensemble_pipelines_outputs(tmp_path):
    df = data.read_manifest(_gallery_manifest(tmp_path))
    clfs, segs = (MeanClassifier(0.0), MeanClassifier(0.2)), (BrightSegmenter(1.0), BrightSegmenter(2.0))
    singles = [evaluate.run_pipeline(_single(c, s), df) for c, s in zip(clfs, segs, strict=True)]
    combined = compare_ensembles.combine(singles, singles)
    ensemble = Pipeline([Member(c, 32) for c in clfs], [Member(s, 48) for s in segs], SETTINGS)
    direct = evaluate.run_pipeline(ensemble, df)
    assert len(combined) == len(direct) == len(df)
    np.testing.assert_allclose(np.stack(combined["probs"]), np.stack(direct["probs"]), atol=1e-12)
    np.testing.assert_allclose(combined["p_tumor"], direct["p_tumor"], atol=1e-12)
    assert list(combined["type_pred"]) == list(direct["type_pred"]) == list(direct["pred"])
    assert list(combined["pred"]) == list(direct["pred"])
    for a, b in zip(combined["prob_map"], direct["prob_map"], strict=True):
        np.testing.assert_array_equal(a, b)
    # The two stub networks of each kind differ, so the mean is not either one of them.
    assert not np.allclose(np.stack(singles[0]["probs"]), np.stack(direct["probs"]))
    assert evaluate.calibrated_report(combined) == evaluate.calibrated_report(direct)


def test_combine_refuses_outputs_of_different_rows(tmp_path):
    df = data.read_manifest(_gallery_manifest(tmp_path))
    res = evaluate.run_pipeline(_single(MeanClassifier(0.0), BrightSegmenter(1.0)), df)
    with pytest.raises(ValueError, match="different rows"):
        compare_ensembles.combine([res], [res.iloc[::-1].reset_index(drop=True)])


def _row(c: str, s: str, score: float) -> dict:
    return {"classifier": c.split("+"), "segmenter": s.split("+"), "val_score": score}


@pytest.mark.parametrize(
    ("rows", "tied", "n_notes"),
    [
        # Three segmenters lead by 0.002 < 0.005: set aside; the best two-segmenter pair wins alone.
        ([_row("a+b", "x+y+z", 2.687), _row("a+b", "x+y", 2.685), _row("a", "x", 2.650)], ["a+b/x+y"], 1),
        # Three segmenters lead by 0.010: they stay, and win.
        ([_row("a+b", "x+y+z", 2.695), _row("a+b", "x+y", 2.685), _row("a", "x", 2.650)], ["a+b/x+y+z"], 0),
        # Two pairs within 0.003 of the best tie, best first; the third is out.
        ([_row("a", "x", 2.680), _row("a+b", "x+y", 2.682), _row("b", "y", 2.675)], ["a+b/x+y", "a/x"], 0),
        # Three segmenters score 0.001 under the best two: not in the tie band, however close.
        ([_row("a+b", "x+y", 2.685), _row("a+b", "x+y+z", 2.684), _row("a", "x+y", 2.683)], ["a+b/x+y", "a/x+y"], 1),
        # Three classifiers lead by 0.001, so two-classifier pairs only; then a 0.002 tie below.
        (
            [_row("a+b+c", "x", 2.700), _row("a+b", "x", 2.699), _row("a", "x", 2.697), _row("b", "x", 2.690)],
            ["a+b/x", "a/x"],
            1,
        ),
    ],
)
def test_choose_applies_the_size_margin_then_the_tie_band(rows, tied, n_notes):
    got, notes = compare_ensembles.choose(rows, margin=0.005, tie=0.003)
    assert [compare_ensembles.pair_label(r) for r in got] == tied
    assert len(notes) == n_notes


def _cli_start(tmp_path):
    """A gallery manifest, the JSON to write and the CLI arguments every run takes: (manifest, out, args)."""
    manifest, out = _gallery_manifest(tmp_path), tmp_path / "compare.json"
    args = ["--manifest", str(manifest), "--split", "all", "--cache", str(tmp_path / "cache"), "--out", str(out)]
    return manifest, out, args


@pytest.mark.slow
@pytest.mark.skipif(not HAS_WEIGHTS, reason="trained weights not present in weights/")
def test_cli_scores_real_networks_as_the_ensemble_pipeline_does(tmp_path):
    weights = ROOT / "weights"
    manifest, out, args = _cli_start(tmp_path)
    args += [
        "--classifier",
        f"a={weights / 'classifier.weights.h5'}",
        "--classifier",
        f"b={weights / 'classifier_2.weights.h5'}",
    ]
    args += ["--segmenter", f"x={weights / 'segmenter.weights.h5'}"]
    args += ["--classifier-sets", "a", "a+b", "--segmenter-sets", "x", "--baseline", "a+b/x", "--flair-stress"]
    calibration = tmp_path / "calibration.json"
    args += ["--write-calibration", str(calibration)]
    compare_ensembles.main(args)
    result = json.loads(out.read_text())
    assert [(r["classifier"], r["segmenter"]) for r in result["pairs"]] == [(["a"], ["x"]), (["a", "b"], ["x"])]
    assert result["winner"] in {"a/x", "a+b/x"} and result["baseline_wins"] == (result["winner"] == "a+b/x")
    # One pass per classifier (the segmenter reused), as acquired and FLAIR-only.
    assert len(list((tmp_path / "cache").glob("*.pkl"))) == 4
    for r in result["pairs"]:
        assert 0.0 <= r["val_lgg_patient_dice_flair_only"] <= 1.0 and 0.0 <= r["val_lgg_sensitivity_flair_only"] <= 1.0

    from tumor import weights as weights_lib

    registry = weights_lib.read_registry(weights)
    a, b, x = _compiled(*(registry.models[n] for n in ("classifier", "classifier_2", "segmenter")))
    ensemble = Pipeline((a, b), (x,), Settings(tumor_threshold=0.0, flip_tta=registry.flip_tta))
    direct = evaluate.calibrated_report(evaluate.run_pipeline(ensemble, data.read_manifest(manifest)))
    row = result["pairs"][1]
    for key in ("tumor_threshold", "mask_threshold", "min_component_fraction"):
        assert row[key] == direct[key]
    assert row["val_score"] == pytest.approx(direct["val_score"], abs=1e-9)

    # The winner's calibration record: its thresholds, its figures with the per-threshold objective, its files.
    record = json.loads(calibration.read_text())
    win = next(r for r in result["pairs"] if compare_ensembles.pair_label(r) == result["winner"])
    keys = ("tumor_threshold", "mask_threshold", "min_component_fraction")
    assert record["chosen"] == {"flip_tta": registry.flip_tta, **{k: win[k] for k in keys}}
    (candidate,) = record["candidates"]
    assert candidate["val_score"] == pytest.approx(win["val_score"], abs=1e-9)
    assert set(candidate["val_objective_by_mask_threshold"]) == {str(float(t)) for t in evaluate.MASK_THRESHOLDS}
    shas = result["networks"]["classifier"]
    assert record["networks"]["classifier"] == {n: shas[n]["sha256"] for n in win["classifier"]}
    assert result["winner"] in record["note"]


def test_calibration_document_takes_the_settings_of_the_best_candidate():
    low = {"flip_tta": False, "tumor_threshold": 0.5, "mask_threshold": 0.3, "min_component_fraction": 0.0}
    high = {"flip_tta": True, "tumor_threshold": 0.4, "mask_threshold": 0.2, "min_component_fraction": 0.001}
    candidates = [{**low, "val_score": 2.60, "val_auc": 0.9}, {**high, "val_score": 2.65, "val_auc": 0.8}]
    doc = evaluate.calibration_document("val", candidates)
    assert doc == {"split": "val", "candidates": candidates, "chosen": high}
    assert evaluate.calibration_document("val", candidates[:1], note="why")["chosen"] == low
    assert evaluate.calibration_document("val", candidates[:1], note="why")["note"] == "why"


def test_a_routed_segmenter_set_scores_as_the_routed_pipeline_does(tmp_path):
    df = data.read_manifest(_gallery_manifest(tmp_path))
    clf, segs = MeanClassifier(0.1), (BrightSegmenter(1.0), BrightSegmenter(2.0), BrightSegmenter(0.5))
    singles = [evaluate.run_pipeline(_single(clf, s), df) for s in segs]
    grey = singles[0]["grey"].to_numpy(bool)
    assert grey.any() and not grey.all()  # the gallery holds both kinds, so the routing is exercised
    combined = compare_ensembles.combine(singles[:1], singles[:2], singles[2:])
    routed = Pipeline(
        (Member(clf, 32),),
        (Member(segs[0], 48, route="colour"), Member(segs[1], 48, route="colour"), Member(segs[2], 48, route="grey")),
        SETTINGS,
    )
    direct = evaluate.run_pipeline(routed, df)
    for a, b in zip(combined["prob_map"], direct["prob_map"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert evaluate.calibrated_report(combined, by_mask_threshold=False) == pytest.approx(
        evaluate.calibrated_report(direct, by_mask_threshold=False), abs=1e-6
    )
    with pytest.raises(ValueError, match="grey flags"):
        compare_ensembles.combine([singles[0].drop(columns="grey")], singles[:2], singles[2:])


def test_routed_sets_are_named_and_sized_by_their_larger_half():
    row = {"classifier": ["a", "b"], "segmenter": ["x", "y"], "segmenter_grey": ["x", "y", "t", "u"]}
    assert compare_ensembles.pair_label(row) == "a+b/x+y|x+y+t+u"
    assert compare_ensembles.set_size(row, "segmenter") == 4 and compare_ensembles.set_size(row, "classifier") == 2
    rows = [dict(row, val_score=2.689), _row("a+b", "x+y", 2.686)]
    tied, notes = compare_ensembles.choose(rows, margin=0.005, tie=0.0)
    assert [compare_ensembles.pair_label(r) for r in tied] == ["a+b/x+y"] and len(notes) == 1
    names = {"x": "p", "y": "p", "t": "p"}
    parsed = compare_ensembles._parse_sets(["x+y|t", "x"], names, "--s", routed=True)
    assert parsed == [(("x", "y"), ("t",)), (("x",), None)]
    with pytest.raises(SystemExit, match="at most one"):
        compare_ensembles._parse_sets(["x|y"], names, "--classifier-sets")
    with pytest.raises(SystemExit, match="unknown"):
        compare_ensembles._parse_sets(["x|z"], names, "--s", routed=True)


@pytest.mark.parametrize(
    ("scores", "margin", "winner"),
    [
        ((2.690, 2.694), 0.005, "a/x"),  # a new pair 0.004 ahead: the baseline stays
        ((2.690, 2.696), 0.005, "a/x|t"),  # 0.006 ahead: the new pair wins
        ((2.690, 2.694), 0.0, "a/x|t"),  # no margin asked: the best score wins
        ((2.699, 2.694), 0.005, "a/x"),  # the baseline is the best anyway
    ],
)
def test_a_new_winner_must_lead_the_baseline_by_the_margin(scores, margin, winner):
    base = _row("a", "x", scores[0])
    new = dict(_row("a", "x", scores[1]), segmenter_grey=["t"])
    rows = [base, new]
    tied, _ = compare_ensembles.choose(rows, margin=0.005, tie=0.0)
    kept, note = compare_ensembles.keep_baseline(tied, rows, "a/x", margin)
    assert compare_ensembles.pair_label(kept[0]) == winner
    assert bool(note) == (winner == "a/x" and scores[1] > scores[0])


@pytest.mark.slow
@pytest.mark.skipif(not HAS_WEIGHTS, reason="trained weights not present in weights/")
def test_cli_runs_extra_segmenters_alone_and_scores_a_routed_set_as_the_routed_pipeline_does(tmp_path):
    from tumor import weights as weights_lib

    weights = ROOT / "weights"
    manifest, out, args = _cli_start(tmp_path)
    args += ["--classifier", f"a={weights / 'classifier.weights.h5'}"]
    args += ["--segmenter", f"x={weights / 'segmenter.weights.h5'}"]
    args += ["--segmenter", f"y={weights / 'segmenter_2.weights.h5'}"]
    args += ["--classifier-sets", "a", "--segmenter-sets", "x", "x|y", "--baseline", "a/x"]
    compare_ensembles.main(args)
    result = json.loads(out.read_text())
    assert [compare_ensembles.pair_label(r) for r in result["pairs"]] == ["a/x", "a/x|y"]
    # One pass of a with x, and y alone (no classifier): two cache files as acquired, one of them classifier-free
    # (the FLAIR-only passes of a tie-break, if any, are cached apart).
    cached = sorted(p.name for p in (tmp_path / "cache").glob("*.pkl") if "_lgg_flair_" not in p.name)
    assert len(cached) == 2 and sum("_none_" in n for n in cached) == 1

    registry = weights_lib.read_registry(weights)
    a, x, y = _compiled(*(registry.models[n] for n in ("classifier", "segmenter", "segmenter_2")))
    x, y = dataclasses.replace(x, route="colour"), dataclasses.replace(y, route="grey")
    routed = Pipeline((a,), (x, y), Settings(tumor_threshold=0.0, flip_tta=registry.flip_tta))
    direct = evaluate.calibrated_report(evaluate.run_pipeline(routed, data.read_manifest(manifest)))
    row = result["pairs"][1]
    for key in ("tumor_threshold", "mask_threshold", "min_component_fraction"):
        assert row[key] == direct[key]
    assert row["val_score"] == pytest.approx(direct["val_score"], abs=1e-6)
    assert row["val_figshare_slice_dice"] != result["pairs"][0]["val_figshare_slice_dice"]  # the route changed maps


def test_a_candidate_can_name_its_own_input_size(tmp_path):
    nets = compare_ensembles._parse_networks(["a=runs/x.weights.h5", "b=runs/y@z.weights.h5@384"], "--segmenter")
    assert nets == {"a": ("runs/x.weights.h5", None), "b": ("runs/y@z.weights.h5", 384)}
    for bad in ("c=runs/x.weights.h5@", "c=runs/x.weights.h5@big", "c=runs/x.weights.h5@8"):
        with pytest.raises(SystemExit, match="SIZE"):
            compare_ensembles._parse_networks([bad], "--segmenter")
    template = compare_ensembles.weights_lib.ModelEntry(
        kind="segmenter", name="segmenter", path=tmp_path / "s.h5", sha256="", input_size=256, build_kwargs={}
    )
    (tmp_path / "y.weights.h5").write_bytes(b"not a network, only hashed")
    sized = compare_ensembles._entry("segmenter", "b", tmp_path / "y.weights.h5", template, 384)
    same = compare_ensembles._entry("segmenter", "b", tmp_path / "y.weights.h5", template)
    assert (sized.input_size, same.input_size) == (384, 256)


def _stub_networks(monkeypatch, make) -> None:
    """``network_outputs`` runs ``make(entry)`` instead of compiling; the entries' files are not hashed."""
    from tumor import weights as weights_lib

    monkeypatch.setattr(weights_lib, "verify", lambda entry: None)
    monkeypatch.setattr(runtime, "load_networks", lambda groups, **kw: [make(g[0]) for g in groups])


def test_network_outputs_cache_one_file_per_input_side(tmp_path, monkeypatch):
    """One weights file run at two input sides is two networks: two caches, each read back, never swapped."""
    from tumor import weights as weights_lib

    df = data.read_manifest(_gallery_manifest(tmp_path)).head(3)
    runs = []

    def fake_run(pipeline, frame, transform=None):
        runs.append(pipeline.segmenters[0].size)
        return frame.assign(side=pipeline.segmenters[0].size)

    monkeypatch.setattr(compare_ensembles, "run_pipeline", fake_run)
    _stub_networks(monkeypatch, lambda entry: BrightSegmenter(1.0))
    entry = weights_lib.ModelEntry(
        kind="segmenter", name="x", path=tmp_path / "x.weights.h5", sha256="ab" * 32, input_size=48, build_kwargs={}
    )
    wider = dataclasses.replace(entry, name="x64", input_size=64)
    kwargs = {"flip_tta": True, "cache_dir": tmp_path / "cache", "tag": "t"}
    sides = [compare_ensembles.network_outputs(None, e, df, **kwargs)["side"].iloc[0] for e in (entry, wider, entry)]
    assert sides == [48, 64, 48]
    assert runs == [48, 64]  # the third call read the first one's cache
    assert len(list((tmp_path / "cache").glob("*.pkl"))) == 2


def test_a_classifier_pass_without_a_segmenter_gives_the_same_probabilities_and_empty_maps(tmp_path, monkeypatch):
    """Classifiers beyond the segmenters run alone: same class probabilities as with a segmenter, maps never scored."""
    from tumor import weights as weights_lib

    df = data.read_manifest(_gallery_manifest(tmp_path)).head(4)
    _stub_networks(monkeypatch, lambda entry: MeanClassifier(0.1))
    clf = weights_lib.ModelEntry(
        kind="classifier", name="c", path=tmp_path / "c.weights.h5", sha256="cd" * 32, input_size=32, build_kwargs={}
    )
    kwargs = {"flip_tta": True, "cache_dir": tmp_path / "cache", "tag": "t"}
    alone = compare_ensembles.network_outputs(clf, None, df, **kwargs)
    with_seg = evaluate.run_pipeline(_single(MeanClassifier(0.1), BrightSegmenter(1.0)), df)
    np.testing.assert_allclose(np.stack(alone["probs"].to_numpy()), np.stack(with_seg["probs"].to_numpy()), atol=1e-6)
    assert all(m.shape == t.shape and not m.any() for m, t in zip(alone["prob_map"], alone["truth"], strict=True))
    assert [p.name for p in (tmp_path / "cache").glob("*.pkl")] == [f"t_r3_tta1_{'cd' * 6}s32_none.pkl"]
    with pytest.raises(ValueError, match="neither"):
        compare_ensembles.network_outputs(None, None, df, **kwargs)


def test_networks_cached_alone_are_not_run_again_in_a_new_pairing(tmp_path, monkeypatch):
    """A later comparison that pairs a new classifier with a segmenter cached alone runs only the new network."""

    stubs = {"a": MeanClassifier(0.0), "b": MeanClassifier(0.35), "x": BrightSegmenter(1.0), "y": BrightSegmenter(2.0)}
    for name in stubs:
        (tmp_path / f"{name}.weights.h5").write_bytes(name.encode())  # hashed only: each file its own hash
    _stub_networks(monkeypatch, lambda entry: stubs[entry.path.name.split(".")[0]])
    runs = []

    def counted(pipeline, frame, transform=None):
        if transform is None:  # the FLAIR-only passes of a tie-break, if any, are not counted
            stubbed = (pipeline.classifiers[0].network, pipeline.segmenters[0].network)
            runs.append(tuple(any(n is s for s in stubs.values()) for n in stubbed))
        return evaluate.run_pipeline(pipeline, frame, transform=transform)

    monkeypatch.setattr(compare_ensembles, "run_pipeline", counted)
    _, out, args = _cli_start(tmp_path)
    nets = [f"--segmenter=x={tmp_path / 'x.weights.h5'}", f"--segmenter=y={tmp_path / 'y.weights.h5'}"]
    nets += [f"--classifier=a={tmp_path / 'a.weights.h5'}"]
    compare_ensembles.main([*args, *nets, "--classifier-sets", "a", "--segmenter-sets", "x+y", "--tie", "0"])
    assert runs == [(True, True), (False, True)]  # a with x, y alone
    first = json.loads(out.read_text())["pairs"][0]

    runs.clear()
    nets += [f"--classifier=b={tmp_path / 'b.weights.h5'}"]
    compare_ensembles.main([*args, *nets, "--classifier-sets", "a", "a+b", "--segmenter-sets", "x+y", "--tie", "0"])
    assert runs == [(True, False)]  # b alone: y's cache is read, not run again beside b
    again = json.loads(out.read_text())["pairs"]
    assert again[0]["val_score"] == first["val_score"] and again[1]["val_score"] != first["val_score"]


def _rows(p_tumor, labels, grey, source="figshare_cheng"):
    """Hand-built pair outputs: 4x4 slices, every tumour slice's expert mask the top half, the map the same."""
    truth = np.zeros((4, 4), bool)
    truth[:2] = True
    rows = []
    for i, (p, label, g) in enumerate(zip(p_tumor, labels, grey, strict=True)):
        tumour = label != "no_tumor"
        rows.append(
            {
                "image_file": f"s{i}.png",
                "source": source,
                "patient_id": f"P{i % 2}",
                "label": label,
                "p_tumor": p,
                "type_pred": "glioma",
                "pred": "glioma",
                "grey": g,
                "truth": truth if tumour else np.zeros((4, 4), bool),
                "prob_map": truth.astype(np.float32) if tumour else np.zeros((4, 4), np.float32),
            }
        )
    return pd.DataFrame(rows)


def test_a_greyscale_threshold_applies_to_greyscale_slices_only():
    labels = ["glioma", "glioma", "no_tumor", "no_tumor", "glioma", "no_tumor"]
    res = _rows([0.3, 0.3, 0.2, 0.1, 0.9, 0.35], labels, [True, False, True, True, False, False])
    stress = _rows([0.25, 0.1, 0.05], ["glioma", "glioma", "no_tumor"], [True] * 3, source=evaluate.LGG)
    kw = {"tumor_threshold": 0.4, "mask_threshold": 0.5, "min_fraction": 0.0}
    one = compare_ensembles.split_threshold_figures(res, stress, grey_threshold=0.4, **kw)
    # One threshold for all: the same figures evaluate gives.
    summary = evaluate._summary(evaluate.apply_cascade(res, 0.4), 0.4, 0.5)
    assert one["val_sensitivity"] == summary["detection"]["sensitivity"] == pytest.approx(1 / 3)
    assert one["val_specificity"] == summary["detection"]["specificity"] == 1.0
    assert one["val_figshare_slice_dice"] == summary["segmentation"]["figshare_slice_dice_mean"] == pytest.approx(1 / 3)
    assert one["val_lgg_sensitivity_flair_only"] == 0.0
    # At 0.25 for greyscale slices: the grey tumour slice (0.3) is found, the colour one (0.3) is not;
    # the grey healthy slices (0.2, 0.1) stay negative, and one of the two FLAIR-only tumour slices is found.
    split = compare_ensembles.split_threshold_figures(res, stress, grey_threshold=0.25, **kw)
    assert split["val_sensitivity"] == pytest.approx(2 / 3) and split["val_specificity"] == 1.0
    assert split["val_figshare_slice_dice"] == pytest.approx(2 / 3)
    assert (split["val_specificity_grey_healthy"], split["n_grey_healthy"]) == (1.0, 2)
    assert split["val_lgg_sensitivity_flair_only"] == 0.5
    assert split["val_score"] - one["val_score"] == pytest.approx(1 / 3)  # AUC and type accuracy do not move
    # The greyscale threshold is chosen on greyscale and FLAIR-only rows only: colour rows do not move it.
    row = {"tumor_threshold": 0.4, "mask_threshold": 0.5, "min_component_fraction": 0.0}
    chosen = compare_ensembles.grey_threshold_row(res, stress, row)["grey_threshold"]["grey_threshold"]
    moved = res.assign(p_tumor=np.where(res["grey"], res["p_tumor"], 0.05))
    assert compare_ensembles.grey_threshold_row(moved, stress, row)["grey_threshold"]["grey_threshold"] == chosen
    assert chosen <= 0.1  # sensitivity 0.95 on the pool needs every tumour slice, down to 0.1
