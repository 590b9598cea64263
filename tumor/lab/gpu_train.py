"""GPU training: ``python -m tumor.lab.gpu_train classifier|segmenter --packed DIR --out DIR``.

One script for a lent accelerator (one H200 with PyTorch and JAX, no
TensorFlow, about 15 minutes of device time, 10 minutes a command). It trains
the project's own networks (``tumor.models.build_classifier`` and
``build_segmenter``) on Keras' JAX backend with the recipe that keeps a GPU
busy (docs/gpu_training.md says why the earlier attempts ran at about 4 s a
step):

- the training and validation arrays go to the device once, as uint8;
- every batch has the same shape (whole batches only; an epoch's order is a
  permutation drawn on the device), so the step compiles once;
- augmentation runs on the device inside the compiled step: one combined
  flip, rotation, zoom and shift with bilinear sampling, the project's
  modality drop and grey-slice draw (``tumor.lab.train.drop_modalities``),
  contrast and brightness;
- the host dispatches steps ahead of the device and waits once every
  ``--sync-every`` steps (``--steps-per-call`` can also put several steps in
  one compiled ``jax.lax.scan``; off by default, as on the CPU a scanned step
  ran 6 times slower);
- ``mixed_bfloat16`` where the device has it (``--precision auto``);
- a checkpoint after every epoch (``--resume`` continues it), a wall-time
  budget for the whole process (``--budget-s``) that ends cleanly inside a
  10-minute command, and the best epoch on validation written as
  ``<kind>.weights.h5``, which loads under TensorFlow.

Other verbs: ``pack`` writes the compact train/val copy that travels to the
device; ``profile`` times each phase of the old and the new training step on
random data (no data set needed, so it can be the first seconds of a lease).

Recipe (commands run from the repository root):

Here, once per session (the wheels and the packed data are git-ignored)::

    python -m tumor.lab.gpu_train pack --out .devdata --size 192
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0

On the device machine, one command (``carry: [".whl", ".devdata"]``, ``timeout_s: 600``;
docs/gpu_training.md has it on one line, as the device tool takes it)::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \\
    && export PYTHONPATH=/tmp/site KERAS_BACKEND=jax PYTHONUNBUFFERED=1 \\
    && (python3 -m tumor.lab.gpu_train profile --size 192 --parts feed,aug,new \\
    && python3 -m tumor.lab.gpu_train classifier --packed .devdata --out runs/gpu --budget-s 420 \\
       --from-weights weights/classifier.weights.h5 --export $OUT) 2>&1 | tee $OUT/log.txt

A second command on the still-warm machine can add ``--resume`` (``runs/gpu``
is git-ignored, so it stays there between calls).

Back here: ``python -m tumor.lab.gpu_train join DIR`` rebuilds the float32
``.weights.h5`` from the float16 parts that ``--export`` wrote (the files that
come back from a device are capped at 16 MiB each; a ResNet-50 is 95 MB).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

# Augmentation ranges, as in tumor.lab.train (the shipped recipe).
AUG_ROTATION_DEG = 10.0
AUG_ZOOM = 0.12
AUG_SHIFT = 0.06
AUG_CONTRAST = 0.3
AUG_BRIGHTNESS = 0.15
# Device limits this script is sized for (docs/gpu_training.md).
PACK_MAX_MIB = 48.0  # the working tree that travels is capped at 64 MiB, the code included
EXPORT_PART_MIB = 15.0  # each file that comes back from the device is capped at 16 MiB
BACKENDS = ("jax",)


# --------------------------------------------------------------------------- pack


def pack(
    out: str | Path,
    size: int = 192,
    manifests: list[str] | None = None,
    quality: int = 90,
    max_mib: float = PACK_MAX_MIB,
) -> dict[str, float]:
    """Writes ``train.npz`` and ``val.npz`` (``tumor.lab.data.pack_arrays``) at ``size`` pixels.

    The split is the committed one (``weights/split.csv`` via ``load_split``),
    over every manifest given (default: ``tumor.lab.data.DEFAULT_MANIFESTS``).
    The test split is never packed.

    Returns:
        The size of each file in MiB.

    Raises:
        ValueError: the two files together exceed ``max_mib``.
    """
    from tumor.lab import data

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = data.load_split(data.read_manifests(manifests or list(data.DEFAULT_MANIFESTS)))
    sizes = {}
    for split in ("train", "val"):
        part = df[df["split"] == split]
        arrays = data.load_arrays(part, size)
        arrays["sources"] = part["source"].to_numpy().astype(str)
        path = out / f"{split}.npz"
        data.pack_arrays(arrays, path, quality=quality)
        sizes[split] = path.stat().st_size / 2**20
        print(f"{path}: {len(part)} slices at {size} px, {sizes[split]:.1f} MiB", flush=True)
    total = sum(sizes.values())
    if total > max_mib:
        raise ValueError(
            f"packed data is {total:.1f} MiB, over --max-mib {max_mib}; lower --size or --quality. "
            f"Received: size={size}, quality={quality}"
        )
    return sizes


# --------------------------------------------------------------------------- export / join


def export_parts(weights: str | Path, out: str | Path, part_mib: float = EXPORT_PART_MIB) -> list[Path]:
    """Writes ``weights`` as float16 (``tumor.lab.export.cast_h5``) in parts of at most ``part_mib``.

    A file that already fits is copied whole, in float32. Returns the files written.
    """
    from tumor.lab.export import cast_h5

    weights, out = Path(weights), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    limit = int(part_mib * 2**20)
    if weights.stat().st_size <= limit:
        dst = out / weights.name
        shutil.copyfile(weights, dst)
        return [dst]
    half = out / f"{weights.name}.f16.tmp"
    cast_h5(str(weights), str(half), "float16")
    blob = half.read_bytes()
    half.unlink()
    parts = []
    for i in range(0, len(blob), limit):
        part = out / f"{weights.name}.f16.part{i // limit:02d}"
        part.write_bytes(blob[i : i + limit])
        parts.append(part)
    return parts


def join_parts(folder: str | Path, dst: str | Path | None = None) -> Path:
    """Joins ``<name>.weights.h5.f16.partNN`` files into a float32 ``<name>.weights.h5``."""
    from tumor.lab.export import cast_h5

    folder = Path(folder)
    parts = sorted(folder.glob("*.weights.h5.f16.part[0-9][0-9]"))
    names = {p.name.split(".f16.part")[0] for p in parts}
    if len(names) != 1:
        raise ValueError(f"Expected the parts of one weights file in {folder}. Received: {sorted(names) or 'none'}")
    (name,) = names
    half = folder / f"{name}.f16"
    half.write_bytes(b"".join(p.read_bytes() for p in parts))
    dst = Path(dst) if dst else folder / name
    cast_h5(str(half), str(dst), "float32")
    half.unlink()
    return dst


# --------------------------------------------------------------------------- device augmentation


def _device_augmenter_class():
    """The augmentation layer, defined once Keras (and so its backend) is imported."""
    import keras

    from tumor.lab.train import drop_modalities

    ops = keras.ops

    class DeviceAugmenter(keras.layers.Layer):
        """Flip, rotation, zoom, shift (one bilinear resampling), modality drop, contrast, brightness.

        Input and output: float32 (N, S, S, C) in [0, 255]; the first three
        channels are the image and an optional fourth is the mask, which takes
        the same geometric transform and no intensity change. The layer runs in
        float32 whatever the global policy: in bfloat16 the sampling
        coordinates of a 256 px slice would move in steps of one or two pixels.
        """

        def __init__(self, seed: int, modality_drop: float = 0.0, grey_prob: float = 0.0, **kwargs):
            super().__init__(dtype="float32", **kwargs)
            self.modality_drop, self.grey_prob = modality_drop, grey_prob
            self.seed_generator = keras.random.SeedGenerator(seed)
            self.modality_seed = keras.random.SeedGenerator(seed + 1)

        def build(self, input_shape):
            pass  # no weights; the seed generators were made in __init__

        def _geometric(self, x):
            n, s, c = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[3]
            u = keras.random.uniform((n, 5), seed=self.seed_generator)
            flip = ops.where(u[:, 0] < 0.5, -1.0, 1.0)
            angle = (2 * u[:, 1] - 1) * (AUG_ROTATION_DEG * math.pi / 180)
            scale = 1 + (2 * u[:, 2] - 1) * AUG_ZOOM  # > 1 samples a wider field: zooms out
            shift = (2 * u[:, 3:5] - 1) * AUG_SHIFT * s
            centre = (s - 1) / 2
            grid = ops.arange(s, dtype="float32") - centre
            col = grid[None, None, :] * flip[:, None, None]  # output pixel, centred, mirrored
            row = ops.broadcast_to(grid[None, :, None], (n, s, s))
            cos, sin = (scale * ops.cos(angle))[:, None, None], (scale * ops.sin(angle))[:, None, None]
            src_x = cos * col - sin * row + centre + shift[:, 0, None, None]
            src_y = sin * col + cos * row + centre + shift[:, 1, None, None]
            x0, y0 = ops.floor(src_x), ops.floor(src_y)
            wx, wy = src_x - x0, src_y - y0
            flat = ops.reshape(x, (n * s * s, c))
            base = (ops.arange(n, dtype="int32") * s * s)[:, None, None]
            out = 0.0
            for dy, dx, w in (
                (0, 0, (1 - wy) * (1 - wx)),
                (0, 1, (1 - wy) * wx),
                (1, 0, wy * (1 - wx)),
                (1, 1, wy * wx),
            ):
                xi, yi = x0 + dx, y0 + dy
                inside = (xi >= 0) & (xi <= s - 1) & (yi >= 0) & (yi <= s - 1)
                idx = base + ops.cast(ops.clip(yi, 0, s - 1), "int32") * s + ops.cast(ops.clip(xi, 0, s - 1), "int32")
                taps = ops.reshape(ops.take(flat, ops.reshape(idx, (-1,)), axis=0), (n, s, s, c))
                out = out + taps * ops.where(inside, w, 0.0)[..., None]  # zeros outside the slice
            return out

        def _intensity(self, image):
            image = drop_modalities(image, self.modality_drop, self.modality_seed, self.grey_prob)
            n = ops.shape(image)[0]
            u = keras.random.uniform((n, 2), seed=self.seed_generator)
            contrast = (1 + (2 * u[:, 0] - 1) * AUG_CONTRAST)[:, None, None, None]
            mean = ops.mean(image, axis=(1, 2), keepdims=True)
            image = (image - mean) * contrast + mean
            image = image + ((2 * u[:, 1] - 1) * AUG_BRIGHTNESS * 255)[:, None, None, None]
            return ops.clip(image, 0.0, 255.0)

        def call(self, x, training=True):
            del training  # always augments: DeviceTrainer calls it in training only
            x = self._geometric(x)
            image = self._intensity(x[..., :3])
            if ops.shape(x)[-1] == 3:
                return image
            return ops.concatenate([image, x[..., 3:]], axis=-1)

    return DeviceAugmenter


def _trainer_class():
    import keras

    from tumor import models

    ops = keras.ops

    class DeviceTrainer(keras.Model):
        """The inner network behind the device augmentation and its preprocessing; only ``net`` is saved.

        Classifier input: uint8 (N, S, S, 3); output: probabilities. Segmenter
        input: uint8 (N, S, S, 4), RGB plus the mask; output: the prediction
        and the (augmented) mask as two channels, as ``tumor.lab.train.dice_bce_loss`` reads them.
        """

        def __init__(self, net, kind: str, augmenter, intensity: str, **kwargs):
            super().__init__(**kwargs)
            self.net, self.kind, self.augmenter, self.intensity_mode = net, kind, augmenter, intensity

        def build(self, input_shape):
            pass  # the network came built; the augmenter has no weights

        def call(self, x, training=False):
            x = ops.cast(x, "float32")
            if training:
                x = self.augmenter(x)
            if self.kind == "classifier":
                return self.net(models.preprocess_classifier(x, self.intensity_mode), training=training)
            image, mask = x[..., :3], ops.cast(x[..., 3:] > 0.5, "float32")
            pred = self.net(models.preprocess_segmenter(image, self.intensity_mode), training=training)
            return ops.concatenate([ops.cast(pred, "float32"), mask], axis=-1)

    return DeviceTrainer


# --------------------------------------------------------------------------- the compiled steps


class Steps:
    """The compiled train and validation calls of one ``DeviceTrainer`` (JAX).

    State is ``(trainable, non_trainable, optimizer)`` lists of device arrays.
    ``train(state, X, Y, W, idx, lr)`` runs ``idx.shape[0]`` steps in one call
    (``jax.lax.scan`` when more than one), each on the batch ``X[idx[k]]``;
    ``validate`` sums the validation figures batch by batch with a 0/1
    ``valid`` weight per slice, so the padded last batch keeps the shape static.
    """

    def __init__(self, model, optimizer, kind: str, label_smoothing: float = 0.1):
        import jax
        import keras

        from tumor.lab.train import dice_bce_loss, hard_dice_metric

        ops = keras.ops
        self.model, self.optimizer, self.kind = model, optimizer, kind
        paths = [v.path for v in optimizer.variables]
        self.lr_index = next(i for i, p in enumerate(paths) if p.endswith("/learning_rate"))

        def loss_fn(tv, ntv, xb, yb, wb):
            out, ntv, losses = model.stateless_call(tv, ntv, xb, training=True, return_losses=True)
            if kind == "classifier":
                onehot = ops.one_hot(yb, out.shape[-1])
                per = keras.losses.categorical_crossentropy(onehot, out, label_smoothing=label_smoothing)
                loss = ops.mean(per * wb)
                metric = ops.mean(ops.cast(ops.argmax(out, axis=-1) == yb, "float32"))
            else:
                loss = dice_bce_loss(None, out)
                metric = hard_dice_metric(None, out)
            total = loss + sum(losses) if losses else loss
            return total, (ntv, loss, metric)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def train(state, x_all, y_all, w_all, idx, lr):
            tv, ntv, ov = state
            ov = list(ov)
            ov[self.lr_index] = ops.cast(lr, ov[self.lr_index].dtype)

            def body(carry, ids):
                tv, ntv, ov = carry
                xb, yb, wb = (ops.take(a, ids, axis=0) for a in (x_all, y_all, w_all))
                (_, (ntv, loss, metric)), grads = grad_fn(tv, ntv, xb, yb, wb)
                tv, ov = optimizer.stateless_apply(ov, grads, tv)
                return (tv, ntv, ov), (loss, metric)

            if idx.shape[0] == 1:  # one step: no loop (XLA's CPU code ran a scanned step 6x slower)
                state, (loss, metric) = body((tv, ntv, ov), idx[0])
                return state, loss[None], metric[None]
            state, (losses, metrics) = jax.lax.scan(body, (tv, ntv, ov), idx)
            return state, losses, metrics

        def evaluate(tv, ntv, x_all, y_all, ids, ok):
            out, _ = model.stateless_call(tv, ntv, ops.take(x_all, ids, axis=0), training=False)
            if kind == "classifier":
                yb = ops.take(y_all, ids, axis=0)
                onehot = ops.one_hot(yb, out.shape[-1])
                per = keras.losses.categorical_crossentropy(onehot, out, label_smoothing=label_smoothing)
                right = ops.cast(ops.argmax(out, axis=-1) == yb, "float32")
                return ops.stack([ops.sum(per * ok), ops.sum(right * ok), ops.sum(ok)])
            pred = ops.clip(out[..., 0], 1e-6, 1 - 1e-6)
            target, w = out[..., 1], ok[:, None, None]
            hard = ops.cast(pred > 0.5, "float32")
            bce = -(target * ops.log(pred) + (1 - target) * ops.log(1 - pred))
            pixels = ops.sum(w) * ops.cast(ops.shape(pred)[1] * ops.shape(pred)[2], "float32")
            return ops.stack(
                [
                    ops.sum(bce * w),
                    ops.sum(pred * target * w),
                    ops.sum((pred + target) * w),
                    ops.sum(hard * target * w),
                    ops.sum((hard + target) * w),
                    pixels,
                ]
            )

        self.train = jax.jit(train)
        self.evaluate = jax.jit(evaluate)

    def validate(self, tv, ntv, x_all, y_all, idx, valid) -> dict[str, float]:
        """Validation figures over the batches ``idx`` (rows), each slice weighted 0/1 by ``valid``."""
        sums = sum(self.evaluate(tv, ntv, x_all, y_all, ids, ok) for ids, ok in zip(idx, valid, strict=True))
        return self.figures(np.asarray(sums))

    def figures(self, sums) -> dict[str, float]:
        """Validation figures from ``evaluate``'s sums (pooled over every validation slice)."""
        s = [float(v) for v in sums]
        if self.kind == "classifier":
            loss, right, n = s
            return {"val_loss": loss / n, "val_acc": right / n}
        bce, inter, total, hard_inter, hard_total, pixels = s
        soft = (2 * inter + 1) / (total + 1)
        return {"val_loss": bce / pixels + 1 - soft, "val_dice": (2 * hard_inter + 1) / (hard_total + 1)}


# --------------------------------------------------------------------------- training


def lr_at(step: int, planned: int, base: float, warmup: int, floor_fraction: float = 0.01) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``base`` to ``floor_fraction * base`` at ``planned``."""
    if step < warmup:
        return base * (step + 1) / (warmup + 1)
    floor = base * floor_fraction
    frac = min(1.0, (step - warmup) / max(1, planned - warmup))
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * frac))


def _device_arrays(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """Loads the packed arrays, picks the slices of ``args.kind`` and returns (train, val, info) on the host."""
    from tumor import models
    from tumor.lab import data
    from tumor.lab.train import SEG_NEGATIVE_FRACTION, oversample, segmenter_subset

    packed = Path(args.packed)
    tr, va = (data.load_packed(packed / f"{split}.npz") for split in ("train", "val"))
    size = args.size or tr["images"].shape[1]
    if size != tr["images"].shape[1] or size != va["images"].shape[1]:
        import cv2

        for arrs in (tr, va):
            arrs["images"] = np.stack(
                [cv2.resize(i, (size, size), interpolation=cv2.INTER_AREA) for i in arrs["images"]]
            )
            arrs["masks"] = np.stack(
                [cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) for m in arrs["masks"]]
            )
    if args.kind == "classifier":
        idx_tr, idx_va = oversample(np.arange(len(tr["labels"])), tr, args.oversample), np.arange(len(va["labels"]))
        cw = data.class_weights(tr["labels"])
        weight = np.array([cw[int(c)] for c in range(len(models.CLASS_NAMES))], np.float32)

        def pick(arrs, idx):
            labels = arrs["labels"][idx].astype(np.int32)
            return {"x": arrs["images"][idx], "y": labels, "w": weight[labels]}
    else:
        idx_tr = oversample(segmenter_subset(tr, args.seed, SEG_NEGATIVE_FRACTION), tr, args.oversample)
        idx_va = segmenter_subset(va, args.seed, SEG_NEGATIVE_FRACTION)
        cw = None

        def pick(arrs, idx):
            x = np.concatenate([arrs["images"][idx], arrs["masks"][idx, ..., None]], axis=-1)
            return {"x": x, "y": np.zeros(len(idx), np.int32), "w": np.ones(len(idx), np.float32)}

    train, val = pick(tr, idx_tr), pick(va, idx_va)
    if len(train["x"]) < args.batch:
        raise ValueError(f"--batch {args.batch} is larger than the {len(train['x'])} training slices")
    return train, val, {"size": size, "class_weights": cw}


def _save_checkpoint(folder: Path, net, optimizer, state: dict, ov) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    net.save_weights(str(folder / "last.weights.h5"))
    np.savez(folder / "optimizer.npz", *[np.asarray(a) for a in ov])
    (folder / "state.json").write_text(
        json.dumps({**state, "optimizer_paths": [v.path for v in optimizer.variables]}, indent=2)
    )


def train(args: argparse.Namespace) -> dict:
    """Trains one network as ``args`` says (JAX backend) and returns the summary dict."""
    t_start = time.monotonic()
    import jax
    import keras

    from tumor import models
    from tumor.lab.train import resolve_precision

    if keras.backend.backend() not in BACKENDS:
        raise ValueError(
            f"gpu_train runs on the Keras JAX backend; set KERAS_BACKEND=jax. Received: {keras.backend.backend()}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoint"
    resumed = json.loads((ckpt_dir / "state.json").read_text()) if args.resume else None
    if args.resume and resumed is None:
        raise ValueError(f"--resume found no checkpoint in {ckpt_dir}")
    keras.utils.set_random_seed(args.seed)
    args.precision = resolve_precision(args.precision)
    keras.mixed_precision.set_global_policy(args.precision)
    device = jax.devices()[0]
    print(
        f"backend jax {jax.__version__} on {device.platform}:{device.device_kind}; precision {args.precision}",
        flush=True,
    )
    if device.platform == "cpu" and not args.allow_cpu:
        # JAX falls back to the host, with a warning only, when it finds no usable GPU
        # plugin; a lease would then be spent at CPU speed (docs/gpu_training.md).
        raise SystemExit(
            f"JAX sees no accelerator (jax.devices() = {jax.devices()}); pass --allow-cpu for a dry run on the CPU"
        )

    t_load = time.monotonic()
    print(f"imports done at {t_load - t_start:.1f} s", flush=True)
    train_np, val_np, info = _device_arrays(args)
    size, b, k = info["size"], args.batch, args.steps_per_call
    if resumed and (resumed["kind"], resumed["size"], resumed["batch"]) != (args.kind, size, b):
        raise ValueError(
            "--resume needs the checkpoint's kind, size and batch. Received: "
            f"{(args.kind, size, b)}, checkpoint {(resumed['kind'], resumed['size'], resumed['batch'])}"
        )
    # Whole calls of whole batches: one shape, one compilation. A fresh permutation
    # each epoch picks which few slices sit out.
    k = max(1, min(k, len(train_np["x"]) // b))
    calls_per_epoch = len(train_np["x"]) // b // k
    steps_per_epoch = calls_per_epoch * k
    n_val = len(val_np["x"])
    val_batches = -(-n_val // b)
    val_idx = np.zeros(val_batches * b, np.int32)
    val_idx[:n_val] = np.arange(n_val)
    val_valid = (np.arange(val_batches * b) < n_val).astype(np.float32)
    dev = {
        name: jax.device_put(arr) for name, arr in (("x", train_np["x"]), ("y", train_np["y"]), ("w", train_np["w"]))
    }
    dev_val = {name: jax.device_put(arr) for name, arr in (("x", val_np["x"]), ("y", val_np["y"]))}
    val_idx, val_valid = val_idx.reshape(val_batches, b), val_valid.reshape(val_batches, b)
    jax.block_until_ready(dev["x"])
    mib = sum(a.nbytes for a in dev.values()) / 2**20
    print(
        f"{args.kind}: {len(train_np['x'])} training slices ({mib:.0f} MiB on the device) and {n_val} validation "
        f"slices at {size} px, loaded in {time.monotonic() - t_load:.1f} s; {steps_per_epoch} steps of {b} "
        f"an epoch, {k} per call",
        flush=True,
    )

    if args.kind == "classifier":
        net = models.build_classifier(size)
        monitor = "val_acc"
    else:
        net = models.build_segmenter(
            size, args.seg_filters or models.SEGMENTER_BASE_FILTERS, args.seg_depth or models.SEGMENTER_DEPTH
        )
        monitor = "val_dice"
    start_epoch = resumed["epoch"] if resumed else 0
    if resumed:
        net.load_weights(str(ckpt_dir / "last.weights.h5"))
    elif args.from_weights:
        net.load_weights(args.from_weights)
    augmenter = _device_augmenter_class()(args.seed + 1000 * start_epoch, args.modality_drop, args.grey_prob)
    model = _trainer_class()(net, args.kind, augmenter, args.intensity)
    # The network came built and the augmenter has no weights: mark the wrapper built
    # without an eager forward pass (op by op, each op compiled on its own: tens of seconds).
    model.build((None, size, size, train_np["x"].shape[-1]))
    optimizer = keras.optimizers.AdamW(learning_rate=args.lr, weight_decay=args.weight_decay)
    optimizer.build(model.trainable_variables)
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    ov = [v.value for v in optimizer.variables]
    if resumed:
        if resumed["optimizer_paths"] != [v.path for v in optimizer.variables]:
            raise ValueError(f"the optimizer in {ckpt_dir} does not match this network")
        with np.load(ckpt_dir / "optimizer.npz") as z:
            ov = [jax.device_put(z[f"arr_{i}"]) for i in range(len(ov))]
    steps = Steps(model, optimizer, args.kind, args.label_smoothing)
    print(f"network and optimizer built at {time.monotonic() - t_start:.1f} s", flush=True)

    best = resumed["best"] if resumed else -math.inf
    best_epoch = resumed["best_epoch"] if resumed else -1
    step = resumed["step"] if resumed else 0
    history = resumed["history"] if resumed else []
    weights_path = out / f"{args.kind}.weights.h5"
    log_path = out / f"gpu_training_log_{args.kind}.csv"
    columns = ["epoch", "steps", "loss", "metric", monitor, "val_loss", "lr", "step_ms", "elapsed_s"]
    if not resumed or not log_path.exists():
        log_path.write_text(",".join(columns) + "\n")
    key = jax.random.PRNGKey(args.seed)
    call_s: list[float] = []  # steady calls only: the first one also compiles
    compile_s = None
    val_s = save_s = 0.0
    train_share = 1.0
    epoch = start_epoch
    stop = False
    while epoch < args.max_epochs and not stop:
        t_epoch = time.monotonic()
        order = jax.random.permutation(jax.random.fold_in(key, epoch), len(train_np["x"]))
        order = order[: steps_per_epoch * b].reshape(calls_per_epoch, k, b)
        losses, metrics, done = [], [], 0
        lr = args.lr
        pending, t_window = 0, time.monotonic()
        for c in range(calls_per_epoch):
            # The host runs ahead of the device by up to --sync-every calls; it waits, and
            # times them, once per window, so the device never idles on Python.
            elapsed = time.monotonic() - t_start
            reserve = max(args.reserve_s, 1.5 * (val_s + save_s))
            per_call = float(np.median(call_s[-20:])) if call_s else 0.0
            if elapsed + (pending + 1) * per_call + reserve > args.budget_s:
                print(f"budget: stopping at {elapsed:.0f} s, {done} steps into epoch {epoch + 1}", flush=True)
                stop = True
                break
            if call_s:  # steps that the rest of the budget holds at the recent pace
                left = (args.budget_s - elapsed - reserve) * train_share
                planned = min(args.max_epochs * steps_per_epoch, step + int(left / (per_call / k)))
            else:
                planned = args.max_epochs * steps_per_epoch
            lr = lr_at(step, planned, args.lr, args.warmup_steps)
            # A float32 array, not a Python float: a weakly typed scalar would change the
            # optimizer state's type after the first call and compile the step a second time.
            (tv, ntv, ov), loss, metric = steps.train(
                (tv, ntv, ov), dev["x"], dev["y"], dev["w"], order[c], np.float32(lr)
            )
            losses.append(loss)
            metrics.append(metric)
            done += k
            step += k
            pending += 1
            if compile_s is None or pending >= args.sync_every or c == calls_per_epoch - 1:
                jax.block_until_ready(loss)
                now = time.monotonic()
                if compile_s is None:
                    compile_s = now - t_window
                    print(f"first call (compiles the step): {compile_s:.1f} s", flush=True)
                else:
                    call_s += [(now - t_window) / pending] * pending
                pending, t_window = 0, now
        if not done:
            break
        losses, metrics = np.asarray(losses), np.asarray(metrics)
        loss = float(np.mean(losses))
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss} at epoch {epoch + 1}; lower --lr")
        t_val = time.monotonic()
        figures = steps.validate(tv, ntv, dev_val["x"], dev_val["y"], val_idx, val_valid)
        val_s = time.monotonic() - t_val
        t_save = time.monotonic()
        for v, a in zip(model.trainable_variables, tv, strict=True):
            v.assign(a)
        for v, a in zip(model.non_trainable_variables, ntv, strict=True):
            v.assign(a)
        if figures[monitor] > best:
            best, best_epoch = figures[monitor], epoch
            net.save_weights(str(weights_path))
        step_ms = 1000 * float(np.median(call_s)) / k if call_s else float("nan")
        row = {
            "epoch": epoch + 1,
            "steps": done,
            "loss": loss,
            "metric": float(np.mean(metrics)),
            **figures,
            "lr": lr,
            "step_ms": step_ms,
            "elapsed_s": time.monotonic() - t_start,
        }
        history.append(row)
        with log_path.open("a") as f:
            f.write(",".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in columns) + "\n")
        epoch += 1
        _save_checkpoint(
            ckpt_dir,
            net,
            optimizer,
            {
                "kind": args.kind,
                "size": size,
                "batch": b,
                "epoch": epoch,
                "step": step,
                "best": best,
                "best_epoch": best_epoch,
                "history": history,
            },
            ov,
        )
        save_s = time.monotonic() - t_save
        epoch_s = time.monotonic() - t_epoch
        train_share = max(0.1, 1 - (val_s + save_s) / epoch_s)
        print(
            f"epoch {epoch}: loss {loss:.4f} {monitor} {figures[monitor]:.4f} val_loss {figures['val_loss']:.4f} "
            f"lr {lr:.2e} {step_ms:.1f} ms/step, val {val_s:.1f} s, save {save_s:.1f} s, "
            f"elapsed {row['elapsed_s']:.0f} s",
            flush=True,
        )

    summary = {
        "kind": args.kind,
        "backend": keras.backend.backend(),
        "device": f"{device.platform}:{device.device_kind}",
        "precision": args.precision,
        "size": size,
        "batch": b,
        "steps_per_call": k,
        "epochs_run": len(history),
        "best_epoch": best_epoch + 1,
        f"best_{monitor}": best,
        "compile_s": compile_s,
        "step_ms": 1000 * float(np.median(call_s)) / k if call_s else None,
        "images_per_s": b * k / float(np.median(call_s)) if call_s else None,
        "wall_s": round(time.monotonic() - t_start, 1),
        "n_train": len(train_np["x"]),
        "n_val": n_val,
        "class_weights": info["class_weights"],
    }
    summary["args"] = vars(args)
    (out / f"{args.kind}_gpu_summary.json").write_text(json.dumps(summary, indent=2))
    if args.export and weights_path.exists():
        Path(args.export).mkdir(parents=True, exist_ok=True)
        for path in (log_path, out / f"{args.kind}_gpu_summary.json"):
            shutil.copyfile(path, Path(args.export) / path.name)
        parts = export_parts(weights_path, args.export, args.split_mib)
        print(f"exported {', '.join(p.name for p in parts)} to {args.export}", flush=True)
    print(json.dumps(summary), flush=True)
    return summary


# --------------------------------------------------------------------------- profile


def profile(args: argparse.Namespace) -> dict:
    """Times each phase of the old (``tumor.lab.train`` on JAX) and the new training step on random data.

    Parts: ``feed`` (host slicing and host->device copy of one batch, against
    the whole array once), ``aug`` (the old Keras preprocessing layers chained
    in one compiled function, each alone, and the device augmenter), ``old``
    (``model.fit`` on host arrays, as the earlier GPU attempts ran it) and
    ``new`` (this script's compiled call). Compilations are counted with
    ``jax.monitoring`` over the steady steps, so a recompiling shape shows.
    """
    import jax
    import keras
    from jax import monitoring

    from tumor import models
    from tumor.lab import train as old

    keras.mixed_precision.set_global_policy(old.resolve_precision(args.precision))
    compiles: list[float] = []
    monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: compiles.append(duration) if event.endswith("backend_compile_duration") else None
    )
    b, s, n_steps = args.batch, args.size, args.steps
    c = 3 if args.kind == "classifier" else 4
    rng = np.random.default_rng(0)
    n = b * (n_steps + 1)
    x = rng.integers(0, 256, (n, s, s, c), dtype=np.uint8)
    if c == 4:
        x[..., 3] = x[..., 3] > 200
    labels = rng.integers(0, len(models.CLASS_NAMES), n).astype(np.int32)
    results: dict[str, float] = {}
    device = jax.devices()[0]
    print(
        f"profile {args.kind}: batch {b}, {s} px, {n_steps} steady steps, {device.platform}:{device.device_kind}, "
        f"policy {keras.mixed_precision.global_policy().name}",
        flush=True,
    )

    def report(name: str, value: float, unit: str = "ms") -> None:
        results[name] = value
        print(f"  {name:55s} {value:10.1f} {unit}", flush=True)

    def timed(fn, *a, repeat: int = 3) -> tuple[float, float]:
        t = time.perf_counter()
        jax.block_until_ready(fn(*a))
        first = time.perf_counter() - t
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            jax.block_until_ready(fn(*a))
            ts.append(time.perf_counter() - t)
        return first, float(np.median(ts))

    parts = set(args.parts.split(","))
    if "feed" in parts:
        t = time.perf_counter()
        batch = x[rng.permutation(n)[:b]]
        report("old: host gather of one shuffled batch", 1e3 * (time.perf_counter() - t))
        t = time.perf_counter()
        jax.block_until_ready(jax.device_put(batch))
        report(f"old: host->device copy of one batch ({batch.nbytes / 2**20:.1f} MiB)", 1e3 * (time.perf_counter() - t))
        t = time.perf_counter()
        jax.block_until_ready(jax.device_put(x))
        report(f"new: whole array to the device once ({x.nbytes / 2**20:.1f} MiB)", 1e3 * (time.perf_counter() - t))
    if "aug" in parts:
        xb = jax.device_put(x[:b].astype(np.float32))

        def stateless(layer):
            """A jitted call of ``layer`` that threads its seed state (no leaked tracers), and that state."""
            layer(xb[:1], training=True)
            state = [v.value for v in layer.non_trainable_variables]
            return jax.jit(lambda st, v: layer.stateless_call([], st, v, training=True)[0]), state

        fn, state = stateless(old.geometric_augmenter(1))
        first, steady = timed(fn, state, xb)
        report("old: Keras flip+rotate+zoom+shift in one jit, compile", 1e3 * first)
        report("old: Keras flip+rotate+zoom+shift in one jit, steady", 1e3 * steady)
        total = 0.0
        for layer in list(old.geometric_augmenter(1).layers) + list(old.intensity_augmenter(1).layers):
            fn, state = stateless(layer)
            _, steady = timed(fn, state, xb)
            total += steady
            report(f"old: {layer.name} alone, steady", 1e3 * steady)
        report("old: the six layers one by one, summed", 1e3 * total)
        fn, state = stateless(_device_augmenter_class()(1, 0.15, 0.0))
        first, steady = timed(fn, state, xb)
        report("new: device augmenter (all of it) in one jit, compile", 1e3 * first)
        report("new: device augmenter (all of it) in one jit, steady", 1e3 * steady)
    y1h = keras.utils.to_categorical(labels, len(models.CLASS_NAMES))
    if "old" in parts:
        if args.kind == "classifier":
            net = models.build_classifier(s)
            model = old.ClassifierTrainer(net, seed=1, intensity="foreground_mean", modality_drop=0.15)
            loss, y = keras.losses.CategoricalCrossentropy(label_smoothing=0.1), y1h
        else:
            net = models.build_segmenter(s)
            model = old.SegmenterTrainer(net, seed=1, intensity="foreground_mean", modality_drop=0.15)
            loss, y = old.dice_bce_loss, x[..., 3:]
        model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4), loss=loss)
        times: list[float] = []

        class Timer(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                self.t = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                jax.block_until_ready(logs)
                times.append(time.perf_counter() - self.t)
                if len(times) == 1:
                    compiles.clear()

        model.fit(x, y, batch_size=b, epochs=1, shuffle=True, verbose=0, callbacks=[Timer()])
        report("old: model.fit first step (compiles)", times[0], "s")
        report("old: model.fit steady step", float(np.median(times[1:])), "s")
        report("old: compilations during the steady steps", float(len(compiles)), "")
        del model, net
    if "new" in parts:
        net = models.build_classifier(s) if args.kind == "classifier" else models.build_segmenter(s)
        model = _trainer_class()(net, args.kind, _device_augmenter_class()(1, 0.15, 0.0), "foreground_mean")
        model.build((None, s, s, c))
        optimizer = keras.optimizers.AdamW(1e-3, weight_decay=1e-4)
        optimizer.build(model.trainable_variables)
        steps = Steps(model, optimizer, args.kind)
        state = tuple(
            [v.value for v in vs]
            for vs in (model.trainable_variables, model.non_trainable_variables, optimizer.variables)
        )
        xd, yd, wd = jax.device_put(x), jax.device_put(labels), jax.device_put(np.ones(n, np.float32))
        k = args.steps_per_call
        idx = jax.device_put(rng.permutation(n)[: k * b].reshape(k, b).astype(np.int32))
        t = time.perf_counter()
        state, loss, _ = steps.train(state, xd, yd, wd, idx, np.float32(1e-3))
        jax.block_until_ready(loss)
        report(f"new: first call of {k} steps (compiles)", time.perf_counter() - t, "s")
        compiles.clear()
        ts = []
        for _ in range(max(1, n_steps // k)):
            t = time.perf_counter()
            state, loss, _ = steps.train(state, xd, yd, wd, idx, np.float32(1e-3))
            jax.block_until_ready(loss)
            ts.append((time.perf_counter() - t) / k)
        report("new: steady step", float(np.median(ts)), "s")
        report("new: compilations during the steady calls", float(len(compiles)), "")
        report("new: loss after the steady calls", float(np.mean(np.asarray(loss))), "")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return results


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train on a GPU (Keras on JAX), pack the data for it, or profile a step.")
    sub = p.add_subparsers(dest="verb", required=True)
    for kind in ("classifier", "segmenter"):
        t = sub.add_parser(kind, help=f"train the {kind}")
        t.set_defaults(kind=kind)
        t.add_argument("--packed", required=True, help="folder with train.npz and val.npz (the pack verb)")
        t.add_argument("--out", required=True, help="output folder: weights, log, summary, checkpoint/")
        t.add_argument("--size", type=int, default=0, help="input side in pixels; 0 = the packed size (default: 0)")
        t.add_argument("--batch", type=int, default=32, help="batch size (default: %(default)s)")
        t.add_argument(
            "--steps-per-call",
            type=int,
            default=1,
            help="steps in one compiled call; above 1 they run in a jax.lax.scan (default: %(default)s)",
        )
        t.add_argument(
            "--sync-every", type=int, default=10, help="calls between waits for the device (default: %(default)s)"
        )
        t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: %(default)s)")
        t.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: %(default)s)")
        t.add_argument("--warmup-steps", type=int, default=50, help="linear warm-up steps (default: %(default)s)")
        t.add_argument("--label-smoothing", type=float, default=0.1, help="classifier only (default: %(default)s)")
        t.add_argument("--max-epochs", type=int, default=100, help="upper bound on epochs (default: %(default)s)")
        t.add_argument(
            "--budget-s",
            type=float,
            default=540,
            help="wall time for the whole process, loading and compiling included (default: %(default)s)",
        )
        t.add_argument(
            "--reserve-s", type=float, default=60, help="kept for the last validation and save (default: %(default)s)"
        )
        t.add_argument(
            "--allow-cpu", action="store_true", help="train even where JAX sees no accelerator (default: refuse)"
        )
        t.add_argument("--resume", action="store_true", help="continue from --out's checkpoint/ (default: off)")
        t.add_argument("--from-weights", default="", help="inner-network weights to start from (default: none)")
        t.add_argument("--intensity", default="foreground_mean", help="input intensity scaling (default: %(default)s)")
        t.add_argument(
            "--modality-drop", type=float, default=0.15, help="outer-channel drop chance (default: %(default)s)"
        )
        t.add_argument("--grey-prob", type=float, default=0.0, help="all-FLAIR slice chance (default: %(default)s)")
        t.add_argument(
            "--oversample", action="append", default=[], metavar="SOURCE:LABEL=K", help="as in tumor.lab.train"
        )
        t.add_argument(
            "--seg-filters", type=int, default=0, help="segmenter's first-stage filters; 0 = as shipped (default: 0)"
        )
        t.add_argument(
            "--seg-depth", type=int, default=0, help="segmenter's downsampling stages; 0 = as shipped (default: 0)"
        )
        t.add_argument(
            "--precision", default="auto", help="Keras dtype policy; auto: bf16 where native (default: auto)"
        )
        t.add_argument("--export", default="", help="also copy log, summary and weights (float16 parts) here")
        t.add_argument("--split-mib", type=float, default=EXPORT_PART_MIB, help="part size (default: %(default)s)")
        t.add_argument("--seed", type=int, default=1337, help="random seed (default: %(default)s)")
    k = sub.add_parser("pack", help="write train.npz and val.npz from the manifests")
    k.add_argument("--out", default=".devdata", help="folder to write (default: %(default)s)")
    k.add_argument("--size", type=int, default=192, help="side in pixels (default: %(default)s)")
    k.add_argument("--manifest", action="append", help="manifest CSV, repeatable (default: both shared manifests)")
    k.add_argument("--quality", type=int, default=90, help="WebP quality (default: %(default)s)")
    k.add_argument("--max-mib", type=float, default=PACK_MAX_MIB, help="refuse above this (default: %(default)s)")
    j = sub.add_parser("join", help="rebuild a float32 .weights.h5 from exported float16 parts")
    j.add_argument("folder", help="folder holding <name>.weights.h5.f16.partNN")
    j.add_argument("--dst", default="", help="file to write (default: <folder>/<name>.weights.h5)")
    f = sub.add_parser("profile", help="time each phase of the old and the new step on random data")
    f.add_argument("--kind", choices=["classifier", "segmenter"], default="classifier", help="(default: %(default)s)")
    f.add_argument("--size", type=int, default=256, help="side in pixels (default: %(default)s)")
    f.add_argument("--batch", type=int, default=32, help="batch size (default: %(default)s)")
    f.add_argument("--steps", type=int, default=3, help="steady steps to time (default: %(default)s)")
    f.add_argument("--steps-per-call", type=int, default=1, help="new path: steps per call (default: %(default)s)")
    f.add_argument("--parts", default="feed,aug,old,new", help="comma-separated parts (default: %(default)s)")
    f.add_argument("--precision", default="float32", help="Keras dtype policy (default: %(default)s)")
    f.add_argument("--json", default="", help="also write the figures here (default: none)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    # The backend is read when Keras is first imported, which this module defers
    # to here so that importing it never changes another process's backend.
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parse_args(argv)
    if args.verb == "pack":
        pack(args.out, args.size, args.manifest, args.quality, args.max_mib)
    elif args.verb == "join":
        print(join_parts(args.folder, args.dst or None))
    elif args.verb == "profile":
        profile(args)
    else:
        train(args)


if __name__ == "__main__":
    sys.exit(main())
