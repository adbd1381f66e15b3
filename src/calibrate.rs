//! Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one
//! scalar `T > 0` divides the logits, `softmax(z / T)`, fitted on held-out data by
//! minimising the negative log-likelihood. It leaves every arg-max, hence accuracy and the
//! confusion matrix, unchanged, and moves the confidences towards the accuracy.
//!
//! The fit: with `b = 1 / T`, `NLL(b) = mean(logsumexp(b z) - b z_y)` is convex in `b` and
//! its derivative `mean(E_softmax(b z)[z] - z_y)` increases with `b`, so the minimum is the
//! one zero of the derivative. It is found by bisection on `ln b` within `T` in
//! [[`T_MIN`], [`T_MAX`]] to full f64 precision: no step size, no starting point, the same
//! answer every time. When the zero lies outside (e.g. data the model separates perfectly
//! wants `T -> 0`), the bound is returned and flagged.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::metrics::{Metrics, log_softmax_into};
use crate::{Error, Result};

/// Smallest temperature searched.
pub const T_MIN: f64 = 0.01;
/// Largest temperature searched.
pub const T_MAX: f64 = 100.0;

/// The fitted temperature and what it changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemperatureFit {
    pub temperature: f64,
    /// Mean NLL at `T = 1` and at the fitted `T`.
    pub nll_before: f64,
    pub nll_after: f64,
    /// The optimum lies at or beyond a bound of [`T_MIN`, `T_MAX`].
    pub at_bound: bool,
}

/// Mean NLL of `logits / temperature` against `labels`.
pub fn nll_at(logits: &[f32], labels: &[usize], classes: usize, temperature: f64) -> f64 {
    let mut row = vec![0.0; classes];
    let sum: f64 = logits
        .chunks_exact(classes)
        .zip(labels)
        .map(|(z, &y)| -log_softmax_into(z, temperature, &mut row)[y])
        .sum();
    sum / labels.len().max(1) as f64
}

/// d NLL / d b at `b = 1 / T`: `mean(E_p[z] - z_y)`.
fn slope(logits: &[f32], labels: &[usize], classes: usize, b: f64) -> f64 {
    let mut row = vec![0.0; classes];
    let sum: f64 = logits
        .chunks_exact(classes)
        .zip(labels)
        .map(|(z, &y)| {
            log_softmax_into(z, 1.0 / b, &mut row);
            let expected: f64 = row
                .iter()
                .zip(z)
                .map(|(lp, &zc)| lp.exp() * f64::from(zc))
                .sum();
            expected - f64::from(z[y])
        })
        .sum();
    sum / labels.len().max(1) as f64
}

/// Fits the temperature of `logits` (`[labels.len(), classes]`) by minimising the NLL.
pub fn fit_temperature(logits: &[f32], labels: &[usize], classes: usize) -> Result<TemperatureFit> {
    if labels.is_empty() {
        return Err(Error::invalid("no images to fit a temperature on"));
    }
    if classes < 2 || logits.len() != labels.len() * classes {
        return Err(Error::Shape(format!(
            "{} logits for {} images of {classes} classes",
            logits.len(),
            labels.len()
        )));
    }
    if let Some(&y) = labels.iter().find(|&&y| y >= classes) {
        return Err(Error::invalid(format!(
            "label {y} out of range for {classes} classes"
        )));
    }
    if logits.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite(
            "the model produced non-finite logits".into(),
        ));
    }
    // b = 1/T, searched in ln b.
    let (mut lo, mut hi) = ((1.0 / T_MAX).ln(), (1.0 / T_MIN).ln());
    let s = |lnb: f64| slope(logits, labels, classes, lnb.exp());
    let (b, at_bound) = if s(lo) >= 0.0 {
        (lo.exp(), true)
    } else if s(hi) <= 0.0 {
        (hi.exp(), true)
    } else {
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if mid <= lo || mid >= hi {
                break;
            }
            if s(mid) < 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        (0.5 * (lo + hi), false)
    };
    let b = if at_bound { b } else { b.exp() };
    let temperature = 1.0 / b;
    Ok(TemperatureFit {
        temperature,
        nll_before: nll_at(logits, labels, classes, 1.0),
        nll_after: nll_at(logits, labels, classes, temperature),
        at_bound,
    })
}

/// A temperature fitted on held-out images and the metrics before and after it: what
/// `calibrate` stores in a checkpoint.
pub struct Calibration {
    pub fit: TemperatureFit,
    /// The images it was fitted on.
    pub images: usize,
    /// The metrics at `T = 1` and at the fitted temperature.
    pub before: Metrics,
    pub after: Metrics,
}

impl Calibration {
    /// [`fit_temperature`] on the logits of labelled held-out images, and the metrics at
    /// `T = 1` and at the fitted `T`.
    pub fn fit(logits: &[f32], labels: &[usize], class_names: &[String]) -> Result<Calibration> {
        let fit = fit_temperature(logits, labels, class_names.len())?;
        let softmax = crate::loss::Output::Softmax;
        let before = Metrics::from_logits(logits, labels, class_names, 1.0, softmax)?;
        let after = Metrics::from_logits(logits, labels, class_names, fit.temperature, softmax)?;
        Ok(Calibration {
            fit,
            images: labels.len(),
            before,
            after,
        })
    }

    /// The checkpoint's `calibration` metadata: the method, the temperature, the images
    /// (`data`) it was fitted on, the metrics before and after, and when (Unix seconds).
    pub fn record(&self, data: &Path) -> Value {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let summary = |m: &Metrics| {
            json!({"nll": m.nll, "brier": m.brier, "ece": m.ece, "mce": m.mce,
                   "adaptive_ece": m.adaptive_ece, "classwise_ece": m.classwise_ece,
                   "mean_confidence": m.mean_confidence, "accuracy": m.accuracy})
        };
        json!({
            "method": "temperature scaling (NLL, Guo et al. 2017)",
            "temperature": self.fit.temperature,
            "at_bound": self.fit.at_bound,
            "data": data,
            "images": self.images,
            "before": summary(&self.before),
            "after": summary(&self.after),
            "fitted_unix": unix,
        })
    }
}
