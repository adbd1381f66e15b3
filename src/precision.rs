//! `--precision fp32|tf32|bf16`: the number format of the convolution and dense products,
//! as PyTorch's autocast and Keras' `mixed_bfloat16` policy use the words.
//!
//! What stays f32 in every precision: the master weights and Adam's state, the
//! accumulation of every product, the bias, ReLU, pooling, softmax, the loss, the metrics
//! and every reduction, the checkpoints and the ONNX export. Only the two operands of each
//! multiply are rounded (to nearest even) to the chosen format first, and each layer runs
//! them in that format where its kernel for the device has such a path (which layer does is
//! named by `focalflow bench`); the rest stay f32, never below the chosen precision.
//!
//! The CPU runs bf16 on AMX tiles or AVX512_BF16 (exact products, f32 sums), detected at
//! run time; it has no TF32. CUDA runs TF32 and BF16 on tensor cores (wmma, f32
//! accumulators; kernels/gemm_tile.cuh's `MathTf32`, `MathBf16`).

use std::fmt;

/// The format of the operands of the convolution and dense products.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// IEEE single precision everywhere (24-bit significand): the default, bit-reproducible.
    #[default]
    Fp32,
    /// TensorFloat-32 operands (11-bit significand, f32 range), f32 sums: NVIDIA tensor cores.
    Tf32,
    /// bfloat16 operands (8-bit significand, f32 range), f32 sums.
    Bf16,
}

impl Precision {
    /// Every precision, in the order `--help` lists them.
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Tf32, Precision::Bf16];

    /// The `--precision` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The unit roundoff of an operand rounded to nearest in this format: 2^-p for a
    /// p-bit significand (the implicit bit counted). The error bounds of the tests are
    /// built from it.
    pub fn unit_roundoff(self) -> f64 {
        match self {
            Precision::Fp32 => (2f64).powi(-24),
            Precision::Tf32 => (2f64).powi(-11),
            Precision::Bf16 => (2f64).powi(-8),
        }
    }

    /// True for the default (which `config.json` leaves out, so that runs of versions
    /// before this flag still resume).
    pub fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The CPU features that `FOCALFLOW_CPU_HIDE` (a comma-separated list, e.g. `avx512bf16` or
/// `avx512f`) hides from run-time detection, as if this CPU lacked them: to test and time the
/// paths of other CPUs here, as oneDNN's `ONEDNN_MAX_CPU_ISA` does.
pub const CPU_HIDE_ENV: &str = "FOCALFLOW_CPU_HIDE";

/// Whether this CPU has `feature` (std's name: `avx512f`, `avx512bf16`) and it is not hidden
/// by [`CPU_HIDE_ENV`].
pub fn cpu_has(feature: &str) -> bool {
    static HIDDEN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let hidden = HIDDEN.get_or_init(|| {
        std::env::var(CPU_HIDE_ENV)
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    });
    if hidden.iter().any(|h| h == feature) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        match feature {
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512bw" => cpu_has("avx512f") && std::arch::is_x86_feature_detected!("avx512bw"),
            "avx512bf16" => cpu_has("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16"),
            "amx-bf16" => cpu_has("avx512bf16") && amx_bf16_usable(),
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AMX-BF16 tiles: the CPU has them (CPUID leaf 7: AMX-BF16 and AMX-TILE) and Linux lets
/// this process use them (arch_prctl ARCH_REQ_XCOMP_PERM for the tile data, asked once for
/// the whole process; a kernel before 5.16 refuses and the tiles stay unused).
#[cfg(target_arch = "x86_64")]
fn amx_bf16_usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
        #[allow(unused_unsafe)]
        // SAFETY: CPUID leaf 7 exists on every x86_64 CPU that has AVX-512 (checked first).
        let leaf = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        let tiles = leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0;
        tiles && request_tile_data()
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permissions.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_data() -> bool {
    false
}

/// Why the CPU backend cannot run `precision` on this machine (None: it can), as a reason
/// with what to use instead (the callers name the flag and the device before it).
pub fn cpu_unsupported(precision: Precision) -> Option<String> {
    let bf16 = cpu_has("avx512bf16");
    let hidden = std::env::var(CPU_HIDE_ENV).is_ok_and(|v| !v.trim().is_empty());
    match precision {
        Precision::Fp32 => None,
        Precision::Tf32 => Some(format!(
            "TF32 is a format of NVIDIA tensor cores (GPUs from Ampere, compute capability \
             8.0, on) and no CPU has it; use --device cuda, or {} on the cpu",
            if bf16 {
                "--precision bf16 or fp32"
            } else {
                "--precision fp32"
            }
        )),
        Precision::Bf16 if !bf16 => Some(format!(
            "bf16 products need the AVX512_BF16 instructions, which this CPU {} (Intel from \
             Cooper Lake and Sapphire Rapids, AMD from Zen 4 have them); use --precision fp32",
            if hidden {
                "lacks or which FOCALFLOW_CPU_HIDE hides"
            } else {
                "lacks"
            }
        )),
        Precision::Bf16 => None,
    }
}

/// Why the CUDA backend cannot run `precision` (None: it can). Every precision runs: the
/// kernels are built for compute capability 8.0 (Ampere) and later, all of which have TF32
/// and BF16 tensor cores, and the emulator emulates them.
pub fn cuda_unsupported(precision: Precision) -> Option<String> {
    match precision {
        Precision::Fp32 | Precision::Tf32 | Precision::Bf16 => None,
    }
}

/// The bfloat16 nearest to `x` (ties to even), as its 16 bits: the top half of the f32
/// rounded, a NaN kept a (quiet) NaN. The vector kernels round the same way.
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b | 0x0040_0000) >> 16) as u16;
    }
    let lsb = (b >> 16) & 1;
    (b.wrapping_add(0x7FFF + lsb) >> 16) as u16
}

/// `x` rounded to the nearest bfloat16 (ties to even), back as an f32: what the bf16
/// products see of an operand.
pub fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits(u32::from(bf16_bits(x)) << 16)
}

/// Two bf16 operands in one 32-bit word, `lo` in the low half: the pair layout of
/// `vdpbf16ps`, which adds `lo * lo' + hi * hi'` into each f32 lane.
pub fn bf16_pair(lo: f32, hi: f32) -> u32 {
    u32::from(bf16_bits(lo)) | (u32::from(bf16_bits(hi)) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even 1.
        assert_eq!(round_to_bf16(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to the even 1 + 2^-6.
        assert_eq!(
            round_to_bf16(1.0 + 3.0 * 2f32.powi(-8)),
            1.0 + 2f32.powi(-6)
        );
        // Just above the halfway point rounds up.
        assert_eq!(
            round_to_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(round_to_bf16(-2.5), -2.5);
        assert!(round_to_bf16(f32::NAN).is_nan());
        assert_eq!(round_to_bf16(f32::INFINITY), f32::INFINITY);
        // The largest finite f32 rounds up to infinity, as in every bf16 conversion.
        assert_eq!(round_to_bf16(f32::MAX), f32::INFINITY);
        // The relative error is at most the unit roundoff.
        let u = Precision::Bf16.unit_roundoff();
        for i in 0..10_000 {
            let x = 1.0 + i as f32 * 1.37e-4;
            let r = round_to_bf16(x);
            assert!(((r - x) / x).abs() as f64 <= u, "{x} -> {r}");
        }
        assert_eq!(bf16_pair(1.0, -2.0), 0xC000_3F80);
    }
}
