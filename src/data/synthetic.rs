//! The built-in data set: two classes of striped patches, "horizontal" and "vertical".
//!
//! Each image has a rectangle of stripes (random position, size, period, phase, and two
//! random colours) on a noisy background of random colour. The stripe angle is within 30°
//! of horizontal for class 0 and of vertical for class 1. Colours and mean intensities carry
//! no information about the class, so no single pixel separates them: the model has to learn
//! an oriented texture. Generated deterministically from a seed, in parallel.

use rayon::prelude::*;

use super::ImageSet;
use crate::model::ImageShape;
use crate::rng::Rng;

pub const CLASS_NAMES: [&str; 2] = ["horizontal", "vertical"];

/// `count` images of `size x size x 3` (classes alternate, so they are balanced).
pub fn generate(count: usize, size: usize, seed: u64) -> ImageSet {
    let shape = ImageShape {
        height: size,
        width: size,
        channels: 3,
    };
    let mut pixels = vec![0u8; count * shape.len()];
    let labels: Vec<u32> = (0..count as u32).map(|i| i % 2).collect();
    pixels
        .par_chunks_mut(shape.len().max(1))
        .enumerate()
        .for_each(|(i, img)| {
            let mut rng = Rng::derive(seed, 0x5eed_0000 + i as u64);
            draw(img, size, labels[i], &mut rng);
        });
    ImageSet {
        shape,
        class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        pixels,
        labels,
        multi: None,
    }
}

fn random_colour(rng: &mut Rng) -> [f64; 3] {
    [rng.uniform(), rng.uniform(), rng.uniform()]
}

fn draw(img: &mut [u8], size: usize, label: u32, rng: &mut Rng) {
    let s = size as f64;
    let background = random_colour(rng);
    let (light, dark) = (random_colour(rng), random_colour(rng));
    let angle = rng.range(-30f64, 30.0).to_radians()
        + if label == 1 {
            std::f64::consts::FRAC_PI_2
        } else {
            0.0
        };
    let period = rng.range(0.05, 0.12) * s;
    let phase = rng.range(0.0, std::f64::consts::TAU);
    let (w, h) = (rng.range(0.5, 0.9) * s, rng.range(0.5, 0.9) * s);
    let (x0, y0) = (rng.range(0.0, s - w), rng.range(0.0, s - h));
    let (dx, dy) = (-angle.sin(), angle.cos()); // stripes run along `angle`
    for y in 0..size {
        for x in 0..size {
            let (fx, fy) = (x as f64, y as f64);
            let inside = fx >= x0 && fx < x0 + w && fy >= y0 && fy < y0 + h;
            let colour = if inside {
                let t = 0.5
                    + 0.5 * (std::f64::consts::TAU * (fx * dx + fy * dy) / period + phase).sin();
                [0, 1, 2].map(|c| light[c] * t + dark[c] * (1.0 - t))
            } else {
                background
            };
            for (c, &v) in colour.iter().enumerate() {
                let noisy = v + 0.08 * rng.normal();
                img[(y * size + x) * 3 + c] = (noisy.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_balanced_and_not_constant() {
        let a = generate(6, 17, 3);
        assert_eq!(a.pixels, generate(6, 17, 3).pixels);
        assert_ne!(a.pixels, generate(6, 17, 4).pixels);
        assert_eq!(a.class_counts(&(0..6).collect::<Vec<_>>()), vec![3, 3]);
        let first = a.image(0);
        assert!(first.iter().any(|&p| p != first[0]));
    }

    #[test]
    fn mean_intensity_does_not_separate_the_classes() {
        // Average brightness per class over many images is about equal: the class is in
        // the stripes' orientation, not in any colour statistic.
        let set = generate(400, 16, 1);
        let mut mean = [0.0f64; 2];
        for i in 0..set.len() {
            mean[set.labels[i] as usize] +=
                set.image(i).iter().map(|&p| f64::from(p)).sum::<f64>() / set.shape.len() as f64;
        }
        let (m0, m1) = (mean[0] / 200.0, mean[1] / 200.0);
        assert!((m0 - m1).abs() < 5.0, "class means {m0:.1} vs {m1:.1}");
    }
}
