"""The cascade: classifier first, segmenter only on tumour-positive slices.

``Pipeline.analyze`` runs the models once per slice and returns a frozen
``Analysis``. Everything the UI varies afterwards (mask threshold, contour or
fill, opacity, measurements, reports) is derived from the ``Analysis`` without
running a model again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tumor import measure as measure_lib
from tumor import overlay as overlay_lib
from tumor.models import CLASS_NAMES, from_model_square, preprocess_classifier, preprocess_segmenter, to_model_square

# What each predicted class usually implies. Worded as a reading of the tumour
# type, never as a diagnosis: the data carry no benign/malignant label.
BEHAVIOUR = {
    "no_tumor": "No tumour detected on this slice.",
    "glioma": "Gliomas are malignant tumours (the gliomas in the training data are WHO grade II-IV).",
    "meningioma": "Meningiomas are usually benign (mostly WHO grade 1).",
    "pituitary": "Pituitary adenomas are benign.",
}
DISPLAY_NAMES = {
    "no_tumor": "no tumour",
    "glioma": "glioma",
    "meningioma": "meningioma",
    "pituitary": "pituitary adenoma",
}


# A slice is greyscale when its channels differ by at most this many grey levels,
# averaged over its pixels. Measured on the packed validation slices: figshare T1-CE
# slices 0.03 or less, healthy sets 0.51 or less; LGG composites 5.7 at their
# 5th percentile (0 only for slices whose sequences are all the same).
GREY_TOLERANCE = 1.0


def is_grey(rgb: np.ndarray) -> bool:
    """Whether an RGB uint8 slice is greyscale (a single sequence), not a multi-sequence colour composite."""
    spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)
    return float(spread.mean()) <= GREY_TOLERANCE


def threshold_mask(prob_map: np.ndarray, threshold: float, min_component_fraction: float = 0.0) -> np.ndarray:
    """The tumour mask of a probability map: the one rule the app and ``evaluate`` share.

    Pixels at or above ``threshold`` (a threshold of 0 still leaves out pixels of
    probability 0), minus components smaller than ``min_component_fraction`` of
    the map.
    """
    mask = prob_map >= max(threshold, 1e-6)
    if min_component_fraction > 0:
        mask = measure_lib.drop_small_components(mask, min_component_fraction)
    return mask


@dataclass(frozen=True, eq=False)
class Analysis:
    """The models' outputs for one slice, and what derives from them.

    Attributes:
        image: the analysed RGB uint8 slice (H, W, 3), read-only.
        probabilities: class name -> softmax probability, ``CLASS_NAMES`` order.
        p_tumor: 1 - P(no_tumor).
        tumor_threshold: P(tumour) at or above which the slice is positive.
        tumor_detected: ``p_tumor >= tumor_threshold``.
        predicted_class: ``"no_tumor"`` when negative, else the most probable
            tumour type.
        tumor_type: the tumour type, None when negative.
        behaviour: what the type usually implies, in plain words.
        prob_map: float32 (H, W) tumour probability at the slice's resolution;
            None when negative (the segmenter never ran).
        default_mask_threshold: the shipped mask threshold.
        min_component_fraction: mask components smaller than this fraction of
            the slice are dropped (chosen on validation; 0 keeps all).
        pixel_spacing_mm: (row, col) spacing, None when unknown.
        orientation: patient directions of image +x and +y, None when unknown.
        model_version: the registry's version string.
        weights_sha256: ``kind -> sha256`` of the weights that produced this.
        segmenter_route: "grey" or "colour" when the weights route segmenters
            by the kind of slice (``Pipeline.routes_segmenters``) and the
            segmenter ran: which of them drew the map; None otherwise.
    """

    image: np.ndarray = field(repr=False)
    probabilities: dict[str, float]
    p_tumor: float
    tumor_threshold: float
    tumor_detected: bool
    predicted_class: str
    tumor_type: str | None
    behaviour: str
    prob_map: np.ndarray | None = field(repr=False)
    default_mask_threshold: float = 0.5
    min_component_fraction: float = 0.0
    pixel_spacing_mm: tuple[float, float] | None = None
    orientation: tuple[str, str] | None = None
    model_version: str = "unversioned"
    weights_sha256: dict[str, str] = field(default_factory=dict)
    segmenter_route: str | None = None

    @property
    def display_name(self) -> str:
        """The predicted class in words ("pituitary adenoma", "no tumour")."""
        return DISPLAY_NAMES[self.predicted_class]

    def mask(self, threshold: float | None = None) -> np.ndarray:
        """Boolean tumour mask (H, W) at ``threshold`` (default: the shipped one).

        All False when the slice is negative. A higher threshold never grows it.
        """
        t = self.default_mask_threshold if threshold is None else float(threshold)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"Mask threshold must be in [0, 1]. Received: threshold={threshold}")
        if self.prob_map is None:
            return np.zeros(self.image.shape[:2], bool)
        return threshold_mask(self.prob_map, t, self.min_component_fraction)

    @functools.cached_property
    def brain(self) -> np.ndarray:
        """Boolean brain/head region (H, W), the denominator of "% of brain"."""
        return measure_lib.brain_mask(self.image)

    def measurements(self, threshold: float | None = None) -> measure_lib.Measurements:
        """Area, diameters, components and position of the mask at ``threshold``."""
        return measure_lib.measure(
            self.mask(threshold), spacing_mm=self.pixel_spacing_mm, orientation=self.orientation, brain=self.brain
        )

    def overlay(self, threshold: float | None = None, *, mode: str = "contour", opacity: float = 0.4) -> np.ndarray:
        """The slice with the mask drawn in red, as a new RGB uint8 array."""
        return overlay_lib.draw_mask(self.image, self.mask(threshold), mode=mode, opacity=opacity)

    def report(
        self,
        threshold: float | None = None,
        *,
        source_name: str | None = None,
        scan_meta: dict[str, str] | None = None,
        created: datetime | None = None,
    ) -> dict:
        """A JSON-ready report of this analysis (no patient-identifying fields)."""
        from tumor import report as report_lib

        t = self.default_mask_threshold if threshold is None else float(threshold)
        return report_lib.report_dict(
            probabilities=self.probabilities,
            p_tumor=self.p_tumor,
            predicted=self.display_name,
            behaviour=self.behaviour,
            threshold=t,
            measurements=self.measurements(t) if self.tumor_detected else None,
            model_version=self.model_version,
            weights_sha256=self.weights_sha256,
            scan_meta=scan_meta or {},
            source_name=source_name,
            created=created or datetime.now(UTC),
            segmenter_route=self.segmenter_route,
        )

    def pdf(
        self,
        threshold: float | None = None,
        *,
        source_name: str | None = None,
        scan_meta: dict[str, str] | None = None,
        mode: str = "contour",
        opacity: float = 0.4,
    ) -> bytes:
        """The report as a one-page PDF with the slice and its outline."""
        from tumor import report as report_lib

        report = self.report(threshold, source_name=source_name, scan_meta=scan_meta)
        return report_lib.report_pdf(report, self.overlay(threshold, mode=mode, opacity=opacity))


@dataclass(frozen=True, eq=False)
class VolumeAnalysis:
    """The cascade over every slice of a volume along one plane.

    Attributes:
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        p_tumor: P(tumour) per slice.
        tumor_area_px: tumour pixels per slice at the default mask threshold.
        largest_slice: index of the slice with the largest tumour area, None
            when no slice is positive.
        tumor_volume_ml: summed tumour voxels times the voxel volume.
    """

    plane: str
    p_tumor: list[float]
    tumor_area_px: list[int]
    largest_slice: int | None
    tumor_volume_ml: float


@dataclass(frozen=True)
class Member:
    """One network of an ensemble, with its own input side and scaling.

    Attributes:
        model: maps a preprocessed batch to the outputs of its kind.
        size: its input side in pixels.
        intensity: its input scaling, one of ``tumor.models.INTENSITY_MODES``.
        inputs: which slices it sees (segmenters): "all", "grey" or "colour"
            (``tumor.weights.INPUT_ROUTES``, ``is_grey``).
    """

    model: object
    size: int
    intensity: str = "unit"
    inputs: str = "all"


class Pipeline:
    """Classifier then segmenter, loaded once and shared (treat as immutable).

    Args:
        classifier: maps preprocessed (1, S, S, 3) to (1, 4) probabilities.
        segmenter: maps preprocessed (1, S, S, 3) to (1, S, S, 1) probabilities.
        classifier_size: input side of the classifier.
        segmenter_size: input side of the segmenter.
        tumor_threshold: P(tumour) at or above which the segmenter runs.
        mask_threshold: default mask threshold.
        version: model version shown with every result.
        weights_sha256: ``kind -> sha256`` of the loaded weights.
        metrics: the test metrics shipped with the weights, if any.
        min_component_fraction: mask components smaller than this fraction of
            the slice are dropped.
        flip_tta: average each model over the slice and its left-right mirror
            (one batched call of two), when validation showed it helps.
        classifier_intensity: the classifier's input scaling, one of
            ``tumor.models.INTENSITY_MODES``.
        segmenter_intensity: the segmenter's input scaling.
        extra_classifiers: further classifiers (``Member``); P(class) is the
            mean over the classifier and these. Grad-CAM explains the first.
        extra_segmenters: further segmenters; the probability map is the mean
            over the segmenter and these, those routed to the slice's kind
            (``Member.inputs``) only.
        segmenter_inputs: which slices the first segmenter sees ("all",
            "grey" or "colour").
    """

    def __init__(
        self,
        classifier,
        segmenter,
        *,
        classifier_size: int,
        segmenter_size: int,
        tumor_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        version: str = "unversioned",
        weights_sha256: dict[str, str] | None = None,
        metrics: dict | None = None,
        flip_tta: bool = False,
        min_component_fraction: float = 0.0,
        classifier_intensity: str = "unit",
        segmenter_intensity: str = "unit",
        extra_classifiers: tuple[Member, ...] = (),
        extra_segmenters: tuple[Member, ...] = (),
        segmenter_inputs: str = "all",
    ):
        self.classifier = classifier
        # Every network of each kind, the first one first: what classify and segment average over.
        self.classifiers = (Member(classifier, classifier_size, classifier_intensity), *extra_classifiers)
        self.segmenters = (
            Member(segmenter, segmenter_size, segmenter_intensity, segmenter_inputs),
            *extra_segmenters,
        )
        self.classifier_intensity = classifier_intensity
        self.segmenter_intensity = segmenter_intensity
        self.flip_tta = flip_tta
        self.segmenter = segmenter
        self.classifier_size = classifier_size
        self.segmenter_size = segmenter_size
        self.tumor_threshold = tumor_threshold
        self.mask_threshold = mask_threshold
        self.min_component_fraction = min_component_fraction
        self.version = version
        self.weights_sha256 = dict(weights_sha256 or {})
        self.metrics = metrics

    @classmethod
    def from_weights_dir(cls, weights_dir: str | Path | None = None) -> Pipeline:
        """Loads both models from a verified weights folder.

        Raises:
            WeightsError: a file is missing, tampered with or unreadable.
        """
        from tumor import weights as weights_lib

        weights_dir = Path(weights_dir or weights_lib.DEFAULT_WEIGHTS_DIR)
        registry = weights_lib.read_registry(weights_dir)
        for entry in registry.models.values():  # every file, before the slow model builds
            weights_lib.verify(entry)
        classifier = weights_lib.load_model(registry.models["classifier"], verified=True)
        segmenter = weights_lib.load_model(registry.models["segmenter"], verified=True)

        def extras(kind: str) -> tuple[Member, ...]:
            members = registry.members(kind)[1:]
            return tuple(
                Member(weights_lib.load_model(e, verified=True), e.input_size, e.intensity, e.inputs) for e in members
            )

        return cls(
            classifier,
            segmenter,
            classifier_size=registry.models["classifier"].input_size,
            segmenter_size=registry.models["segmenter"].input_size,
            tumor_threshold=registry.tumor_threshold,
            mask_threshold=registry.mask_threshold,
            version=registry.version,
            weights_sha256={k: m.sha256 for k, m in registry.models.items()},
            metrics=weights_lib.read_metrics(weights_dir),
            flip_tta=registry.flip_tta,
            min_component_fraction=registry.min_component_fraction,
            classifier_intensity=registry.models["classifier"].intensity,
            segmenter_intensity=registry.models["segmenter"].intensity,
            extra_classifiers=extras("classifier"),
            extra_segmenters=extras("segmenter"),
            segmenter_inputs=registry.models["segmenter"].inputs,
        )

    def classify(self, rgb: np.ndarray) -> np.ndarray:
        """Class probabilities (4,) for one RGB uint8 slice: the mean over the classifiers."""
        outputs = []
        for m in self.classifiers:
            square, _ = to_model_square(rgb, m.size)
            batch = np.stack([square, square[:, ::-1]]) if self.flip_tta else square[None]
            outputs.append(np.asarray(m.model(preprocess_classifier(batch, m.intensity), training=False), np.float64))
        probs = np.concatenate(outputs).mean(axis=0)
        if probs.shape != (len(CLASS_NAMES),) or not np.all(np.isfinite(probs)):
            raise RuntimeError(f"The classifier returned an invalid output. Received: {probs!r}")
        return probs

    @property
    def routes_segmenters(self) -> bool:
        """Whether some segmenter sees only greyscale or only colour slices."""
        return any(m.inputs != "all" for m in self.segmenters)

    def segmenters_for(self, route: str) -> tuple[Member, ...]:
        """The segmenters routed to a slice of this kind ("grey" or "colour"): those for every slice and its kind's."""
        members = tuple(m for m in self.segmenters if m.inputs in ("all", route))
        if not members:
            raise RuntimeError(f"No segmenter is routed to {route} slices; the weights manifest must give one.")
        return members

    def segment(self, rgb: np.ndarray, route: str | None = None) -> np.ndarray:
        """Tumour probability map (H, W) float32 for one RGB uint8 slice: the mean over its segmenters.

        The segmenters are those routed to the slice (``segmenters_for``): all of
        them unless the manifest routes some to greyscale or colour slices only.
        ``route`` is the slice's kind when the caller has already worked it out.
        """
        route = route or ("grey" if is_grey(rgb) else "colour")
        maps = []
        for m in self.segmenters_for(route):
            square, frame = to_model_square(rgb, m.size)
            batch = np.stack([square, square[:, ::-1]]) if self.flip_tta else square[None]
            pred = np.asarray(m.model(preprocess_segmenter(batch, m.intensity), training=False), np.float32)[..., 0]
            pred = (pred[0] + pred[1, :, ::-1]) / 2 if self.flip_tta else pred[0]
            maps.append(from_model_square(pred, frame))
        return np.clip(np.mean(maps, axis=0), 0.0, 1.0).astype(np.float32)

    def analyze(
        self,
        image,
        *,
        spacing_mm: tuple[float, float] | None = None,
        orientation: tuple[str, str] | None = None,
    ) -> Analysis:
        """Runs the cascade on one slice.

        Args:
            image: RGB uint8 (H, W, 3), or a ``tumor.io.Scan`` (its spacing and
                orientation are then used unless given here).
            spacing_mm: (row, col) pixel spacing in mm, when known.
            orientation: patient directions of image +x and +y, when known.

        Returns:
            The ``Analysis``. The segmenter runs only when P(tumour) reaches
            ``tumor_threshold``.
        """
        rgb = getattr(image, "rgb", image)
        spacing_mm = spacing_mm or getattr(image, "pixel_spacing_mm", None)
        orientation = orientation or getattr(image, "orientation", None)
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 8:
            raise ValueError(
                "Expected an RGB uint8 slice of shape (H, W, 3), at least 8x8. "
                f"Received: shape={rgb.shape}, dtype={rgb.dtype}"
            )
        probs = self.classify(rgb)
        p_tumor = float(1.0 - probs[0])
        detected = p_tumor >= self.tumor_threshold
        tumor_type = CLASS_NAMES[1 + int(np.argmax(probs[1:]))] if detected else None
        predicted = tumor_type or "no_tumor"
        route = ("grey" if is_grey(rgb) else "colour") if detected else None
        prob_map = self.segment(rgb, route) if detected else None
        image_ro = rgb.copy()
        image_ro.setflags(write=False)
        if prob_map is not None:
            prob_map.setflags(write=False)
        return Analysis(
            image=image_ro,
            probabilities={name: float(p) for name, p in zip(CLASS_NAMES, probs, strict=True)},
            p_tumor=p_tumor,
            tumor_threshold=self.tumor_threshold,
            tumor_detected=detected,
            predicted_class=predicted,
            tumor_type=tumor_type,
            behaviour=BEHAVIOUR[predicted],
            prob_map=prob_map,
            default_mask_threshold=self.mask_threshold,
            min_component_fraction=self.min_component_fraction,
            pixel_spacing_mm=spacing_mm,
            orientation=orientation,
            model_version=self.version,
            weights_sha256=self.weights_sha256,
            segmenter_route=route if self.routes_segmenters else None,
        )

    def grad_cam(self, analysis: Analysis) -> np.ndarray:
        """Grad-CAM of the predicted class at the slice's resolution, float32 in [0, 1].

        Costly (a gradient pass): call on demand only.
        """
        from tumor.explain import grad_cam

        square, frame = to_model_square(np.asarray(analysis.image), self.classifier_size)
        x = np.asarray(preprocess_classifier(square[None], self.classifier_intensity), dtype=np.float32)
        heat = grad_cam(self.classifier, x, CLASS_NAMES.index(analysis.predicted_class))
        return np.clip(from_model_square(heat, frame), 0.0, 1.0)

    def analyze_volume(
        self,
        volume,
        plane: str = "axial",
        progress: Callable[[int, int], None] | None = None,
    ) -> VolumeAnalysis:
        """Runs the cascade on every slice of a ``tumor.io.Volume``.

        Args:
            volume: the NIfTI volume.
            plane: slicing plane.
            progress: called with (slices done, total) after each slice.
        """
        n = volume.n_slices(plane)
        p_tumor, areas = [], []
        for i in range(n):
            scan = volume.slice(i, plane=plane)
            a = self.analyze(scan)
            p_tumor.append(a.p_tumor)
            areas.append(int(a.mask().sum()))
            if progress is not None:
                progress(i + 1, n)
        largest = int(np.argmax(areas)) if any(areas) else None
        return VolumeAnalysis(
            plane=plane,
            p_tumor=p_tumor,
            tumor_area_px=areas,
            largest_slice=largest,
            tumor_volume_ml=float(sum(areas) * volume.voxel_volume_ml),
        )
