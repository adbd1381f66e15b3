#!/usr/bin/env python3
"""Writes tests/data/keras_losses.json: loss values and gradients computed by TensorFlow/Keras
in float32, which tests/keras_losses.rs checks `focalflow::loss` against.

Set-up (once):
    python3 -m venv .venv-tf && .venv-tf/bin/pip install -r scripts/requirements-keras.txt
Run from the repository root:
    .venv-tf/bin/python scripts/keras_loss_fixtures.py [--out tests/data/keras_losses.json]

The losses are computed exactly as a Keras user would:
- focal: the practitioner's original loss, written with the Keras backend (K.clip, K.mean,
  K.sum, ...), L1/L2 on the clipped probabilities and summed over the whole batch;
- keras-focal: keras.losses.CategoricalFocalCrossentropy;
- ce: keras.losses.CategoricalCrossentropy;
- calibrated-mse: K.mean(K.square(y - p)) + facture * K.mean(K.square(0.5 - p)).
Gradients are taken with tf.GradientTape w.r.t. the prediction tensor (the logits with
from_logits). Every number is a float32 value widened to a double, printed round-trip.
"""

import argparse
import json
import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
from tensorflow.keras import backend as K  # noqa: E402

F32 = np.float32
ABOVE_HI = F32(0.99999994)  # 1 - 2^-24: above the f32 upper clip bound 0.99999988
HI = F32(1.0 - 1e-7)  # 0.99999988, exactly at the upper bound
LO = F32(1e-7)  # exactly at the lower bound
BELOW_LO = F32(2.0**-24)  # 5.96e-8, below the lower bound


def categorical_focal_loss(alpha=0.25, gamma=2.0, l1=0.0, l2=0.0, dtype="float32"):
    """The practitioner's focal loss, as written for Keras."""
    alpha = np.array(alpha, dtype=dtype)

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


def calibrated_mse(facture=0.1, from_logits=False):
    def loss(y_true, y_pred):
        if from_logits:
            y_pred = tf.nn.softmax(y_pred, axis=-1)
        return K.mean(K.square(y_true - y_pred)) + facture * K.mean(K.square(0.5 - y_pred))

    return loss


def one_hot(rng, batch, classes):
    y = np.zeros((batch, classes), F32)
    y[np.arange(batch), rng.randint(0, classes, size=batch)] = 1
    return y


def probabilities(rng, batch, classes, specials):
    """Random probability rows; with `specials` (and batch >= 3), the first three rows hold
    values exactly at and beyond the f32 clip bounds (row sums are exact in f32)."""
    p = rng.dirichlet(np.ones(classes), size=batch).astype(F32)
    # Keep random entries away from the clip edges (the specials test those).
    p = np.clip(p, F32(1e-3), F32(0.999)).astype(F32)
    p = (p / p.sum(axis=1, keepdims=True)).astype(F32)
    if specials and batch >= 3:
        rows = [
            [F32(1.0)] + [F32(0.0)] * (classes - 1),  # beyond both bounds
            [ABOVE_HI, BELOW_LO] + [F32(0.0)] * (classes - 2),  # beyond both bounds
            [LO, HI] + [F32(0.0)] * (classes - 2),  # exactly at both bounds
        ]
        for i, row in enumerate(rows[:batch]):
            p[i] = np.array(row, F32)
    return p


def logits(rng, batch, classes, saturated):
    z = (rng.randn(batch, classes) * 2.0).astype(F32)
    if saturated and batch >= 3:
        z[0] = -25.0
        z[0, 0] = 25.0  # confident; label decides right or wrong
        z[1] = -40.0
        z[1, 1] = 40.0
    return z


def evaluate(loss_fn, y_true, y_pred):
    y = tf.constant(y_true, tf.float32)
    x = tf.constant(y_pred, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss_fn(y, x)
    grad = tape.gradient(value, x)
    assert value.dtype == tf.float32 and grad.dtype == tf.float32
    return float(np.float32(value.numpy())), np.asarray(grad.numpy(), F32)


def evaluate_f64(loss_fn, y_true, y_pred):
    """The same loss on the same (f32-exact) inputs in float64: a reference for how far
    TensorFlow's own float32 result is from the exact value. (The clip bounds differ in f64:
    1e-7 and 0.9999999 instead of 1.00000001e-7 and 0.99999988, which moves the loss by
    less than 1e-12 here.)"""
    value = loss_fn(tf.constant(y_true, tf.float64), tf.constant(y_pred, tf.float64))
    assert value.dtype == tf.float64
    return float(value.numpy())


def flat(a):
    return [float(v) for v in np.asarray(a, F32).ravel()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/data/keras_losses.json")
    ap.add_argument("--seed", type=int, default=20240607)
    args = ap.parse_args()
    rng = np.random.RandomState(args.seed)
    cases = []

    def add(name, loss, params, cli, y_true, y_pred, make):
        """`make(dtype)` builds the loss function for float32 or float64."""
        value, grad = evaluate(make("float32"), y_true, y_pred)
        value_f64 = evaluate_f64(make("float64"), y_true, y_pred)
        batch, classes = y_pred.shape
        cases.append(
            {
                "name": name,
                "loss": loss,
                "params": params,
                "args": ["--loss", loss] + cli,
                "batch": batch,
                "classes": classes,
                "y_true": flat(y_true),
                "y_pred": flat(y_pred),
                "loss_value": value,
                "loss_value_f64": value_f64,
                "grad": flat(grad),
            }
        )

    shapes = [(1, 2), (4, 2), (7, 2), (1, 5), (4, 5), (7, 5)]

    # --- the practitioner's focal loss (probabilities) ---
    focal_variants = [
        ("default", dict(alpha=0.25, gamma=2.0, l1=0.0, l2=0.0), []),
        ("l1-l2", dict(alpha=0.25, gamma=2.0, l1=1e-3, l2=2e-3), ["--l1", "0.001", "--l2", "0.002"]),
        ("gamma0.5", dict(alpha=0.5, gamma=0.5, l1=0.0, l2=0.0), ["--alpha", "0.5", "--gamma", "0.5"]),
    ]
    for b, c in shapes:
        for tag, kw, cli in focal_variants:
            y = one_hot(rng, b, c)
            p = probabilities(rng, b, c, specials=True)
            add(f"focal-{tag}-b{b}c{c}", "focal", {**kw, "from_logits": False}, cli, y, p,
                lambda dt, kw=kw: categorical_focal_loss(**kw, dtype=dt))
        alpha = [round(float(a), 2) for a in rng.uniform(0.1, 0.9, size=c)]
        kw = dict(alpha=alpha, gamma=2.0, l1=5e-4, l2=1e-3)
        y = one_hot(rng, b, c)
        p = probabilities(rng, b, c, specials=True)
        add(f"focal-alpha-vector-b{b}c{c}", "focal", {**kw, "from_logits": False},
            ["--alpha", ",".join(str(a) for a in alpha), "--l1", "0.0005", "--l2", "0.001"], y, p,
            lambda dt, kw=kw: categorical_focal_loss(**kw, dtype=dt))

    # --- keras.losses.CategoricalFocalCrossentropy ---
    for b, c in shapes:
        for tag, kw, cli in [
            ("default", dict(alpha=0.25, gamma=2.0, label_smoothing=0.0), []),
            ("smooth", dict(alpha=0.4, gamma=1.5, label_smoothing=0.1),
             ["--alpha", "0.4", "--gamma", "1.5", "--label-smoothing", "0.1"]),
        ]:
            for from_logits in (False, True):
                y = one_hot(rng, b, c)
                x = logits(rng, b, c, True) if from_logits else probabilities(rng, b, c, True)
                fn = lambda dt, kw=kw, fl=from_logits: keras.losses.CategoricalFocalCrossentropy(
                    from_logits=fl, dtype=dt, **kw)
                name = f"keras-focal-{tag}{'-logits' if from_logits else ''}-b{b}c{c}"
                add(name, "keras-focal", {**kw, "from_logits": from_logits},
                    cli + (["--from-logits"] if from_logits else []), y, x, fn)
    # Per-class alpha (our extension; Keras broadcasts a list over the class axis).
    y = one_hot(rng, 4, 5)
    x = probabilities(rng, 4, 5, True)
    alpha = [0.1, 0.2, 0.3, 0.4, 0.5]
    fn = lambda dt: keras.losses.CategoricalFocalCrossentropy(alpha=alpha, gamma=2.0, dtype=dt)
    add("keras-focal-alpha-vector-b4c5", "keras-focal",
        {"alpha": alpha, "gamma": 2.0, "label_smoothing": 0.0, "from_logits": False},
        ["--alpha", "0.1,0.2,0.3,0.4,0.5"], y, x, fn)

    # --- keras.losses.CategoricalCrossentropy ---
    for b, c in shapes:
        for ls in (0.0, 0.2):
            for from_logits in (False, True):
                y = one_hot(rng, b, c)
                x = logits(rng, b, c, True) if from_logits else probabilities(rng, b, c, True)
                fn = lambda dt, ls=ls, fl=from_logits: keras.losses.CategoricalCrossentropy(
                    from_logits=fl, label_smoothing=ls, dtype=dt)
                cli = (["--label-smoothing", str(ls)] if ls else []) + (["--from-logits"] if from_logits else [])
                name = f"ce{'-smooth' if ls else ''}{'-logits' if from_logits else ''}-b{b}c{c}"
                add(name, "ce", {"label_smoothing": ls, "from_logits": from_logits}, cli, y, x, fn)

    # --- calibrated MSE ---
    for b, c in shapes:
        for facture, from_logits in ((0.1, False), (0.7, True)):
            y = one_hot(rng, b, c)
            x = logits(rng, b, c, True) if from_logits else probabilities(rng, b, c, True)
            cli = ([] if facture == 0.1 else ["--facture", str(facture)]) + (["--from-logits"] if from_logits else [])
            add(f"calibrated-mse-f{facture}{'-logits' if from_logits else ''}-b{b}c{c}", "calibrated-mse",
                {"facture": facture, "from_logits": from_logits}, cli, y, x,
                lambda dt, f=facture, fl=from_logits: calibrated_mse(f, fl))

    out = {
        "meta": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "generator": "scripts/keras_loss_fixtures.py",
            "seed": args.seed,
            "float_format": "inputs, loss_value and grad are float32 values widened to double; "
            "arrays are row-major [batch, classes]; grad is d loss / d y_pred (d loss / d logits with from_logits); "
            "loss_value_f64 is the same Keras code run in float64 on the same inputs",
        },
        "cases": cases,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.out} ({os.path.getsize(args.out)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
