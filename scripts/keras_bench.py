#!/usr/bin/env python3
"""Side-by-side speed anchor: trains the reference CNN in TensorFlow/Keras on random data
and prints one JSON object (train and inference images/s, peak RSS), the figures that
`focalflow bench --json` reports for our backends.

Set-up (once):
    python3 -m venv .venv-tf && .venv-tf/bin/pip install -r scripts/requirements-keras.txt
Run:
    .venv-tf/bin/python scripts/keras_bench.py --steps 20 [--batch-size 32] [--image-size 224]

Model: Conv2D(16, 3x3, relu, valid) -> MaxPool 2x2 -> Conv2D(32) -> MaxPool -> Conv2D(64) ->
MaxPool -> Flatten -> Dense(256, relu) -> Dense(2, softmax); Adam with Keras defaults; the
practitioner's categorical focal loss (alpha 0.25, gamma 2, l1 = l2 = 0).
Training is timed over --steps train_on_batch calls after --warmup calls (the first builds
and traces the step); inference over the same number of predict_on_batch calls.
"""

import argparse
import json
import os
import platform
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
from tensorflow.keras import backend as K  # noqa: E402


def categorical_focal_loss(alpha=0.25, gamma=2.0, l1=0.0, l2=0.0):
    """The practitioner's focal loss (see scripts/keras_loss_fixtures.py)."""

    def focal_loss(y_true, y_pred):
        epsilon = K.epsilon()
        y_pred = K.clip(y_pred, epsilon, 1.0 - epsilon)
        cross_entropy = -y_true * K.log(y_pred)
        loss = alpha * K.pow(1 - y_pred, gamma) * cross_entropy
        return (
            K.mean(K.sum(loss, axis=-1))
            + l1 * K.sum(K.abs(y_pred))
            + l2 * K.sum(K.square(y_pred))
        )

    return focal_loss


def reference_cnn(image_size, classes):
    return keras.Sequential(
        [
            keras.Input((image_size, image_size, 3)),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps (train and inference each)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 1:
        sys.exit("--steps and --warmup must be >= 1")

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    b, s = args.batch_size, args.image_size
    x = rng.random((b, s, s, 3), dtype=np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, size=b)]

    model = reference_cnn(s, 2)
    model.compile(optimizer=keras.optimizers.Adam(), loss=categorical_focal_loss())

    for _ in range(args.warmup):
        loss = model.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = model.train_on_batch(x, y)
    train_s = time.perf_counter() - t0

    for _ in range(args.warmup):
        model.predict_on_batch(x)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        model.predict_on_batch(x)
    infer_s = time.perf_counter() - t0

    # ru_maxrss is in KiB on Linux.
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {
        "framework": "tensorflow-keras",
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "batch_size": b,
        "image_size": s,
        "steps": args.steps,
        "warmup": args.warmup,
        "parameters": int(model.count_params()),
        "train_seconds": train_s,
        "train_images_per_second": b * args.steps / train_s,
        "inference_seconds": infer_s,
        "inference_images_per_second": b * args.steps / infer_s,
        "peak_rss_bytes": peak_rss,
        "final_loss": float(np.asarray(loss)),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
