//! The data flags of `focalflow train` (`#[command(flatten)]` into `TrainArgs`).

use std::path::PathBuf;

use crate::data::cache::{self, Meta};
use crate::data::load::{LoadOptions, load, load_source};
use crate::data::source::Source;
use crate::data::{Augment, ClassFraction, ImageSet, Pixels};
use crate::{Error, Result};

/// Where the images come from and how batches are drawn.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DataFlags {
    /// Images: a folder with one sub-folder per class (e.g. PetImages with Cat/ and Dog/;
    /// JPEG, PNG, BMP, GIF, WebP, recognised by content; unreadable files are skipped and
    /// listed in the run folder's skipped.tsv), or a TFDS folder prepared by tfds.load
    /// (~/tensorflow_datasets/cats_vs_dogs[/4.0.1]). Without it, the built-in generated set.
    #[arg(long = "data", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Multi-label data: a CSV with one line per image, its path under --data then its
    /// labels (any number, none included); the classes are the labels, sorted. Trains with
    /// --loss sigmoid-focal.
    #[arg(long = "labels", value_name = "FILE")]
    pub labels: Option<PathBuf>,
    #[command(flatten)]
    pub preprocessing: PreprocessFlags,
    /// Augmentation of training batches: none, or flip (random horizontal flips, seeded).
    #[arg(long, value_enum, default_value = "none")]
    pub augment: Augment,
    /// Keep only fraction F of class CLASS (name or index), chosen with --seed before the
    /// train/validation split, to study imbalance on a balanced set; repeatable.
    #[arg(long, value_name = "CLASS=F")]
    pub class_fraction: Vec<String>,
}

/// How a folder is preprocessed: the cache and the decoding threads (shared by `train`,
/// `eval` and `calibrate`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PreprocessFlags {
    /// Folder for the preprocessed-set cache (default: $XDG_CACHE_HOME/focalflow or
    /// ~/.cache/focalflow).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Decode the images again instead of reading or writing the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Threads decoding images (default: all cores).
    #[arg(long, value_name = "N")]
    pub preprocess_threads: Option<usize>,
}

/// The most decoding threads a run may ask for (each has a stack; thousands only thrash).
const MAX_PREPROCESS_THREADS: usize = 1024;

impl PreprocessFlags {
    /// The loader's options for images of `image_size` pixels a side.
    pub fn load_options(&self, image_size: usize, progress: bool) -> Result<LoadOptions> {
        if let Some(n) = self.preprocess_threads
            && !(1..=MAX_PREPROCESS_THREADS).contains(&n)
        {
            return Err(Error::invalid(format!(
                "--preprocess-threads {n}: must be 1 to {MAX_PREPROCESS_THREADS}"
            )));
        }
        Ok(LoadOptions {
            image_size,
            cache_dir: if self.no_cache {
                None
            } else {
                Some(self.cache_dir.clone().unwrap_or_else(cache::default_dir))
            },
            progress,
            threads: self.preprocess_threads,
        })
    }
}

impl DataFlags {
    /// The parsed `--class-fraction` values (a class named twice is an error here already;
    /// by name and by index, once the classes are known).
    pub fn class_fractions(&self) -> Result<Vec<ClassFraction>> {
        let parsed: Vec<ClassFraction> = self
            .class_fraction
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_>>()?;
        for (i, f) in parsed.iter().enumerate() {
            if parsed[..i].iter().any(|g| g.class == f.class) {
                return Err(Error::invalid(format!(
                    "--class-fraction: class `{}` is given twice; give each class once",
                    f.class
                )));
            }
        }
        Ok(parsed)
    }

    /// Loads `--data` (None without it), printing the summary line to stderr. Returns the
    /// set and what the loader reports (skipped files, decoder warnings). `--class-fraction`
    /// is not read here: `train` parses it first, so that a mistake there stops it before
    /// any image is decoded.
    /// `source`: what `discover` found in `--data` already (`None`: discovered here).
    pub fn load(
        &self,
        image_size: usize,
        progress: bool,
        source: Option<Source>,
    ) -> Result<Option<(ImageSet<Pixels>, Meta)>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let opts = self.preprocessing.load_options(image_size, progress)?;
        let loaded = match source {
            Some(source) => load_source(dir, source, &opts)?,
            None => load(dir, &opts)?,
        };
        eprintln!("{}", loaded.summary());
        Ok(Some((loaded.set, loaded.meta)))
    }
}
