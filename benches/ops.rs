//! Per-op timing, the op matrix's perf mode (tests/ops/perf.rs), at the reference CNN's
//! shapes (224x224, batch 32) on every target present: the CPU always, a GPU (tiled and
//! naive kernels) when there is one. `cargo bench --bench ops [-- TEXT]` (TEXT: only the ops
//! whose names contain it, to time or profile one). Prints ms per call and
//! GFLOP/s where the op is a GEMM, so a slow op shows up next to its neighbours (compare
//! ratios in one run, not across runs).

#[path = "../tests/ops/perf.rs"]
mod perf;

use focalflow::executor::Executor;
use focalflow::ops::gemm::Variant;
use focalflow::ops::{CpuBackend, CpuPath, CudaBackend};
use focalflow::precision::{Precision, cpu_unsupported};

fn main() {
    let batch = 32;
    // `cargo bench` passes `--bench`; any other argument picks ops by name.
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let picked = |op: &str| only.as_ref().is_none_or(|text| op.contains(text.as_str()));
    println!("cpu (f32), batch {batch}:");
    for t in perf::time_ops(&CpuBackend::<f32>::new(), batch, 3, &picked) {
        println!("  {}", t.line());
    }
    // The GEMM-shaped ops by the reference path (the default takes the direct, Winograd and
    // streaming kernels where they apply).
    println!(
        "cpu (f32), im2col + GEMM and GEMM for every convolution and dense layer, batch {batch}:"
    );
    let im2col = CpuBackend::<f32>::with_path(CpuPath::Reference);
    for t in perf::time_ops(&im2col, batch, 3, &|op| {
        (op.starts_with("conv") && !op.contains("relu") || op.starts_with("dense")) && picked(op)
    }) {
        println!("  {}", t.line());
    }
    // `--precision bf16`: the ops whose products it changes (the fused blocks too: they
    // are what training runs).
    match cpu_unsupported(Precision::Bf16) {
        None => {
            println!("cpu (bf16 products), batch {batch}:");
            let bf16 = CpuBackend::<f32>::new().with_precision(Precision::Bf16);
            for t in perf::time_ops(&bf16, batch, 3, &|op| {
                (op.starts_with("conv") && (!op.contains("relu") || op.contains("fused"))
                    || op.starts_with("dense"))
                    && picked(op)
            }) {
                println!("  {}", t.line());
            }
        }
        Some(why) => println!("cpu (bf16 products): not timed ({why})"),
    }
    match Executor::cuda(0) {
        Ok(exec) => {
            let gpu = CudaBackend::new(exec);
            println!("cuda (tiled), batch {batch}:");
            for t in perf::time_ops(&gpu, batch, 20, &picked) {
                println!("  {}", t.line());
            }
            gpu.set_choice(Variant::Naive, Default::default());
            println!("cuda (naive reference kernels), batch {batch}:");
            for t in perf::time_ops(&gpu, batch, 1, &picked) {
                println!("  {}", t.line());
            }
        }
        Err(e) => println!("cuda: not timed ({e})"),
    }
}
