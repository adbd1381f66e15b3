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

#[inline(always)]
fn resize_rows_portable<const C: usize>(
    src: &[u8],
    src_w: usize,
    dst: &mut [u8],
    dst_w: usize,
    dst_h: usize,
    src_h: usize,
) {
    let xs = taps(src_w, dst_w);
    let ys = taps(src_h, dst_h);
    let in_row = src_w * C;
    // For every output value (pixel x channel) of a row: the offsets of its two source
    // values in the vertically blended row, and the horizontal weight. Flat per value, so
    // that the horizontal pass is one gather-and-lerp loop the compiler vectorises, rather
    // than a small loop per pixel.
    let out_row_len = dst_w * C;
    let mut left = Vec::with_capacity(out_row_len);
    let mut right = Vec::with_capacity(out_row_len);
    let mut weight = Vec::with_capacity(out_row_len);
    for x in 0..dst_w {
        for c in 0..C {
            left.push(u32::try_from(xs.lo[x] * C + c).expect("row fits u32 offsets"));
            right.push(u32::try_from(xs.hi[x] * C + c).expect("row fits u32 offsets"));
            weight.push(xs.frac[x]);
        }
    }
    let mut blended = vec![0f32; in_row];
    for (y, out_row) in dst.chunks_exact_mut(out_row_len).enumerate() {
        let top = &src[ys.lo[y] * in_row..][..in_row];
        let bottom = &src[ys.hi[y] * in_row..][..in_row];
        let f = ys.frac[y];
        for ((b, &t), &u) in blended.iter_mut().zip(top).zip(bottom) {
            let (t, u) = (f32::from(t), f32::from(u));
            *b = t + (u - t) * f;
        }
        let taps = left.iter().zip(&right).zip(&weight);
        for (o, ((&l, &r), &fx)) in out_row.iter_mut().zip(taps) {
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
        let mut dispatched = vec![0u8; 29 * 50 * 3];
        resize_bilinear(&src, 61, 47, &mut dispatched, 29, 50, 3);
        assert_eq!(portable, dispatched);
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
