"""Summarises target/preprocess-anchor.jsonl (written by scripts/preprocess_anchor.sh): each
tool's best figures over the rounds, and the ratios focalflow / fastest anchor two ways:
from the bests, and as the median over rounds of the ratio within each round (the tools of
one round ran within seconds of each other, so load from other processes tends to hit them
alike; the median of those pairs is the steadier figure on a shared machine).

    python3 scripts/preprocess_anchor_summary.py target/preprocess-anchor.jsonl
"""

import json
import statistics
import sys

FIGURES = [("t1", "threads_1", max), ("ta", "threads_all", max), ("c1", "cpu_ms_1", min)]
LABELS = {"t1": "1 thread", "ta": "all threads", "c1": "CPU time per image"}


def ratio(key, ff, anchor):
    """How many times better focalflow is: throughput up, CPU time down."""
    return ff[key] / anchor[key] if key != "c1" else anchor[key] / ff[key]


def fastest(key, anchors):
    pick = max if key != "c1" else min
    return pick(anchors.items(), key=lambda kv: kv[1][key])


def main(path):
    rounds, floors = [], []
    for line in open(path):
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        if row["tool"].endswith("decode only"):
            floors.append(row["cpu_ms_1"])
            continue
        if row["tool"] == "focalflow":
            rounds.append({})
        rounds[-1][row["tool"]] = {k: row[field] for k, field, _ in FIGURES} | {"raw": row}

    best = {}
    for rnd in rounds:
        for tool, fig in rnd.items():
            b = best.setdefault(tool, {"n": 0, "raw": fig["raw"]})
            b["n"] += 1
            for k, _, pick in FIGURES:
                b[k] = pick(b.get(k, fig[k]), fig[k])
    print(f"{'tool':<10} {'1 thread img/s':>15} {'all threads img/s':>18} {'CPU ms/img (1 thr)':>19}  rounds")
    for tool, b in best.items():
        print(f"{tool:<10} {b['t1']:>15.1f} {b['ta']:>18.1f} {b['c1']:>19.3f}  {b['n']}")

    ff = best.get("focalflow")
    anchors = {k: v for k, v in best.items() if k != "focalflow"}
    if not ff or not anchors:
        return
    parts = []
    for key in ("t1", "ta", "c1"):
        name, anchor = fastest(key, anchors)
        paired = [
            ratio(key, rnd["focalflow"], fastest(key, {k: v for k, v in rnd.items() if k != "focalflow"})[1])
            for rnd in rounds
            if len(rnd) > 1
        ]
        parts.append(f"{LABELS[key]} {ratio(key, ff, anchor):.2f}x best-of ({name}), "
                     f"{statistics.median(paired):.2f}x median of {len(paired)} rounds")
    print("focalflow / fastest anchor:\n  " + "\n  ".join(parts))
    for name, a in anchors.items():
        print(f"  vs {name} (bests): 1 thread {ratio('t1', ff, a):.2f}x, all threads "
              f"{ratio('ta', ff, a):.2f}x, CPU {ratio('c1', ff, a):.2f}x")
    raw = ff["raw"]
    print(f"focalflow's decode alone ({raw['jpeg_decoder']}): {min(r['focalflow']['raw']['decode_ms'] for r in rounds):.3f} ms, "
          f"resize alone: {min(r['focalflow']['raw']['resize_ms'] for r in rounds):.3f} ms per image")
    if floors:
        print(f"libjpeg-turbo's decode alone (the anchors' decoder, C, no resize): {min(floors):.3f} ms per image")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/preprocess-anchor.jsonl")
