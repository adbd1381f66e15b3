//! Bilinear resizing with half-pixel centres, the arithmetic of `tf.image.resize(...,
//! "bilinear", antialias=False)` (and so of Keras' `image_dataset_from_directory`): output
//! pixel `x` samples the input at `(x + 0.5) * in / out - 0.5`, clamped at the borders, from
//! its 2x2 neighbours, in f32; the result is rounded to u8. The image is stretched to the
//! target size (no crop), as Keras does by default.
//!
//! Each output row is made in two passes: the two input rows it needs are blended
//! vertically across the full width (contiguous, so the compiler vectorises it), then that
//! one row is sampled horizontally. TensorFlow blends horizontally first; the two orders
//! are the same arithmetic up to float rounding (about 1e-5), far below the u8 step.

/// Source index pair and weight of the upper one for each output coordinate.
#[derive(Clone, Debug)]
struct Taps {
    lo: Vec<usize>,
    hi: Vec<usize>,
    frac: Vec<f32>,
}

fn taps(input: usize, output: usize) -> Taps {
    let scale = input as f32 / output as f32;
    let (mut lo, mut hi, mut frac) = (
        Vec::with_capacity(output),
        Vec::with_capacity(output),
        Vec::with_capacity(output),
    );
    for o in 0..output {
        let centre = (o as f32 + 0.5) * scale - 0.5;
        let floor = centre.floor();
        let last = input as isize - 1;
        lo.push((floor as isize).clamp(0, last) as usize);
        hi.push((floor as isize + 1).clamp(0, last) as usize);
        frac.push(centre - floor);
    }
    Taps { lo, hi, frac }
}

/// Resizes an interleaved u8 image of `channels` channels from `src_w x src_h` to
/// `dst_w x dst_h` into `dst` (exactly `dst_w * dst_h * channels` bytes).
pub fn resize_bilinear(
    src: &[u8],
    src_w: usize,
    src_h: usize,
    dst: &mut [u8],
    dst_w: usize,
    dst_h: usize,
    channels: usize,
) {
    assert_eq!(src.len(), src_w * src_h * channels, "source size");
    assert_eq!(dst.len(), dst_w * dst_h * channels, "destination size");
    if src_w == dst_w && src_h == dst_h {
        dst.copy_from_slice(src);
        return;
    }
    match channels {
        3 => resize_rows::<3>(src, src_w, dst, dst_w, dst_h, src_h),
        1 => resize_rows::<1>(src, src_w, dst, dst_w, dst_h, src_h),
        4 => resize_rows::<4>(src, src_w, dst, dst_w, dst_h, src_h),
        _ => panic!("resize_bilinear: {channels} channels (1, 3 or 4 supported)"),
    }
}

fn resize_rows<const C: usize>(
    src: &[u8],
    src_w: usize,
    dst: &mut [u8],
    dst_w: usize,
    dst_h: usize,
    src_h: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::ops::cpu::avx512() {
        // SAFETY: the CPU supports AVX-512F, checked just above.
        unsafe { resize_rows_avx512::<C>(src, src_w, dst, dst_w, dst_h, src_h) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { resize_rows_avx2::<C>(src, src_w, dst, dst_w, dst_h, src_h) };
        return;
    }
    resize_rows_portable::<C>(src, src_w, dst, dst_w, dst_h, src_h);
}

/// The same code compiled for AVX2 (8-lane blends and conversions). No FMA, so results
/// are bit-identical to the portable build.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn resize_rows_avx2<const C: usize>(
    src: &[u8],
    src_w: usize,
    dst: &mut [u8],
    dst_w: usize,
    dst_h: usize,
    src_h: usize,
) {
    resize_rows_portable::<C>(src, src_w, dst, dst_w, dst_h, src_h);
}

/// The vertical pass as the portable code, compiled for AVX-512; the horizontal pass by
/// [`avx512::horizontal`]: the same arithmetic on the same values, so the same bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn resize_rows_avx512<const C: usize>(
    src: &[u8],
    src_w: usize,
    dst: &mut [u8],
    dst_w: usize,
    dst_h: usize,
    src_h: usize,
) {
    let taps = RowTaps::of::<C>(src_w, dst_w);
    let blocks = avx512::Blocks::of(&taps, src_w * C);
    resize_rows_by::<C>(src, src_w, dst, dst_h, src_h, &taps, |blended, out_row| {
        // SAFETY: AVX-512F is present (this function's feature); `blocks` was planned for
        // these taps and rows of `blended.len()` values.
        unsafe { avx512::horizontal(blended, &taps, &blocks, out_row) }
    });
}

#[inline(always)]
fn resize_rows_portable<const C: usize>(
    src: &[u8],
    src_w: usize,
    dst: &mut [u8],
    dst_w: usize,
    dst_h: usize,
    src_h: usize,
) {
    let taps = RowTaps::of::<C>(src_w, dst_w);
    resize_rows_by::<C>(src, src_w, dst, dst_h, src_h, &taps, |blended, out_row| {
        horizontal(blended, &taps, out_row, 0)
    });
}

/// For every output value (pixel x channel) of a row: the offsets of its two source
/// values in the vertically blended row, and the horizontal weight. Flat per value, so
/// that the horizontal pass is one gather-and-lerp loop the compiler vectorises, rather
/// than a small loop per pixel.
struct RowTaps {
    left: Vec<u32>,
    right: Vec<u32>,
    weight: Vec<f32>,
}

impl RowTaps {
    fn of<const C: usize>(src_w: usize, dst_w: usize) -> RowTaps {
        let xs = taps(src_w, dst_w);
        let n = dst_w * C;
        let (mut left, mut right, mut weight) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for x in 0..dst_w {
            for c in 0..C {
                left.push(u32::try_from(xs.lo[x] * C + c).expect("row fits u32 offsets"));
                right.push(u32::try_from(xs.hi[x] * C + c).expect("row fits u32 offsets"));
                weight.push(xs.frac[x]);
            }
        }
        RowTaps {
            left,
            right,
            weight,
        }
    }
}

/// Each output row: the two input rows it needs blended vertically across the full width,
/// then `horizontal(blended, out_row)`.
#[inline(always)]
fn resize_rows_by<const C: usize>(
    src: &[u8],
    src_w: usize,
    dst: &mut [u8],
    dst_h: usize,
    src_h: usize,
    taps_x: &RowTaps,
    mut horizontal: impl FnMut(&[f32], &mut [u8]),
) {
    let ys = taps(src_h, dst_h);
    let in_row = src_w * C;
    let mut blended = vec![0f32; in_row];
    for (y, out_row) in dst.chunks_exact_mut(taps_x.left.len()).enumerate() {
        let top = &src[ys.lo[y] * in_row..][..in_row];
        let bottom = &src[ys.hi[y] * in_row..][..in_row];
        let f = ys.frac[y];
        for ((b, &t), &u) in blended.iter_mut().zip(top).zip(bottom) {
            let (t, u) = (f32::from(t), f32::from(u));
            *b = t + (u - t) * f;
        }
        horizontal(&blended, out_row);
    }
}

/// The horizontal pass of one output row from value `from` on: each value's two taps,
/// lerped, rounded to u8.
#[inline(always)]
fn horizontal(blended: &[f32], t: &RowTaps, out_row: &mut [u8], from: usize) {
    let taps = t.left[from..]
        .iter()
        .zip(&t.right[from..])
        .zip(&t.weight[from..]);
    for (o, ((&l, &r), &fx)) in out_row[from..].iter_mut().zip(taps) {
        // SAFETY: every offset is `x * C + c` for a source column x < src_w and c < C,
        // so below `in_row == blended.len()` (bounds checks here stop vectorisation).
        let (a, b) = unsafe {
            (
                *blended.get_unchecked(l as usize),
                *blended.get_unchecked(r as usize),
            )
        };
        let v = a + (b - a) * fx;
        // v is a blend of values in [0, 255], so in [0, 255]: +0.5 and truncation round
        // it. The unchecked conversion (vcvttps2dq) vectorises; Rust's saturating `as`
        // compiles to a compare-and-branch per value here.
        // SAFETY: v + 0.5 is finite and within i32.
        *o = unsafe { (v + 0.5).to_int_unchecked::<i32>() } as u8;
    }
}

/// The horizontal pass on AVX-512 without gathers: 8 output values a step take both their
/// taps from 32 blended values loaded at once, picked by `vpermt2ps` (where the block's
/// taps lie within 32 values: any downscale up to about 2.6x for 3 channels, every
/// upscale); the other blocks and the row's last values go value by value. The scalar
/// gathers had been half the resize's time (`perf annotate`).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::RowTaps;

    /// Output values per step.
    const STEP: usize = 8;
    /// Blended values a step can pick from (two registers).
    const REACH: usize = 32;

    /// A step whose taps lie within reach: its first output value, and the first of the
    /// 32 blended values its taps come from.
    #[derive(Clone, Copy)]
    struct Near {
        out: u32,
        base: u32,
    }

    /// The steps of a row: those within reach ([`Near`]) with each value's taps relative
    /// to the step's base, and the first output value of each of the others. Split once
    /// per image, so that the loop over the near steps has no branch (a branch per step
    /// had cost more than the step's arithmetic: `perf annotate`).
    pub(super) struct Blocks {
        near: Vec<Near>,
        far: Vec<u32>,
        left: Vec<u32>,
        right: Vec<u32>,
    }

    impl Blocks {
        pub(super) fn of(t: &RowTaps, row_len: usize) -> Blocks {
            let steps = t.left.len() / STEP;
            let (mut near, mut far, mut left, mut right) = (
                Vec::with_capacity(steps),
                Vec::new(),
                vec![0; steps * STEP],
                vec![0; steps * STEP],
            );
            for s in 0..steps {
                let at = s * STEP..(s + 1) * STEP;
                let lowest = t.left[at.clone()].iter().min().copied().unwrap_or(0) as usize;
                let highest = t.right[at.clone()].iter().max().copied().unwrap_or(0) as usize;
                // The load of 32 values must stay inside the row: start earlier if needed.
                let start = lowest.min(row_len.saturating_sub(REACH));
                if !(row_len >= REACH && highest < start + REACH) {
                    far.push(at.start as u32);
                    continue;
                }
                near.push(Near {
                    out: at.start as u32,
                    base: start as u32,
                });
                for o in at {
                    left[o] = t.left[o] - start as u32;
                    right[o] = t.right[o] - start as u32;
                }
            }
            Blocks {
                near,
                far,
                left,
                right,
            }
        }
    }

    /// # Safety
    /// AVX-512F present; `blocks` planned for `t` and rows of `blended.len()` values, and
    /// `out_row.len() == t.left.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn horizontal(
        blended: &[f32],
        t: &RowTaps,
        blocks: &Blocks,
        out_row: &mut [u8],
    ) {
        debug_assert_eq!(out_row.len(), t.left.len());
        let half = _mm512_set1_ps(0.5);
        let (src, left, right) = (
            blended.as_ptr(),
            blocks.left.as_ptr(),
            blocks.right.as_ptr(),
        );
        let (weight, out) = (t.weight.as_ptr(), out_row.as_mut_ptr());
        for &Near { out: o, base } in &blocks.near {
            let (o, base) = (o as usize, base as usize);
            debug_assert!(base + REACH <= blended.len() && o + STEP <= out_row.len());
            // SAFETY: base + 32 <= blended.len() and o + 8 <= the row's values (Blocks::of
            // for these taps and rows); the indices are < 32, the upper 8 lanes are never
            // stored.
            unsafe {
                let low = _mm512_loadu_ps(src.add(base));
                let high = _mm512_loadu_ps(src.add(base + 16));
                let li = _mm512_castsi256_si512(_mm256_loadu_si256(left.add(o).cast()));
                let ri = _mm512_castsi256_si512(_mm256_loadu_si256(right.add(o).cast()));
                let w = _mm512_castps256_ps512(_mm256_loadu_ps(weight.add(o)));
                let a = _mm512_permutex2var_ps(low, li, high);
                let b = _mm512_permutex2var_ps(low, ri, high);
                // a + (b - a) * w, then + 0.5 and truncation: the portable code's steps.
                let v = _mm512_add_ps(a, _mm512_mul_ps(_mm512_sub_ps(b, a), w));
                let q = _mm512_cvttps_epi32(_mm512_add_ps(v, half));
                _mm_storel_epi64(out.add(o).cast(), _mm512_cvtepi32_epi8(q));
            }
        }
        for &o in &blocks.far {
            let o = o as usize;
            super::horizontal(blended, t, &mut out_row[..o + STEP], o);
        }
        let done = t.left.len() / STEP * STEP;
        super::horizontal(blended, t, out_row, done);
    }
}

/// Mirrors an interleaved image left-right in place.
pub fn flip_horizontal(img: &mut [u8], width: usize, channels: usize) {
    for row in img.chunks_exact_mut(width * channels) {
        let (mut a, mut b) = (0, width.saturating_sub(1));
        while a < b {
            for c in 0..channels {
                row.swap(a * channels + c, b * channels + c);
            }
            a += 1;
            b -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant() {
        let src: Vec<u8> = (0..5 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let mut dst = vec![0; src.len()];
        resize_bilinear(&src, 5, 4, &mut dst, 5, 4, 3);
        assert_eq!(src, dst);
        let flat = vec![77u8; 13 * 9 * 3];
        let mut dst = vec![0; 4 * 6 * 3];
        resize_bilinear(&flat, 13, 9, &mut dst, 4, 6, 3);
        assert!(dst.iter().all(|&v| v == 77));
    }

    #[test]
    fn two_to_four_by_hand() {
        // 1 row [0, 100] -> 4 columns: centres at -0.25, 0.25, 0.75, 1.25 of the input,
        // clamped: 0, 25, 75, 100 (tf.image.resize gives the same).
        let mut dst = vec![0; 4];
        resize_bilinear(&[0, 100], 2, 1, &mut dst, 4, 1, 1);
        assert_eq!(dst, vec![0, 25, 75, 100]);
    }

    #[test]
    fn avx2_and_portable_builds_agree_bit_for_bit() {
        let src: Vec<u8> = (0..61 * 47 * 3).map(|i| (i * 37 % 253) as u8).collect();
        let mut portable = vec![0u8; 29 * 50 * 3];
        resize_rows_portable::<3>(&src, 61, &mut portable, 29, 50, 47);
        let mut avx2 = vec![0u8; 29 * 50 * 3];
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 checked just above.
            unsafe { resize_rows_avx2::<3>(&src, 61, &mut avx2, 29, 50, 47) };
            assert_eq!(portable, avx2);
        } else {
            println!("SKIPPED the AVX2 build's half of this test: no AVX2");
        }
    }

    /// The AVX-512 horizontal pass (taps picked by permutes where they lie within reach)
    /// gives the portable bytes: the photo case (500x375 -> 224), upscales, a downscale
    /// past its reach (every step value by value), rows shorter than its 32 values, widths
    /// that leave a tail, 1, 3 and 4 channels.
    #[test]
    fn avx512_and_portable_builds_agree_bit_for_bit() {
        if !crate::ops::cpu::avx512() {
            println!("SKIPPED avx512_and_portable_builds_agree_bit_for_bit: no AVX-512");
            return;
        }
        fn check<const C: usize>(src_w: usize, src_h: usize, dst_w: usize, dst_h: usize) {
            let src: Vec<u8> = (0..src_w * src_h * C)
                .map(|i| (i * 37 % 253) as u8)
                .collect();
            let mut portable = vec![0u8; dst_w * dst_h * C];
            resize_rows_portable::<C>(&src, src_w, &mut portable, dst_w, dst_h, src_h);
            let mut fast = vec![0u8; dst_w * dst_h * C];
            // SAFETY: AVX-512F checked above.
            unsafe { resize_rows_avx512::<C>(&src, src_w, &mut fast, dst_w, dst_h, src_h) };
            assert_eq!(portable, fast, "{src_w}x{src_h}x{C} -> {dst_w}x{dst_h}");
        }
        check::<3>(500, 375, 224, 224);
        check::<3>(61, 47, 29, 50);
        check::<3>(40, 30, 97, 61);
        check::<3>(900, 20, 101, 7);
        check::<3>(7, 5, 11, 3);
        check::<1>(500, 40, 224, 9);
        check::<4>(333, 21, 150, 13);
    }

    #[test]
    fn flip() {
        let mut img = vec![1, 2, 3, 4, 5, 6, 7, 8, 9];
        flip_horizontal(&mut img, 3, 1);
        assert_eq!(img, vec![3, 2, 1, 6, 5, 4, 9, 8, 7]);
        let mut rgb = vec![1, 1, 1, 2, 2, 2];
        flip_horizontal(&mut rgb, 2, 3);
        assert_eq!(rgb, vec![2, 2, 2, 1, 1, 1]);
    }
}
