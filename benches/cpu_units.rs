//! The multiply rate of the CPU's product units, one core: f32 FMAs (`vfmadd`), AVX512_BF16's
//! `vdpbf16ps` and AMX's `TDPBF16PS`, each as independent chains (throughput, not latency).
//! `cargo bench --bench cpu_units`. Why it exists: the README's "Why the CPU uses AMX" rests
//! on these figures (on the project's Xeon `vdpbf16ps` issues at a quarter of the FMA's rate,
//! half its multiplies; AMX about 15x the FMAs).

#[cfg(target_arch = "x86_64")]
mod units {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::time::Instant;

    const CHAINS: usize = 12;

    /// Seconds for `n` rounds of CHAINS independent FMAs.
    #[target_feature(enable = "avx512f")]
    fn fma(n: usize) -> (f64, f32) {
        let (x, y) = (_mm512_set1_ps(1.0001), _mm512_set1_ps(0.9999));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        let start = Instant::now();
        for _ in 0..n {
            for a in &mut acc {
                *a = _mm512_fmadd_ps(x, y, *a);
            }
            // SAFETY: an empty barrier, so that the rounds are not folded together.
            unsafe { asm!("", options(nomem, nostack)) };
        }
        let s = start.elapsed().as_secs_f64();
        (s, acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum())
    }

    /// Seconds for `n` rounds of CHAINS independent `vdpbf16ps`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn dpbf16(n: usize) -> (f64, f32) {
        // SAFETY: __m512i and __m512bh are the same 512 bits.
        let x = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3f80_3f80)) };
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        let start = Instant::now();
        for _ in 0..n {
            for a in &mut acc {
                *a = _mm512_dpbf16_ps(*a, x, x);
            }
            // SAFETY: as in fma.
            unsafe { asm!("", options(nomem, nostack)) };
        }
        let s = start.elapsed().as_secs_f64();
        (s, acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum())
    }

    /// `LDTILECFG`'s operand, as `src/ops/amx_tiles.rs` has it (private there: a
    /// bench sees only the crate's public API).
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    /// Tiles `0..count` configured as 16 rows of 64 bytes.
    fn full_tiles(count: usize) -> TileConfig {
        let mut cfg = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        cfg.bytes_per_row[..count].fill(64);
        cfg.rows[..count].fill(16);
        cfg
    }

    /// Seconds for `n` rounds of 4 independent `TDPBF16PS` (16x32 by 32x16 bf16 into 16x16
    /// f32 each).
    ///
    /// # Safety
    /// AMX-BF16 usable (`focalflow::precision::cpu_has("amx-bf16")` asked Linux for it).
    unsafe fn tdpbf16(n: usize) -> f64 {
        let cfg = full_tiles(6);
        let ones = vec![0x3f80u16; 16 * 32];
        // SAFETY: tiles 0-5 configured above, 16 rows of 64 bytes read from `ones`.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly));
            asm!("tileloadd tmm4, [{}+{}*1]", in(reg) ones.as_ptr(), in(reg) 64usize, options(nostack, readonly));
            asm!("tileloadd tmm5, [{}+{}*1]", in(reg) ones.as_ptr(), in(reg) 64usize, options(nostack, readonly));
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            let start = Instant::now();
            for _ in 0..n {
                asm!(
                    "tdpbf16ps tmm0, tmm4, tmm5",
                    "tdpbf16ps tmm1, tmm4, tmm5",
                    "tdpbf16ps tmm2, tmm4, tmm5",
                    "tdpbf16ps tmm3, tmm4, tmm5",
                    options(nostack, nomem)
                );
            }
            let s = start.elapsed().as_secs_f64();
            asm!("tilerelease", options(nostack, nomem));
            s
        }
    }

    /// Seconds for `n` rounds of 4 `TDPBF16PS` whose operands are loaded each round, as the
    /// convolutions' and dense layers' loops load them, in `shape` (first operands x second
    /// ones: 2x2, 1x4 or 4x1, the repeated kind loaded into tiles in turn). Each operand kind
    /// comes from L1 (the same few KiB every round) or from L2 (`far`: the rounds walk
    /// through 512 KiB); every tile row starts `misaligned` bytes past a cache line (0, or 16
    /// as in a buffer straight from the heap, whose rows then straddle two lines).
    ///
    /// # Safety
    /// AMX-BF16 usable.
    unsafe fn tdpbf16_loaded(
        n: usize,
        shape: (usize, usize),
        far: (bool, bool),
        misaligned: usize,
    ) -> f64 {
        let cfg = full_tiles(8);
        const BLOCK: usize = 16 * 32;
        const FAR: usize = 512;
        // Near blocks 0..8 (first operands 0..4, second 4..8), far ones from 8 on.
        let ones = vec![0x3f80u16; (8 + 2 * FAR + 9) * BLOCK];
        let p = ones.as_ptr();
        let (p, s) = (p.wrapping_add(p.align_offset(64) + misaligned / 2), 64usize);
        let mut at = 0;
        // SAFETY: tiles 0-7 configured; every block read lies inside `ones`.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly));
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            let start = Instant::now();
            for _ in 0..n {
                at = (at + 8) % (2 * FAR);
                let a = |i: usize| p.wrapping_add(if far.0 { 8 + at + i } else { i } * BLOCK);
                let b = |j: usize| p.wrapping_add(if far.1 { 12 + at + j } else { 4 + j } * BLOCK);
                match shape {
                    (2, 2) => asm!(
                        "tileloadd tmm6, [{b0}+{s}*1]",
                        "tileloadd tmm4, [{a0}+{s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{b1}+{s}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{a1}+{s}*1]",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a(0), a1 = in(reg) a(1), b0 = in(reg) b(0), b1 = in(reg) b(1),
                        s = in(reg) s, options(nostack, readonly)
                    ),
                    (1, 4) => asm!(
                        "tileloadd tmm4, [{a0}+{s}*1]",
                        "tileloadd tmm5, [{b0}+{s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm5",
                        "tileloadd tmm6, [{b1}+{s}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm6",
                        "tileloadd tmm7, [{b2}+{s}*1]",
                        "tdpbf16ps tmm2, tmm4, tmm7",
                        "tileloadd tmm5, [{b3}+{s}*1]",
                        "tdpbf16ps tmm3, tmm4, tmm5",
                        a0 = in(reg) a(0), b0 = in(reg) b(0), b1 = in(reg) b(1),
                        b2 = in(reg) b(2), b3 = in(reg) b(3),
                        s = in(reg) s, options(nostack, readonly)
                    ),
                    _ => asm!(
                        "tileloadd tmm6, [{b0}+{s}*1]",
                        "tileloadd tmm4, [{a0}+{s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm5, [{a1}+{s}*1]",
                        "tdpbf16ps tmm1, tmm5, tmm6",
                        "tileloadd tmm4, [{a2}+{s}*1]",
                        "tdpbf16ps tmm2, tmm4, tmm6",
                        "tileloadd tmm5, [{a3}+{s}*1]",
                        "tdpbf16ps tmm3, tmm5, tmm6",
                        a0 = in(reg) a(0), a1 = in(reg) a(1), a2 = in(reg) a(2),
                        a3 = in(reg) a(3), b0 = in(reg) b(0),
                        s = in(reg) s, options(nostack, readonly)
                    ),
                }
            }
            let secs = start.elapsed().as_secs_f64();
            asm!("tilerelease", options(nostack, nomem));
            secs
        }
    }

    pub fn run() {
        use focalflow::precision::cpu_has;
        if !cpu_has("avx512f") {
            println!("cpu units: not timed (no AVX-512)");
            return;
        }
        let n = 20_000_000;
        // SAFETY: AVX-512F present (checked above).
        let (s, sum) = unsafe { fma(n) };
        std::hint::black_box(sum);
        let fma_ns = s * 1e9 / (n * CHAINS) as f64;
        let fma_gmac = (n * CHAINS * 16) as f64 / s / 1e9;
        println!("vfmadd (16 f32 MACs):      {fma_ns:.3} ns per instruction, {fma_gmac:.0} GMAC/s");
        if cpu_has("avx512bf16") {
            // SAFETY: AVX512_BF16 present (checked).
            let (s, sum) = unsafe { dpbf16(n) };
            std::hint::black_box(sum);
            let ns = s * 1e9 / (n * CHAINS) as f64;
            let gmac = (n * CHAINS * 32) as f64 / s / 1e9;
            println!(
                "vdpbf16ps (32 bf16 MACs):  {ns:.3} ns per instruction, {gmac:.0} GMAC/s ({:.2}x the FMAs' multiplies)",
                gmac / fma_gmac
            );
        } else {
            println!("vdpbf16ps: not timed (no AVX512_BF16)");
        }
        if cpu_has("amx-bf16") {
            let n = 2_000_000;
            // SAFETY: AMX-BF16 usable (checked, which asked Linux for the tile state).
            let s = unsafe { tdpbf16(n) };
            let gmac = (n * 4 * 16 * 16 * 32) as f64 / s / 1e9;
            println!(
                "TDPBF16PS (8192 bf16 MACs): {:.2} ns per instruction, {gmac:.0} GMAC/s ({:.1}x the FMAs')",
                s * 1e9 / (n * 4) as f64,
                gmac / fma_gmac
            );
            let n = n / 4;
            for (shape, misaligned) in [((2, 2), 0), ((1, 4), 0), ((4, 1), 0), ((2, 2), 16)] {
                let line: Vec<String> =
                    [(false, false), (true, false), (false, true), (true, true)]
                        .into_iter()
                        .map(|far| {
                            // SAFETY: as above.
                            let s = unsafe { tdpbf16_loaded(n, shape, far, misaligned) };
                            let level = |f: bool| if f { "L2" } else { "L1" };
                            format!(
                                "{}/{} {:.2}",
                                level(far.0),
                                level(far.1),
                                s * 1e9 / (n * 4) as f64
                            )
                        })
                        .collect();
                println!(
                    "TDPBF16PS with tile loads, {}x{}, rows {misaligned} bytes off a line (first/second from): {} ns per product",
                    shape.0,
                    shape.1,
                    line.join(", ")
                );
            }
        } else {
            println!("TDPBF16PS: not timed (no usable AMX)");
        }
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    units::run();
    #[cfg(not(target_arch = "x86_64"))]
    println!("cpu units: x86-64 only");
}
