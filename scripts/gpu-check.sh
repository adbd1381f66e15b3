#!/usr/bin/env bash
# The GPU check, for a lent GPU machine (H200) that has NO Rust toolchain and no internet,
# but nvcc 13.0, driver 580, python3 with PyTorch (+cuDNN) and ncu (nsys is absent). Two
# halves:
#
#   scripts/gpu-check.sh bundle
#       HERE (the build machine): installs the pinned nvcc, builds focalflow and the GPU
#       test executables in release mode (kernels compiled to PTX and checked by ptxas for
#       sm_90), strips them and packs them into .gpu-bundle/payload.tar.gz (git-ignored, < 60 MB),
#       with a manifest.
#       Uses its own target folder (target/gpu-bundle, or $GPU_BUNDLE_TARGET_DIR) so that
#       other builds in this checkout neither disturb it nor are disturbed.
#
#   scripts/gpu-check.sh run [--dry-run]
#       THERE, from the repository root, with .gpu-bundle carried: with
#       FOCALFLOW_REQUIRE_GPU=1 the GPU tests (kernels against the CPU, full training steps,
#       train --device cuda vs cpu), `focalflow info`, `focalflow bench` on cpu and cuda
#       (reference CNN, 224x224, batch 32 and 256, images/s for training and inference,
#       and end to end: whole epochs of `train` on generated images, the data path
#       included; --profile once), the default 10-epoch `train --device cuda` run, the
#       PyTorch fp32 cuDNN reference and its uint8-on-the-GPU training loop
#       (scripts/torch_bench.py), per-op
#       kernel timings (tiled vs naive), a compute-sanitizer memcheck of the kernel tests and
#       a short ncu pass when those tools exist. Leaves two files in $OUT (default
#       ./gpu-check-out): summary.md and gpu-check-logs.tar.gz with every log (a remote
#       machine returns only a few files; run folders with their checkpoints stay out). Each step has a time limit; the whole run stays under
#       $GPU_CHECK_BUDGET_S seconds (default 450); a step that fails is recorded and the
#       run goes on. Exit status: 0 when every required step passed.
#       --dry-run: the same plumbing on a machine without a GPU: cuda-emu instead of cuda,
#       tiny sizes, emulator test filters, no GPU required (to catch script errors here).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bundle_dir="$root/.gpu-bundle"
# The test executables the GPU check runs (tests/<name>.rs).
gpu_tests=(ops cuda_loss gpu_executor device_data device_cli torch_losses)

die() {
    echo "gpu-check: $*" >&2
    exit 1
}

# ---- bundle (here) ---------------------------------------------------------------------------

bundle() {
    set -e
    command -v cargo >/dev/null || die "cargo not found: the bundle half runs on the build machine"
    export "$(scripts/install-cuda-toolchain.sh | tail -1)"
    local target="${GPU_BUNDLE_TARGET_DIR:-$root/target/gpu-bundle}"
    export CARGO_TARGET_DIR="$target"
    echo "gpu-check bundle: building with $NVCC into $target" >&2
    # Machine code for the H200 only (plus PTX): five binaries with every architecture's
    # would not fit the bundle.
    export FOCALFLOW_CUDA_ARCHS="${FOCALFLOW_CUDA_ARCHS:-90}"
    cargo build --release --bin focalflow
    local test_args=()
    for t in "${gpu_tests[@]}"; do test_args+=(--test "$t"); done
    cargo test --release --no-run "${test_args[@]}" --message-format=json >"$target/gpu-bundle-tests.jsonl"

    rm -rf "$bundle_dir"
    mkdir -p "$bundle_dir/bin" "$bundle_dir/tests"
    strip -o "$bundle_dir/bin/focalflow" "$target/release/focalflow"
    python3 - "$target/gpu-bundle-tests.jsonl" "${gpu_tests[@]}" >"$target/gpu-bundle-tests.txt" <<'EOF'
import json, sys
want = set(sys.argv[2:])
found = {}
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in want \
            and "test" in m["target"]["kind"]:
        found[m["target"]["name"]] = m["executable"]
missing = want - set(found)
if missing:
    sys.exit("gpu-check bundle: no test executable for " + ", ".join(sorted(missing)))
for name, exe in sorted(found.items()):
    print(name, exe)
EOF
    while read -r name exe; do
        strip -o "$bundle_dir/tests/$name" "$exe"
    done <"$target/gpu-bundle-tests.txt"
    # The same binary built by the newest 13.x nvcc, found through CUDA_PATH as a stock
    # install is: its machine code must load on the GPU machine's older driver.
    local latest
    latest="$(scripts/install-cuda-toolchain.sh --latest | tail -1)"
    latest="${latest#NVCC=}"
    (unset NVCC && CUDA_PATH="$(dirname "$(dirname "$latest")")" cargo build --release --bin focalflow)
    strip -o "$bundle_dir/bin/focalflow-nvcc-latest" "$target/release/focalflow"
    # Shared libraries the GPU machine may lack (libjpeg.so.62 is Debian's name; Ubuntu
    # 24.04 ships libjpeg.so.8): carried beside the binaries, found through LD_LIBRARY_PATH.
    mkdir -p "$bundle_dir/lib"
    ldd "$bundle_dir/bin/focalflow" | awk '/libjpeg/ { print $3 }' | while read -r lib; do
        cp -L "$lib" "$bundle_dir/lib/"
    done

    # The binary must carry PTX, or the run half can only report that.
    local info
    info="$("$bundle_dir/bin/focalflow" info 2>&1)" || true
    if ! grep -q "PTX" <<<"$info" || grep -q "not compiled" <<<"$info"; then
        echo "$info" >&2
        die "the bundled focalflow has no compiled kernels"
    fi
    {
        echo "focalflow GPU bundle"
        echo "built:   $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
        echo "commit:  $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src kernels tests 2>/dev/null || echo ' (+ uncommitted changes)')"
        echo "nvcc:    $("$NVCC" --version | tail -1)"
        echo "glibc needed:     $(objdump -T "$bundle_dir"/bin/* "$bundle_dir"/tests/* 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
        echo "libstdc++ needed: $(objdump -T "$bundle_dir"/bin/* "$bundle_dir"/tests/* 2>/dev/null | grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -1)"
        echo
        echo "$info"
        echo
        (cd "$bundle_dir" && du -ab bin tests lib | sort -k2)
    } >"$bundle_dir/MANIFEST.txt"
    # Packed: the binaries embed every kernel three times (FMA, TF32, BF16) and the
    # emulator, ~95 MB raw, ~35 MB gzipped; `run` unpacks it.
    tar -czf "$bundle_dir/payload.tar.gz" -C "$bundle_dir" bin tests lib
    rm -rf "$bundle_dir/bin" "$bundle_dir/tests" "$bundle_dir/lib"
    local bytes
    bytes=$(du -sb "$bundle_dir" | cut -f1)
    cat "$bundle_dir/MANIFEST.txt" >&2
    [ "$bytes" -lt $((60 * 1024 * 1024)) ] || die "bundle is $bytes bytes: too large to carry"
    echo "gpu-check bundle: $bundle_dir ($((bytes / 1024 / 1024)) MiB). On the GPU machine run:" >&2
    echo "    scripts/gpu-check.sh run        (with .gpu-bundle carried)" >&2
}

# ---- run (there) -------------------------------------------------------------------------------

run() {
    local dry=0
    [ "${1:-}" = "--dry-run" ] && dry=1
    if [ ! -x "$bundle_dir/bin/focalflow" ] && [ -f "$bundle_dir/payload.tar.gz" ]; then
        tar -xzf "$bundle_dir/payload.tar.gz" -C "$bundle_dir" || die "cannot unpack $bundle_dir/payload.tar.gz"
    fi
    [ -x "$bundle_dir/bin/focalflow" ] ||
        die "no $bundle_dir/bin/focalflow: run 'scripts/gpu-check.sh bundle' on the build machine and carry .gpu-bundle"
    OUT="${OUT:-$root/gpu-check-out}"
    mkdir -p "$OUT"
    local start deadline
    start=$(date +%s)
    deadline=$((start + ${GPU_CHECK_BUDGET_S:-450}))
    local ff="$bundle_dir/bin/focalflow" tests="$bundle_dir/tests"
    export LD_LIBRARY_PATH="$bundle_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # Run folders (checkpoints of the reference CNN are ~133 MB) stay out of $OUT.
    local runs="${TMPDIR:-/tmp}/focalflow-gpu-check-runs"
    rm -rf "$runs"
    export FOCALFLOW_BIN="$ff" # the CLI tests run this binary
    # The driver compiles the PTX for the GPU when a module is first loaded; keep what it
    # compiles for the next process (every step starts one) in a cache that surely works.
    export CUDA_CACHE_PATH="${CUDA_CACHE_PATH:-${TMPDIR:-/tmp}/focalflow-cuda-jit-cache}"
    export CUDA_CACHE_MAXSIZE="${CUDA_CACHE_MAXSIZE:-1073741824}"
    local steps_file="$OUT/steps.tsv"
    : >"$steps_file"

    log() { echo "[$(($(date +%s) - start))s] $*" | tee -a "$OUT/gpu-check.log" >&2; }
    # step NAME REQUIRED(1|0) LIMIT_S CMD...: runs CMD with its output in $OUT/NAME.log.
    step() {
        local name=$1 required=$2 limit=$3
        shift 3
        local left=$((deadline - $(date +%s)))
        if [ "$left" -lt 15 ]; then
            log "SKIP $name (time budget spent)"
            printf '%s\t%s\tskipped (time)\t0\n' "$name" "$required" >>"$steps_file"
            return 0
        fi
        [ "$limit" -gt "$left" ] && limit=$left
        log "RUN  $name (limit ${limit}s): $*"
        local t0 rc
        t0=$(date +%s)
        timeout -k 5 "$limit" "$@" >"$OUT/$name.log" 2>&1
        rc=$?
        local dt=$(($(date +%s) - t0)) status=ok
        [ $rc -eq 0 ] || status="FAILED (exit $rc$([ $rc -eq 124 ] && echo ', timed out'))"
        log "     $name: $status in ${dt}s"
        printf '%s\t%s\t%s\t%s\n' "$name" "$required" "$status" "$dt" >>"$steps_file"
        return 0
    }
    # The same with stdout alone into $OUT/NAME.json (stderr into NAME.log).
    step_json() {
        local name=$1 required=$2 limit=$3
        shift 3
        step "$name" "$required" "$limit" bash -c '"$@" >"$0"' "$OUT/$name.json" "$@"
    }

    local dev=cuda img=224 b1=32 b2=256 steps=30 cpu_steps=3 torch_dev=cuda e2e1=2048 e2e2=8192
    local ops_filter=(on_gpu gpu_every_tile names_say) loss_filter=(gpu::)
    if [ $dry -eq 1 ]; then
        log "DRY RUN: cuda-emu instead of cuda, tiny sizes, no GPU required"
        dev=cuda-emu img=24 b1=4 b2=8 steps=1 cpu_steps=1 torch_dev=cpu e2e1=16 e2e2=32
        ops_filter=(emu_forward::relu_backward emu_forward::maxpool_forward names_say)
        loss_filter=(forward::softmax)
    else
        export FOCALFLOW_REQUIRE_GPU=1
    fi
    local arch_args=()
    [ $dry -eq 1 ] && arch_args=(--arch c2,p,c3,p,d4)

    # NVTX ranges (focalflow's phases) for ncu, through PyTorch's NVTX library if present.
    if [ -z "${FOCALFLOW_NVTX_LIB:-}" ]; then
        FOCALFLOW_NVTX_LIB="$(python3 -c 'import glob, importlib.util, os
s = importlib.util.find_spec("nvidia")
dirs = list(s.submodule_search_locations) if s else []
libs = [p for d in dirs for p in glob.glob(os.path.join(d, "*", "lib", "libnvtx3interop.so.1")) + glob.glob(os.path.join(d, "*", "lib", "libnvToolsExt.so.1"))]
print(libs[0] if libs else "")' 2>/dev/null)"
        [ -n "$FOCALFLOW_NVTX_LIB" ] && export FOCALFLOW_NVTX_LIB && log "NVTX library: $FOCALFLOW_NVTX_LIB"
    fi

    # 1. The machine, and whether the bundled binaries load here.
    step env 0 20 bash -c 'uname -a; cat /etc/os-release 2>/dev/null | head -2; ldd --version | head -1;
        nvidia-smi 2>&1 | head -20; for f in "$0"/bin/* "$0"/tests/*; do ldd "$f" | grep -i "not found" && echo "MISSING LIBRARIES: $f"; done;
        cat "$0/MANIFEST.txt"' "$bundle_dir"
    # First starts with an empty driver cache: machine code (no JIT), the newest toolkit's
    # build, and the PTX forced through the JIT (what every start cost before SASS was embedded).
    step info_first_start 1 60 env CUDA_CACHE_PATH="$OUT/.jit-empty-1" "$ff" info
    step info_nvcc_latest 1 60 env CUDA_CACHE_PATH="$OUT/.jit-empty-2" "$bundle_dir/bin/focalflow-nvcc-latest" info
    step info_forced_jit 0 90 env CUDA_CACHE_PATH="$OUT/.jit-empty-3" CUDA_FORCE_PTX_JIT=1 "$ff" info
    rm -rf "$OUT"/.jit-empty-*
    step info 1 30 "$ff" info
    # The first module load JIT-compiles the PTX for this GPU (its time shows here); later
    # processes find it in CUDA_CACHE_PATH.
    step jit_warmup 1 120 "$ff" bench --device $dev --image-size 16 --arch c2,p,d3 --batch-size 1 --steps 1

    # 2. Correctness on the device.
    step test_ops 1 150 "$tests/ops" "${ops_filter[@]}" --test-threads=4
    step test_device_cli 1 90 "$tests/device_cli"
    step test_cuda_loss 1 90 "$tests/cuda_loss" "${loss_filter[@]}"
    step test_torch_losses 1 60 "$tests/torch_losses" gpu_matches_pytorch
    if [ $dry -eq 0 ]; then
        step test_gpu_executor 1 60 "$tests/gpu_executor"
        step misaligned_float4 0 30 "$tests/gpu_executor" planted_misaligned_float4 --ignored --exact
        step test_device_data 1 90 "$tests/device_data"
    fi

    # 3. Speed: focalflow on cpu and cuda, the PyTorch reference.
    step_json bench_cpu_b$b1 1 90 "$ff" bench --device cpu --image-size $img --batch-size $b1 --steps $cpu_steps --json "${arch_args[@]}"
    step_json bench_${dev}_b$b1 1 90 "$ff" bench --device $dev --image-size $img --batch-size $b1 --steps $steps --end-to-end $e2e1 --json "${arch_args[@]}"
    step_json bench_${dev}_b$b2 1 120 "$ff" bench --device $dev --image-size $img --batch-size $b2 --steps $((steps * 2 / 3 + 1)) --end-to-end $e2e2 --json "${arch_args[@]}"
    # The tensor-core kernels (--precision tf32 / bf16), kernels only, at both batch sizes.
    for prec in tf32 bf16; do
        for b in $b1 $b2; do
            step_json bench_${dev}_${prec}_b$b 0 60 "$ff" bench --device $dev --precision $prec --image-size $img --batch-size $b --steps $steps --json "${arch_args[@]}"
        done
    done
    # The default run a user starts (10 epochs of 640 generated images; at the test size
    # in a dry run), its epoch times from metrics.jsonl.
    local default_size=()
    [ $dry -eq 1 ] && default_size=(--image-size $img --synthetic-images 64 --epochs 2)
    step train_default 1 120 bash -c '"$@" && cat "$0/default/metrics.jsonl"' "$runs" \
        "$ff" train --device $dev --quiet --out "$runs/default" "${default_size[@]}" "${arch_args[@]}"
    step bench_${dev}_profile 1 60 "$ff" bench --device $dev --image-size $img --batch-size $b1 --steps $steps --profile "${arch_args[@]}"
    if python3 -c 'import torch' 2>/dev/null; then
        if [ $dry -eq 1 ]; then
            step_json torch_bench 0 90 python3 scripts/torch_bench.py --device cpu --image-size 24 --batch-sizes $b1 --steps 1 --warmup 1 --end-to-end $e2e1
        else
            step_json torch_bench 0 180 python3 scripts/torch_bench.py --batch-sizes $b1,$b2 --steps $steps --end-to-end $e2e2
            step_json torch_bench_channels_last 0 90 python3 scripts/torch_bench.py --batch-sizes $b1 --steps $steps --channels-last
            step_json torch_ops 0 60 python3 scripts/torch_bench.py --batch-sizes $b1 --steps 5 --profile-ops
        fi
    else
        log "SKIP torch_bench (no PyTorch in python3)"
    fi

    # 4. Per-op kernel timings (tiled vs naive), then the sanitizers and ncu if present.
    if [ $dry -eq 0 ]; then
        step op_timings 0 90 "$tests/ops" perf --ignored --exact --nocapture
    fi
    local tooldir sanitizer ncu why=""
    [ $dry -eq 1 ] && why=", dry run"
    tooldir="$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")"
    sanitizer="$(command -v compute-sanitizer || ls "$tooldir/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)"
    ncu="$(command -v ncu || ls "$tooldir/ncu" /usr/local/cuda/bin/ncu 2>/dev/null | head -1)"
    if [ $dry -eq 0 ] && [ -n "$sanitizer" ]; then
        step memcheck 0 120 "$sanitizer" --tool memcheck --error-exitcode 9 "$tests/ops" on_gpu:: --test-threads=1
        step racecheck 0 60 "$sanitizer" --tool racecheck --error-exitcode 9 "$tests/ops" on_gpu::conv_forward on_gpu::dense_backward --test-threads=1
        # The emulator's planted bugs (tests/emulator_checks.rs) on the GPU: memcheck must
        # report the read one past the end, the GPU itself the misaligned float4.
        step memcheck_planted 0 60 bash -c '"$0" --tool memcheck "$1" planted_read_past_end --ignored --exact --nocapture 2>&1 |
            tee /dev/stderr | grep -q "Invalid __global__ read of size 4 bytes"' "$sanitizer" "$tests/gpu_executor"
    else
        log "SKIP compute-sanitizer (${sanitizer:-not found}$why)"
    fi
    if [ $dry -eq 0 ] && [ -n "$ncu" ]; then
        step ncu 0 90 "$ncu" --target-processes all --section SpeedOfLight --section Occupancy \
            -k 'regex:^(conv_|dense_|maxpool|relu_bwd|gemm_splitk|loss_|softmax_|adam_)' --launch-skip 60 --launch-count 24 \
            "$ff" bench --device cuda --image-size 224 --batch-size 32 --steps 1
    else
        log "SKIP ncu (${ncu:-not found}$why)"
    fi

    # 5. The summary.
    python3 - "$OUT" "$dev" >"$OUT/summary.md" <<'EOF'
import glob, json, os, sys
out, dev = sys.argv[1], sys.argv[2]
rows = []
def load(path):
    try:
        return [json.loads(l) for l in open(path) if l.strip().startswith("{")]
    except OSError:
        return []
for path in sorted(glob.glob(os.path.join(out, "bench_*.json"))):
    for r in load(path):
        rows.append(("focalflow " + r["device"] + " " + r.get("precision", "fp32"), r["batch_size"], r["image_size"], r["train_images_per_second"],
                     r["inference_images_per_second"], r["train_step_ms"], r.get("train_gflops"),
                     r.get("end_to_end_images_per_second")))
for name in ("torch_bench", "torch_bench_channels_last"):
    for r in load(os.path.join(out, name + ".json")):
        label = "pytorch fp32 cuDNN" + (" channels-last" if r.get("channels_last") else "")
        rows.append((label, r["batch_size"], r["image_size"], r["train_images_per_second"],
                     r["inference_images_per_second"], r["train_step_ms"], None,
                     r.get("end_to_end_images_per_second")))
print("# focalflow GPU check\n")
print("End to end: whole training epochs with the data path (focalflow `bench --end-to-end`;")
print("PyTorch: uint8 set on the GPU, `loss.item()` every step). Kernels only: `bench`'s steps.\n")
print("| run | batch | image | train img/s (kernels only) | train img/s (end to end) | end to end / kernels | inference img/s | ms/step | model GFLOP/s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    g = f"{r[6]:.0f}" if r[6] else ""
    e2e, share = (f"{r[7]:.1f}", f"{100 * r[7] / r[3]:.0f}%") if r[7] else ("", "")
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {e2e} | {share} | {r[4]:.1f} | {r[5]:.2f} | {g} |")
default = load(os.path.join(out, "train_default.log"))
if default:
    secs = sum(m["seconds"] for m in default)
    print(f"\nDefault `train --device {dev}` run: {len(default)} epochs, {secs:.2f} s of training "
          f"(sum of the epochs' seconds in metrics.jsonl), final val accuracy {default[-1].get('val_accuracy')}")
ff = {r[1]: r for r in rows if r[0] == "focalflow " + dev + " fp32"}
pt = {r[1]: r for r in rows if r[0] == "pytorch fp32 cuDNN"}
for b in sorted(set(ff) & set(pt)):
    print(f"\nbatch {b}: focalflow {dev} / PyTorch = {ff[b][3] / pt[b][3]:.2f}x training, "
          f"{ff[b][4] / pt[b][4]:.2f}x inference")
print("\n| step | required | result | seconds |\n|---|---|---|---:|")
for line in open(os.path.join(out, "steps.tsv")):
    name, req, status, secs = line.rstrip("\n").split("\t")
    print(f"| {name} | {'yes' if req == '1' else 'no'} | {status} | {secs} |")
for name in ("info_first_start", "info_nvcc_latest", "info_forced_jit"):
    try:
        line = next(l for l in open(os.path.join(out, name + ".log")) if "module(s):" in l)
        print(f"\n{name}: " + line.split("module(s):", 1)[1].strip())
    except (OSError, StopIteration):
        pass
prof = os.path.join(out, f"bench_{dev}_profile.log")
if os.path.exists(prof):
    print("\n```\n" + open(prof).read().strip() + "\n```")
EOF
    cat "$OUT/summary.md"
    log "done in $(($(date +%s) - start))s; logs in $OUT"
    # One archive of every log, summary and JSON (only a handful of files come back from a
    # remote machine); nothing else lives in $OUT.
    (cd "$OUT" && tar czf gpu-check-logs.tar.gz --exclude=gpu-check-logs.tar.gz -- *.log *.json *.md *.tsv 2>/dev/null)
    # What stays: the archive and the summary (a remote machine returns at most 8 files).
    find "$OUT" -maxdepth 1 -type f ! -name gpu-check-logs.tar.gz ! -name summary.md -delete
    rm -rf "$runs"
    # Failed required steps fail the run (steps.tsv is in the archive; read it there).
    ! tar xzf "$OUT/gpu-check-logs.tar.gz" -O steps.tsv |
        awk -F'\t' '$2 == 1 && $3 !~ /^ok/ && $3 !~ /^skipped/' | grep -q .
}

case "${1:-}" in
bundle) bundle ;;
run)
    shift
    run "$@"
    ;;
*)
    sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
