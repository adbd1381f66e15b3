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
python3 scripts/preprocess_anchor_summary.py "$LOG"
