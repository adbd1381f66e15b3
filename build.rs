//! Build script: the CUDA kernels, twice.
//!
//! Every `kernels/*.cu` (the ops' kernels; their host code is in `src/ops/<op>/cuda.rs`) and
//! `tests/emulator/*.cu` (the emulator's test fixtures) is
//!  1. compiled for the GPU when an nvcc is found (build/nvcc.rs: `NVCC`, the CUDA_*
//!     variables, `PATH`, /usr/local/cuda, /opt/cuda): to PTX, then to a fat binary with
//!     machine code for each supported architecture and the PTX (build/ptx.rs), embedded;
//!  2. always compiled as C++ with `src/executor/emulator/cuda_emu.h` into a static library (the
//!     "cuda-emu" executor), with one generated `extern "C"` launcher per `__global__`
//!     function taking `cuLaunchKernel`-style arguments (build/emulator.rs).
//!
//! The result is `$OUT_DIR/focalflow_kernels.rs` (build/generate.rs), included by
//! `src/executor/kernels.rs`: a table of kernels (name, file, emulator launcher, PTX symbol,
//! parameter sizes, ptxas figures), the modules, and what the build found (nvcc and where,
//! architectures, PTX ISA, dependency versions). Kernel files are found and scanned by
//! build/source.rs; adding one needs no edit here. Outputs are cached in `OUT_DIR` by
//! content hash, so touching one kernel recompiles that one only. build/libjpeg.rs builds
//! the JPEG decoder's C shim.
//!
//! The numbers and layouts that the host and the kernels share are written once, in
//! `src/ops/kernel_abi.rs`: build/abi.rs generates `kernel_abi.cuh` from it (included by the
//! kernels) and the GEMM kernels of each family (appended to `kernels/conv2d.cu` and
//! `kernels/dense.cu`).
//!
//! Environment: `NVCC` (a path, or `none` to build without kernels), `CUDA_HOME`,
//! `CUDA_PATH`, `CUDA_ROOT`, `CUDA_TOOLKIT_ROOT_DIR`, `FOCALFLOW_CUDA_ARCHS` (e.g. `90` or
//! `80,90`: the machine code to embed), `FOCALFLOW_PTX_ARCH` (default compute_80),
//! `FOCALFLOW_LIBJPEG` (`0`, or `require`).

use std::env;
use std::fs;
use std::path::PathBuf;

#[path = "build/nvcc.rs"]
mod nvcc;

use nvcc::find_nvcc;

#[path = "build/abi.rs"]
mod abi;
#[path = "build/emulator.rs"]
mod emulator;
#[path = "build/generate.rs"]
mod generate;
#[path = "src/ops/kernel_abi.rs"]
#[allow(dead_code)] // the build uses the tables, not every constant
mod kernel_abi;
#[path = "build/libjpeg.rs"]
mod libjpeg;
#[path = "build/ptx.rs"]
mod ptx;
#[path = "build/source.rs"]
mod source;
#[path = "build/util.rs"]
mod util;

use abi::{check_gemm_families, kernel_abi_header};
use emulator::build_emulator;
use generate::generate_rust;
use libjpeg::build_libjpeg;
use ptx::{PtxOutput, compile_ptx};
use source::{check_unique_names, collect_headers, collect_kernel_files};
use util::{hash_files, run_parallel, write_if_changed};

/// Every kernel source, flat, one file per op family (crate-relative).
const KERNELS_DIR: &str = "kernels";
/// The shared numbers and layouts of the host and the kernels (build/abi.rs writes their C
/// side).
const ABI_FILE: &str = "src/ops/kernel_abi.rs";
/// The emulator's C++ runtime (`cuda_emu.h`, `runtime.cpp`).
const EMULATOR_DIR: &str = "src/executor/emulator";
/// Kernels that exist only to test the emulator.
const FIXTURES_DIR: &str = "tests/emulator";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed={ABI_FILE}");
    // Directories: cargo rescans them, so new kernel files trigger a rebuild too.
    for dir in [KERNELS_DIR, EMULATOR_DIR, FIXTURES_DIR] {
        println!("cargo:rerun-if-changed={dir}");
    }
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_ROOT",
        "CUDA_TOOLKIT_ROOT_DIR",
        "PATH",
        "FOCALFLOW_PTX_ARCH",
        "FOCALFLOW_CUDA_ARCHS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    // Kernels include each other's headers by name (`#include "gemm_tile.cuh"`) and the
    // generated kernel_abi.cuh from OUT_DIR/include.
    let kernels_dir = root.join(KERNELS_DIR);
    let emu_dir = root.join(EMULATOR_DIR);
    let abi_dir = out.join("include");
    fs::create_dir_all(&abi_dir).expect("create OUT_DIR/include");
    write_if_changed(&abi_dir.join("kernel_abi.cuh"), &kernel_abi_header());
    let include_dirs = [kernels_dir.clone(), abi_dir.clone()];
    let mut files = Vec::new();
    collect_kernel_files(&root, &kernels_dir, &out, false, &mut files);
    collect_kernel_files(&root, &root.join(FIXTURES_DIR), &out, true, &mut files);
    let mut kernel_headers = collect_headers(&kernels_dir);
    kernel_headers.push(abi_dir.join("kernel_abi.cuh"));
    let mut headers = kernel_headers.clone();
    headers.extend(collect_headers(&emu_dir));
    for h in &headers {
        println!("cargo:rerun-if-changed={}", h.display());
    }
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.path.display());
    }
    check_unique_names(&files);
    check_gemm_families(&files);
    // nvcc sees the ops' headers; the emulator build also the emulator's.
    let headers_hash = hash_files(&kernel_headers);
    let emu_hash = hash_files(&headers);
    let jobs = env::var("NUM_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(2usize)
        .max(1);

    // ---- PTX --------------------------------------------------------------------------------
    let (nvcc, no_nvcc_reason) = match find_nvcc() {
        Ok(n) => (Some(n), None),
        Err(reason) => {
            println!(
                "cargo:warning=CUDA kernels not compiled ({reason}): this build has the cpu and \
                 cuda-emu executors only; run scripts/install-cuda-toolchain.sh and build with \
                 NVCC=<path> for --device cuda"
            );
            (None, Some(reason))
        }
    };
    if let Some(n) = &nvcc {
        println!(
            "cargo:warning=CUDA kernels: nvcc {} from {} ({}): machine code for {}, PTX {}{}",
            n.version,
            n.found_by,
            n.path.display(),
            n.sass_archs.join(" "),
            n.ptx_arch,
            n.newest_ptx_arch
                .as_ref()
                .map_or(String::new(), |a| format!(" and {a}"))
        );
    }
    let mut ptx: Vec<Option<PtxOutput>> = files.iter().map(|_| None).collect();
    if let Some(nvcc) = &nvcc {
        fs::create_dir_all(out.join("ptx")).expect("create OUT_DIR/ptx");
        let results = run_parallel(jobs, files.len(), |i| {
            compile_ptx(nvcc, &files[i], &include_dirs, &out, headers_hash)
        });
        let mut errors = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(p) => ptx[i] = Some(p),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            panic!("\n{}\n", errors.join("\n\n"));
        }
    }

    // ---- emulator -----------------------------------------------------------------------------
    let unix = env::var("CARGO_CFG_TARGET_FAMILY").is_ok_and(|f| f.split(',').any(|x| x == "unix"));
    let emulator = unix;
    if emulator {
        build_emulator(&emu_dir, &include_dirs, &out, &files, emu_hash, jobs);
    } else {
        println!("cargo:warning=the CUDA emulator (cuda-emu) is built on unix targets only");
    }

    // ---- libjpeg-turbo -------------------------------------------------------------------------
    build_libjpeg(&root);

    // ---- the generated table -------------------------------------------------------------------
    let generated = generate_rust(
        &files,
        &ptx,
        nvcc.as_ref(),
        no_nvcc_reason.as_deref(),
        emulator,
        &root,
    );
    write_if_changed(&out.join("focalflow_kernels.rs"), &generated);
}
