#!/usr/bin/env bash
# The CPU speed goals against TensorFlow, measured the only way that holds on a shared
# machine: alternating rounds in one sitting, each running every contender once, the ratios
# taken within each round (scripts/cpu_rounds_summary.py prints their medians).
#
#   scripts/cpu_rounds.sh                      # ROUNDS=4, this build only
#   BEFORE=/tmp/focalflow-before scripts/cpu_rounds.sh   # also an earlier build's binary
#
# Each round: `focalflow bench --device cpu --steps 5 --json` in fp32 (and BEFORE's), in bf16
# where the CPU has AVX512_BF16; `scripts/keras_bench.py --steps 10` (TensorFlow, fp32); then
# the decode through `train` (`--no-cache`, the loader line's images/s, twice per binary) on
# 1,200 of `benches/preprocess.rs`'s 500x375 JPEGs in two class folders, the preprocess
# bench itself (all threads) and tf.image in tf.data on the same files
# (`scripts/preprocess_anchor.py --tool tf`). TensorFlow comes from .venv-tf (TF_PY=...);
# see scripts/requirements-keras.txt. Writes target/cpu-rounds.log, then the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-4}
TF_PY=${TF_PY:-.venv-tf/bin/python}
IMAGES=1200
PHOTOS=target/preprocess-bench-$IMAGES
CLASSES=target/preprocess-bench-$IMAGES-classes
LOG=target/cpu-rounds.log
if [ ! -x "$TF_PY" ]; then
  echo "no TensorFlow at $TF_PY (python3 -m venv .venv-tf && .venv-tf/bin/pip install -r scripts/requirements-keras.txt)" >&2
  exit 2
fi
cargo build --release -q
cargo bench -q --bench preprocess --no-run
FF=$PWD/target/release/focalflow
PREPROCESS=$(ls -t target/release/deps/preprocess-* | grep -v '\.d$' | head -1)
# The photos (written once by the bench), and the same files as a two-class folder set.
"$PREPROCESS" --images "$IMAGES" --dir "$PHOTOS" --rounds 1 --only resize > /dev/null
if [ ! -d "$CLASSES" ]; then
  mkdir -p "$CLASSES/a" "$CLASSES/b"
  i=0
  for f in "$PHOTOS"/*.jpg; do
    class=$([ $((i % 2)) -eq 0 ] && echo a || echo b)
    ln "$f" "$CLASSES/$class/" 2>/dev/null || cp "$f" "$CLASSES/$class/"
    i=$((i + 1))
  done
fi
BF16=$("$FF" info 2>/dev/null | grep -Eq '^ *cpu .*precisions: fp32, bf16' && echo yes || echo no)
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT
decode() { # binary label
  echo "train_decode_$2 $(cd "$RUNS" && "$1" train --data "$OLDPWD/$CLASSES" --no-cache --epochs 1 \
    --steps-per-epoch 1 --arch c2,p,d2 2>&1 | grep -o '[0-9]* images/s decoded' | cut -d' ' -f1)"
}
: > "$LOG"
for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  {
    echo "== round $r $(date -u +%FT%TZ)"
    if [ -n "${BEFORE:-}" ]; then
      echo "ff_before_fp32 $("$BEFORE" bench --device cpu --steps 5 --json 2>/dev/null | tail -1)"
    fi
    echo "ff_fp32 $("$FF" bench --device cpu --steps 5 --json 2>/dev/null | tail -1)"
    if [ "$BF16" = yes ]; then
      echo "ff_bf16 $("$FF" bench --device cpu --precision bf16 --steps 5 --json 2>/dev/null | tail -1)"
    fi
    echo "keras $("$TF_PY" scripts/keras_bench.py --steps 10 2>/dev/null | tail -1)"
    for _ in 1 2; do
      if [ -n "${BEFORE:-}" ]; then decode "$BEFORE" before; fi
      decode "$FF" this
    done
    echo "bench_pp $("$PREPROCESS" --images "$IMAGES" --dir "$PHOTOS" --rounds 2 --json | tail -1)"
    echo "tf_pp $("$TF_PY" scripts/preprocess_anchor.py --tool tf "$PHOTOS" --rounds 2 2>/dev/null | grep '^{')"
  } >> "$LOG"
done
python3 scripts/cpu_rounds_summary.py "$LOG"
