#!/usr/bin/env python3
"""Do the CPU's fast paths (direct 3x3, Winograd, streaming dense) train as well as the
reference path (im2col + GEMM; FOCALFLOW_CPU_PATH=reference)? And does `--precision bf16`
train as well as fp32 (`--compare precision`)? Paired runs: the same seed through both
variants, alternating, on the built-in set (the default run) or on scikit-learn's
digits (64x64, the reference CNN). Results go to a JSON file as each pair finishes, so the
experiment can be stopped and continued (seeds already done are skipped); the summary is
the paired difference fast - reference (mean +- standard error over the seeds, and how many
seeds are lower) of the best validation accuracy, the mean of the last three epochs', and
the last validation loss.

Run from the repository root after `cargo build --release`:
    python3 scripts/cpu_paths_quality.py --set builtin --seeds 1-20 [--results FILE]
    .venv-torch/bin/python scripts/cpu_paths_quality.py --set digits --seeds 1-20
    python3 scripts/cpu_paths_quality.py --compare precision --set builtin --seeds 1-10
(digits needs scikit-learn and pillow, as scripts/loss_comparison.py.)
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

# FOCALFLOW_BIN: a copy of the binary, so that rebuilding during a long experiment changes
# nothing in it.
BIN = os.environ.get("FOCALFLOW_BIN") or os.path.abspath("target/release/focalflow")


def metrics(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def summary(lines):
    acc = [m["val_accuracy"] for m in lines]
    return {"best_acc": max(acc), "last3_acc": statistics.mean(acc[-3:]), "last_val_loss": lines[-1]["val_loss"],
            "val_acc": acc}


# The two variants of each comparison: (name, FOCALFLOW_CPU_PATH, extra train flags); the
# differences reported are first - second.
COMPARISONS = {
    "paths": [("auto", "auto", []), ("reference", "reference", [])],
    "precision": [("bf16", "auto", ["--precision", "bf16"]), ("fp32", "auto", [])],
}


def train(args, variant, out):
    name, path, extra = variant
    env = dict(os.environ, FOCALFLOW_CPU_PATH=path)
    shutil.rmtree(out, ignore_errors=True)
    # A non-finite loss stops `train` with an error: it ends the experiment here too.
    r = subprocess.run([BIN, "train", "--device", "cpu", "--quiet", "--out", out] + extra + args, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{name}: {r.stderr}")
    return summary(metrics(out))


def seeds(text):
    lo, _, hi = text.partition("-")
    return range(int(lo), int(hi or lo) + 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", choices=["builtin", "digits"], default="builtin")
    ap.add_argument("--seeds", default="1-10")
    ap.add_argument("--work", default="/tmp/focalflow-cpu-paths")
    ap.add_argument("--results", default=None)
    ap.add_argument("--compare", choices=sorted(COMPARISONS), default="paths")
    args = ap.parse_args()
    variants = COMPARISONS[args.compare]
    first, second = variants[0][0], variants[1][0]
    suffix = "" if args.compare == "paths" else f"-{args.compare}"
    results_path = args.results or os.path.join(args.work, f"{args.set}{suffix}.json")
    os.makedirs(args.work, exist_ok=True)
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    flags = []
    if args.set == "digits":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from loss_comparison import write_folders  # noqa: E402

        if not os.path.isdir(os.path.join(args.work, "train")):
            write_folders(args.work)
        flags = ["--data", os.path.join(args.work, "train"), "--image-size", "64", "--no-cache"]
    for seed in seeds(args.seeds):
        if str(seed) in results:
            continue
        pair = {}
        for variant in variants:
            out = os.path.join(args.work, "runs", f"{variant[0]}-{args.set}-{seed}")
            pair[variant[0]] = train(flags + ["--seed", str(seed)], variant, out)
        results[str(seed)] = pair
        with open(results_path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"seed {seed}: {first} {pair[first]['best_acc']:.4f} / {second} {pair[second]['best_acc']:.4f}",
              file=sys.stderr)
    print(f"{args.set}: {len(results)} seeds ({first} - {second}, mean +- standard error; seeds lower)")
    for key in ["best_acc", "last3_acc", "last_val_loss"]:
        d = [r[first][key] - r[second][key] for r in results.values()]
        se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
        scale = 100 if key.endswith("acc") else 1
        unit = " points" if scale == 100 else ""
        print(f"  {key}: {statistics.mean(d) * scale:+.3f} +- {se * scale:.3f}{unit}; lower in {sum(x < 0 for x in d)} "
              f"of {len(d)}, equal in {sum(x == 0 for x in d)}")


if __name__ == "__main__":
    main()
