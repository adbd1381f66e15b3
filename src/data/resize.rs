//! Bilinear resizing with half-pixel centres, the arithmetic of `tf.image.resize(...,
//! "bilinear", antialias=False)` (and so of Keras' `image_dataset_from_directory`): output
//! pixel `x` samples the input at `(x + 0.5) * in / out - 0.5`, clamped at the borders, from
//! its 2x2 neighbours, in f32; the result is rounded to u8. The image is stretched to the
//! target size (no crop), as Keras does by default.
//!
//! Only the two input rows an output row needs are interpolated horizontally, so the cost is
//! proportional to the output (plus a row buffer), not to the input: decoding dominates.

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
    let xs = taps(src_w, dst_w);
    let ys = taps(src_h, dst_h);
    let row_len = dst_w * channels;
    // Horizontally interpolated input rows, cached by index: consecutive output rows share
    // input rows when enlarging, and the next row's `lo` is often this row's `hi`.
    let mut rows = [vec![0f32; row_len], vec![0f32; row_len]];
    let mut cached = [usize::MAX, usize::MAX];
    let horizontal = |y: usize, out: &mut [f32]| {
        let line = &src[y * src_w * channels..][..src_w * channels];
        for x in 0..dst_w {
            let (l, h, f) = (xs.lo[x] * channels, xs.hi[x] * channels, xs.frac[x]);
            for c in 0..channels {
                let a = f32::from(line[l + c]);
                let b = f32::from(line[h + c]);
                out[x * channels + c] = a + (b - a) * f;
            }
        }
    };
    for (y, out_row) in dst.chunks_exact_mut(row_len).enumerate() {
        let (lo, hi) = (ys.lo[y], ys.hi[y]);
        if cached[0] != lo && cached[1] == lo {
            rows.swap(0, 1);
            cached.swap(0, 1);
        }
        if cached[0] != lo {
            horizontal(lo, &mut rows[0]);
            cached[0] = lo;
        }
        if cached[1] != hi {
            horizontal(hi, &mut rows[1]);
            cached[1] = hi;
        }
        let f = ys.frac[y];
        let (top, bottom) = (&rows[0], &rows[1]);
        for ((o, &t), &b) in out_row.iter_mut().zip(top).zip(bottom) {
            let v = t + (b - t) * f;
            *o = (v + 0.5) as u8; // v is in [0, 255]: truncation after +0.5 rounds
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
    fn flip() {
        let mut img = vec![1, 2, 3, 4, 5, 6, 7, 8, 9];
        flip_horizontal(&mut img, 3, 1);
        assert_eq!(img, vec![3, 2, 1, 6, 5, 4, 9, 8, 7]);
        let mut rgb = vec![1, 1, 1, 2, 2, 2];
        flip_horizontal(&mut rgb, 2, 3);
        assert_eq!(rgb, vec![2, 2, 2, 1, 1, 1]);
    }
}
