//! Image sets (u8 NHWC, in memory or memory-mapped from the cache), stratified splits,
//! class subsampling, and batch assembly (f32 / 255, one-hot labels, optional flips).
//!
//! Real images come in through [`load`]: discovery of a class-per-folder tree or a TFDS
//! TFRecord folder ([`source`], [`tfrecord`]), parallel decoding ([`decode`]) and resizing
//! ([`resize`]), and the cache ([`cache`]).

pub mod cache;
pub mod decode;
pub mod discover;
pub mod label_list;
pub mod libjpeg;
pub mod load;
pub mod outcome;
pub mod resize;
pub mod source;
pub mod synthetic;
pub mod tfrecord;

use std::ops::Deref;

use crate::model::ImageShape;
use crate::rng::Rng;
use crate::{Error, Result};

/// Where the pixels of a set live: any byte store that can be read from several threads
/// (`Vec<u8>`, [`Pixels`]).
pub trait PixelStore: Deref<Target = [u8]> + Sync {}
impl<T: Deref<Target = [u8]> + Sync> PixelStore for T {}

/// Pixels owned in memory or memory-mapped from a cache file (read-only).
pub enum Pixels {
    Owned(Vec<u8>),
    /// `offset..offset + len` of a mapped cache file.
    Mapped {
        map: memmap2::Mmap,
        offset: usize,
        len: usize,
    },
}

impl Deref for Pixels {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Pixels::Owned(v) => v,
            Pixels::Mapped { map, offset, len } => &map[*offset..][..*len],
        }
    }
}

impl std::fmt::Debug for Pixels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Pixels::Owned(_) => "in memory",
            Pixels::Mapped { .. } => "memory-mapped",
        };
        write!(f, "Pixels({} bytes, {kind})", self.len())
    }
}

impl From<Vec<u8>> for Pixels {
    fn from(v: Vec<u8>) -> Self {
        Pixels::Owned(v)
    }
}

/// A labelled set of images of one shape, stored as u8 NHWC in `P` (a `Vec<u8>` unless
/// loaded from disk, where it is [`Pixels`]).
#[derive(Clone, Debug)]
pub struct ImageSet<P = Vec<u8>> {
    pub shape: ImageShape,
    pub class_names: Vec<String>,
    pub pixels: P,
    /// Each image's class; for a multi-label set (`--labels`) its first label (0 for none),
    /// the labels themselves are in `multi`.
    pub labels: Vec<u32>,
    /// A multi-label set: each image's classes, ascending (any number, none included).
    pub multi: Option<Vec<Vec<u32>>>,
}

/// Keep only `fraction` of the images of `class` (a class name or index), chosen with the
/// run's seed: `--class-fraction CLASS=F`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ClassFraction {
    pub class: String,
    pub fraction: f64,
}

/// Why `--class-fraction` and `--labels` do not go together.
pub const CLASS_FRACTION_WITH_LABELS: &str = "--class-fraction keeps a fraction of one class's images; with --labels an image has several classes: leave it out";

/// Images of a class of `count` that a stratified split with `val_fraction` holds out.
pub fn validation_share(val_fraction: f64, count: usize) -> usize {
    (val_fraction * count as f64).round() as usize
}

impl std::str::FromStr for ClassFraction {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "--class-fraction {text:?}: {why}; expected CLASS=F with a class name or index and F in (0, 1], e.g. Cat=0.1"
            ))
        };
        let (class, fraction) = text.rsplit_once('=').ok_or_else(|| bad("no '='"))?;
        let fraction: f64 = fraction
            .trim()
            .parse()
            .map_err(|_| bad("F is not a number"))?;
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(bad("F is out of range"));
        }
        if class.trim().is_empty() {
            return Err(bad("the class is empty"));
        }
        Ok(ClassFraction {
            class: class.trim().to_string(),
            fraction,
        })
    }
}

/// Batch augmentation: `--augment none|flip`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Augment {
    #[default]
    None,
    /// Random horizontal flips (each training image with probability 1/2, seeded).
    Flip,
}

impl ImageSet<Vec<u8>> {
    /// The same set with its pixels as [`Pixels`] (no copy).
    pub fn into_pixels(self) -> ImageSet<Pixels> {
        ImageSet {
            shape: self.shape,
            class_names: self.class_names,
            pixels: Pixels::Owned(self.pixels),
            labels: self.labels,
            multi: self.multi,
        }
    }
}

impl<P: PixelStore> ImageSet<P> {
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
    /// Number of images per class among `indices` (multi-label: images carrying each label).
    pub fn class_counts(&self, indices: &[usize]) -> Vec<usize> {
        let mut counts = vec![0; self.classes()];
        for &i in indices {
            match &self.multi {
                Some(sets) => sets[i].iter().for_each(|&c| counts[c as usize] += 1),
                None => counts[self.labels[i] as usize] += 1,
            }
        }
        counts
    }

    /// The class named `name`, or numbered `name`.
    pub fn class_index(&self, name: &str) -> Result<usize> {
        if let Some(c) = self.class_names.iter().position(|n| n == name) {
            return Ok(c);
        }
        match name.parse::<usize>() {
            Ok(c) if c < self.classes() => Ok(c),
            _ => Err(Error::invalid(format!(
                "--class-fraction {name}=..: no class {name:?}; the classes are {} (or 0..{})",
                self.class_names.join(", "),
                self.classes()
            ))),
        }
    }

    /// The images that remain after `--class-fraction`: in each listed class,
    /// `round(fraction * count)` images (at least one) chosen with `seed`; all images of the
    /// other classes. Sorted.
    pub fn subsample(&self, fractions: &[ClassFraction], seed: u64) -> Result<Vec<usize>> {
        if self.multi.is_some() && !fractions.is_empty() {
            return Err(Error::invalid(CLASS_FRACTION_WITH_LABELS));
        }
        let mut keep_fraction = vec![None; self.classes()];
        for f in fractions {
            let class = self.class_index(&f.class)?;
            if keep_fraction[class].replace(f.fraction).is_some() {
                return Err(Error::invalid(format!(
                    "--class-fraction: class `{}` is given twice; give each class once",
                    self.class_names[class]
                )));
            }
        }
        let keep_fraction: Vec<f64> = keep_fraction.iter().map(|f| f.unwrap_or(1.0)).collect();
        let mut rng = Rng::derive(seed, 4);
        let mut kept = Vec::with_capacity(self.len());
        for (class, &fraction) in keep_fraction.iter().enumerate() {
            let mut members: Vec<usize> = (0..self.len())
                .filter(|&i| self.labels[i] as usize == class)
                .collect();
            if fraction < 1.0 {
                rng.shuffle(&mut members);
                let n = ((fraction * members.len() as f64).round() as usize)
                    .clamp(1.min(members.len()), members.len());
                members.truncate(n);
            }
            kept.extend(members);
        }
        kept.sort_unstable();
        Ok(kept)
    }

    /// The split `train` uses: `--class-fraction` first, then [`Self::stratified_split_of`]
    /// the images that remain.
    pub fn training_split(
        &self,
        val_fraction: f64,
        seed: u64,
        fractions: &[ClassFraction],
    ) -> Result<(Vec<usize>, Vec<usize>)> {
        let kept = self.subsample(fractions, seed)?;
        self.stratified_split_of(&kept, val_fraction, seed)
    }

    /// A deterministic stratified split: in each class, `round(val_fraction * count)` images
    /// (chosen by `seed`) go to validation, the rest to training. Both lists are sorted.
    pub fn stratified_split(
        &self,
        val_fraction: f64,
        seed: u64,
    ) -> Result<(Vec<usize>, Vec<usize>)> {
        let all: Vec<usize> = (0..self.len()).collect();
        self.stratified_split_of(&all, val_fraction, seed)
    }

    /// [`Self::stratified_split`] of the images `indices` (sorted) only.
    pub fn stratified_split_of(
        &self,
        indices: &[usize],
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
        if self.multi.is_some() {
            // Several classes per image: a plain seeded split of all images.
            let mut members = indices.to_vec();
            rng.shuffle(&mut members);
            let n_val = validation_share(val_fraction, members.len());
            val.extend_from_slice(&members[..n_val]);
            train.extend_from_slice(&members[n_val..]);
            train.sort_unstable();
            val.sort_unstable();
            return Ok((train, val));
        }
        for class in 0..self.classes() as u32 {
            let mut members: Vec<usize> = indices
                .iter()
                .copied()
                .filter(|&i| self.labels[i] == class)
                .collect();
            rng.shuffle(&mut members);
            let n_val = validation_share(val_fraction, members.len());
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
        self.fill_batch_augmented(indices, None, x, y);
    }

    /// [`Self::fill_batch`], and with `flip_seed` each image is mirrored left-right with
    /// probability 1/2 (decided by the seed and its place in the batch).
    pub fn fill_batch_augmented(
        &self,
        indices: &[usize],
        flip_seed: Option<u64>,
        x: &mut Vec<f32>,
        y: &mut Vec<f32>,
    ) {
        let (len, classes) = (self.shape.len(), self.classes());
        let mut flips = flip_seed.map(flip_stream);
        x.resize(indices.len() * len, 0.0);
        y.clear();
        y.resize(indices.len() * classes, 0.0);
        for (slot, &i) in indices.iter().enumerate() {
            let dst = &mut x[slot * len..][..len];
            let flip = flips.as_mut().is_some_and(|f| f.next() == Some(true));
            if flip {
                let row = self.shape.width * self.shape.channels;
                let ch = self.shape.channels;
                for (d_row, s_row) in dst
                    .chunks_exact_mut(row)
                    .zip(self.image(i).chunks_exact(row))
                {
                    for (d_px, s_px) in d_row.chunks_exact_mut(ch).zip(s_row.chunks_exact(ch).rev())
                    {
                        for (d, &p) in d_px.iter_mut().zip(s_px) {
                            *d = f32::from(p) * (1.0 / 255.0);
                        }
                    }
                }
            } else {
                for (d, &p) in dst.iter_mut().zip(self.image(i)) {
                    *d = f32::from(p) * (1.0 / 255.0);
                }
            }
            match &self.multi {
                Some(sets) => sets[i]
                    .iter()
                    .for_each(|&c| y[slot * classes + c as usize] = 1.0),
                None => y[slot * classes + self.labels[i] as usize] = 1.0,
            }
        }
    }
}

/// Whether each image of a batch is mirrored (`--augment flip`), in order, given the
/// batch's flip seed: the one rule every data path follows.
pub fn flip_stream(seed: u64) -> impl Iterator<Item = bool> {
    let mut rng = Rng::derive(seed, 5);
    std::iter::repeat_with(move || rng.next_u64() >> 63 == 1)
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
            multi: None,
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
        // Scaled as Keras' Rescaling(1/255) does: times the f32 nearest 1/255, which can be
        // one ulp away from a division (50 / 255 is).
        let s = 1.0f32 / 255.0;
        assert_eq!(x, vec![40.0 * s, 50.0 * s, 0.0, 10.0 * s]);
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
