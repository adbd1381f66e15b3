//! `focalflow info`: what this build contains and what this machine can run, with reasons.

use std::fmt::Write as _;

use crate::executor::{self, BUILD, CudaExecutor, EmuOptions, KERNELS, PTX_MODULES};

/// The report printed by `focalflow info`.
pub fn info_report() -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "focalflow {} ({}, {} build, {})",
        env!("CARGO_PKG_VERSION"),
        BUILD.target,
        BUILD.profile,
        BUILD.rustc
    );

    // ---- build -----------------------------------------------------------------------------
    let ops: Vec<_> = KERNELS.iter().filter(|k| !k.fixture).collect();
    let fixtures = KERNELS.len() - ops.len();
    let files = {
        let mut f: Vec<&str> = ops.iter().map(|k| k.file).collect();
        f.dedup();
        f.len()
    };
    let _ = writeln!(s, "\nBuild");
    let counts = format!(
        "{} kernel(s) in {files} file(s) (+ {fixtures} test fixture kernel(s))",
        ops.len()
    );
    match (BUILD.nvcc_version, BUILD.ptx_isa) {
        (Some(v), Some(isa)) => {
            let _ = writeln!(
                s,
                "  CUDA kernels   compiled: {counts}; fat binaries with machine code for {} and PTX {} (ISA {isa}){}",
                BUILD.sass_archs.join(" "),
                BUILD.ptx_arch.unwrap_or("?"),
                BUILD
                    .newest_ptx_arch
                    .map_or(String::new(), |a| format!(" and {a}"))
            );
            let _ = writeln!(
                s,
                "  nvcc           {v} ({}, found by {})",
                BUILD.nvcc_path.unwrap_or("?"),
                BUILD.nvcc_found_by.unwrap_or("?")
            );
        }
        _ => {
            let _ = writeln!(
                s,
                "  CUDA kernels   not compiled ({}): {counts} for the emulator only; --device cuda needs a build \
                 with nvcc (scripts/install-cuda-toolchain.sh prints the NVCC=... to build with)",
                BUILD.no_nvcc_reason.unwrap_or("no nvcc")
            );
        }
    }
    if BUILD.emulator {
        let _ = writeln!(
            s,
            "  emulator       built ({}), {} kernel(s)",
            BUILD.emulator_switch,
            KERNELS.len()
        );
        let _ = writeln!(s, "  emulator checks {}", executor::EMULATOR_CHECKS);
        let _ = writeln!(s, "  only a GPU     {}", executor::GPU_ONLY);
    } else {
        let _ = writeln!(s, "  emulator       not built (unix targets only)");
    }
    let _ = writeln!(
        s,
        "  JPEG decoder   {}",
        crate::data::libjpeg::jpeg_decoder()
    );
    let with_ptx: Vec<_> = ops
        .iter()
        .filter_map(|k| k.ptx.as_ref().map(|p| (k, p)))
        .collect();
    if !with_ptx.is_empty() {
        let _ = writeln!(
            s,
            "  {:<28} {:>5} {:>10} {:>7} {:>14}",
            format!("kernel ({})", BUILD.sass_arch.unwrap_or("?")),
            "regs",
            "smem (B)",
            "stack",
            "spills st/ld"
        );
        for (k, p) in with_ptx {
            let _ = writeln!(
                s,
                "  {:<28} {:>5} {:>10} {:>7} {:>14}",
                k.name,
                p.registers,
                p.static_smem,
                p.stack_frame,
                format!("{}/{}", p.spill_stores, p.spill_loads)
            );
        }
    }

    // ---- executors -------------------------------------------------------------------------
    let _ = writeln!(s, "\nExecutors");
    let cpu_paths = match crate::ops::CpuPath::from_env() {
        Ok(path) => path.describe(),
        Err(e) => e.to_string(),
    };
    let _ = writeln!(
        s,
        "  cpu            available; paths: {cpu_paths}; {}",
        precisions_line(false)
    );
    let emu = if BUILD.emulator {
        match EmuOptions::from_env().and_then(executor::EmuExecutor::new) {
            Ok(e) => format!("available: {}", e.describe()),
            Err(e) => format!("unavailable: {e}"),
        }
    } else {
        "unavailable: the emulator is built on unix targets only".to_string()
    };
    let _ = writeln!(s, "  cuda-emu       {emu}; {}", precisions_line(true));
    let gpus = executor::probe_gpus();
    let cuda = if PTX_MODULES.is_empty() {
        format!(
            "unavailable: {}",
            executor::cuda_unavailable_reason().unwrap_or_default()
        )
    } else {
        match &gpus {
            Ok(g) if g.is_empty() => "unavailable: the CUDA driver reports no GPU".to_string(),
            Ok(_) => match CudaExecutor::new(0) {
                Ok(c) => format!(
                    "available: {}; {} module(s): {}",
                    c.describe(),
                    PTX_MODULES.len(),
                    c.module_load().describe()
                ),
                Err(e) => format!("unavailable: {e}"),
            },
            Err(e) => format!("unavailable: {e}"),
        }
    };
    let _ = writeln!(s, "  cuda           {cuda}; {}", precisions_line(true));

    // ---- GPUs ------------------------------------------------------------------------------
    let _ = writeln!(s, "\nGPUs");
    match &gpus {
        Ok(g) if g.is_empty() => {
            let _ = writeln!(s, "  none (the driver is present but reports no GPU)");
        }
        Ok(g) => {
            let driver = executor::driver_version()
                .map(|(a, b)| format!("{a}.{b}"))
                .unwrap_or_else(|e| e.to_string());
            let _ = writeln!(s, "  driver supports CUDA {driver}");
            for d in g {
                let _ = writeln!(
                    s,
                    "  {}: {}, {:.1} GiB, compute capability {}.{}, {} SMs",
                    d.ordinal,
                    d.name,
                    d.total_memory as f64 / (1u64 << 30) as f64,
                    d.compute_capability.0,
                    d.compute_capability.1,
                    d.multiprocessors
                );
            }
        }
        Err(e) => {
            let _ = writeln!(s, "  none: {e}");
        }
    }

    // ---- versions --------------------------------------------------------------------------
    let _ = writeln!(s, "\nVersions");
    let mut v = format!("focalflow {}", env!("CARGO_PKG_VERSION"));
    for (name, version) in BUILD.dependencies {
        let _ = write!(v, ", {name} {version}");
    }
    let _ = writeln!(s, "  {v}");
    s
}

/// `--precision`s a backend runs here, and why not the others: "precisions: fp32, bf16
/// (tf32: ...)".
fn precisions_line(cuda: bool) -> String {
    use crate::precision::{Precision, cpu_unsupported, cuda_unsupported};
    let why = |p: Precision| {
        if cuda {
            cuda_unsupported(p)
        } else {
            cpu_unsupported(p)
        }
    };
    let (yes, no): (Vec<Precision>, Vec<Precision>) =
        Precision::ALL.into_iter().partition(|p| why(*p).is_none());
    let names = |v: &[Precision]| v.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ");
    let mut line = format!("precisions: {}", names(&yes));
    if !no.is_empty() {
        let reasons: Vec<String> = no
            .iter()
            .map(|p| format!("not {p}: {}", why(*p).unwrap_or_default()))
            .collect();
        line.push_str(&format!(" ({})", reasons.join("; ")));
    }
    line
}

/// Prints [`info_report`] to stdout.
pub fn print_info() -> crate::Result<()> {
    print!("{}", info_report());
    Ok(())
}
