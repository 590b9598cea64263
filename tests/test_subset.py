"""The lighter-set folder (``tumor.lab.subset``) reads back as a registry with only the kept networks."""

import pytest

from tumor import weights as weights_lib
from tumor.lab import subset


def test_subset_keeps_only_the_named_networks_and_settings(tmp_path):
    subset.write_subset(
        weights_lib.DEFAULT_WEIGHTS_DIR,
        tmp_path,
        ["classifier_2", "segmenter_2", "segmenter_3"],
        flip_tta=False,
        tumor_threshold=0.5,
    )
    reg = weights_lib.read_registry(tmp_path)
    shipped = weights_lib.read_registry(weights_lib.DEFAULT_WEIGHTS_DIR)
    (clf,) = reg.members("classifier")
    assert clf.name == "classifier" and clf.path.name == "classifier_2.weights.h5"
    assert clf.sha256 == shipped.models["classifier_2"].sha256
    segs = reg.members("segmenter")
    assert [(s.path.name, s.inputs) for s in segs] == [
        ("segmenter_2.weights.h5", "colour"),
        ("segmenter_3.weights.h5", "grey"),
    ]
    assert reg.flip_tta is False and reg.tumor_threshold == 0.5
    assert reg.mask_threshold == shipped.mask_threshold
    for entry in reg.models.values():
        weights_lib.verify(entry)  # the links point at the pinned files


def test_subset_refuses_unknown_names_and_a_missing_kind(tmp_path):
    with pytest.raises(ValueError, match="Unknown networks"):
        subset.write_subset(weights_lib.DEFAULT_WEIGHTS_DIR, tmp_path, ["classifier", "segmenter_9"])
    with pytest.raises(ValueError, match="keeps no"):
        subset.write_subset(weights_lib.DEFAULT_WEIGHTS_DIR, tmp_path, ["classifier", "classifier_2"])
