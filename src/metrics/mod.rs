//! Classification metrics that show what the losses are for: imbalance (balanced accuracy,
//! per-class precision / recall / F1, macro-F1, the confusion matrix) and calibration (NLL,
//! Brier score, expected and maximum calibration error over 15 equal-width confidence bins,
//! as Guo et al. 2017 and Mukhoti et al. 2020 report them).
//!
//! Conventions (each stated where it matters, and in the README):
//! - the predicted class is the arg-max of the probabilities, the lowest index on a tie (as
//!   [`argmax`]);
//! - precision of a class never predicted and recall of a class with no examples are
//!   undefined (`None`, `null` in JSON, `-` in tables), never a silent 0;
//! - F1 is `2 TP / (2 TP + FP + FN)`: defined for a class that has examples (0 when it is
//!   never predicted, as scikit-learn's `zero_division=0` gives); a class without examples
//!   has no recall and so no F1 (`-`, even when it is predicted: those mistakes count in the
//!   recall of the classes they belong to); macro-F1 averages the defined ones;
//! - balanced accuracy is the mean recall over the classes that have examples;
//! - NLL is the mean of `-ln p(true class)`, from logits through an exact log-softmax when
//!   they are given, else from probabilities clamped to at least [`NLL_FLOOR`];
//! - a model with sigmoid outputs (`sigmoid-focal`) states each class's probability on its
//!   own; these single-label metrics take the sigmoids normalised to sum to 1 over the
//!   classes (computed in the log domain), so that they compare with softmax models;
//! - Brier is the mean over images of `sum_c (p_c - y_c)^2` (0 best, 2 worst);
//! - confidence bins are `(b/15, (b+1)/15]` (the first also holds 0), as Guo et al.'s code;
//!   ECE is `sum_b n_b/N |acc_b - conf_b|`, MCE the largest `|acc_b - conf_b|` over the
//!   bins that hold images; empty bins count for neither;
//! - adaptive ECE (AdaECE, as Mukhoti et al. and AdaFocal report it) is the same sum over 15
//!   equal-mass bins: edges interpolated through the sorted confidences as their
//!   `np.interp(linspace(0, N, 16), arange(N), sort(conf))`, bins `(lower, upper]`, the first
//!   also holding its lower edge (their code drops the least confident image; we keep it);
//! - classwise ECE (Kull et al. 2019, as Mukhoti et al.'s code) is, per class `c`, the ECE of
//!   the probability `p_c` of every image against whether the image is of class `c`, over the
//!   15 equal-width bins, averaged over the classes.

pub mod multilabel;

use serde::{Deserialize, Serialize};

use crate::loss::Output;
use crate::{Error, Result};

/// Number of equal-width confidence bins of ECE and MCE.
pub const ECE_BINS: usize = 15;

/// Smallest probability used in the NLL when only probabilities are given (a confident
/// mistake then costs at most `-ln(1e-15)` = 34.5 nats instead of infinity).
pub const NLL_FLOOR: f64 = 1e-15;

/// Counts of (true class, predicted class) pairs; rows are true classes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub classes: usize,
    /// `counts[t][p]`: images of class `t` predicted as `p`.
    pub counts: Vec<Vec<usize>>,
}

impl ConfusionMatrix {
    /// The matrix of `labels` against `predicted`; both must be below `classes`.
    pub fn new(labels: &[usize], predicted: &[usize], classes: usize) -> Result<Self> {
        if labels.len() != predicted.len() {
            return Err(Error::Shape(format!(
                "{} labels but {} predictions",
                labels.len(),
                predicted.len()
            )));
        }
        let mut counts = vec![vec![0usize; classes]; classes];
        for (&t, &p) in labels.iter().zip(predicted) {
            if t >= classes || p >= classes {
                return Err(Error::invalid(format!(
                    "class index {} out of range for {classes} classes",
                    t.max(p)
                )));
            }
            counts[t][p] += 1;
        }
        Ok(ConfusionMatrix { classes, counts })
    }

    pub fn total(&self) -> usize {
        self.counts.iter().flatten().sum()
    }
    /// Images of class `c` (row sum).
    pub fn support(&self, c: usize) -> usize {
        self.counts[c].iter().sum()
    }
    /// Images predicted as `c` (column sum).
    pub fn predicted(&self, c: usize) -> usize {
        self.counts.iter().map(|row| row[c]).sum()
    }
    pub fn correct(&self) -> usize {
        (0..self.classes).map(|c| self.counts[c][c]).sum()
    }
    /// Fraction correct (0 for an empty matrix).
    pub fn accuracy(&self) -> f64 {
        ratio(self.correct(), self.total()).unwrap_or(0.0)
    }
    /// `TP / predicted`, `None` when the class is never predicted.
    pub fn precision(&self, c: usize) -> Option<f64> {
        ratio(self.counts[c][c], self.predicted(c))
    }
    /// `TP / support`, `None` when the class has no images.
    pub fn recall(&self, c: usize) -> Option<f64> {
        ratio(self.counts[c][c], self.support(c))
    }
    /// `2 TP / (2 TP + FP + FN)`, `None` when the class has no images.
    pub fn f1(&self, c: usize) -> Option<f64> {
        if self.support(c) == 0 {
            return None;
        }
        let tp = self.counts[c][c];
        let fp = self.predicted(c) - tp;
        let fn_ = self.support(c) - tp;
        ratio(2 * tp, 2 * tp + fp + fn_)
    }
    /// Mean recall over the classes that have images (0 for an empty matrix).
    pub fn balanced_accuracy(&self) -> f64 {
        mean((0..self.classes).filter_map(|c| self.recall(c))).unwrap_or(0.0)
    }
    /// Mean F1 over the classes where it is defined (0 for an empty matrix).
    pub fn macro_f1(&self) -> f64 {
        mean((0..self.classes).filter_map(|c| self.f1(c))).unwrap_or(0.0)
    }
    /// One row per class, named by `names` (or by index when `names` is short).
    pub fn per_class(&self, names: &[String]) -> Vec<ClassMetrics> {
        (0..self.classes)
            .map(|c| ClassMetrics {
                class: names.get(c).cloned().unwrap_or_else(|| c.to_string()),
                support: self.support(c),
                predicted: self.predicted(c),
                precision: self.precision(c),
                recall: self.recall(c),
                f1: self.f1(c),
            })
            .collect()
    }
}

/// Precision, recall and F1 of one class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    /// Images of this class.
    pub support: usize,
    /// Images predicted as this class.
    pub predicted: usize,
    /// `None`: never predicted.
    pub precision: Option<f64>,
    /// `None`: no images of this class.
    pub recall: Option<f64>,
    /// `None`: neither present nor predicted.
    pub f1: Option<f64>,
}

/// One confidence bin of the reliability diagram.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// The bin is `(lower, upper]` (the first one also holds 0).
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    /// Mean confidence of the images in the bin; `None` when empty.
    pub confidence: Option<f64>,
    /// Fraction of them predicted correctly; `None` when empty.
    pub accuracy: Option<f64>,
}

/// Lower edge of bin `b` of `bins`, computed as Guo et al.'s `linspace(0, 1, bins + 1)`.
fn edge(b: usize, bins: usize) -> f64 {
    b as f64 / bins as f64
}

/// The bin of confidence `c`: `(b/bins, (b+1)/bins]`, with 0 in the first bin and anything
/// above 1 in the last.
pub fn bin_of(c: f64, bins: usize) -> usize {
    let mut b = ((c * bins as f64).ceil() as isize - 1).clamp(0, bins as isize - 1) as usize;
    // Settle rounding against the exact edges.
    while b > 0 && c <= edge(b, bins) {
        b -= 1;
    }
    while b + 1 < bins && c > edge(b + 1, bins) {
        b += 1;
    }
    b
}

/// Reliability bins of `confidences` (the probability of the predicted class) and whether
/// each prediction was right.
pub fn reliability_bins(confidences: &[f64], correct: &[bool], bins: usize) -> Vec<ReliabilityBin> {
    let mut count = vec![0usize; bins];
    let mut conf_sum = vec![0.0f64; bins];
    let mut right = vec![0usize; bins];
    for (&c, &ok) in confidences.iter().zip(correct) {
        let b = bin_of(c, bins);
        count[b] += 1;
        conf_sum[b] += c;
        right[b] += usize::from(ok);
    }
    (0..bins)
        .map(|b| ReliabilityBin {
            lower: edge(b, bins),
            upper: edge(b + 1, bins),
            count: count[b],
            confidence: (count[b] > 0).then(|| conf_sum[b] / count[b] as f64),
            accuracy: ratio(right[b], count[b]),
        })
        .collect()
}

/// Expected calibration error of `bins`: `sum_b n_b/N |acc_b - conf_b|` (0 without images).
pub fn expected_calibration_error(bins: &[ReliabilityBin]) -> f64 {
    let n: usize = bins.iter().map(|b| b.count).sum();
    if n == 0 {
        return 0.0;
    }
    bins.iter()
        .filter_map(|b| Some(b.count as f64 / n as f64 * (b.accuracy? - b.confidence?).abs()))
        .sum()
}

/// The `bins + 1` edges of equal-mass bins of `values` (at least one), as Mukhoti et al.'s
/// `np.interp(linspace(0, N, bins + 1), arange(N), sort(values))`: positions past the last
/// value take the last value.
pub fn equal_mass_edges(values: &[f64], bins: usize) -> Vec<f64> {
    let n = values.len();
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (0..=bins)
        .map(|b| {
            let x = n as f64 * b as f64 / bins as f64;
            let i = x.floor() as usize;
            if i + 1 >= n {
                sorted[n - 1]
            } else {
                let t = x - i as f64;
                sorted[i] + t * (sorted[i + 1] - sorted[i])
            }
        })
        .collect()
}

/// Reliability bins of `confidences` over `bins` equal-mass bins ([`equal_mass_edges`]),
/// each `(lower, upper]`, the first also holding its lower edge (a bin may be empty: with
/// tied confidences, or fewer images than bins).
pub fn equal_mass_bins(confidences: &[f64], correct: &[bool], bins: usize) -> Vec<ReliabilityBin> {
    if confidences.is_empty() || bins == 0 {
        return Vec::new();
    }
    let edges = equal_mass_edges(confidences, bins);
    let mut count = vec![0usize; bins];
    let mut conf_sum = vec![0.0f64; bins];
    let mut right = vec![0usize; bins];
    for (&c, &ok) in confidences.iter().zip(correct) {
        // The first bin whose upper edge is at or above c.
        let b = edges[1..].partition_point(|&upper| upper < c).min(bins - 1);
        count[b] += 1;
        conf_sum[b] += c;
        right[b] += usize::from(ok);
    }
    (0..bins)
        .map(|b| ReliabilityBin {
            lower: edges[b],
            upper: edges[b + 1],
            count: count[b],
            confidence: (count[b] > 0).then(|| conf_sum[b] / count[b] as f64),
            accuracy: ratio(right[b], count[b]),
        })
        .collect()
}

/// Adaptive ECE over `bins` equal-mass bins ([`equal_mass_bins`]):
/// `sum_b n_b/N |acc_b - conf_b|` (0 without images).
pub fn adaptive_calibration_error(confidences: &[f64], correct: &[bool], bins: usize) -> f64 {
    expected_calibration_error(&equal_mass_bins(confidences, correct, bins))
}

/// Classwise ECE: per class, the ECE of its probability in every image against whether the
/// image is of that class (`bins` equal-width bins), averaged over the classes.
pub fn classwise_calibration_error(
    probs: &[f64],
    labels: &[usize],
    classes: usize,
    bins: usize,
) -> f64 {
    if labels.is_empty() || classes == 0 {
        return 0.0;
    }
    let per_class = (0..classes).map(|c| {
        let p: Vec<f64> = probs.chunks_exact(classes).map(|row| row[c]).collect();
        let is_c: Vec<bool> = labels.iter().map(|&y| y == c).collect();
        expected_calibration_error(&reliability_bins(&p, &is_c, bins))
    });
    per_class.sum::<f64>() / classes as f64
}

/// Maximum calibration error: the largest `|acc_b - conf_b|` over bins with images.
pub fn maximum_calibration_error(bins: &[ReliabilityBin]) -> f64 {
    bins.iter()
        .filter_map(|b| Some((b.accuracy? - b.confidence?).abs()))
        .fold(0.0, f64::max)
}

/// Every metric of one evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub images: usize,
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    pub macro_f1: f64,
    /// Mean negative log-likelihood of the true class (nats).
    pub nll: f64,
    /// Mean multi-class Brier score.
    pub brier: f64,
    /// Expected calibration error, 15 bins.
    pub ece: f64,
    /// Maximum calibration error, 15 bins.
    pub mce: f64,
    /// Expected calibration error over 15 equal-mass bins.
    pub adaptive_ece: f64,
    /// Mean over the classes of each class probability's ECE, 15 bins.
    pub classwise_ece: f64,
    /// Mean confidence (probability of the predicted class); above the accuracy means
    /// overconfident.
    pub mean_confidence: f64,
    pub per_class: Vec<ClassMetrics>,
    pub confusion: ConfusionMatrix,
    pub reliability: Vec<ReliabilityBin>,
}

impl Metrics {
    /// Metrics of `probs` (`[images, classes]`, rows summing to 1) against `labels`.
    pub fn from_probabilities(
        probs: &[f64],
        labels: &[usize],
        class_names: &[String],
    ) -> Result<Metrics> {
        let classes = check_rows(probs.len(), labels.len(), class_names.len())?;
        let nll = probs
            .chunks_exact(classes)
            .zip(labels)
            .map(|(row, &y)| -row[y].max(NLL_FLOOR).ln())
            .sum::<f64>();
        Self::assemble(probs, labels, class_names, nll)
    }

    /// Metrics of `logits` divided by `temperature` (temperature scaling; 1 leaves them
    /// as they are) through the model's `output`, with the NLL through an exact
    /// log-softmax (or log of the normalised sigmoids).
    pub fn from_logits(
        logits: &[f32],
        labels: &[usize],
        class_names: &[String],
        temperature: f64,
        output: Output,
    ) -> Result<Metrics> {
        let classes = check_rows(logits.len(), labels.len(), class_names.len())?;
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::invalid(format!(
                "temperature {temperature}: must be a positive number"
            )));
        }
        let mut probs = vec![0.0; logits.len()];
        let mut nll = 0.0;
        for ((z, p), &y) in logits
            .chunks_exact(classes)
            .zip(probs.chunks_exact_mut(classes))
            .zip(labels)
        {
            nll -= log_probs_into(z, temperature, output, p)[y];
        }
        for p in &mut probs {
            *p = p.exp();
        }
        Self::assemble(&probs, labels, class_names, nll)
    }

    fn assemble(
        probs: &[f64],
        labels: &[usize],
        names: &[String],
        nll_sum: f64,
    ) -> Result<Metrics> {
        let classes = names.len();
        let n = labels.len();
        let predicted: Vec<usize> = probs.chunks_exact(classes).map(argmax).collect();
        let confusion = ConfusionMatrix::new(labels, &predicted, classes)?;
        let (confidences, correct) = confidences(probs, labels);
        let reliability = reliability_bins(&confidences, &correct, ECE_BINS);
        let brier = probs
            .chunks_exact(classes)
            .zip(labels)
            .map(|(row, &y)| {
                row.iter()
                    .enumerate()
                    .map(|(c, &p)| (p - f64::from(u8::from(c == y))).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>();
        Ok(Metrics {
            images: n,
            accuracy: confusion.accuracy(),
            balanced_accuracy: confusion.balanced_accuracy(),
            macro_f1: confusion.macro_f1(),
            nll: nll_sum / n as f64,
            brier: brier / n as f64,
            ece: expected_calibration_error(&reliability),
            mce: maximum_calibration_error(&reliability),
            adaptive_ece: adaptive_calibration_error(&confidences, &correct, ECE_BINS),
            classwise_ece: classwise_calibration_error(probs, labels, classes, ECE_BINS),
            mean_confidence: confidences.iter().sum::<f64>() / n as f64,
            per_class: confusion.per_class(names),
            confusion,
            reliability,
        })
    }

    /// The lowest recall over the classes with images (the minority class's, usually).
    pub fn worst_recall(&self) -> Option<f64> {
        self.per_class
            .iter()
            .filter_map(|c| c.recall)
            .reduce(f64::min)
    }

    /// The per-class table and the confusion matrix, as printed by `train` and `eval`.
    pub fn per_class_table(&self) -> String {
        let width = self
            .per_class
            .iter()
            .map(|c| c.class.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!(
            "{:<width$}  {:>9}  {:>6}  {:>6}  {:>9}\n",
            "class", "precision", "recall", "f1", "support"
        );
        for c in &self.per_class {
            out.push_str(&format!(
                "{:<width$}  {:>9}  {:>6}  {:>6}  {:>9}\n",
                c.class,
                opt(c.precision),
                opt(c.recall),
                opt(c.f1),
                c.support
            ));
        }
        out.push_str(&format!(
            "{:<width$}  {:>9}  {:>6}  {:>6}  {:>9}\n",
            "macro",
            "",
            "",
            format!("{:.4}", self.macro_f1),
            self.images
        ));
        out.push_str("confusion (rows: true, columns: predicted)\n");
        let cell = self
            .confusion
            .counts
            .iter()
            .flatten()
            .map(|n| n.to_string().len())
            .max()
            .unwrap_or(1)
            .max(
                self.per_class
                    .iter()
                    .map(|c| c.class.chars().count().min(10))
                    .max()
                    .unwrap_or(1),
            );
        out.push_str(&format!("{:<width$}", ""));
        for c in &self.per_class {
            let short: String = c.class.chars().take(10).collect();
            out.push_str(&format!("  {short:>cell$}"));
        }
        out.push('\n');
        for (row, c) in self.confusion.counts.iter().zip(&self.per_class) {
            out.push_str(&format!("{:<width$}", c.class));
            for n in row {
                out.push_str(&format!("  {n:>cell$}"));
            }
            out.push('\n');
        }
        out
    }

    /// One line: accuracy, balanced accuracy, macro-F1, NLL, Brier, ECE, MCE, adaptive and
    /// classwise ECE.
    pub fn summary_line(&self) -> String {
        format!(
            "acc {:.4}  balanced acc {:.4}  macro-F1 {:.4}  NLL {:.4}  Brier {:.4}  ECE {:.4}  MCE {:.4}  AdaECE {:.4}  classwise ECE {:.4}  ({} images)",
            self.accuracy,
            self.balanced_accuracy,
            self.macro_f1,
            self.nll,
            self.brier,
            self.ece,
            self.mce,
            self.adaptive_ece,
            self.classwise_ece,
            self.images
        )
    }

    /// The non-empty confidence bins as a small table (printed by `eval`).
    pub fn reliability_table(&self) -> String {
        let mut out = format!(
            "confidence bins (ECE {:.4}, MCE {:.4}; empty bins left out)\n{:>13}  {:>7}  {:>10}  {:>8}  {:>7}\n",
            self.ece, self.mce, "bin", "images", "confidence", "accuracy", "gap"
        );
        for b in &self.reliability {
            if let (Some(c), Some(a)) = (b.confidence, b.accuracy) {
                out.push_str(&format!(
                    "{:>13}  {:>7}  {:>10.4}  {:>8.4}  {:>+7.4}\n",
                    format!("({:.3}, {:.3}]", b.lower, b.upper),
                    b.count,
                    c,
                    a,
                    a - c
                ));
            }
        }
        out.pop();
        out
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
}

fn check_rows(values: usize, labels: usize, classes: usize) -> Result<usize> {
    if classes == 0 {
        return Err(Error::invalid("metrics need at least one class"));
    }
    if labels == 0 {
        return Err(Error::invalid("no images to compute metrics on"));
    }
    if values != labels * classes {
        return Err(Error::Shape(format!(
            "{values} values for {labels} images of {classes} classes"
        )));
    }
    Ok(classes)
}

/// `log softmax(z / temperature)` of one row into `out` (f64), returned for chaining.
pub fn log_softmax_into<'a>(z: &[f32], temperature: f64, out: &'a mut [f64]) -> &'a [f64] {
    let max = z
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let mut sum = 0.0;
    for (o, &v) in out.iter_mut().zip(z) {
        *o = (f64::from(v) - max) / temperature;
        sum += o.exp();
    }
    let log_sum = sum.ln();
    for o in out.iter_mut() {
        *o -= log_sum;
    }
    out
}

/// The log-probabilities of one row of logits divided by `temperature` as the metrics
/// take them: [`log_softmax_into`], or for sigmoid outputs the log of the sigmoids
/// normalised to sum to 1 (`-softplus(-z/T)` minus its log-sum-exp over the row).
pub fn log_probs_into<'a>(
    z: &[f32],
    temperature: f64,
    output: Output,
    out: &'a mut [f64],
) -> &'a [f64] {
    if output == Output::Softmax {
        return log_softmax_into(z, temperature, out);
    }
    for (o, &v) in out.iter_mut().zip(z) {
        *o = -crate::ops::softmax::softplus(-f64::from(v) / temperature);
    }
    let max = out.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    let log_sum = max + out.iter().map(|&v| (v - max).exp()).sum::<f64>().ln();
    for o in out.iter_mut() {
        *o -= log_sum;
    }
    out
}

/// The probabilities of every row of `logits` (`[rows, classes]`) divided by `temperature`,
/// in f64, as the metrics take them ([`log_probs_into`]).
pub fn probability_rows(
    logits: &[f32],
    classes: usize,
    temperature: f64,
    output: Output,
) -> Vec<f64> {
    let mut out = vec![0.0; logits.len()];
    for (z, p) in logits
        .chunks_exact(classes)
        .zip(out.chunks_exact_mut(classes))
    {
        log_probs_into(z, temperature, output, p);
        for v in p.iter_mut() {
            *v = v.exp();
        }
    }
    out
}

/// What `predict` reports for each class: `softmax(z / T)`, or each class's own
/// `sigmoid(z / T)` for sigmoid outputs (independent: they need not sum to 1).
pub fn prediction_rows(
    logits: &[f32],
    classes: usize,
    temperature: f64,
    output: Output,
) -> Vec<f64> {
    match output {
        Output::Softmax => probability_rows(logits, classes, temperature, output),
        Output::Sigmoid => logits
            .iter()
            .map(|&z| crate::ops::softmax::sigmoid(f64::from(z) / temperature))
            .collect(),
    }
}

/// Each image's confidence (the probability of its predicted class, the [`argmax`]) and
/// whether that prediction is its label; `probs` is `[labels.len(), classes]`.
pub fn confidences(probs: &[f64], labels: &[usize]) -> (Vec<f64>, Vec<bool>) {
    if labels.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let classes = probs.len() / labels.len();
    probs
        .chunks_exact(classes)
        .zip(labels)
        .map(|(row, &y)| {
            let p = argmax(row);
            (row[p], p == y)
        })
        .unzip()
}

/// Index of the largest value, the lowest on a tie.
pub fn argmax<T: PartialOrd>(row: &[T]) -> usize {
    (0..row.len()).fold(0, |best, c| if row[c] > row[best] { c } else { best })
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The validation metrics of one epoch: extra fields of a `metrics.jsonl` line, beside
/// `val_loss` and `val_accuracy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochValidation {
    pub val_balanced_accuracy: f64,
    pub val_macro_f1: f64,
    pub val_nll: f64,
    pub val_brier: f64,
    pub val_ece: f64,
    pub val_mce: f64,
    /// Absent from runs written before focalflow measured it.
    #[serde(default)]
    pub val_adaptive_ece: Option<f64>,
    #[serde(default)]
    pub val_classwise_ece: Option<f64>,
    pub val_mean_confidence: f64,
    pub val_per_class: Vec<ClassMetrics>,
    /// Rows: true class, columns: predicted class.
    pub val_confusion: Vec<Vec<usize>>,
}

impl From<&Metrics> for EpochValidation {
    fn from(m: &Metrics) -> Self {
        EpochValidation {
            val_balanced_accuracy: m.balanced_accuracy,
            val_macro_f1: m.macro_f1,
            val_nll: m.nll,
            val_brier: m.brier,
            val_ece: m.ece,
            val_mce: m.mce,
            val_adaptive_ece: Some(m.adaptive_ece),
            val_classwise_ece: Some(m.classwise_ece),
            val_mean_confidence: m.mean_confidence,
            val_per_class: m.per_class.clone(),
            val_confusion: m.confusion.counts.clone(),
        }
    }
}
