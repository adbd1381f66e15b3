#!/usr/bin/env python3
"""What the calibration losses do, measured: scikit-learn's digits (1,797 8x8 images, 10
classes) as class-per-folder PNGs, two classes cut to 10 % in training, each loss trained
with several seeds; `eval` on a held-out balanced test half, `calibrate` on the other
half. Prints a Markdown table (mean +- standard error over the seeds) and writes one
reliability diagram per loss (the first seed's, on the test set) to docs/.

Set-up (once): python3 -m venv .venv-torch && .venv-torch/bin/pip install scikit-learn pillow
Run from the repository root after `cargo build --release`:
    .venv-torch/bin/python scripts/loss_comparison.py [--seeds 10] [--epochs 30] [--work /tmp/cmp]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

BIN = os.path.abspath("target/release/focalflow")
LOSSES = ["ce", "focal", "flsd-53", "adafocal", "dual-focal"]
CUT = ["3", "8"]  # the minority classes: 10 % of their training images are kept


def write_folders(work, seed=0):
    """train/ (60 %), calib/ (20 %), test/ (20 %), stratified, as 8x8 grey PNGs."""
    digits = load_digits()
    rng = np.random.default_rng(seed)
    for part in ["train", "calib", "test"]:
        shutil.rmtree(os.path.join(work, part), ignore_errors=True)
    for c in range(10):
        idx = np.flatnonzero(digits.target == c)
        rng.shuffle(idx)
        n = len(idx)
        parts = {"train": idx[: int(0.6 * n)], "calib": idx[int(0.6 * n) : int(0.8 * n)], "test": idx[int(0.8 * n) :]}
        for part, ids in parts.items():
            folder = os.path.join(work, part, str(c))
            os.makedirs(folder, exist_ok=True)
            for i in ids:
                grey = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
                Image.fromarray(grey).convert("RGB").save(os.path.join(folder, f"{i:04d}.png"))


def run(args, cwd=None):
    out = subprocess.run([BIN] + args, capture_output=True, text=True, cwd=cwd)
    if out.returncode != 0:
        sys.exit(f"focalflow {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--work", default="/tmp/focalflow-loss-comparison")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    write_folders(args.work)
    common = ["--image-size", "16", "--arch", "c16k3s,p,c32k3s,p,d64", "--epochs", str(args.epochs),
              "--batch-size", "32", "--lr", "0.002", "--val-fraction", "0.2", "--quiet", "--no-cache"]
    for c in CUT:
        common += ["--class-fraction", f"{c}=0.1"]
    rows = {}
    for loss in LOSSES:
        for seed in range(1, args.seeds + 1):
            out = os.path.join(args.work, "runs", f"{loss}-s{seed}")
            shutil.rmtree(out, ignore_errors=True)
            run(["train", "--data", os.path.join(args.work, "train"), "--loss", loss, "--seed", str(seed),
                 "--out", out] + common)
            ck = os.path.join(out, "checkpoints", "last.safetensors")
            raw = json.loads(run(["eval", "--checkpoint", ck, "--data", os.path.join(args.work, "test"),
                                  "--json", "--quiet", "--no-cache", "--out", os.path.join(out, "eval-test")]))
            cal = json.loads(run(["calibrate", "--checkpoint", ck, "--data", os.path.join(args.work, "calib"),
                                  "--json", "--quiet", "--no-cache", "--out", os.path.join(out, "calibrated.safetensors")]))
            after = json.loads(run(["eval", "--checkpoint", os.path.join(out, "calibrated.safetensors"),
                                    "--data", os.path.join(args.work, "test"), "--json", "--quiet", "--no-cache",
                                    "--out", os.path.join(out, "eval-test-calibrated")]))
            m, mc = raw["metrics"], after["metrics"]
            recalls = [c["recall"] for c in m["per_class"] if c["recall"] is not None]
            minority = [c["recall"] for c in m["per_class"] if c["class"] in CUT]
            rows.setdefault(loss, []).append({
                "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "worst_recall": min(recalls),
                "minority_recall": statistics.mean(minority), "nll": m["nll"], "ece": m["ece"],
                "adaptive_ece": m["adaptive_ece"], "classwise_ece": m["classwise_ece"],
                "ece_after_t": mc["ece"], "nll_after_t": mc["nll"], "temperature": cal.get("temperature"),
            })
            if seed == 1:
                png = os.path.join(out, "eval-test", "reliability.png")
                if os.path.exists(png):
                    shutil.copy(png, os.path.join("docs", f"reliability-digits-{loss}.png"))
            print(f"{loss} seed {seed}: {rows[loss][-1]}", file=sys.stderr)
    cols = [("accuracy", "acc"), ("macro_f1", "macro-F1"), ("worst_recall", "worst recall"),
            ("minority_recall", "recall 3,8"), ("nll", "NLL"), ("ece", "ECE"), ("adaptive_ece", "AdaECE"),
            ("classwise_ece", "cw-ECE"), ("temperature", "T"), ("ece_after_t", "ECE after T"),
            ("nll_after_t", "NLL after T")]
    print("| loss | " + " | ".join(h for _, h in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for loss in LOSSES:
        cells = []
        for key, _ in cols:
            v = [r[key] for r in rows[loss]]
            se = statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.3f} ± {se:.3f}")
        print(f"| `{loss}` | " + " | ".join(cells) + " |")
    with open(os.path.join(args.work, "comparison.json"), "w") as f:
        json.dump(rows, f, indent=1)
    # The runs of the first seed side by side, as a user compares them (validation split).
    first = [f"runs/{loss}-s1" for loss in LOSSES]
    print("\n```\n$ focalflow compare " + " ".join(first))
    print(run(["compare"] + first, cwd=args.work).rstrip() + "\n```")


if __name__ == "__main__":
    main()
