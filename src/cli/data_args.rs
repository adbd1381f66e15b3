//! The data flags of `focalflow train` (`#[command(flatten)]` into `TrainArgs`) and
//! `--alpha auto`, the per-class focal weights derived from the class counts.

use std::path::{Path, PathBuf};

use crate::data::cache::{self, Meta, Skipped};
use crate::data::load::{LoadOptions, load};
use crate::data::{Augment, ClassFraction, ImageSet, PixelStore, Pixels};
use crate::loss::{Alpha, LossConfig};
use crate::{Error, Result};

use super::loss_args::LossFlags;

/// Where the images come from and how batches are drawn.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DataFlags {
    /// Images: a folder with one sub-folder per class (e.g. PetImages with Cat/ and Dog/;
    /// JPEG, PNG, BMP, GIF, WebP, recognised by content; unreadable files are skipped and
    /// listed in the run folder's skipped.tsv), or a TFDS folder prepared by tfds.load
    /// (~/tensorflow_datasets/cats_vs_dogs[/4.0.1]). Without it, the built-in generated set.
    #[arg(long = "data", value_name = "DIR")]
    pub dir: Option<PathBuf>,
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

impl PreprocessFlags {
    /// The loader's options for images of `image_size` pixels a side.
    pub fn load_options(&self, image_size: usize, progress: bool) -> Result<LoadOptions> {
        if self.preprocess_threads == Some(0) {
            return Err(Error::invalid("--preprocess-threads must be at least 1"));
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
    /// The parsed `--class-fraction` values.
    pub fn class_fractions(&self) -> Result<Vec<ClassFraction>> {
        self.class_fraction.iter().map(|s| s.parse()).collect()
    }

    /// Loads `--data` (None without it), printing the summary line to stderr. Returns the
    /// set and what the loader reports (skipped files, decoder warnings).
    pub fn load(
        &self,
        image_size: usize,
        progress: bool,
    ) -> Result<Option<(ImageSet<Pixels>, Meta)>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        self.class_fractions()?;
        let opts = self.preprocessing.load_options(image_size, progress)?;
        let loaded = load(dir, &opts)?;
        eprintln!("{}", loaded.summary());
        Ok(Some((loaded.set, loaded.meta)))
    }
}

/// Writes `name` (`skipped.tsv`, `decode_warnings.tsv`: item, category, detail) into the
/// run folder `out`.
pub fn write_item_list(out: &Path, name: &str, items: &[Skipped]) -> Result<PathBuf> {
    std::fs::create_dir_all(out)
        .map_err(|e| Error::file(out, format!("cannot create the run folder: {e}")))?;
    let path = out.join(name);
    let mut text = String::from("item\tcategory\tdetail\n");
    for s in items {
        text.push_str(&format!("{}\t{}\t{}\n", s.item, s.category, s.detail));
    }
    crate::run::write_atomically(&path, text.as_bytes())?;
    Ok(path)
}

/// The class counts of both splits, by name: `classes: Cat 9993/2498, Dog 9411/2353 (train/val)`.
pub fn split_counts_line<P: PixelStore>(
    data: &ImageSet<P>,
    train: &[usize],
    val: &[usize],
) -> String {
    let (t, v) = (data.class_counts(train), data.class_counts(val));
    let parts: Vec<String> = data
        .class_names
        .iter()
        .enumerate()
        .map(|(c, n)| format!("{n} {}/{}", t[c], v[c]))
        .collect();
    format!(
        "classes (train/val): {}; {} / {} images",
        parts.join(", "),
        train.len(),
        val.len()
    )
}

/// `--alpha auto`: how the per-class weights follow from the training-split counts `n_c`.
/// Both give `alpha_c = w_c / sum_k w_k` (so the weights sum to 1, each in [0, 1]):
/// - `Inverse`: `w_c = 1 / n_c`;
/// - `Effective { beta }` (Cui et al. 2019, "Class-Balanced Loss Based on Effective Number
///   of Samples"): `w_c = 1 / E_c` with `E_c = (1 - beta^n_c) / (1 - beta)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AutoAlpha {
    Inverse,
    Effective { beta: f64 },
}

/// Cui et al.'s default.
pub const DEFAULT_BETA: f64 = 0.999;

impl AutoAlpha {
    /// `auto` (effective number, beta 0.999), `auto:effective`, `auto:effective=B`,
    /// `auto:inverse`; `None` for anything else (a number or list).
    pub fn parse(text: &str) -> Option<Result<AutoAlpha>> {
        let t = text.trim().to_ascii_lowercase();
        let rest = t.strip_prefix("auto")?;
        let bad = || {
            Error::invalid(format!(
                "--alpha {text:?}: expected auto, auto:inverse, auto:effective or auto:effective=BETA with BETA in [0, 1)"
            ))
        };
        Some(match rest {
            "" | ":effective" => Ok(AutoAlpha::Effective { beta: DEFAULT_BETA }),
            ":inverse" => Ok(AutoAlpha::Inverse),
            _ => match rest.strip_prefix(":effective=").map(|b| b.parse::<f64>()) {
                Some(Ok(beta)) if (0.0..1.0).contains(&beta) => Ok(AutoAlpha::Effective { beta }),
                _ => Err(bad()),
            },
        })
    }

    /// Per-class alpha from the class counts of the training split.
    pub fn alpha(&self, counts: &[usize], class_names: &[String]) -> Result<Alpha> {
        if let Some(c) = counts.iter().position(|&n| n == 0) {
            return Err(Error::invalid(format!(
                "--alpha auto: class {:?} has no training image; lower --val-fraction or raise its --class-fraction",
                class_names.get(c).map_or("?", |s| s.as_str())
            )));
        }
        let weights: Vec<f64> = counts
            .iter()
            .map(|&n| match *self {
                AutoAlpha::Inverse => 1.0 / n as f64,
                // (1 - beta) / (1 - beta^n), through expm1 to stay accurate for beta near
                // 1 (beta = 0 gives ln 0 = -inf and weight 1, as it should).
                AutoAlpha::Effective { beta } => {
                    let ln = beta.ln();
                    (-ln.exp_m1()) / (-(n as f64 * ln).exp_m1())
                }
            })
            .collect();
        let sum: f64 = weights.iter().sum();
        Ok(Alpha::PerClass(weights.iter().map(|w| w / sum).collect()))
    }

    /// `--alpha auto (inverse class frequency): Cat 0.1667, Dog 0.8333`.
    pub fn line(&self, alpha: &Alpha, class_names: &[String]) -> String {
        let values: Vec<String> = class_names
            .iter()
            .enumerate()
            .map(|(c, n)| format!("{n} {:.4}", alpha.at(c)))
            .collect();
        format!("--alpha auto ({}): {}", self.describe(), values.join(", "))
    }

    pub fn describe(&self) -> String {
        match self {
            AutoAlpha::Inverse => "inverse class frequency".into(),
            AutoAlpha::Effective { beta } => format!("effective number of samples, beta {beta}"),
        }
    }
}

/// Takes `--alpha auto..` out of `flags` (leaving a placeholder value, so the loss flags are
/// still checked: `--alpha` with a loss that has none stays an error) and returns the rule.
pub fn take_auto_alpha(flags: &mut LossFlags) -> Result<Option<AutoAlpha>> {
    let Some(rule) = flags.alpha.as_deref().and_then(AutoAlpha::parse) else {
        return Ok(None);
    };
    let rule = rule?;
    flags.alpha = Some("0.5".into());
    Ok(Some(rule))
}

/// `loss` with its alpha replaced by `alpha` (focal and keras-focal).
pub fn with_alpha(loss: LossConfig, alpha: Alpha) -> LossConfig {
    match loss {
        LossConfig::Focal {
            gamma,
            l1,
            l2,
            from_logits,
            ..
        } => LossConfig::Focal {
            alpha,
            gamma,
            l1,
            l2,
            from_logits,
        },
        LossConfig::KerasFocal {
            gamma,
            label_smoothing,
            from_logits,
            ..
        } => LossConfig::KerasFocal {
            alpha,
            gamma,
            label_smoothing,
            from_logits,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|c| c.to_string()).collect()
    }

    fn per_class(a: Alpha) -> Vec<f64> {
        match a {
            Alpha::PerClass(v) => v,
            Alpha::Scalar(_) => panic!("per class expected"),
        }
    }

    #[test]
    fn parse_rules() {
        assert_eq!(
            AutoAlpha::parse("auto").unwrap().unwrap(),
            AutoAlpha::Effective { beta: 0.999 }
        );
        assert_eq!(
            AutoAlpha::parse("AUTO:inverse").unwrap().unwrap(),
            AutoAlpha::Inverse
        );
        assert_eq!(
            AutoAlpha::parse("auto:effective=0.99").unwrap().unwrap(),
            AutoAlpha::Effective { beta: 0.99 }
        );
        assert!(AutoAlpha::parse("auto:effective=1").unwrap().is_err());
        assert!(AutoAlpha::parse("auto:bogus").unwrap().is_err());
        assert!(AutoAlpha::parse("0.25").is_none());
    }

    #[test]
    fn inverse_frequency_by_hand() {
        // counts 300 / 100: weights 1/300, 1/100 -> 0.25, 0.75.
        let a = per_class(AutoAlpha::Inverse.alpha(&[300, 100], &names(2)).unwrap());
        assert!(
            (a[0] - 0.25).abs() < 1e-12 && (a[1] - 0.75).abs() < 1e-12,
            "{a:?}"
        );
        let a = per_class(AutoAlpha::Inverse.alpha(&[5, 5, 5], &names(3)).unwrap());
        assert!(a.iter().all(|&x| (x - 1.0 / 3.0).abs() < 1e-12));
    }

    #[test]
    fn effective_number_by_hand() {
        // beta 0.999: E(1000) = (1 - 0.999^1000) / 0.001 = 632.305..., E(100) = 95.2079...
        let e = |n: i32| (1.0 - 0.999f64.powi(n)) / 0.001;
        let (w0, w1) = (1.0 / e(1000), 1.0 / e(100));
        let a = per_class(
            AutoAlpha::Effective { beta: 0.999 }
                .alpha(&[1000, 100], &names(2))
                .unwrap(),
        );
        assert!((a[0] - w0 / (w0 + w1)).abs() < 1e-12, "{a:?}");
        assert!((e(1000) - 632.3045752290363).abs() < 1e-9);
        // beta -> 0 gives equal weights, beta -> 1 approaches inverse frequency.
        let flat = per_class(
            AutoAlpha::Effective { beta: 0.0 }
                .alpha(&[10, 1], &names(2))
                .unwrap(),
        );
        assert_eq!(flat, vec![0.5, 0.5]);
        let near = per_class(
            AutoAlpha::Effective { beta: 0.999_999_9 }
                .alpha(&[10, 1], &names(2))
                .unwrap(),
        );
        assert!((near[0] - 1.0 / 11.0).abs() < 1e-5, "{near:?}");
    }

    #[test]
    fn empty_class_is_an_error() {
        let err = AutoAlpha::Inverse
            .alpha(&[3, 0], &["cat".into(), "dog".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("class \"dog\" has no training image"), "{err}");
    }

    #[test]
    fn auto_is_taken_out_of_the_loss_flags() {
        let mut f = LossFlags {
            alpha: Some("auto:inverse".into()),
            ..LossFlags::default()
        };
        assert_eq!(take_auto_alpha(&mut f).unwrap(), Some(AutoAlpha::Inverse));
        assert_eq!(f.alpha.as_deref(), Some("0.5"));
        let mut f = LossFlags {
            alpha: Some("0.3".into()),
            ..LossFlags::default()
        };
        assert_eq!(take_auto_alpha(&mut f).unwrap(), None);
    }
}
