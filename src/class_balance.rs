//! Class-balanced focal weights: `--alpha auto`, the per-class alpha of focal and
//! keras-focal derived from the class counts of the training split (inverse frequency, or
//! Cui et al.'s effective number of samples), and the loss with that alpha put in.

use crate::loss::{Alpha, LossConfig};
use crate::{Error, Result};

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
}
