//! AdaFocal's gamma update (Ghosh et al., NeurIPS 2022, as the authors' code
//! 3mcloud/adafocal does it): after each epoch the validation split's confidences (the
//! largest probability of each image) are cut into [`ADAFOCAL_BINS`] equal-mass bins; each
//! bin's gamma moves by the bin's calibration gap `C_b - A_b` (mean confidence minus
//! accuracy), and the bins' edges become those of the validation split. The loss itself
//! (`-(1 - p_t)^gamma log p_t`, inverse-focal `-(1 + p_t)^|gamma| log p_t` below zero) is in
//! `src/ops/loss/cpu/` and `kernels/loss.cu`; a training sample takes the gamma of the bin
//! its true class's probability falls in ([`GammaBins::bin_of`], `[lower, upper)` as the
//! authors' `get_gamma_per_sample`: below the first edge the first bin, from the last edge
//! up the last; the validation bins themselves are `(lower, upper]`, as the authors'
//! AdaECE binning, so a confidence exactly at an edge counts in the lower bin for the
//! update and takes the upper bin's gamma in training, as theirs does).
//!
//! Where we differ from the authors' code, and why: the validation bins keep the least
//! confident image in the first (theirs drops it, a side effect of a strict `>`), as our
//! adaptive ECE (`crate::metrics::equal_mass_bins`); the exponent of the update is clamped to
//! +-700 so that no lambda gives an infinity (the clip to `[gamma_min, gamma_max]` comes
//! after, so nothing a user can see changes).

use serde::{Deserialize, Serialize};

pub use crate::loss::ADAFOCAL_BINS;
use crate::loss::{AdaFocalSettings, GammaBins};
use crate::metrics::equal_mass_bins;
use crate::{Error, Result};

/// The most negative gamma the flags allow: the inverse-focal factor `(1 + p)^|gamma|`
/// reaches 2^20 at p = 1, far from f32's range.
pub const ADAFOCAL_GAMMA_FLOOR: f64 = -20.0;

/// One bin of an update, as metrics.jsonl records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaFocalBin {
    pub lower: f64,
    pub upper: f64,
    /// Validation images in the bin.
    pub count: usize,
    /// `C_b`: their mean confidence (None: empty, the gamma stays).
    pub confidence: Option<f64>,
    /// `A_b`: the fraction of them predicted right.
    pub accuracy: Option<f64>,
    /// The gamma the epoch trained with in this bin, and the one the next epoch uses.
    pub gamma_before: f64,
    pub gamma_after: f64,
}

/// The update after one epoch: the bins that produced it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaFocalUpdate {
    pub bins: Vec<AdaFocalBin>,
}

impl AdaFocalSettings {
    /// The flags' ranges: lambda and switch finite and >= 0, gamma_min in
    /// [[`ADAFOCAL_GAMMA_FLOOR`], gamma_max], gamma_initial in [gamma_min, gamma_max].
    pub fn validate(&self) -> Result<()> {
        let s = self;
        let bad = |flag: &str, v: f64, want: String| {
            Err(Error::invalid(format!("{flag} {v}: must be {want}")))
        };
        if !(s.lambda.is_finite() && s.lambda >= 0.0) {
            return bad("--adafocal-lambda", s.lambda, "a finite number >= 0".into());
        }
        if !(s.switch.is_finite() && s.switch >= 0.0) {
            return bad(
                "--adafocal-switch-pt",
                s.switch,
                "a finite number >= 0".into(),
            );
        }
        if !(s.gamma_max.is_finite() && s.gamma_max >= ADAFOCAL_GAMMA_FLOOR) {
            return bad(
                "--adafocal-gamma-max",
                s.gamma_max,
                format!("a finite number >= {ADAFOCAL_GAMMA_FLOOR}"),
            );
        }
        if !(s.gamma_min.is_finite() && (ADAFOCAL_GAMMA_FLOOR..=s.gamma_max).contains(&s.gamma_min))
        {
            return bad(
                "--adafocal-gamma-min",
                s.gamma_min,
                format!(
                    "in [{ADAFOCAL_GAMMA_FLOOR}, --adafocal-gamma-max {}]",
                    s.gamma_max
                ),
            );
        }
        if !(s.gamma_initial.is_finite() && (s.gamma_min..=s.gamma_max).contains(&s.gamma_initial))
        {
            return bad(
                "--adafocal-gamma-initial",
                s.gamma_initial,
                format!(
                    "in [--adafocal-gamma-min {}, --adafocal-gamma-max {}]",
                    s.gamma_min, s.gamma_max
                ),
            );
        }
        Ok(())
    }

    /// The next gamma of a bin whose gamma is `gamma` and whose calibration gap is `gap`
    /// (`C_b - A_b`; 0 for an empty bin).
    pub fn next_gamma(&self, gamma: f64, gap: f64) -> f64 {
        // Positive: grows where overconfident; negative (inverse focal): the other way.
        let exponent = if gamma > 0.0 {
            self.lambda * gap
        } else {
            -self.lambda * gap
        };
        let mut next = gamma * exponent.clamp(-700.0, 700.0).exp();
        if next.abs() < self.switch {
            next = if next > 0.0 {
                -self.switch
            } else {
                self.switch
            };
        }
        next.clamp(self.gamma_min, self.gamma_max)
    }

    /// The bins after an epoch whose validation images had `confidences` (largest
    /// probability) and were predicted right or not (`correct`); `current` are the bins the
    /// epoch trained with (one gamma per bin, [`ADAFOCAL_BINS`] of them).
    pub fn update(
        &self,
        current: &GammaBins,
        confidences: &[f64],
        correct: &[bool],
    ) -> Result<(GammaBins, AdaFocalUpdate)> {
        let n = current.gammas.len();
        if confidences.is_empty() {
            return Err(Error::invalid(
                "adafocal updates its gammas from the validation split, which is empty; give --val-fraction above 0",
            ));
        }
        let stats = equal_mass_bins(confidences, correct, n);
        let mut bins = Vec::with_capacity(n);
        for (b, s) in stats.iter().enumerate() {
            let gap = match (s.confidence, s.accuracy) {
                (Some(c), Some(a)) => c - a,
                _ => 0.0,
            };
            bins.push(AdaFocalBin {
                lower: s.lower,
                upper: s.upper,
                count: s.count,
                confidence: s.confidence,
                accuracy: s.accuracy,
                gamma_before: current.gammas[b],
                gamma_after: self.next_gamma(current.gammas[b], gap),
            });
        }
        let next = GammaBins {
            edges: stats[1..].iter().map(|s| s.lower).collect(),
            gammas: bins.iter().map(|b| b.gamma_after).collect(),
        };
        Ok((next, AdaFocalUpdate { bins }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
    }

    #[test]
    fn the_update_rule_by_hand() {
        let s = AdaFocalSettings::default();
        // Overconfident (C > A): a positive gamma grows, e^(lambda * gap).
        close(s.next_gamma(1.0, 0.1), 0.1f64.exp());
        // Underconfident enough to fall below the switch point: inverse focal at -switch.
        close(s.next_gamma(1.0, -2.0), -0.2);
        // Negative gammas move the other way: overconfident shrinks |gamma| ...
        close(s.next_gamma(-0.5, 0.1), -0.5 * (-0.1f64).exp());
        // ... until it switches back to focal at +switch.
        close(s.next_gamma(-0.3, 0.5), 0.2);
        // Clipped to [gamma_min, gamma_max].
        close(s.next_gamma(15.0, 1.0), 20.0);
        close(s.next_gamma(-1.5, -1.0), -2.0);
        // An empty bin (gap 0) keeps its gamma.
        close(s.next_gamma(3.7, 0.0), 3.7);
        // No lambda gives an infinity or a NaN.
        let wild = AdaFocalSettings {
            lambda: 1e300,
            ..AdaFocalSettings::default()
        };
        close(wild.next_gamma(1.0, 0.5), 20.0);
        close(wild.next_gamma(1.0, -0.5), -0.2);
        close(wild.next_gamma(-1.0, -0.5), -2.0);
    }

    #[test]
    fn an_update_takes_the_validation_bins() {
        // Confidences i/30, right above 1/2; two equal-mass bins (edges 1/30, 16/30, 1):
        // bin 0 has C = 8.5/30 and A = 1/16, bin 1 C = 23.5/30 and A = 1.
        let conf: Vec<f64> = (1..=30).map(|i| f64::from(i) / 30.0).collect();
        let right: Vec<bool> = conf.iter().map(|&c| c > 0.5).collect();
        let s = AdaFocalSettings::default();
        let (next, record) = s
            .update(&GammaBins::uniform(2, 1.0), &conf, &right)
            .unwrap();
        close(next.edges[0], 16.0 / 30.0);
        close(next.gammas[0], (8.5 / 30.0 - 1.0 / 16.0f64).exp());
        close(next.gammas[1], (23.5 / 30.0 - 1.0f64).exp());
        assert_eq!(record.bins.len(), 2);
        assert_eq!((record.bins[0].count, record.bins[1].count), (16, 14));
        close(record.bins[1].accuracy.unwrap(), 1.0);
        close(record.bins[0].gamma_before, 1.0);
        assert_eq!(record.bins[1].gamma_after, next.gammas[1]);
        // A sample of the next epoch takes its bin by p_t against the new edge.
        assert_eq!(next.bin_of(0.2), 0);
        assert_eq!(next.bin_of(16.0 / 30.0), 1);
        // Identical confidences: one bin holds them all, the empty ones keep their gamma.
        let (next, record) = s
            .update(
                &GammaBins::uniform(ADAFOCAL_BINS, 2.0),
                &[0.7; 4],
                &[true, true, false, true],
            )
            .unwrap();
        close(next.gammas[0], 2.0 * (0.7 - 0.75f64).exp());
        assert!(next.gammas[1..].iter().all(|&g| g == 2.0));
        assert_eq!(record.bins[0].count, 4);
        assert!(next.validate().is_ok());
        // No validation images: a clear error.
        let err = s
            .update(&GammaBins::uniform(ADAFOCAL_BINS, 1.0), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--val-fraction"), "{err}");
    }

    #[test]
    fn settings_out_of_range_name_their_flag() {
        let d = AdaFocalSettings::default();
        assert!(d.validate().is_ok());
        for (s, flag) in [
            (
                AdaFocalSettings {
                    lambda: -1.0,
                    ..d.clone()
                },
                "--adafocal-lambda",
            ),
            (
                AdaFocalSettings {
                    lambda: f64::NAN,
                    ..d.clone()
                },
                "--adafocal-lambda",
            ),
            (
                AdaFocalSettings {
                    switch: -0.1,
                    ..d.clone()
                },
                "--adafocal-switch-pt",
            ),
            (
                AdaFocalSettings {
                    gamma_min: -21.0,
                    ..d.clone()
                },
                "--adafocal-gamma-min",
            ),
            (
                AdaFocalSettings {
                    gamma_max: -3.0,
                    ..d.clone()
                },
                "--adafocal-gamma-min",
            ),
            (
                AdaFocalSettings {
                    gamma_max: f64::INFINITY,
                    ..d.clone()
                },
                "--adafocal-gamma-max",
            ),
            (
                AdaFocalSettings {
                    gamma_initial: 25.0,
                    ..d.clone()
                },
                "--adafocal-gamma-initial",
            ),
        ] {
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
    }
}
