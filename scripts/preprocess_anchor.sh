#!/usr/bin/env bash
# Speed anchor for the image preprocessor: focalflow, PIL and tf.image decode + resize the
# same generated JPEGs (500x375, quality 90, 4:2:0) to 224x224, side by side in one run,
# with 1 thread and with all threads. Rounds alternate between the tools so that load from
# other processes hits all of them alike; each figure is the best of its rounds.
#
#   scripts/preprocess_anchor.sh            # ROUNDS=3 IMAGES=300 SIZE=224
#
# PIL comes from .venv-bench (created here: pillow + numpy); TensorFlow from .venv-tf if it
# exists (TF_PY=... to point elsewhere; skipped when absent). Where a C compiler and
# libjpeg-turbo's headers are present (Debian: libjpeg62-turbo-dev), it also times
# libjpeg-turbo's decode alone (scripts/jpeg_decode_floor.c): the decoder inside both
# anchors, so the floor under what any pipeline built on it can reach. Writes the JSON
# lines to target/preprocess-anchor.jsonl and prints a table with the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
IMAGES=${IMAGES:-300}
SIZE=${SIZE:-224}
DIR=${DIR:-target/preprocess-bench}
PIL_PY=${PIL_PY:-.venv-bench/bin/python}
TF_PY=${TF_PY:-.venv-tf/bin/python}
LOG=target/preprocess-anchor.jsonl

if [ ! -x "$PIL_PY" ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q pillow numpy
  PIL_PY=.venv-bench/bin/python
fi
cargo bench -q --bench preprocess --no-run
FLOOR=target/jpeg_decode_floor
if ! cc -O2 scripts/jpeg_decode_floor.c -o "$FLOOR" -ljpeg 2>/dev/null; then
  echo "no libjpeg-turbo headers (apt install libjpeg62-turbo-dev): decode floor not measured" >&2
  FLOOR=
fi
: > "$LOG"
for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  cargo bench -q --bench preprocess -- --images "$IMAGES" --size "$SIZE" --dir "$DIR" --rounds 2 --json >> "$LOG"
  "$PIL_PY" scripts/preprocess_anchor.py --tool pil "$DIR" --size "$SIZE" --rounds 2 >> "$LOG"
  if [ -x "$TF_PY" ]; then
    "$TF_PY" scripts/preprocess_anchor.py --tool tf "$DIR" --size "$SIZE" --rounds 2 2>/dev/null | grep '^{' >> "$LOG"
  fi
  if [ -n "$FLOOR" ]; then
    "$FLOOR" "$DIR"/*.jpg >> "$LOG"
  fi
done
python3 - "$LOG" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
floor = min((r["cpu_ms_1"] for r in rows if r["tool"].endswith("decode only")), default=None)
rows = [r for r in rows if not r["tool"].endswith("decode only")]
best = {}
for r in rows:
    b = best.setdefault(r["tool"], {"t1": 0, "ta": 0, "c1": 1e9, "ca": 1e9, "n": 0, "threads": r["threads"]})
    b["t1"] = max(b["t1"], r["threads_1"]); b["ta"] = max(b["ta"], r["threads_all"])
    b["c1"] = min(b["c1"], r["cpu_ms_1"]); b["ca"] = min(b["ca"], r["cpu_ms_all"]); b["n"] += 1
    if "decode_ms" in r:
        b["decode"] = min(b.get("decode", 1e9), r["decode_ms"]); b["decoder"] = r["jpeg_decoder"]
print(f"{'tool':<10} {'1 thread img/s':>15} {'all threads img/s':>18} {'CPU ms/img (1 thr)':>19}  rounds")
for tool, b in best.items():
    print(f"{tool:<10} {b['t1']:>15.1f} {b['ta']:>18.1f} {b['c1']:>19.3f}  {b['n']}")
ff = best.get("focalflow")
anchors = {k: v for k, v in best.items() if k != "focalflow"}
if ff and anchors:
    t1 = max(anchors, key=lambda k: anchors[k]["t1"]); ta = max(anchors, key=lambda k: anchors[k]["ta"])
    c1 = min(anchors, key=lambda k: anchors[k]["c1"])
    print(f"focalflow / fastest anchor: 1 thread {ff['t1'] / anchors[t1]['t1']:.2f}x ({t1}), "
          f"all {ff['threads']} threads {ff['ta'] / anchors[ta]['ta']:.2f}x ({ta}), "
          f"CPU time per image {anchors[c1]['c1'] / ff['c1']:.2f}x ({c1})")
    for k, v in anchors.items():
        print(f"  vs {k}: 1 thread {ff['t1'] / v['t1']:.2f}x, all threads {ff['ta'] / v['ta']:.2f}x, CPU {v['c1'] / ff['c1']:.2f}x")
    need = anchors[c1]["c1"] / 1.5
    print(f"1.5x the fastest anchor's CPU time is {need:.3f} ms per image in all; focalflow's "
          f"decode alone ({ff['decoder']}) takes {ff['decode']:.3f}")
if floor is not None:
    print(f"libjpeg-turbo's decode alone (the anchors' decoder, C, no resize): {floor:.3f} ms per image")
PY
