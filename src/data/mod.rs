//! Image sets in memory (u8 NHWC), stratified splits, and batch assembly (f32 / 255,
//! one-hot labels).

pub mod synthetic;

use crate::model::ImageShape;
use crate::rng::Rng;
use crate::{Error, Result};

/// A labelled set of images of one shape, stored as u8 NHWC.
#[derive(Clone, Debug)]
pub struct ImageSet {
    pub shape: ImageShape,
    pub class_names: Vec<String>,
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn classes(&self) -> usize {
        self.class_names.len()
    }
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * self.shape.len()..][..self.shape.len()]
    }
    /// Number of images per class among `indices`.
    pub fn class_counts(&self, indices: &[usize]) -> Vec<usize> {
        let mut counts = vec![0; self.classes()];
        for &i in indices {
            counts[self.labels[i] as usize] += 1;
        }
        counts
    }

    /// A deterministic stratified split: in each class, `round(val_fraction * count)` images
    /// (chosen by `seed`) go to validation, the rest to training. Both lists are sorted.
    pub fn stratified_split(
        &self,
        val_fraction: f64,
        seed: u64,
    ) -> Result<(Vec<usize>, Vec<usize>)> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::invalid(format!(
                "--val-fraction {val_fraction}: must be in [0, 1)"
            )));
        }
        let mut rng = Rng::derive(seed, 2);
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for class in 0..self.classes() as u32 {
            let mut members: Vec<usize> = (0..self.len())
                .filter(|&i| self.labels[i] == class)
                .collect();
            rng.shuffle(&mut members);
            let n_val = (val_fraction * members.len() as f64).round() as usize;
            val.extend_from_slice(&members[..n_val]);
            train.extend_from_slice(&members[n_val..]);
        }
        train.sort_unstable();
        val.sort_unstable();
        Ok((train, val))
    }

    /// Writes images `indices` as f32 in [0, 1] into `x` (NHWC) and their one-hot labels
    /// into `y`; both are resized to fit exactly.
    pub fn fill_batch(&self, indices: &[usize], x: &mut Vec<f32>, y: &mut Vec<f32>) {
        let (len, classes) = (self.shape.len(), self.classes());
        x.resize(indices.len() * len, 0.0);
        y.clear();
        y.resize(indices.len() * classes, 0.0);
        for (slot, &i) in indices.iter().enumerate() {
            for (d, &p) in x[slot * len..][..len].iter_mut().zip(self.image(i)) {
                *d = f32::from(p) * (1.0 / 255.0);
            }
            y[slot * classes + self.labels[i] as usize] = 1.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(labels: Vec<u32>) -> ImageSet {
        let shape = ImageShape {
            height: 1,
            width: 2,
            channels: 1,
        };
        let pixels = (0..labels.len() * 2)
            .map(|i| (i * 10 % 256) as u8)
            .collect();
        ImageSet {
            shape,
            class_names: vec!["a".into(), "b".into()],
            pixels,
            labels,
        }
    }

    #[test]
    fn split_is_stratified_deterministic_and_disjoint() {
        let set = toy((0..100).map(|i| u32::from(i % 4 == 0)).collect()); // 75 a, 25 b
        let (train, val) = set.stratified_split(0.2, 5).unwrap();
        assert_eq!(set.class_counts(&val), vec![15, 5]);
        assert_eq!(set.class_counts(&train), vec![60, 20]);
        assert_eq!(
            (train.clone(), val.clone()),
            set.stratified_split(0.2, 5).unwrap()
        );
        assert_ne!(val, set.stratified_split(0.2, 6).unwrap().1);
        assert!(val.iter().all(|v| !train.contains(v)));
    }

    #[test]
    fn batch_is_scaled_and_one_hot() {
        let set = toy(vec![0, 1, 1]);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        set.fill_batch(&[2, 0], &mut x, &mut y);
        assert_eq!(x, vec![40.0 / 255.0, 50.0 / 255.0, 0.0, 10.0 / 255.0]);
        assert_eq!(y, vec![0.0, 1.0, 1.0, 0.0]);
    }

    #[test]
    fn bad_val_fraction_names_the_flag() {
        let err = toy(vec![0, 1])
            .stratified_split(1.5, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--val-fraction 1.5"), "{err}");
    }
}
