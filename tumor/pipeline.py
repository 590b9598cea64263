"""The cascade: classifier first, segmenter only on tumour-positive slices.

``Pipeline.analyze`` runs the models once per slice and returns a frozen
``Analysis``. Everything the UI varies afterwards (mask threshold, contour or
fill, opacity, measurements, reports) is derived from the ``Analysis`` without
running a model again.

The networks are the compiled ones of ``tumor.runtime`` (no TensorFlow on this
path); each kind's members that share a compiled network run in one batched
call, the slice and its mirror together. Grad-CAM alone needs Keras, and
imports it when asked.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tumor import measure as measure_lib
from tumor import overlay as overlay_lib
from tumor.fusion import DetectionFusion, TypeFusion, detection_features, location_features
from tumor.preprocess import CLASS_NAMES, INTENSITY_MODES, from_model_square, scale_intensity, to_model_square

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
        outline_requested: the classifier found no tumour and the user asked
            for the outline anyway (``Pipeline.outline_on_request``): the map
            is there, ``tumor_detected`` stays False.
        typing: what chose the tumour type: ``TYPING_CLASSIFIER``, or
            ``TYPING_FUSED`` when the type probabilities were fused with where
            the outline lies (``tumor.fusion``; positive slices only).
        detection: what gave P(tumour): ``DETECTION_CLASSIFIER``, or
            ``DETECTION_FUSED`` on a greyscale slice when the weights ship a
            detection fusion (the greyscale segmenters then run on it whatever
            the verdict).
        detection_map: the greyscale map the detection fusion read, read-only;
            None unless ``detection`` is fused. It is ``prob_map`` on a
            positive slice; on a negative one it is not shown, and the outline
            on request shows it without running the segmenters again.
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
    outline_requested: bool = False
    typing: str = "classifier"
    detection: str = "classifier"
    detection_map: np.ndarray | None = field(default=None, repr=False)

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
            measurements=self.measurements(t) if self.prob_map is not None else None,
            model_version=self.model_version,
            weights_sha256=self.weights_sha256,
            scan_meta=scan_meta or {},
            source_name=source_name,
            created=created or datetime.now(UTC),
            segmenter_route=self.segmenter_route,
            outline_requested=self.outline_requested,
            typing=self.typing,
            detection=self.detection,
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


# A network maps uint8 model squares (N, S, S, 3) to float (N, 4) class
# probabilities (classifiers) or (N, S, S) tumour probabilities (segmenters;
# (N, S, S, 1) is taken too). ``tumor.runtime.Network`` is one.
Network = Callable[[np.ndarray], np.ndarray]
ROUTES = ("all", "grey", "colour")  # which slices a segmenter sees (``tumor.weights.INPUT_ROUTES``)
TYPING_CLASSIFIER = "classifier"  # what chose the tumour type (``Analysis.typing``)
TYPING_FUSED = "classifier and outline location"
DETECTION_CLASSIFIER = "classifier"  # what gave P(tumour) (``Analysis.detection``)
DETECTION_FUSED = "classifier and greyscale outline"
VOLUME_CHUNK = 8  # slices per batched call in ``analyze_volume``; the progress callback runs after each


@dataclass(frozen=True)
class Member:
    """One network of an ensemble: what it is called with, and where its weights came from.

    Members that hold the same ``network`` object are one compiled group: one
    call runs them all and returns their mean (``tumor.runtime`` builds the
    shipped ensembles so). Members with networks of their own are called one
    by one and averaged here.

    Attributes:
        network: the ``Network`` it runs in.
        size: its input side in pixels.
        intensity: the input scaling its network applies
            (``tumor.preprocess.INTENSITY_MODES``; Grad-CAM applies it too).
        route: which slices it sees: "all", "grey" or "colour" (segmenters;
            ``is_grey``). Classifiers see every slice.
        name: its manifest name ("classifier_2"); empty for a stand-in.
        sha256: the sha256 of the weights file it was built from.
    """

    network: Network
    size: int
    intensity: str = "unit"
    route: str = "all"
    name: str = ""
    sha256: str = ""

    @classmethod
    def from_entry(cls, entry, network: Network) -> Member:
        """The member of a weights registry entry (``tumor.weights.ModelEntry``), run by ``network``."""
        return cls(network, entry.input_size, entry.intensity, entry.inputs, entry.name, entry.sha256)

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_MODES or self.route not in ROUTES or self.size < 8:
            raise ValueError(
                f"A member needs an intensity in {INTENSITY_MODES}, a route in {ROUTES} and a side of 8 px or more. "
                f"Received: intensity={self.intensity!r}, route={self.route!r}, size={self.size}"
            )


@dataclass(frozen=True)
class Settings:
    """The pipeline's thresholds and options, chosen on validation and shipped in the manifest.

    Attributes:
        tumor_threshold: P(tumour) at or above which a slice is positive (and
            the segmenter runs).
        mask_threshold: default mask threshold.
        min_component_fraction: mask components smaller than this fraction
            of the slice are dropped.
        flip_tta: average each network over the slice and its left-right mirror.
        version: the model version shown with every result.
    """

    tumor_threshold: float = 0.5
    mask_threshold: float = 0.5
    min_component_fraction: float = 0.0
    flip_tta: bool = False
    version: str = "unversioned"

    def __post_init__(self) -> None:
        if not (0.0 <= self.tumor_threshold <= 1.0 and 0.0 <= self.mask_threshold <= 1.0):
            raise ValueError(
                f"Thresholds must be in [0, 1]. Received: tumor_threshold={self.tumor_threshold}, "
                f"mask_threshold={self.mask_threshold}"
            )
        if not 0.0 <= self.min_component_fraction < 1.0:
            raise ValueError(f"min_component_fraction must be in [0, 1). Received: {self.min_component_fraction}")


def _calls(members: Sequence[Member]) -> list[tuple[Network, int, int]]:
    """One (network, input side, number of members) per distinct network, in member order."""
    calls: dict[int, list] = {}
    for m in members:
        if id(m.network) in calls:
            calls[id(m.network)][2] += 1
        else:
            calls[id(m.network)] = [m.network, m.size, 1]
    return [tuple(c) for c in calls.values()]


class Pipeline:
    """Classifiers then segmenters, loaded once and shared by every session (treat as immutable).

    Safe to call from many threads at once: it holds no per-call state, and
    the compiled networks pool their infer requests.

    Args:
        classifiers: the classifier members; P(class) is their mean. Grad-CAM
            explains the first.
        segmenters: the segmenter members; a slice's tumour map is the mean of
            those routed to its kind (``segmenters_for``).
        settings: thresholds, flip averaging and version.
        metrics: the test metrics shipped with the weights, if any.
        weights_dir: the verified weights folder the members were built from;
            Grad-CAM rebuilds the first classifier in Keras from it.
        type_fusion: segmentation-guided typing (``tumor.fusion.TypeFusion``):
            on positive slices the type probabilities are fused with where the
            outline lies; None keeps the classifiers' typing.
        detect_fusion: segmentation-guided detection
            (``tumor.fusion.DetectionFusion``): on greyscale slices P(tumour)
            is fused with the greyscale segmenters' map; None keeps the
            classifiers' P(tumour) everywhere.
    """

    def __init__(
        self,
        classifiers: Sequence[Member],
        segmenters: Sequence[Member],
        settings: Settings | None = None,
        *,
        metrics: dict | None = None,
        weights_dir: str | Path | None = None,
        type_fusion: TypeFusion | None = None,
        detect_fusion: DetectionFusion | None = None,
    ):
        self.classifiers = tuple(classifiers)
        self.segmenters = tuple(segmenters)
        if not self.classifiers or not self.segmenters:
            raise ValueError(
                f"A pipeline needs at least one classifier and one segmenter. "
                f"Received: {len(self.classifiers)} classifiers, {len(self.segmenters)} segmenters"
            )
        if any(m.route != "all" for m in self.classifiers):
            raise ValueError("Classifiers see every slice; a classifier member must have route 'all'.")
        for members in (self.classifiers, self.segmenters):
            shared: dict[int, Member] = {}
            for m in members:
                first = shared.setdefault(id(m.network), m)
                if (first.size, first.route) != (m.size, m.route):
                    raise ValueError(
                        "Members that share a network must share its input side and route. "
                        f"Received: {first.name or 'a member'} ({first.size} px, {first.route}) and "
                        f"{m.name or 'a member'} ({m.size} px, {m.route})"
                    )
        self.settings = settings or Settings()
        self.metrics = metrics
        self.weights_dir = Path(weights_dir) if weights_dir is not None else None
        self.type_fusion = type_fusion
        self.detect_fusion = detect_fusion

    @classmethod
    def from_weights_dir(
        cls,
        weights_dir: str | Path | None = None,
        *,
        precision: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> Pipeline:
        """Loads the compiled networks of a verified weights folder.

        Every weights file is checked against its pinned sha256 first. Each
        group of members of one kind, route and input side is one compiled
        network (``tumor.runtime``), built into the cache on first use.

        Args:
            weights_dir: the folder (default: the repository's ``weights/``).
            precision: "auto", "f32" or "bf16" (``tumor.runtime.resolve_precision``).
            cache_dir: the compiled networks' cache (default:
                ``tumor.runtime.default_cache_dir()``).

        Raises:
            WeightsError: a file is missing, tampered with or unreadable, or the
                compiled form cannot be built or does not match its record.
        """
        from tumor import runtime
        from tumor import weights as weights_lib

        weights_dir = Path(weights_dir or weights_lib.DEFAULT_WEIGHTS_DIR)
        registry = weights_lib.read_registry(weights_dir)
        for entry in registry.models.values():  # every file, before anything is built or compiled
            weights_lib.verify(entry)
        type_fusion = None
        if registry.type_fusion is not None:
            weights_lib.verify(registry.type_fusion)
            type_fusion = TypeFusion.from_file(registry.type_fusion.path)
        detect_fusion = None
        if registry.detect_fusion is not None:
            weights_lib.verify(registry.detect_fusion)
            detect_fusion = DetectionFusion.from_file(registry.detect_fusion.path)
        groups: dict[tuple, list] = {}
        for entry in registry.models.values():
            groups.setdefault((entry.kind, entry.inputs, entry.input_size), []).append(entry)
        networks = runtime.load_networks(
            list(groups.values()), cache_dir=cache_dir, precision=precision, allowed=registry.precisions
        )
        network_of = {key: net for key, net in zip(groups, networks, strict=True)}

        def members(kind: str) -> tuple[Member, ...]:
            return tuple(
                Member.from_entry(e, network_of[(e.kind, e.inputs, e.input_size)]) for e in registry.members(kind)
            )

        settings = Settings(
            tumor_threshold=registry.tumor_threshold,
            mask_threshold=registry.mask_threshold,
            min_component_fraction=registry.min_component_fraction,
            flip_tta=registry.flip_tta,
            version=registry.version,
        )
        return cls(
            members("classifier"),
            members("segmenter"),
            settings,
            metrics=weights_lib.read_metrics(weights_dir),
            weights_dir=weights_dir,
            type_fusion=type_fusion,
            detect_fusion=detect_fusion,
        )

    def with_settings(self, **changes) -> Pipeline:
        """The same networks under other settings (``Settings`` fields), e.g. ``tumor_threshold=0.0``."""
        return Pipeline(
            self.classifiers,
            self.segmenters,
            dataclasses.replace(self.settings, **changes),
            metrics=self.metrics,
            weights_dir=self.weights_dir,
            type_fusion=self.type_fusion,
            detect_fusion=self.detect_fusion,
        )

    # The settings, read through: the pipeline holds each of them once.
    @property
    def tumor_threshold(self) -> float:
        """P(tumour) at or above which a slice is positive."""
        return self.settings.tumor_threshold

    @property
    def mask_threshold(self) -> float:
        """The default mask threshold."""
        return self.settings.mask_threshold

    @property
    def min_component_fraction(self) -> float:
        """Mask components smaller than this fraction of the slice are dropped."""
        return self.settings.min_component_fraction

    @property
    def flip_tta(self) -> bool:
        """Whether each network is averaged over the slice and its mirror."""
        return self.settings.flip_tta

    @property
    def version(self) -> str:
        """The model version shown with every result."""
        return self.settings.version

    @property
    def weights_sha256(self) -> dict[str, str]:
        """``name -> sha256`` of every member's weights."""
        return {m.name: m.sha256 for m in (*self.classifiers, *self.segmenters) if m.name}

    @property
    def networks(self) -> tuple[Network, ...]:
        """The distinct networks the members run in."""
        unique = {id(m.network): m.network for m in (*self.classifiers, *self.segmenters)}
        return tuple(unique.values())

    @property
    def routes_segmenters(self) -> bool:
        """Whether some segmenter sees only greyscale or only colour slices."""
        return any(m.route != "all" for m in self.segmenters)

    def segmenters_for(self, route: str) -> tuple[Member, ...]:
        """The segmenters routed to a slice of this kind ("grey" or "colour"): those for every slice and its kind's."""
        members = tuple(m for m in self.segmenters if m.route in ("all", route))
        if not members:
            raise RuntimeError(f"No segmenter is routed to {route} slices; the weights manifest must give one.")
        return members

    def _run(self, network: Network, squares: np.ndarray, *, spatial: bool) -> np.ndarray:
        """One call of ``network`` on the squares (and, with flip averaging, their mirrors in the same batch)."""
        n = len(squares)
        batch = np.concatenate([squares, squares[:, :, ::-1]]) if self.flip_tta else squares
        out = np.asarray(network(batch), np.float32)
        if spatial and out.ndim == 4 and out.shape[-1] == 1:
            out = out[..., 0]
        expected = (len(batch), *squares.shape[1:3]) if spatial else (len(batch), len(CLASS_NAMES))
        if out.shape != expected:
            kind = "segmenter" if spatial else "classifier"
            raise RuntimeError(f"A {kind} returned shape {out.shape}, not {expected}.")
        if not self.flip_tta:
            return out
        return (out[:n] + (out[n:, :, ::-1] if spatial else out[n:])) / 2

    def classify_batch(self, rgbs: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities (N, 4) float64 for RGB uint8 slices: the mean over the classifiers."""
        total, weight = np.zeros((len(rgbs), len(CLASS_NAMES))), 0
        squares: dict[int, np.ndarray] = {}
        for network, size, count in _calls(self.classifiers):
            if size not in squares:
                squares[size] = np.stack([to_model_square(rgb, size)[0] for rgb in rgbs])
            total += count * self._run(network, squares[size], spatial=False).astype(np.float64)
            weight += count
        probs = total / weight
        if not np.all(np.isfinite(probs)):
            raise RuntimeError(f"The classifier returned an invalid output. Received: {probs!r}")
        return probs

    def classify(self, rgb: np.ndarray) -> np.ndarray:
        """Class probabilities (4,) for one RGB uint8 slice: the mean over the classifiers."""
        return self.classify_batch([rgb])[0]

    def segment_batch(self, rgbs: Sequence[np.ndarray], routes: Sequence[str] | None = None) -> list[np.ndarray]:
        """Tumour probability maps (H, W) float32 for RGB uint8 slices, each the mean over its segmenters.

        A slice's segmenters are those routed to it (``segmenters_for``): all of
        them unless the manifest routes some to greyscale or colour slices only.
        ``routes`` gives each slice's kind when the caller has worked it out.
        """
        routes = list(routes) if routes is not None else [("grey" if is_grey(r) else "colour") for r in rgbs]
        maps: list[np.ndarray | None] = [None] * len(rgbs)
        for route in dict.fromkeys(routes):
            index = [i for i, r in enumerate(routes) if r == route]
            acc = [np.zeros(rgbs[i].shape[:2], np.float32) for i in index]
            weight = 0
            for network, size, count in _calls(self.segmenters_for(route)):
                squared = [to_model_square(rgbs[i], size) for i in index]
                out = self._run(network, np.stack([sq for sq, _ in squared]), spatial=True)
                for j, (_, frame) in enumerate(squared):
                    acc[j] += count * from_model_square(out[j], frame)
                weight += count
            for j, i in enumerate(index):
                maps[i] = np.clip(acc[j] / weight, 0.0, 1.0).astype(np.float32)
        return maps

    def segment(self, rgb: np.ndarray, route: str | None = None) -> np.ndarray:
        """Tumour probability map (H, W) float32 for one RGB uint8 slice (``segment_batch``)."""
        return self.segment_batch([rgb], None if route is None else [route])[0]

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
        return self._analyze([image], [spacing_mm], [orientation])[0]

    def analyze_batch(self, images: Sequence) -> list[Analysis]:
        """``analyze`` on several slices (RGB arrays or ``tumor.io.Scan``), each network called once per batch."""
        return self._analyze(list(images), [None] * len(images), [None] * len(images))

    def _analyze(self, images: list, spacings: list, orientations: list) -> list[Analysis]:
        rgbs = []
        for k, image in enumerate(images):
            spacings[k] = spacings[k] or getattr(image, "pixel_spacing_mm", None)
            orientations[k] = orientations[k] or getattr(image, "orientation", None)
            rgb = np.asarray(getattr(image, "rgb", image))
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 8:
                raise ValueError(
                    "Expected an RGB uint8 slice of shape (H, W, 3), at least 8x8. "
                    f"Received: shape={rgb.shape}, dtype={rgb.dtype}"
                )
            rgbs.append(rgb)
        if not rgbs:
            return []
        probs = self.classify_batch(rgbs)
        kinds = ["grey" if is_grey(rgb) else "colour" for rgb in rgbs]
        maps: dict[int, np.ndarray] = {}
        fused = [self.detect_fusion is not None and kind == "grey" for kind in kinds]
        if any(fused):
            # Segmentation-guided detection: the greyscale segmenters run on every greyscale slice, and
            # P(tumour) there comes from the classifiers and their map; the types keep their proportions.
            grey = [k for k, f in enumerate(fused) if f]
            maps = dict(zip(grey, self.segment_batch([rgbs[k] for k in grey], ["grey"] * len(grey)), strict=True))
            for k in grey:
                p_tumor = self.detect_fusion.p_tumor(detection_features(1.0 - probs[k][0], maps[k]))
                types = np.clip(probs[k][1:], 1e-12, None)
                probs[k][1:] = p_tumor * types / types.sum()
                probs[k][0] = 1.0 - p_tumor
        detected = [float(1.0 - p[0]) >= self.tumor_threshold for p in probs]
        positive = [k for k, d in enumerate(detected) if d]
        routes = {k: kinds[k] for k in positive}
        missing = [k for k in positive if k not in maps]
        maps |= dict(
            zip(missing, self.segment_batch([rgbs[k] for k in missing], [kinds[k] for k in missing]), strict=True)
        )
        for m in maps.values():
            m.setflags(write=False)
        detection_maps = {k: maps[k] for k, f in enumerate(fused) if f}
        maps = {k: maps[k] for k in positive}  # a negative slice shows no outline unless the user asks for one
        if self.type_fusion is not None:
            for k in positive:
                # P(type) = P(tumour) x P(type | tumour, where the outline lies); P(no tumour) is unchanged.
                features = location_features(rgbs[k], maps[k], probs[k][1:])
                probs[k][1:] = (1.0 - probs[k][0]) * self.type_fusion.type_probabilities(features)
        typing = TYPING_FUSED if self.type_fusion is not None else TYPING_CLASSIFIER
        hashes = self.weights_sha256
        out = []
        for k, rgb in enumerate(rgbs):
            tumor_type = CLASS_NAMES[1 + int(np.argmax(probs[k][1:]))] if detected[k] else None
            predicted = tumor_type or "no_tumor"
            image_ro = rgb.copy()
            image_ro.setflags(write=False)
            prob_map = maps.get(k)
            out.append(
                Analysis(
                    image=image_ro,
                    probabilities={name: float(p) for name, p in zip(CLASS_NAMES, probs[k], strict=True)},
                    p_tumor=float(1.0 - probs[k][0]),
                    tumor_threshold=self.tumor_threshold,
                    tumor_detected=detected[k],
                    predicted_class=predicted,
                    tumor_type=tumor_type,
                    behaviour=BEHAVIOUR[predicted],
                    prob_map=prob_map,
                    default_mask_threshold=self.mask_threshold,
                    min_component_fraction=self.min_component_fraction,
                    pixel_spacing_mm=spacings[k],
                    orientation=orientations[k],
                    model_version=self.version,
                    weights_sha256=hashes,
                    segmenter_route=routes.get(k) if self.routes_segmenters else None,
                    typing=typing if detected[k] else TYPING_CLASSIFIER,
                    detection=DETECTION_FUSED if fused[k] else DETECTION_CLASSIFIER,
                    detection_map=detection_maps.get(k),
                )
            )
        return out

    def outline_on_request(self, analysis: Analysis) -> Analysis:
        """The outline of a slice the classifier called negative, run because the user asked for it.

        The verdict stays as it was (``tumor_detected`` False, no tumour type):
        only the map is added, flagged ``outline_requested`` so that the page,
        the JSON and the PDF say the classifier found no tumour. A positive
        analysis already has its outline and is returned as it is.
        """
        if analysis.prob_map is not None:
            return analysis
        rgb = np.asarray(analysis.image)
        route = "grey" if is_grey(rgb) else "colour"
        prob_map = analysis.detection_map  # the greyscale segmenters already ran for the verdict
        if prob_map is None:
            prob_map = self.segment(rgb, route)
            prob_map.setflags(write=False)
        return dataclasses.replace(
            analysis,
            prob_map=prob_map,
            segmenter_route=route if self.routes_segmenters else None,
            outline_requested=True,
        )

    def grad_cam(self, analysis: Analysis) -> np.ndarray:
        """Grad-CAM of the predicted class at the slice's resolution, float32 in [0, 1].

        Explains the first classifier, rebuilt in Keras from its verified
        weights on the first call (``tumor.explain.keras_classifier``; this
        imports TensorFlow). Costly (a gradient pass): call on demand only.

        Raises:
            RuntimeError: the pipeline was not loaded from a weights folder.
            WeightsError: the weights file no longer matches the loaded network.
        """
        from tumor import explain

        first = self.classifiers[0]
        if self.weights_dir is None or not first.name:
            raise RuntimeError("Grad-CAM needs the first classifier's weights; this pipeline was not loaded from them.")
        model = explain.keras_classifier(self.weights_dir, first.name, first.sha256)
        square, frame = to_model_square(np.asarray(analysis.image), first.size)
        x = scale_intensity(square[None], first.intensity)
        heat = explain.grad_cam(model, x, CLASS_NAMES.index(analysis.predicted_class))
        return np.clip(from_model_square(heat, frame), 0.0, 1.0)

    def analyze_volume(
        self,
        volume,
        plane: str = "axial",
        progress: Callable[[int, int], None] | None = None,
    ) -> VolumeAnalysis:
        """Runs the cascade on every slice of a ``tumor.io.Volume``, in batches of ``VOLUME_CHUNK`` slices.

        Args:
            volume: the NIfTI volume.
            plane: slicing plane.
            progress: called with (slices done, total) after each batch.
        """
        n = volume.n_slices(plane)
        p_tumor, areas = [], []
        for start in range(0, n, VOLUME_CHUNK):
            scans = [volume.slice(i, plane=plane) for i in range(start, min(n, start + VOLUME_CHUNK))]
            for a in self.analyze_batch(scans):
                p_tumor.append(a.p_tumor)
                areas.append(int(a.mask().sum()))
            if progress is not None:
                progress(len(p_tumor), n)
        largest = int(np.argmax(areas)) if any(areas) else None
        return VolumeAnalysis(
            plane=plane,
            p_tumor=p_tumor,
            tumor_area_px=areas,
            largest_slice=largest,
            tumor_volume_ml=float(sum(areas) * volume.voxel_volume_ml),
        )
