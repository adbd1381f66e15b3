"""Summarises target/cpu-rounds.log (written by scripts/cpu_rounds.sh): per round, each
contender's figures and its ratio to TensorFlow in the same round; then the medians of those
per-round ratios, the figures the CPU speed goals are stated in.

    python3 scripts/cpu_rounds_summary.py target/cpu-rounds.log
"""

import json
import statistics
import sys


def parse(path):
    """The rounds: {key: [values]} each, a value a JSON object or a number."""
    rounds = []
    for line in open(path):
        line = line.strip()
        if line.startswith("=="):
            rounds.append({})
            continue
        if not line or not rounds:
            continue
        key, _, value = line.partition(" ")
        value = value.strip()
        if not value:
            raise SystemExit(f"{path}: '{key}' has no figure (the run failed): {line!r}")
        rounds[-1].setdefault(key, []).append(
            json.loads(value) if value.startswith("{") else float(value)
        )
    if not rounds:
        raise SystemExit(f"{path}: no rounds")
    return rounds


def main(path):
    ratios = {}

    def add(name, value):
        ratios.setdefault(name, []).append(value)

    for n, r in enumerate(parse(path), 1):
        keras = r["keras"][0]
        kt, ki = keras["train_images_per_second"], keras["inference_images_per_second"]
        parts = [f"TensorFlow {kt:.1f} / {ki:.0f}"]
        for key in ("ff_before_fp32", "ff_fp32", "ff_bf16"):
            if key in r:
                t = r[key][0]["train_images_per_second"]
                i = r[key][0]["inference_images_per_second"]
                parts.append(f"{key} {t:.1f} / {i:.0f}")
                add(f"{key} train / TensorFlow", t / kt)
                add(f"{key} inference / TensorFlow", i / ki)
        if "ff_bf16" in r:
            add("bf16 / fp32 train", r["ff_bf16"][0]["train_images_per_second"]
                / r["ff_fp32"][0]["train_images_per_second"])
        tf_decode = r["tf_pp"][0]["threads_all"]
        bench = r["bench_pp"][0]["threads_all"]
        parts.append(f"tf.data {tf_decode:.0f}, preprocess bench {bench:.0f}")
        add("preprocess bench / tf.data", bench / tf_decode)
        for label in ("before", "this"):
            for v in r.get(f"train_decode_{label}", []):
                parts.append(f"train ({label}) {v:.0f}")
                add(f"train decode ({label}) / tf.data", v / tf_decode)
                add(f"train decode ({label}) / preprocess bench", v / bench)
        print(f"round {n}: " + ", ".join(parts))
    print("medians of the per-round ratios (images/s):")
    for name, values in ratios.items():
        listed = ", ".join(f"{v:.3f}" for v in values)
        print(f"  {name:45s} {statistics.median(values):.3f}  ({listed})")


if __name__ == "__main__":
    main(sys.argv[1])
