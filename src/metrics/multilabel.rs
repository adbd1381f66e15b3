//! Metrics of a multi-label set (`--labels`; a sigmoid per class, `sigmoid-focal`), as
//! scikit-learn defines them:
//!
//! - a class is predicted where its probability is at least [`THRESHOLD`] (0.5);
//! - per class: precision `TP / predicted` (`None` when never predicted), recall
//!   `TP / positives` (`None` without positives), F1 `2TP / (2TP + FP + FN)` (`None` without
//!   positives, as the single-label tables), and average precision (AP);
//! - macro-F1: the mean of the defined F1s; micro-F1: `2 sum TP / (2 sum TP + sum FP + sum
//!   FN)` over every (image, class);
//! - AP: `sum_n (R_n - R_(n-1)) P_n` over the distinct scores in descending order (ties as
//!   one threshold), scikit-learn's `average_precision_score`; mAP: the mean over the
//!   classes with positives;
//! - subset accuracy: images whose predicted set is exactly their label set; Hamming loss:
//!   the fraction of (image, class) pairs predicted wrong;
//! - top-1 accuracy: images whose most probable class is one of their labels (what training
//!   counts as "accuracy", and `val_accuracy`).

use serde::{Deserialize, Serialize};

use crate::ops::softmax::sigmoid;
use crate::{Error, Result};

/// The probability at and above which a class is predicted.
pub const THRESHOLD: f64 = 0.5;

/// One class of a multi-label set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelMetrics {
    pub class: String,
    /// Images that carry the label.
    pub support: usize,
    /// Images it is predicted for.
    pub predicted: usize,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    /// `None` without positives.
    pub average_precision: Option<f64>,
}

/// Every metric of a multi-label evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultiLabelMetrics {
    pub images: usize,
    pub top1_accuracy: f64,
    pub subset_accuracy: f64,
    pub hamming_loss: f64,
    pub micro_f1: f64,
    pub macro_f1: f64,
    pub mean_average_precision: f64,
    pub per_class: Vec<LabelMetrics>,
}

/// Average precision of `scores` against `positive` (scikit-learn's definition; `None`
/// without positives).
pub fn average_precision(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let total = positive.iter().filter(|&&p| p).count();
    if total == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut seen, mut ap, mut last_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut k = 0;
    while k < order.len() {
        // Every image at this score is one threshold.
        let s = scores[order[k]];
        while k < order.len() && scores[order[k]] == s {
            tp += usize::from(positive[order[k]]);
            seen += 1;
            k += 1;
        }
        let recall = tp as f64 / total as f64;
        ap += (recall - last_recall) * (tp as f64 / seen as f64);
        last_recall = recall;
    }
    Some(ap)
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

impl MultiLabelMetrics {
    /// The metrics of `logits` (`[images, classes]`, a sigmoid each, divided by
    /// `temperature`) against each image's label set.
    pub fn from_logits(
        logits: &[f32],
        label_sets: &[Vec<u32>],
        class_names: &[String],
        temperature: f64,
    ) -> Result<MultiLabelMetrics> {
        let (n, k) = (label_sets.len(), class_names.len());
        if n == 0 || k == 0 {
            return Err(Error::invalid(
                "no images or no classes to compute metrics on",
            ));
        }
        if logits.len() != n * k {
            return Err(Error::Shape(format!(
                "{} values for {n} images of {k} classes",
                logits.len()
            )));
        }
        let probs: Vec<f64> = logits
            .iter()
            .map(|&z| sigmoid(f64::from(z) / temperature))
            .collect();
        let mut truth = vec![false; n * k];
        for (i, set) in label_sets.iter().enumerate() {
            for &c in set {
                let c = c as usize;
                if c >= k {
                    return Err(Error::invalid(format!(
                        "class index {c} out of range for {k} classes"
                    )));
                }
                truth[i * k + c] = true;
            }
        }
        let predicted: Vec<bool> = probs.iter().map(|&p| p >= THRESHOLD).collect();
        let (mut subset, mut top1, mut wrong) = (0usize, 0usize, 0usize);
        for i in 0..n {
            let row = i * k..(i + 1) * k;
            subset += usize::from(predicted[row.clone()] == truth[row.clone()]);
            wrong += predicted[row.clone()]
                .iter()
                .zip(&truth[row.clone()])
                .filter(|(p, t)| p != t)
                .count();
            let best = crate::metrics::argmax(&probs[row.clone()]);
            top1 += usize::from(truth[i * k + best]);
        }
        let (mut tp_all, mut fp_all, mut fn_all) = (0usize, 0usize, 0usize);
        let per_class: Vec<LabelMetrics> = (0..k)
            .map(|c| {
                let column = |v: &[bool]| -> Vec<bool> { (0..n).map(|i| v[i * k + c]).collect() };
                let (t, p) = (column(&truth), column(&predicted));
                let tp = t.iter().zip(&p).filter(|&(&t, &p)| t && p).count();
                let support = t.iter().filter(|&&t| t).count();
                let guessed = p.iter().filter(|&&p| p).count();
                let (fp, fn_) = (guessed - tp, support - tp);
                tp_all += tp;
                fp_all += fp;
                fn_all += fn_;
                let scores: Vec<f64> = (0..n).map(|i| probs[i * k + c]).collect();
                LabelMetrics {
                    class: class_names[c].clone(),
                    support,
                    predicted: guessed,
                    precision: ratio(tp, guessed),
                    recall: ratio(tp, support),
                    f1: if support == 0 {
                        None
                    } else {
                        ratio(2 * tp, 2 * tp + fp + fn_)
                    },
                    average_precision: average_precision(&scores, &t),
                }
            })
            .collect();
        let mean = |v: Vec<f64>| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        Ok(MultiLabelMetrics {
            images: n,
            top1_accuracy: top1 as f64 / n as f64,
            subset_accuracy: subset as f64 / n as f64,
            hamming_loss: wrong as f64 / (n * k) as f64,
            micro_f1: ratio(2 * tp_all, 2 * tp_all + fp_all + fn_all).unwrap_or(0.0),
            macro_f1: mean(per_class.iter().filter_map(|c| c.f1).collect()),
            mean_average_precision: mean(
                per_class
                    .iter()
                    .filter_map(|c| c.average_precision)
                    .collect(),
            ),
            per_class,
        })
    }

    /// One line: the set-level metrics.
    pub fn summary_line(&self) -> String {
        format!(
            "top-1 acc {:.4}  subset acc {:.4}  Hamming loss {:.4}  micro-F1 {:.4}  macro-F1 {:.4}  mAP {:.4}  ({} images, threshold {THRESHOLD})",
            self.top1_accuracy,
            self.subset_accuracy,
            self.hamming_loss,
            self.micro_f1,
            self.macro_f1,
            self.mean_average_precision,
            self.images
        )
    }

    /// The per-class table (`-` where a value is undefined).
    pub fn per_class_table(&self) -> String {
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
        let width = self
            .per_class
            .iter()
            .map(|c| c.class.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!(
            "{:<width$}  {:>9}  {:>6}  {:>6}  {:>6}  {:>9}  {:>9}\n",
            "label", "precision", "recall", "f1", "AP", "support", "predicted"
        );
        for c in &self.per_class {
            out.push_str(&format!(
                "{:<width$}  {:>9}  {:>6}  {:>6}  {:>6}  {:>9}  {:>9}\n",
                c.class,
                opt(c.precision),
                opt(c.recall),
                opt(c.f1),
                opt(c.average_precision),
                c.support,
                c.predicted
            ));
        }
        out.pop();
        out
    }
}

/// The validation metrics of one epoch of a multi-label run: extra fields of its
/// `metrics.jsonl` line (beside `val_loss` and `val_accuracy`, the top-1 accuracy).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMultiLabel {
    pub val_subset_accuracy: f64,
    pub val_hamming_loss: f64,
    pub val_micro_f1: f64,
    pub val_macro_f1: f64,
    pub val_map: f64,
    pub val_per_class: Vec<LabelMetrics>,
}

impl From<&MultiLabelMetrics> for EpochMultiLabel {
    fn from(m: &MultiLabelMetrics) -> Self {
        EpochMultiLabel {
            val_subset_accuracy: m.subset_accuracy,
            val_hamming_loss: m.hamming_loss,
            val_micro_f1: m.micro_f1,
            val_macro_f1: m.macro_f1,
            val_map: m.mean_average_precision,
            val_per_class: m.per_class.clone(),
        }
    }
}
