//! Shared test bodies: each runs fixture kernels (tests/emulator/emu_fixtures.cu) on the
//! executor it is given and compares with a plain Rust reference on random, odd-sized data,
//! with outputs poisoned (NaN / sentinel) beforehand so that unwritten elements fail.
//! Used by tests/emulator.rs (every emulator schedule) and tests/gpu_executor.rs (a GPU).
#![allow(dead_code)] // each test crate uses a subset

use focalflow::executor::{DeviceBuffer, DeviceElem, Executor, LaunchConfig};

/// Calls `$m!` with every fixture that works as written (not the broken-on-purpose ones: a
/// divergent barrier or a deadlock may hang a GPU): one list for the emulator's tests and
/// the GPU's, so that a new fixture runs on both.
macro_rules! with_working_fixtures {
    ($m:ident) => {
        $m!(
            block_sum,
            warp_ops,
            sgemm_tiled,
            dyn_shared,
            atomics,
            math,
            float4,
            index3d,
            shift_with_barrier,
            argument_checks,
            launch_limits,
            events,
            round_bf16_tf32,
            wmma_tf32,
            wmma_bf16,
        );
    };
}

/// The fixture source, to find the lines the emulator must name in its errors.
pub const FIXTURE_SOURCE: &str = include_str!("emu_fixtures.cu");

/// `tests/emulator/emu_fixtures.cu:<line>` of the line containing `marker`.
pub fn fixture_line(marker: &str) -> String {
    let line = FIXTURE_SOURCE
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("marker `{marker}` not in the fixture source"))
        + 1;
    format!("tests/emulator/emu_fixtures.cu:{line}")
}

/// xorshift64*: enough randomness for test data, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn int(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i32
    }
    pub fn vec_f32(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    pub fn vec_i32(&mut self, n: usize, lo: i32, hi: i32) -> Vec<i32> {
        (0..n).map(|_| self.int(lo, hi)).collect()
    }
}

/// A buffer of `n` copies of `v` (a poison value for outputs: the GPU's memory is not
/// initialised, so outputs are filled explicitly on both executors).
pub fn filled<T: DeviceElem>(exec: &Executor, n: usize, v: T) -> DeviceBuffer<T> {
    exec.upload(&vec![v; n]).unwrap()
}

/// `|got - want| <= tol[i]` for every element (NaN fails), with a readable panic.
pub fn assert_within(what: &str, got: &[f32], want: &[f64], tol: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<String> = (0..got.len())
        .filter(|&i| {
            let diff = (got[i] as f64 - want[i]).abs();
            diff.is_nan() || diff > tol[i]
        })
        .take(5)
        .map(|i| format!("[{i}] got {} want {} (tol {:.3e})", got[i], want[i], tol[i]))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} mismatches, first: {}",
        bad.len(),
        bad.join("; ")
    );
}

/// Relative tolerance `|got - want| <= atol + rtol*|want|`.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    let tol: Vec<f64> = want.iter().map(|w| atol + rtol * w.abs()).collect();
    assert_within(what, got, want, &tol);
}

/// Launch helper for the tests: panics with the executor's error.
macro_rules! launch {
    ($exec:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let mut l = $exec.launch_builder($name, $cfg);
        $( l.arg($arg); )*
        // SAFETY: every call site passes the arguments of the fixture's signature.
        unsafe { l.launch() }.unwrap_or_else(|e| panic!("{}: {e}", $name));
    }};
}

// ---- the fixtures -----------------------------------------------------------------------------

/// Shared memory + shuffles + barrier: fx_block_sum.
pub fn block_sum(exec: &Executor) {
    let mut rng = Rng::new(1);
    for &(n, blocks, threads) in &[(1usize, 1u32, 32u32), (1000, 3, 96), (100_003, 7, 256)] {
        let x = rng.vec_f32(n, -1.0, 1.0);
        let dx = exec.upload(&x).unwrap();
        let mut sums = filled(exec, blocks as usize, f32::NAN);
        launch!(exec, "fx_block_sum", LaunchConfig::new(blocks, threads); &dx, &mut sums, n as i32);
        let got = exec.download(&sums).unwrap();
        // Element i is summed by block (i % (blocks*threads)) / threads.
        let stride = (blocks * threads) as usize;
        let mut want = vec![0f64; blocks as usize];
        let mut abs = vec![0f64; blocks as usize];
        for (i, &v) in x.iter().enumerate() {
            let b = (i % stride) / threads as usize;
            want[b] += v as f64;
            abs[b] += v.abs() as f64;
        }
        // f32 summation error bound: (terms summed in sequence + tree depth) * eps * sum|x|.
        let depth = (n.div_ceil(stride) + 12) as f64;
        let tol: Vec<f64> = abs
            .iter()
            .map(|a| depth * f32::EPSILON as f64 * a + 1e-6)
            .collect();
        assert_within(&format!("fx_block_sum n={n}"), &got, &want, &tol);
    }
}

/// __shfl_up/_sync with width, __syncwarp, __ballot/__all/__any: fx_warp_ops.
pub fn warp_ops(exec: &Executor) {
    let mut rng = Rng::new(2);
    let n = 200; // 6.25 warps: the last one partly outside the data
    let block = 64u32;
    let grid = (n as u32).div_ceil(block);
    let warps = (grid * block / 32) as usize;
    let mut x = rng.vec_i32(n, -3, 5);
    for v in &mut x[0..32] {
        *v = v.abs() + 1; // warp 0: all positive
    }
    for v in &mut x[32..64] {
        *v = -v.abs(); // warp 1: none positive
    }
    let dx = exec.upload(&x).unwrap();
    let mut out = filled(exec, 4 * n, i32::MIN);
    let mut votes = filled(exec, 3 * warps, 0xDEAD_BEEFu32);
    launch!(exec, "fx_warp_ops", LaunchConfig::new(grid, block); &dx, &mut out, &mut votes, n as i32);
    let out = exec.download(&out).unwrap();
    let votes = exec.download(&votes).unwrap();
    let val = |i: usize| if i < n { x[i] } else { 0 };
    for w in 0..warps {
        let lanes: Vec<i32> = (0..32).map(|l| val(w * 32 + l)).collect();
        for l in 0..32 {
            let i = w * 32 + l;
            if i >= n {
                continue;
            }
            let scan: i32 = lanes[..=l].iter().sum();
            let want = [scan, lanes[0], lanes[(l & !7) + 3], lanes[l ^ 1]];
            assert_eq!(
                &out[4 * i..4 * i + 4],
                &want,
                "fx_warp_ops element {i} (warp {w}, lane {l})"
            );
        }
        let ballot = lanes
            .iter()
            .enumerate()
            .fold(0u32, |b, (l, &v)| b | (((v > 0) as u32) << l));
        let all = lanes.iter().all(|&v| v > 0) as u32;
        let any = lanes.iter().any(|&v| v > 0) as u32;
        assert_eq!(
            &votes[3 * w..3 * w + 3],
            &[ballot, all, any],
            "fx_warp_ops votes of warp {w}"
        );
    }
}

/// 2-D blocks and grids, shared tiles, partial tiles: fx_sgemm_tiled.
pub fn sgemm_tiled(exec: &Executor) {
    let mut rng = Rng::new(3);
    for &(m, n, k) in &[
        (1usize, 1usize, 1usize),
        (17, 33, 29),
        (45, 30, 70),
        (64, 48, 16),
    ] {
        let a = rng.vec_f32(m * k, -1.0, 1.0);
        let b = rng.vec_f32(k * n, -1.0, 1.0);
        let (da, db) = (exec.upload(&a).unwrap(), exec.upload(&b).unwrap());
        let mut dc = filled(exec, m * n, f32::NAN);
        let cfg = LaunchConfig::new(
            ((n as u32).div_ceil(16), (m as u32).div_ceil(16)),
            (16u32, 16u32),
        );
        launch!(exec, "fx_sgemm_tiled", cfg; m as i32, n as i32, k as i32, &da, &db, &mut dc);
        let got = exec.download(&dc).unwrap();
        let mut want = vec![0f64; m * n];
        let mut tol = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                let mut abs = 0f64;
                for p in 0..k {
                    let t = a[i * k + p] as f64 * b[p * n + j] as f64;
                    s += t;
                    abs += t.abs();
                }
                want[i * n + j] = s;
                // k fused multiply-adds in f32: error <= k * eps * sum|a*b|.
                tol[i * n + j] = (k as f64 + 1.0) * f32::EPSILON as f64 * abs + 1e-7;
            }
        }
        assert_within(&format!("fx_sgemm_tiled {m}x{n}x{k}"), &got, &want, &tol);
    }
}

/// extern __shared__, and the shared memory limits with and without opt-in: fx_dyn_reverse.
pub fn dyn_shared(exec: &Executor) {
    let mut rng = Rng::new(4);
    let n = 1000;
    let x = rng.vec_f32(n, -5.0, 5.0);
    let dx = exec.upload(&x).unwrap();
    let check = |block: u32, shmem: u32| {
        let mut dy = filled(exec, n, f32::NAN);
        let cfg = LaunchConfig::for_elements(n, block).with_shared(shmem);
        launch!(exec, "fx_dyn_reverse", cfg; &dx, &mut dy, n as i32);
        let got = exec.download(&dy).unwrap();
        for base in (0..n).step_by(block as usize) {
            let len = (block as usize).min(n - base);
            for t in 0..len {
                assert_eq!(
                    got[base + t],
                    x[base + len - 1 - t],
                    "fx_dyn_reverse block {block} element {}",
                    base + t
                );
            }
        }
    };
    check(96, 96 * 4);
    check(128, 48 * 1024); // exactly the default limit

    // Above 48 KiB: refused until raised, as on the GPU.
    let cfg = LaunchConfig::for_elements(n, 128).with_shared(49 * 1024);
    let mut dy = filled(exec, n, f32::NAN);
    // SAFETY: the arguments of fx_dyn_reverse.
    let err = unsafe {
        exec.launch_builder("fx_dyn_reverse", cfg)
            .arg(&dx)
            .arg(&mut dy)
            .arg(n as i32)
            .launch()
    }
    .expect_err("49 KiB of dynamic shared memory without opt-in must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("dynamic shared memory") && msg.contains("fx_dyn_reverse"),
        "{msg}"
    );
    let err = exec
        .set_max_dynamic_shared("fx_dyn_reverse", 228 * 1024)
        .expect_err("above 227 KiB must fail");
    assert!(err.to_string().contains("227 KiB"), "{err}");
    exec.set_max_dynamic_shared("fx_dyn_reverse", 100 * 1024)
        .unwrap();
    check(128, 100 * 1024);
}

fn f32_bits_max(v: &[f32]) -> f32 {
    v.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Global float/int atomics, CAS, shared-memory atomics: fx_atomics.
pub fn atomics(exec: &Executor) {
    let mut rng = Rng::new(5);
    let n = 10_007;
    let xf = rng.vec_f32(n, -10.0, 10.0);
    let xi = rng.vec_i32(n, -1000, 1000);
    let (dxf, dxi) = (exec.upload(&xf).unwrap(), exec.upload(&xi).unwrap());
    let mut fsum = filled(exec, 1, 0f32);
    let mut isum = filled(exec, 1, 0i32);
    let mut imax = filled(exec, 1, i32::MIN);
    let mut fmax = filled(exec, 1, f32::NEG_INFINITY);
    let mut count = filled(exec, 1, 0u32);
    let mut hist = filled(exec, 16, 0u32);
    launch!(exec, "fx_atomics", LaunchConfig::new(5u32, 128u32);
        &dxf, &dxi, n as i32, &mut fsum, &mut isum, &mut imax, &mut fmax, &mut count, &mut hist);
    let sum: f64 = xf.iter().map(|&v| v as f64).sum();
    let abs: f64 = xf.iter().map(|&v| v.abs() as f64).sum();
    // n additions in any order: error <= n * eps * sum|x|.
    assert_within(
        "atomicAdd(float)",
        &exec.download(&fsum).unwrap(),
        &[sum],
        &[n as f64 * f32::EPSILON as f64 * abs],
    );
    assert_eq!(
        exec.download(&isum).unwrap(),
        [xi.iter().sum::<i32>()],
        "atomicAdd(int)"
    );
    assert_eq!(
        exec.download(&imax).unwrap(),
        [*xi.iter().max().unwrap()],
        "atomicMax(int)"
    );
    assert_eq!(
        exec.download(&fmax).unwrap(),
        [f32_bits_max(&xf)],
        "float max by atomicCAS"
    );
    assert_eq!(
        exec.download(&count).unwrap(),
        [n as u32],
        "atomicAdd(unsigned)"
    );
    let mut want = [0u32; 16];
    for &v in &xi {
        want[(v & 15) as usize] += 1;
    }
    assert_eq!(
        exec.download(&hist).unwrap(),
        want,
        "shared-memory atomicAdd histogram"
    );
}

/// Math functions and intrinsics: fx_math.
pub fn math(exec: &Executor) {
    let mut rng = Rng::new(6);
    let n = 1001;
    let x = rng.vec_f32(n, 0.05, 5.0);
    let dx = exec.upload(&x).unwrap();
    let mut dy = filled(exec, 10 * n, f32::NAN);
    launch!(exec, "fx_math", LaunchConfig::for_elements(n, 128); &dx, &mut dy, n as i32);
    let got = exec.download(&dy).unwrap();
    let names = [
        "expf",
        "logf",
        "__expf",
        "fmaf",
        "rsqrtf",
        "fminf+fmaxf",
        "tanhf",
        "sqrtf+fabsf",
        "powf",
        "softplus+__fdividef",
    ];
    for (k, name) in names.iter().enumerate() {
        let want: Vec<f64> = x
            .iter()
            .map(|&v| {
                let v = v as f64;
                match k {
                    0 | 2 => v.exp(),
                    1 => v.ln(),
                    3 => v * v + 1.0,
                    4 => 1.0 / v.sqrt(),
                    5 => v.min(2.0) + v.max(2.0),
                    6 => v.tanh(),
                    7 => v.sqrt() + v,
                    8 => v.powf(1.5),
                    _ => (if v > 20.0 { v } else { v.exp().ln_1p() }) + 1.0 / v,
                }
            })
            .collect();
        // CUDA documents at most 2-8 ulp for these (the intrinsics __expf/__fdividef
        // included, for x <= 5); 1e-5 relative is about 80 ulp: room, yet it catches a
        // wrong function. logf near 1 is small in value: an absolute part covers it.
        assert_close(
            &format!("fx_math {name}"),
            &got[k * n..(k + 1) * n],
            &want,
            1e-6,
            1e-5,
        );
    }
}

/// float4 and make_float4: fx_float4_axpb.
pub fn float4(exec: &Executor) {
    let mut rng = Rng::new(7);
    let n4 = 333;
    let x = rng.vec_f32(4 * n4, -3.0, 3.0);
    let dx = exec.upload(&x).unwrap();
    let mut dy = filled(exec, 4 * n4, f32::NAN);
    launch!(exec, "fx_float4_axpb", LaunchConfig::for_elements(n4, 64); &dx, &mut dy, 1.5f32, n4 as i32);
    let want: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| 1.5 * v as f64 + (i % 4 + 1) as f64)
        .collect();
    // One multiply-add (fused or not): within 2 ulp of the result.
    assert_close(
        "fx_float4_axpb",
        &exec.download(&dy).unwrap(),
        &want,
        1e-6,
        2.5e-7,
    );
}

/// threadIdx/blockIdx/blockDim/gridDim in three dimensions: fx_index3d.
pub fn index3d(exec: &Executor) {
    let (grid, block) = ((3u32, 2u32, 2u32), (4u32, 3u32, 2u32));
    let total = (3 * 2 * 2 * 4 * 3 * 2) as usize;
    let mut out = filled(exec, 4 * total, u32::MAX);
    launch!(exec, "fx_index3d", LaunchConfig::new(grid, block); &mut out);
    let got = exec.download(&out).unwrap();
    let pack = |x: u32, y: u32, z: u32| x | (y << 10) | (z << 20);
    let mut g = 0;
    for bz in 0..2 {
        for by in 0..2 {
            for bx in 0..3 {
                for tz in 0..2 {
                    for ty in 0..3 {
                        for tx in 0..4 {
                            let want = [
                                pack(tx, ty, tz),
                                pack(bx, by, bz),
                                pack(4, 3, 2),
                                pack(3, 2, 2),
                            ];
                            assert_eq!(&got[4 * g..4 * g + 4], &want, "fx_index3d thread {g}");
                            g += 1;
                        }
                    }
                }
            }
        }
    }
}

/// The reference of fx_shift_with_barrier / fx_shift_missing_barrier.
pub fn shift_reference(x: &[f32], block: usize) -> Vec<f32> {
    (0..x.len())
        .map(|i| if i % block > 0 { x[i - 1] } else { x[i] })
        .collect()
}

/// Runs a shift fixture; returns how many elements differ from the reference.
pub fn shift_mismatches(exec: &Executor, kernel: &str, seed: u64) -> usize {
    let mut rng = Rng::new(seed);
    let (n, block) = (1000, 128);
    let x = rng.vec_f32(n, 1.0, 2.0);
    let dx = exec.upload(&x).unwrap();
    let mut dy = filled(exec, n, f32::NAN);
    launch!(exec, kernel, LaunchConfig::for_elements(n, block); &dx, &mut dy, n as i32);
    let got = exec.download(&dy).unwrap();
    let want = shift_reference(&x, block as usize);
    got.iter().zip(&want).filter(|(g, w)| g != w).count()
}

/// A correct shared-memory exchange: fx_shift_with_barrier.
pub fn shift_with_barrier(exec: &Executor) {
    assert_eq!(
        shift_mismatches(exec, "fx_shift_with_barrier", 8),
        0,
        "fx_shift_with_barrier"
    );
}

/// Argument count and sizes are checked against the kernel's signature.
pub fn argument_checks(exec: &Executor) {
    let dx = filled(exec, 4, 1f32);
    let mut dy = filled(exec, 4, 0f32);
    let cfg = LaunchConfig::new(1u32, 32u32);
    // SAFETY: the launches are refused before any kernel runs.
    let err = unsafe {
        exec.launch_builder("fx_block_sum", cfg)
            .arg(&dx)
            .arg(&mut dy)
            .launch()
    }
    .unwrap_err();
    assert!(err.to_string().contains("fx_block_sum"), "{err}");
    // An i64 where the kernel takes an int.
    // SAFETY: as above.
    let err = unsafe {
        exec.launch_builder("fx_block_sum", cfg)
            .arg(&dx)
            .arg(&mut dy)
            .arg(4i64)
            .launch()
    }
    .unwrap_err();
    assert!(
        err.to_string().contains("[8, 8, 4]") || err.to_string().contains("[8,8,4]"),
        "{err}"
    );
    // SAFETY: as above.
    let err = unsafe { exec.launch_builder("no_such_kernel", cfg).launch() }.unwrap_err();
    assert!(err.to_string().contains("no_such_kernel"), "{err}");
}

/// Launch shapes the GPU refuses are refused, with the kernel's name.
pub fn launch_limits(exec: &Executor) {
    let dx = filled(exec, 4096, 1f32);
    let mut dy = filled(exec, 4096, 0f32);
    for block in [(1025u32, 1u32, 1u32), (32, 32, 2), (1, 1, 65), (0, 1, 1)] {
        let cfg = LaunchConfig::new(1u32, block);
        // SAFETY: refused before running.
        let err = unsafe {
            exec.launch_builder("fx_dyn_reverse", cfg)
                .arg(&dx)
                .arg(&mut dy)
                .arg(4096i32)
                .launch()
        }
        .expect_err("the launch must be refused");
        let msg = err.to_string();
        assert!(
            msg.contains("fx_dyn_reverse") && msg.contains("CUDA_ERROR_INVALID_VALUE"),
            "{msg}"
        );
    }
    // __launch_bounds__(256) on fx_math: 512 threads are refused when the PTX is known.
    let cfg = LaunchConfig::new(1u32, 512u32);
    // SAFETY: refused before running, or a valid launch over 4096 elements.
    let r = unsafe {
        exec.launch_builder("fx_math", cfg)
            .arg(&dx)
            .arg(&mut dy)
            .arg(400i32)
            .launch()
    };
    if exec.kernel("fx_math").unwrap().ptx.is_some() {
        assert!(r.unwrap_err().to_string().contains("__launch_bounds__"));
    }
}

/// Timing events around a launch.
pub fn events(exec: &Executor) {
    let dx = filled(exec, 1 << 16, 1f32);
    let mut sums = filled(exec, 8, 0f32);
    let start = exec.record_event().unwrap();
    launch!(exec, "fx_block_sum", LaunchConfig::new(8u32, 256u32); &dx, &mut sums, 1i32 << 16);
    let end = exec.record_event().unwrap();
    exec.synchronize().unwrap();
    let ms = start.elapsed_ms(&end).unwrap();
    assert!(ms >= 0.0 && ms.is_finite(), "{ms}");
    let total: f32 = exec.download(&sums).unwrap().iter().sum();
    assert_eq!(total, 65536.0);
}

// ---- tensor cores ------------------------------------------------------------------------------

/// TF32 as `__float_to_tf32` rounds: to nearest, ties away from zero (NaN, inf stay).
pub fn tf32_round(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    f32::from_bits((x.to_bits() + 0x1000) & 0xffff_e000)
}
/// What a tensor core reads of an f32 not converted to TF32: its low 13 bits dropped.
pub fn tf32_truncate(x: f32) -> f32 {
    f32::from_bits(x.to_bits() & 0xffff_e000)
}
/// bf16 as `__float2bfloat16` rounds: to nearest, ties to even (finite inputs).
pub fn bf16_round(x: f32) -> u16 {
    let u = x.to_bits();
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}
pub fn bf16_value(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// The rounding of the tensor-core inputs, on edge cases and random values.
pub fn round_bf16_tf32(exec: &Executor) {
    let mut x = vec![
        1.0,
        1.0 + 2f32.powi(-8),       // a bf16 tie: to even, 1
        1.0 + 3.0 * 2f32.powi(-8), // a bf16 tie: to even, 1 + 2^-6
        1.0 + 2f32.powi(-11),      // a TF32 tie: away from zero, 1 + 2^-10
        -1.0 - 2f32.powi(-11),     // likewise, -1 - 2^-10
        1.0 + 2f32.powi(-12),      // below half a TF32 unit: 1
        0.0,
        -0.0,
        1e-40, // subnormal
        f32::INFINITY,
        f32::NEG_INFINITY,
        3.0e38, // rounds to a finite TF32
    ];
    x.extend(Rng::new(77).vec_f32(500, -100.0, 100.0));
    let n = x.len();
    let dx = exec.upload(&x).unwrap();
    let mut bf = filled(exec, n, 0xdeadu16);
    let mut tf = filled(exec, n, f32::NAN);
    launch!(exec, "fx_round_bf16_tf32", LaunchConfig::for_elements(n, 128); &dx, &mut bf, &mut tf, n as i32);
    let (bf, tf) = (exec.download(&bf).unwrap(), exec.download(&tf).unwrap());
    assert_eq!(bf16_value(bf[1]), 1.0);
    assert_eq!(bf16_value(bf[2]), 1.0 + 2f32.powi(-6));
    assert_eq!(tf[3], 1.0 + 2f32.powi(-10));
    assert_eq!(tf[4], -1.0 - 2f32.powi(-10));
    assert_eq!(tf[5], 1.0);
    for i in 0..n {
        assert_eq!(bf[i], bf16_round(x[i]), "bf16 of {:e} (element {i})", x[i]);
        assert_eq!(
            tf[i].to_bits(),
            tf32_round(x[i]).to_bits(),
            "tf32 of {:e} (element {i})",
            x[i]
        );
    }
}

/// One warp, D = A B + C through `wmma` in TF32 (k = 24: three mma_sync), inputs converted
/// with `__float_to_tf32` and not, against the f64 product of the inputs the tensor core
/// sees. The tolerance is what f32 accumulation may add (K + 1 roundings of the terms'
/// magnitude); the same comparison against the f32 inputs' exact product must fail, or the
/// rounding would not be emulated.
pub fn wmma_tf32(exec: &Executor) {
    const K: usize = 24;
    let mut rng = Rng::new(2024);
    let a = rng.vec_f32(16 * K, -2.0, 2.0); // 16 x K, row-major
    let b_t = rng.vec_f32(16 * K, -2.0, 2.0); // B (K x 16) column-major: b_t[col * K + k]
    let c = rng.vec_f32(16 * 16, -1.0, 1.0);
    let (da, db, dc) = (
        exec.upload(&a).unwrap(),
        exec.upload(&b_t).unwrap(),
        exec.upload(&c).unwrap(),
    );
    let product = |round: &dyn Fn(f32) -> f32| {
        let mut want = vec![0.0f64; 256];
        let mut tol = vec![0.0f64; 256];
        for r in 0..16 {
            for col in 0..16 {
                let terms =
                    (0..K).map(|k| round(a[r * K + k]) as f64 * round(b_t[col * K + k]) as f64);
                let (sum, mag) = terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
                want[r * 16 + col] = c[r * 16 + col] as f64 + sum;
                tol[r * 16 + col] =
                    (K + 1) as f64 * 2f64.powi(-24) * (mag + (c[r * 16 + col] as f64).abs())
                        + 1e-30;
            }
        }
        (want, tol)
    };
    for (convert, round) in [(1, &tf32_round as &dyn Fn(f32) -> f32), (0, &tf32_truncate)] {
        let mut dd = filled(exec, 256, f32::NAN);
        launch!(exec, "fx_wmma_tf32", LaunchConfig::new(1u32, 32u32); &da, &db, &dc, &mut dd, K as i32, convert);
        let d = exec.download(&dd).unwrap();
        let (want, tol) = product(round);
        assert_within(&format!("wmma tf32 (convert {convert})"), &d, &want, &tol);
        let (exact, _) = product(&|v| v);
        let off = (0..256)
            .filter(|&i| (d[i] as f64 - exact[i]).abs() > tol[i])
            .count();
        assert!(
            off > 128,
            "only {off} of 256 results show TF32's rounding of the inputs"
        );
    }
}

/// One warp, D = A B through `wmma` in BF16 (k = 32: two mma_sync) with an f32 accumulator,
/// A column-major, B row-major, D stored column-major; against the f64 product.
pub fn wmma_bf16(exec: &Executor) {
    const K: usize = 32;
    let mut rng = Rng::new(99);
    let a: Vec<u16> = rng
        .vec_f32(16 * K, -3.0, 3.0)
        .into_iter()
        .map(bf16_round)
        .collect(); // a[k * 16 + r]
    let b: Vec<u16> = rng
        .vec_f32(16 * K, -3.0, 3.0)
        .into_iter()
        .map(bf16_round)
        .collect(); // b[k * 16 + c]
    let (da, db) = (exec.upload(&a).unwrap(), exec.upload(&b).unwrap());
    let mut dd = filled(exec, 256, f32::NAN);
    launch!(exec, "fx_wmma_bf16", LaunchConfig::new(1u32, 32u32); &da, &db, &mut dd, K as i32);
    let d = exec.download(&dd).unwrap();
    let mut want = vec![0.0f64; 256];
    let mut tol = vec![0.0f64; 256];
    for r in 0..16 {
        for col in 0..16 {
            let terms = (0..K)
                .map(|k| bf16_value(a[k * 16 + r]) as f64 * bf16_value(b[k * 16 + col]) as f64);
            let (sum, mag) = terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
            want[col * 16 + r] = sum; // column-major
            tol[col * 16 + r] = K as f64 * 2f64.powi(-24) * mag + 1e-30;
        }
    }
    assert_within("wmma bf16", &d, &want, &tol);
}
