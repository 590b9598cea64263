"""Training CLI: ``python -m tumor.lab.train classifier|segmenter``.

Backend-agnostic Keras 3: it runs on TensorFlow here (``mixed_bfloat16`` on
the CPU) and on JAX or PyTorch on a GPU machine. Augmentation runs inside the
training graph, so the same code feeds a CPU or a GPU. Only the inner network's
weights are saved, as ``<kind>.weights.h5``, next to ``args.json`` and a
training-log CSV; the best epoch on validation wins.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import keras
import numpy as np
from keras import layers

from tumor import models

# Recipe defaults (see MODEL_CARD.md for what the shipped weights used).
AUG_ROTATION = 10 / 360  # fraction of a full turn: +-10 degrees
AUG_ZOOM = 0.12
AUG_SHIFT = 0.06
AUG_CONTRAST = 0.3
AUG_BRIGHTNESS = 0.15
SEG_NEGATIVE_FRACTION = 0.3  # tumour-free slices per positive slice in segmenter training
AUG_MODALITY_DROP = 0.15  # chance, per outer channel, that it is replaced by the middle (FLAIR) one
AUG_GREY = 0.0  # chance that both outer channels are replaced at once (an all-FLAIR slice)
DEFAULT_MANIFEST = "../shared/data/manifest.csv"  # BraTS FLAIR only when named: earlier stages trained without it


def _cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def _has_accelerator() -> bool:
    """Whether the Keras backend sees a GPU or TPU (Keras lists devices for TensorFlow and JAX)."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.is_available()
    return not keras.distribution.list_devices()[0].startswith("cpu")


def resolve_precision(precision: str, cpu_flags: set[str] | None = None, accelerator: bool | None = None) -> str:
    """The Keras dtype policy to train with.

    ``"auto"`` takes ``mixed_bfloat16`` on an accelerator or on a CPU with
    native bfloat16 (AVX-512 BF16 or AMX), and ``float32`` elsewhere: without
    them bfloat16 is emulated, which on a 2-core AVX2 CPU made a training step
    6 to 10 times slower than float32 (``python -m tumor.lab.benchmark --training``).
    Any other value is returned as given.
    """
    if precision != "auto":
        return precision
    if accelerator if accelerator is not None else _has_accelerator():
        return "mixed_bfloat16"
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    return "mixed_bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"


def geometric_augmenter(seed: int) -> keras.Sequential:
    """Random flips, rotations, zooms and shifts, shared by image and mask."""
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed, name="aug_flip"),
            layers.RandomRotation(AUG_ROTATION, fill_mode="constant", seed=seed + 1, name="aug_rotate"),
            layers.RandomZoom(AUG_ZOOM, fill_mode="constant", seed=seed + 2, name="aug_zoom"),
            layers.RandomTranslation(AUG_SHIFT, AUG_SHIFT, fill_mode="constant", seed=seed + 3, name="aug_shift"),
        ],
        name="geometric_augmenter",
    )


def intensity_augmenter(seed: int) -> keras.Sequential:
    """Random contrast and brightness on images in [0, 255]."""
    return keras.Sequential(
        [
            layers.RandomContrast(AUG_CONTRAST, value_range=(0, 255), seed=seed + 4, name="aug_contrast"),
            layers.RandomBrightness(AUG_BRIGHTNESS, value_range=(0, 255), seed=seed + 5, name="aug_brightness"),
        ],
        name="intensity_augmenter",
    )


def drop_modalities(x, p: float, seed_generator, p_all: float = 0.0):
    """Replaces outer channels of (N, S, S, 3) by the middle one.

    Each outer channel is replaced with probability ``p``; with probability
    ``p_all`` both are, at once, which turns the slice grey. LGG slices are
    pre-contrast, FLAIR and post-contrast composites in which a missing
    sequence was filled with FLAIR (Buda 2019); some patients are all FLAIR
    (three in train, none in val, one in test). For a grayscale slice this is
    a no-op.
    """
    if p <= 0 and p_all <= 0:
        return x
    # A third draw only when asked for, so runs without --grey-prob replay the earlier random stream.
    u = keras.random.uniform((keras.ops.shape(x)[0], 1, 1, 3 if p_all > 0 else 2), seed=seed_generator)
    drop_first, drop_last = u[..., 0:1] < p, u[..., 1:2] < p
    if p_all > 0:
        grey = u[..., 2:3] < p_all
        drop_first, drop_last = drop_first | grey, drop_last | grey
    mid = x[..., 1:2]
    first = keras.ops.where(drop_first, mid, x[..., 0:1])
    last = keras.ops.where(drop_last, mid, x[..., 2:3])
    return keras.ops.concatenate([first, mid, last], axis=-1)


class _AugmentedTrainer(keras.Model):
    """Holds an inner network and its in-graph augmenters; only ``net`` is saved."""

    def __init__(
        self,
        net: keras.Model,
        seed: int = 0,
        intensity: str = "unit",
        modality_drop: float = 0.0,
        grey_prob: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.net = net
        self.geometric = geometric_augmenter(seed)
        self.intensity = intensity_augmenter(seed)
        self.intensity_mode = intensity
        self.modality_drop = modality_drop
        self.grey_prob = grey_prob
        self.modality_seed = keras.random.SeedGenerator(seed + 6)

    def _augment_intensity(self, image):
        image = drop_modalities(image, self.modality_drop, self.modality_seed, self.grey_prob)
        return keras.ops.clip(self.intensity(image, training=True), 0.0, 255.0)


class ClassifierTrainer(_AugmentedTrainer):
    """Wraps the classifier with in-graph augmentation; input is uint8 RGB."""

    def call(self, x, training=False):
        x = keras.ops.cast(x, "float32")
        if training:
            x = self._augment_intensity(self.geometric(x, training=True))
        return self.net(models.preprocess_classifier(x, self.intensity_mode), training=training)


class SegmenterTrainer(_AugmentedTrainer):
    """Wraps the segmenter; input is uint8 (N, S, S, 4): RGB plus the mask.

    The mask travels through the same geometric augmentation as the image and
    comes out as the second output channel, where ``dice_bce_loss`` reads it.
    """

    def call(self, x, training=False):
        x = keras.ops.cast(x, "float32")
        if training:
            x = self.geometric(x, training=True)
        image, mask = x[..., :3], x[..., 3:]
        if training:
            image = self._augment_intensity(image)
        mask = keras.ops.cast(mask > 0.5, "float32")
        pred = self.net(models.preprocess_segmenter(image, self.intensity_mode), training=training)
        pred = keras.ops.cast(pred, "float32")
        return keras.ops.concatenate([pred, mask], axis=-1)


def dice_bce_loss(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice over the batch plus binary cross-entropy.

    ``y_pred`` carries the prediction in channel 0 and the (augmented) target
    in channel 1; ``y_true`` is ignored.
    """
    del y_true
    pred = keras.ops.clip(y_pred[..., 0], 1e-6, 1 - 1e-6)
    target = y_pred[..., 1]
    bce = -keras.ops.mean(target * keras.ops.log(pred) + (1 - target) * keras.ops.log(1 - pred))
    inter = keras.ops.sum(pred * target)
    dice = (2 * inter + smooth) / (keras.ops.sum(pred) + keras.ops.sum(target) + smooth)
    return bce + 1 - dice


def hard_dice_metric(y_true, y_pred):
    """Dice of the 0.5-thresholded prediction over the batch (for the log)."""
    del y_true
    pred = keras.ops.cast(y_pred[..., 0] > 0.5, "float32")
    target = y_pred[..., 1]
    return (2 * keras.ops.sum(pred * target) + 1) / (keras.ops.sum(pred) + keras.ops.sum(target) + 1)


class TimeBudget(keras.callbacks.Callback):
    """Cosine learning rate over the epochs that fit a wall-time budget, after a linear warm-up.

    After each epoch the callback predicts how many epochs fit in the budget
    from the median of the recent epoch times, and sets the learning rate of
    the next one by its place among those epochs, so that the last epoch that
    fits runs at the floor (``min_lr_fraction`` of the peak) whatever the
    hardware's speed. Training stops when the next epoch would overrun the
    budget or ``max_epochs`` are done.
    """

    def __init__(
        self,
        base_lr: float,
        budget_s: float,
        warmup_epochs: int = 2,
        min_lr_fraction: float = 0.01,
        max_epochs: int = 10_000,
        clock=time.monotonic,
    ):
        super().__init__()
        self.base_lr, self.budget_s, self.warmup = base_lr, budget_s, warmup_epochs
        self.min_lr = base_lr * min_lr_fraction
        self.max_epochs, self.clock = max_epochs, clock
        self.t0 = 0.0
        self.epoch_s: list[float] = []

    def on_train_begin(self, logs=None):
        self.t0 = self.clock()

    def epochs_that_fit(self) -> int:
        """Epochs done plus those the rest of the budget holds at the recent pace."""
        done = len(self.epoch_s)
        if not done:
            return self.max_epochs
        typical = float(np.median(self.epoch_s[-3:]))
        left = self.budget_s - (self.clock() - self.t0)
        return min(self.max_epochs, done + max(0, int(left // typical)))

    def lr_for(self, epoch: int) -> float:
        if epoch < self.warmup:
            return self.base_lr * (epoch + 1) / (self.warmup + 1)
        last = self.epochs_that_fit() - 1
        # One epoch after the warm-up: half-way down; otherwise peak to floor.
        frac = 0.5 if last <= self.warmup else min(1.0, (epoch - self.warmup) / (last - self.warmup))
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * frac))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.clock()
        self.model.optimizer.learning_rate = self.lr_for(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_s.append(self.clock() - self._epoch_start)
        if logs is not None:
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            logs["elapsed_s"] = self.clock() - self.t0
        if self.epochs_that_fit() <= len(self.epoch_s):
            self.model.stop_training = True


class SaveBestInner(keras.callbacks.Callback):
    """Saves the inner network's weights whenever the monitored value improves."""

    def __init__(self, net: keras.Model, path: Path, monitor: str, mode: str = "max"):
        super().__init__()
        self.net, self.path, self.monitor, self.mode = net, path, monitor, mode
        self.best = -np.inf if mode == "max" else np.inf
        self.best_epoch = -1

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        better = value > self.best if self.mode == "max" else value < self.best
        if better:
            self.best, self.best_epoch = float(value), epoch
            self.net.save_weights(str(self.path))


def segmenter_subset(arrays: dict[str, np.ndarray], seed: int, negative_fraction: float) -> np.ndarray:
    """Indices for the segmenter: every slice with a tumour mask plus some tumour-free ones.

    Only sources with expert masks count as positives; negatives are drawn from
    tumour-free slices (masked sources' empty slices and healthy sets) so the
    segmenter learns to return an empty mask when the classifier errs.
    """
    has_mask = arrays["masks"].reshape(len(arrays["masks"]), -1).any(axis=1)
    tumour = arrays["labels"] != 0
    positives = np.flatnonzero(has_mask)
    negatives = np.flatnonzero(~tumour & ~has_mask)
    rng = np.random.default_rng(seed)
    n_neg = min(len(negatives), round(negative_fraction * len(positives)))
    chosen = rng.choice(negatives, n_neg, replace=False) if n_neg else np.array([], int)
    return np.sort(np.concatenate([positives, chosen]))


def oversample(indices: np.ndarray, arrays: dict[str, np.ndarray], specs: list[str]) -> np.ndarray:
    """Repeats the slices of chosen source and label ``k`` times in all.

    Args:
        indices: training indices into ``arrays``.
        arrays: ``load_arrays`` output with ``sources``.
        specs: ``"source:label=k"`` strings, e.g. ``"figshare_cheng:glioma=2"``;
            ``k`` is a whole number of copies, at least 1.

    Returns:
        ``indices`` with every matching slice repeated, sorted.
    """
    out = [indices]
    for spec in specs:
        try:
            target, k = spec.split("=")
            source, label = target.split(":")
            copies = int(k)
            code = models.CLASS_NAMES.index(label)
        except ValueError as err:
            raise ValueError(
                f"--oversample takes source:label=k, e.g. figshare_cheng:glioma=2. Received: {spec!r}"
            ) from err
        if copies < 1:
            raise ValueError(f"--oversample needs at least 1 copy. Received: {spec!r}")
        match = indices[(arrays["sources"][indices] == source) & (arrays["labels"][indices] == code)]
        if not len(match):
            raise ValueError(f"--oversample {spec!r} matches no training slice")
        out += [match] * (copies - 1)
    return np.sort(np.concatenate(out))


def keep_sources(arrays: dict[str, np.ndarray], sources: list[str]) -> dict[str, np.ndarray]:
    """The slices of ``arrays`` whose source is in ``sources`` (all of them when it is empty).

    Raises:
        ValueError: a named source has no slice, so a typo cannot train on nothing.
    """
    if not sources:
        return arrays
    missing = sorted(set(sources) - set(arrays["sources"].tolist()))
    if missing:
        known = sorted(set(arrays["sources"].tolist()))
        raise ValueError(f"--source {', '.join(missing)} matches no slice; the sources here are {known}")
    keep = np.isin(arrays["sources"], sources)
    return {k: v[keep] for k, v in arrays.items()}


def _load(args: argparse.Namespace, split: str) -> dict[str, np.ndarray]:
    from tumor.lab import data

    if args.packed:
        arrays = data.load_packed(Path(args.packed) / f"{split}.npz")
    else:
        df = data.load_split(data.read_manifests(args.manifest))
        df = df[df["split"] == split]
        if args.limit:
            df = df.groupby("label", group_keys=False).head(args.limit)
        arrays = data.load_arrays(df, args.size)
        arrays["sources"] = df["source"].to_numpy()
    if split == "val" and args.val_grey:
        # Select the checkpoint on the slices a greyscale-routed network will see.
        from tumor.lab.evaluate import flair_only

        arrays["images"] = flair_only(arrays["images"])
    return keep_sources(arrays, args.source)


def train(args: argparse.Namespace) -> dict:
    """Trains one model as ``args`` says and returns a summary dict."""
    keras.utils.set_random_seed(args.seed)
    args.precision = resolve_precision(args.precision)
    print(f"precision: {args.precision}", flush=True)
    keras.mixed_precision.set_global_policy(args.precision)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.kind}_args.json").write_text(json.dumps(vars(args), indent=2))

    t_load = time.monotonic()
    tr, va = _load(args, "train"), _load(args, "val")
    if args.size != tr["images"].shape[1]:
        import cv2

        for arrs in (tr, va):
            arrs["images"] = np.stack([cv2.resize(i, (args.size, args.size), cv2.INTER_AREA) for i in arrs["images"]])
            arrs["masks"] = np.stack([cv2.resize(m, (args.size, args.size), cv2.INTER_NEAREST) for m in arrs["masks"]])
    print(f"loaded train={len(tr['labels'])} val={len(va['labels'])} in {time.monotonic() - t_load:.1f}s", flush=True)

    weights_path = out / f"{args.kind}.weights.h5"
    if args.kind == "classifier":
        net = models.build_classifier(args.size, weights=None if args.init == "random" else args.init)
        if args.resume:
            net.load_weights(args.resume)
        model = ClassifierTrainer(
            net, seed=args.seed, intensity=args.intensity, modality_drop=args.modality_drop, grey_prob=args.grey_prob
        )
        idx_tr = oversample(np.arange(len(tr["labels"])), tr, args.oversample)
        x_tr, x_va = tr["images"][idx_tr], va["images"]
        y_tr = keras.utils.to_categorical(tr["labels"][idx_tr], len(models.CLASS_NAMES))
        y_va = keras.utils.to_categorical(va["labels"], len(models.CLASS_NAMES))
        from tumor.lab.data import class_weights

        cw = class_weights(tr["labels"])
        sw_tr = np.array([cw[int(c)] for c in tr["labels"][idx_tr]], np.float32)
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing)
        metrics = [keras.metrics.CategoricalAccuracy(name="acc")]
        monitor, mode = "val_acc", "max"
    else:
        net = models.build_segmenter(args.size)
        if args.resume:
            net.load_weights(args.resume)
        model = SegmenterTrainer(
            net, seed=args.seed, intensity=args.intensity, modality_drop=args.modality_drop, grey_prob=args.grey_prob
        )
        idx_tr = oversample(segmenter_subset(tr, args.seed, SEG_NEGATIVE_FRACTION), tr, args.oversample)
        idx_va = segmenter_subset(va, args.seed, SEG_NEGATIVE_FRACTION)
        x_tr = np.concatenate([tr["images"][idx_tr], tr["masks"][idx_tr, ..., None]], axis=-1)
        x_va = np.concatenate([va["images"][idx_va], va["masks"][idx_va, ..., None]], axis=-1)
        y_tr, y_va = tr["masks"][idx_tr, ..., None], va["masks"][idx_va, ..., None]
        sw_tr = None
        cw = None
        loss = dice_bce_loss
        metrics = [hard_dice_metric]
        monitor, mode = "val_hard_dice_metric", "max"
    # Whole batches only: a ragged last batch makes XLA compile the step
    # again (minutes on a GPU). A seeded shuffle picks the few left out.
    rng = np.random.default_rng(args.seed)
    keep_tr = np.sort(rng.permutation(len(x_tr))[: len(x_tr) // args.batch * args.batch])
    keep_va = np.sort(rng.permutation(len(x_va))[: len(x_va) // args.batch * args.batch])
    x_tr, y_tr, x_va, y_va = x_tr[keep_tr], y_tr[keep_tr], x_va[keep_va], y_va[keep_va]
    if sw_tr is not None:
        sw_tr = sw_tr[keep_tr]
    print(f"{args.kind}: {len(x_tr)} training and {len(x_va)} validation slices", flush=True)

    optimizer = keras.optimizers.AdamW(learning_rate=args.lr, weight_decay=args.weight_decay)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    budget = TimeBudget(args.lr, args.budget_s, warmup_epochs=args.warmup_epochs, max_epochs=args.max_epochs)
    saver = SaveBestInner(net, weights_path, monitor, mode)
    log_path = out / f"training_log_{args.kind}.csv"
    t0 = time.monotonic()
    callbacks = [budget, saver, keras.callbacks.CSVLogger(str(log_path))]
    if keras.backend.backend() == "tensorflow":
        from tumor.lab.data import make_dataset

        ds_tr = make_dataset(x_tr, y_tr, sw_tr, batch=args.batch, shuffle=True, seed=args.seed)
        ds_va = make_dataset(x_va, y_va, batch=args.batch, shuffle=False)
        history = model.fit(
            ds_tr, validation_data=ds_va, epochs=args.max_epochs, shuffle=False, callbacks=callbacks, verbose=2
        )  # shuffle=False: the dataset reshuffles itself every epoch
    else:  # JAX / PyTorch on a GPU machine: Keras batches the in-memory arrays itself.
        history = model.fit(
            x_tr,
            y_tr,
            sample_weight=sw_tr,
            validation_data=(x_va, y_va),
            batch_size=args.batch,
            epochs=args.max_epochs,
            shuffle=True,
            callbacks=callbacks,
            verbose=2,
        )
    summary = {
        "kind": args.kind,
        "backend": keras.backend.backend(),
        "epochs_run": len(history.history["loss"]),
        "best_epoch": saver.best_epoch + 1,
        f"best_{monitor}": saver.best,
        "train_wall_s": round(time.monotonic() - t0, 1),
        "n_train": len(x_tr),
        "n_val": len(x_va),
        "precision": args.precision,
        "class_weights": cw,
    }
    (out / f"{args.kind}_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train the tumour classifier or segmenter.")
    p.add_argument("kind", choices=["classifier", "segmenter"])
    p.add_argument(
        "--manifest",
        action="append",
        default=None,
        help=f"manifest CSV; repeat for several, e.g. the BraTS FLAIR one too (default: {DEFAULT_MANIFEST})",
    )
    p.add_argument(
        "--packed", default="", help="folder with packed train.npz/val.npz instead of --manifest (default: none)"
    )
    p.add_argument("--out", default="runs/latest", help="output folder (default: %(default)s)")
    p.add_argument("--size", type=int, default=models.INPUT_SIZE, help="input side in pixels (default: %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: %(default)s)")
    p.add_argument(
        "--label-smoothing", type=float, default=0.1, help="classifier label smoothing (default: %(default)s)"
    )
    p.add_argument("--max-epochs", type=int, default=200, help="upper bound on epochs (default: %(default)s)")
    p.add_argument("--budget-s", type=float, default=3600, help="wall-time budget for fit (default: %(default)s)")
    p.add_argument("--warmup-epochs", type=int, default=2, help="linear warm-up epochs (default: %(default)s)")
    p.add_argument(
        "--init", choices=["random", "imagenet"], default="random", help="backbone init (default: %(default)s)"
    )
    p.add_argument(
        "--intensity",
        choices=models.INTENSITY_MODES,
        default="foreground_mean",
        help="input intensity scaling, recorded in the weights' manifest (default: %(default)s)",
    )
    p.add_argument(
        "--modality-drop",
        type=float,
        default=AUG_MODALITY_DROP,
        help="chance that an outer channel is replaced by the middle one (default: %(default)s)",
    )
    p.add_argument(
        "--grey-prob",
        type=float,
        default=AUG_GREY,
        help="chance that both outer channels are replaced by the middle one (default: %(default)s)",
    )
    p.add_argument(
        "--oversample",
        action="append",
        default=[],
        metavar="SOURCE:LABEL=K",
        help="repeat the training slices of a source and label K times, e.g. figshare_cheng:glioma=2 (repeatable)",
    )
    p.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="SOURCE",
        help="train and validate on this source only (repeatable; default: every source)",
    )
    p.add_argument(
        "--val-grey",
        action="store_true",
        help="validate on greyscale slices: every channel replaced by the middle one (LGG: FLAIR only)",
    )
    p.add_argument("--resume", default="", help="inner-network weights to start from (default: none)")
    p.add_argument(
        "--precision",
        default="auto",
        help="Keras dtype policy; auto: mixed_bfloat16 where bfloat16 is native, else float32 (default: %(default)s)",
    )
    p.add_argument("--limit", type=int, default=0, help="rows per label per split, 0 = all (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1337, help="random seed (default: %(default)s)")
    args = p.parse_args(argv)
    args.manifest = args.manifest or [DEFAULT_MANIFEST]
    return args


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    train(parse_args(argv))


if __name__ == "__main__":
    main()
