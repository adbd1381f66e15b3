#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler toolchain from PyPI into a project-local,
# git-ignored directory (.toolchain/ by default) and prints, as its LAST line of stdout,
#     NVCC=/absolute/real/path/to/nvcc
# so that CI can do:   export "$(scripts/install-cuda-toolchain.sh | tail -1)"
# All other output goes to stderr. Idempotent: a second run only checks and prints.
#
# Why these pins: only the 13.x wheels carry a full nvcc, and all five must be pinned or a
# newer cicc slips in beside an older nvcc. 13.0 is the toolkit of the GPU machine's driver
# (580): its PTX (ISA 9.0) JIT-compiles there for GPUs without machine code in the build.
#
# With --latest: the newest 13.x of the same five wheels instead, into .toolchain-latest/
# (CI builds with it too: a newer toolkit must build, its PTX newer than the pinned one's).
#
# Environment: FOCALFLOW_TOOLCHAIN_DIR overrides the install directory; PYTHON the
# interpreter (default python3).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
if [ "${1:-}" = "--latest" ]; then
    prefix="${FOCALFLOW_TOOLCHAIN_DIR:-$root/.toolchain-latest}"
    pins=(
        "nvidia-cuda-nvcc>=13,<14"
        "nvidia-nvvm>=13,<14"
        "nvidia-cuda-crt>=13,<14"
        "nvidia-cuda-runtime>=13,<14"
        "nvidia-cuda-cccl>=13,<14"
    )
else
    prefix="${FOCALFLOW_TOOLCHAIN_DIR:-$root/.toolchain}"
    pins=(
        nvidia-cuda-nvcc==13.0.88
        nvidia-nvvm==13.0.88
        nvidia-cuda-crt==13.0.88
        nvidia-cuda-runtime==13.0.96
        nvidia-cuda-cccl==13.0.85
    )
fi
want="$(printf '%s\n' "${pins[@]}")"
stamp="$prefix/installed-pins.txt"

log() { echo "install-cuda-toolchain: $*" >&2; }

find_nvcc() {
    local f
    for f in "$prefix"/venv/lib/python*/site-packages/nvidia/cu13/bin/nvcc \
             "$prefix"/site/nvidia/cu13/bin/nvcc; do
        if [ -x "$f" ]; then
            # nvcc locates cicc, headers and libraries relative to its real path.
            readlink -f "$f"
            return 0
        fi
    done
    return 1
}

command -v g++ >/dev/null 2>&1 || log "warning: g++ not on PATH; nvcc needs a host compiler"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && nvcc="$(find_nvcc)"; then
    log "already installed in $prefix"
else
    mkdir -p "$prefix"
    command -v "$python" >/dev/null 2>&1 || { log "error: $python not found (set PYTHON=)"; exit 1; }
    if [ -x "$prefix/venv/bin/pip" ] || "$python" -m venv "$prefix/venv" >&2; then
        pip=("$prefix/venv/bin/pip")
        target=()
    else
        # No venv module (Debian without python3-venv): install into a plain directory.
        log "python venv unavailable; installing with pip --target"
        rm -rf "$prefix/venv"
        pip=("$python" -m pip)
        target=(--target "$prefix/site" --upgrade)
    fi
    log "installing ${pins[*]} into $prefix"
    "${pip[@]}" install --disable-pip-version-check --no-input --quiet "${target[@]}" "${pins[@]}" >&2
    nvcc="$(find_nvcc)" || { log "error: nvcc not found after installation under $prefix"; exit 1; }
    printf '%s\n' "$want" >"$stamp"
fi

version="$("$nvcc" --version | tail -1)" || { log "error: $nvcc --version failed"; exit 1; }
log "$version"
echo "NVCC=$nvcc"
