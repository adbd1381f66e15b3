//! Every metric against values worked out by hand (in the comments) on small confusion
//! matrices and probability sets, including a class that is never predicted, a class with
//! no images, a class with neither, and confidence bins with no samples.

use focalflow::loss::Output;
use focalflow::metrics::{
    self, ConfusionMatrix, ECE_BINS, Metrics, NLL_FLOOR, bin_of, reliability_bins,
};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * (1.0 + b.abs())
}

macro_rules! assert_close {
    ($a:expr, $b:expr) => {{
        let (a, b): (f64, f64) = ($a, $b);
        assert!(close(a, b), "{} = {a}, expected {b}", stringify!($a));
    }};
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|c| format!("c{c}")).collect()
}

#[test]
fn confusion_matrix_with_a_class_never_predicted() {
    // true:      0 0 0 1 1 2 2
    // predicted: 0 0 1 1 0 0 1
    // rows (true) x columns (predicted): [2 1 0] [1 1 0] [1 1 0]
    let cm = ConfusionMatrix::new(&[0, 0, 0, 1, 1, 2, 2], &[0, 0, 1, 1, 0, 0, 1], 3).unwrap();
    assert_eq!(cm.counts, vec![vec![2, 1, 0], vec![1, 1, 0], vec![1, 1, 0]]);
    assert_eq!((cm.support(0), cm.support(1), cm.support(2)), (3, 2, 2));
    assert_eq!(
        (cm.predicted(0), cm.predicted(1), cm.predicted(2)),
        (4, 3, 0)
    );
    assert_close!(cm.accuracy(), 3.0 / 7.0);
    // precision: 2/4, 1/3, undefined (class 2 is never predicted)
    assert_close!(cm.precision(0).unwrap(), 0.5);
    assert_close!(cm.precision(1).unwrap(), 1.0 / 3.0);
    assert_eq!(cm.precision(2), None);
    // recall: 2/3, 1/2, 0/2
    assert_close!(cm.recall(0).unwrap(), 2.0 / 3.0);
    assert_close!(cm.recall(1).unwrap(), 0.5);
    assert_close!(cm.recall(2).unwrap(), 0.0);
    // F1 = 2TP / (2TP + FP + FN): 4/(4+2+1) = 4/7, 2/(2+2+1) = 2/5, 0/(0+0+2) = 0
    assert_close!(cm.f1(0).unwrap(), 4.0 / 7.0);
    assert_close!(cm.f1(1).unwrap(), 0.4);
    assert_close!(cm.f1(2).unwrap(), 0.0);
    // balanced accuracy = (2/3 + 1/2 + 0) / 3 = 7/18; macro-F1 = (4/7 + 2/5 + 0) / 3 = 34/105
    assert_close!(cm.balanced_accuracy(), 7.0 / 18.0);
    assert_close!(cm.macro_f1(), 34.0 / 105.0);
    let rows = cm.per_class(&names(3));
    assert_eq!(rows[2].class, "c2");
    assert_eq!((rows[2].support, rows[2].predicted), (2, 0));
}

#[test]
fn classes_without_images_are_left_out_of_the_averages() {
    // 4 classes. true: 0 0 1, predicted: 0 2 1. Class 2 is predicted but has no images,
    // class 3 is neither present nor predicted.
    let cm = ConfusionMatrix::new(&[0, 0, 1], &[0, 2, 1], 4).unwrap();
    assert_eq!(cm.recall(2), None);
    assert_close!(cm.precision(2).unwrap(), 0.0); // its one prediction is wrong
    // No images, no recall, no F1: "-", not a 0 in macro-F1 (its wrong prediction counts
    // in class 0's recall).
    assert_eq!(cm.f1(2), None);
    assert_eq!(
        (cm.precision(3), cm.recall(3), cm.f1(3)),
        (None, None, None)
    );
    // balanced accuracy over classes 0 and 1: (1/2 + 1) / 2
    assert_close!(cm.balanced_accuracy(), 0.75);
    // macro-F1 over classes 0 and 1: (2/3 + 1) / 2 (class 0: 2/(2+0+1))
    assert_close!(cm.macro_f1(), 5.0 / 6.0);
    assert_close!(cm.accuracy(), 2.0 / 3.0);
}

#[test]
fn confusion_matrix_rejects_bad_input() {
    assert!(ConfusionMatrix::new(&[0, 1], &[0], 2).is_err());
    let err = ConfusionMatrix::new(&[0, 2], &[0, 1], 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("out of range"), "{err}");
    let empty = ConfusionMatrix::new(&[], &[], 2).unwrap();
    assert_eq!((empty.accuracy(), empty.balanced_accuracy()), (0.0, 0.0));
}

#[test]
fn bins_are_half_open_on_the_left_like_guo_et_al() {
    assert_eq!(bin_of(0.0, 15), 0);
    assert_eq!(bin_of(1.0 / 15.0, 15), 0); // an edge belongs to the bin below it
    assert_eq!(bin_of(1.0 / 15.0 + 1e-12, 15), 1);
    assert_eq!(bin_of(0.5, 15), 7); // (7/15, 8/15]
    assert_eq!(bin_of(0.99, 15), 14);
    assert_eq!(bin_of(1.0, 15), 14);
    // every edge i/15 as linspace computes it lands in bin i-1
    for i in 1..=15 {
        assert_eq!(bin_of(i as f64 / 15.0, 15), i - 1, "edge {i}/15");
    }
}

/// Five images of two classes:
///
/// | image | p          | true | predicted | confidence | right | bin (b/15, (b+1)/15] |
/// |-------|------------|------|-----------|------------|-------|----------------------|
/// | A     | .90 .10    | 0    | 0         | .90        | yes   | 13                   |
/// | B     | .08 .92    | 0    | 1         | .92        | no    | 13                   |
/// | C     | .38 .62    | 1    | 1         | .62        | yes   | 9                    |
/// | D     | .70 .30    | 1    | 0         | .70        | no    | 10                   |
/// | E     | .55 .45    | 0    | 0         | .55        | yes   | 8                    |
fn five() -> (Vec<f64>, Vec<usize>) {
    (
        vec![0.9, 0.1, 0.08, 0.92, 0.38, 0.62, 0.7, 0.3, 0.55, 0.45],
        vec![0, 0, 1, 1, 0],
    )
}

#[test]
fn calibration_metrics_by_hand_with_empty_bins() {
    let (p, y) = five();
    let m = Metrics::from_probabilities(&p, &y, &names(2)).unwrap();
    assert_eq!(m.images, 5);
    assert_eq!(m.confusion.counts, vec![vec![2, 1], vec![1, 1]]);
    assert_close!(m.accuracy, 0.6);
    // recall 2/3 and 1/2
    assert_close!(m.balanced_accuracy, (2.0 / 3.0 + 0.5) / 2.0);
    // F1: class 0 4/(4+1+1) = 2/3, class 1 2/(2+1+1) = 1/2
    assert_close!(m.macro_f1, (2.0 / 3.0 + 0.5) / 2.0);
    // NLL = -(ln .9 + ln .08 + ln .62 + ln .3 + ln .55) / 5
    let nll = -(0.9f64.ln() + 0.08f64.ln() + 0.62f64.ln() + 0.3f64.ln() + 0.55f64.ln()) / 5.0;
    assert_close!(m.nll, nll);
    // Brier: A .01+.01, B 2*.92^2, C 2*.38^2, D 2*.7^2, E 2*.45^2 = 3.3866, over 5
    assert_close!(m.brier, 3.3866 / 5.0);
    // bin 13: A and B, mean confidence .91, accuracy .5, gap .41; bin 9: C gap .38;
    // bin 10: D gap .70; bin 8: E gap .45. ECE = (2*.41 + .38 + .70 + .45) / 5 = .47
    assert_close!(m.ece, 0.47);
    assert_close!(m.mce, 0.70);
    assert_close!(m.mean_confidence, 3.69 / 5.0);
    assert_eq!(m.reliability.len(), ECE_BINS);
    let b13 = &m.reliability[13];
    assert_eq!(b13.count, 2);
    assert_close!(b13.confidence.unwrap(), 0.91);
    assert_close!(b13.accuracy.unwrap(), 0.5);
    assert_close!(b13.lower, 13.0 / 15.0);
    assert_close!(b13.upper, 14.0 / 15.0);
    for b in [0, 1, 7, 11, 12, 14] {
        let bin = &m.reliability[b];
        assert_eq!(
            (bin.count, bin.confidence, bin.accuracy),
            (0, None, None),
            "bin {b}"
        );
    }
    assert_eq!(
        m.reliability.iter().map(|b| b.count).sum::<usize>(),
        5,
        "every image in exactly one bin"
    );
    assert_close!(m.worst_recall().unwrap(), 0.5);
}

#[test]
fn perfectly_calibrated_bins_have_zero_ece() {
    // 10 predictions at confidence .8 (bin 11: (11/15, 12/15]), 8 of them right.
    let conf = vec![0.8; 10];
    let right: Vec<bool> = (0..10).map(|i| i < 8).collect();
    let bins = reliability_bins(&conf, &right, 15);
    assert_eq!(bins[11].count, 10);
    assert_close!(metrics::expected_calibration_error(&bins), 0.0);
    assert!(metrics::maximum_calibration_error(&bins) < 1e-12);
    assert_eq!(
        metrics::expected_calibration_error(&reliability_bins(&[], &[], 15)),
        0.0
    );
}

#[test]
fn logits_give_the_same_metrics_and_an_exact_nll() {
    let (p, y) = five();
    let logits: Vec<f32> = p.iter().map(|v| v.ln() as f32).collect();
    let a = Metrics::from_probabilities(&p, &y, &names(2)).unwrap();
    let b = Metrics::from_logits(&logits, &y, &names(2), 1.0, Output::Softmax).unwrap();
    assert!((a.nll - b.nll).abs() < 1e-6, "{} vs {}", a.nll, b.nll);
    assert!((a.ece - b.ece).abs() < 1e-6);
    assert_eq!(a.confusion, b.confusion);
    // temperature 2 on logits [2, 0]: p = softmax([1, 0]); true class 1: NLL = ln(1 + e)
    let t = Metrics::from_logits(&[2.0, 0.0], &[1], &names(2), 2.0, Output::Softmax).unwrap();
    assert_close!(t.nll, (1.0 + std::f64::consts::E).ln());
    // a confident mistake: the exact NLL is the logit gap; from probabilities it is clamped
    let big = Metrics::from_logits(&[1000.0, 0.0], &[1], &names(2), 1.0, Output::Softmax).unwrap();
    assert_close!(big.nll, 1000.0);
    let clamped = Metrics::from_probabilities(&[1.0, 0.0], &[1], &names(2)).unwrap();
    assert_close!(clamped.nll, -NLL_FLOOR.ln());
    // Brier of a certain mistake is 2, of a certain hit 0
    assert_close!(clamped.brier, 2.0);
    let hit = Metrics::from_probabilities(&[0.0, 1.0], &[1], &names(2)).unwrap();
    assert_close!(hit.brier, 0.0);
    assert_close!(hit.ece, 0.0);
}

#[test]
fn ties_predict_the_lowest_class() {
    let m = Metrics::from_probabilities(&[0.5, 0.5], &[1], &names(2)).unwrap();
    assert_eq!(m.confusion.counts, vec![vec![0, 0], vec![1, 0]]);
}

#[test]
fn bad_shapes_and_empty_sets_are_errors() {
    assert!(Metrics::from_probabilities(&[], &[], &names(2)).is_err());
    let err = Metrics::from_probabilities(&[0.5, 0.5, 1.0], &[0, 1], &names(2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 values for 2 images of 2 classes"), "{err}");
    assert!(Metrics::from_logits(&[1.0, 0.0], &[0], &names(2), 0.0, Output::Softmax).is_err());
}

#[test]
fn tables_show_undefined_values_as_dashes() {
    let (p, _) = five();
    // true labels all class 0: class 1 has no images, its recall is undefined
    let m = Metrics::from_probabilities(&p, &[0, 0, 0, 0, 0], &names(2)).unwrap();
    let table = m.per_class_table();
    let c1 = table.lines().find(|l| l.starts_with("c1")).unwrap();
    assert!(c1.contains(" - "), "{table}");
    assert!(
        table.contains("confusion (rows: true, columns: predicted)"),
        "{table}"
    );
    let json = serde_json::to_value(&m).unwrap();
    assert!(json["per_class"][1]["recall"].is_null());
}

#[test]
fn temperature_scaling_by_hand() {
    use focalflow::calibrate::{fit_temperature, nll_at};
    // Four images with logits [4, 0]; three are class 0. NLL(T) is smallest where the
    // probability of class 0, sigmoid(4 / T), equals 3/4: 4 / T = ln 3, T = 4 / ln 3.
    let logits = [4.0f32, 0.0, 4.0, 0.0, 4.0, 0.0, 4.0, 0.0];
    let fit = fit_temperature(&logits, &[0, 0, 0, 1], 2).unwrap();
    assert!((fit.temperature - 4.0 / 3f64.ln()).abs() < 1e-9, "{fit:?}");
    assert!(!fit.at_bound);
    // NLL at the optimum: -(3 ln .75 + ln .25) / 4
    assert_close!(fit.nll_after, -(3.0 * 0.75f64.ln() + 0.25f64.ln()) / 4.0);
    assert_close!(fit.nll_before, nll_at(&logits, &[0, 0, 0, 1], 2, 1.0));
    assert!(fit.nll_after < fit.nll_before);
    // All right and confident: the NLL keeps falling as T -> 0, the bound is reported.
    let sure = fit_temperature(&[4.0, 0.0, 0.0, 4.0], &[0, 1], 2).unwrap();
    assert!(sure.at_bound && (sure.temperature - focalflow::calibrate::T_MIN).abs() < 1e-12);
    assert!(fit_temperature(&[], &[], 2).is_err());
    assert!(fit_temperature(&[f32::NAN, 0.0], &[0], 2).is_err());
}

#[test]
fn adaptive_ece_by_hand() {
    // five(): confidences sorted .55 .62 .70 .90 .92; the 16 edges interpolate at positions
    // 5b/15, so each image is the upper edge of its own bin: E bin 0, C bin 2, D bin 5,
    // A bin 8, B bin 11. AdaECE = (|1-.55| + |1-.62| + |0-.70| + |1-.90| + |0-.92|) / 5 = .51
    let (p, y) = five();
    let m = Metrics::from_probabilities(&p, &y, &names(2)).unwrap();
    assert_close!(m.adaptive_ece, 0.51);
    // 30 confidences i/30 (the first lower edge 1/30, the last upper edge 1.0): bin 0 holds
    // 1/30..3/30, bin b > 0 holds (2b+2)/30 and (2b+3)/30, bin 14 holds 1.0 alone (a confidence
    // of exactly 1 is in the last bin). Every image right: the gaps are 1 - confidence, each
    // weighted by its bin's share, so AdaECE = mean(1 - c) = 1 - 31/60.
    let conf: Vec<f64> = (1..=30).map(|i| f64::from(i) / 30.0).collect();
    let right = vec![true; 30];
    assert_close!(
        metrics::adaptive_calibration_error(&conf, &right, ECE_BINS),
        1.0 - 31.0 / 60.0
    );
    // Two bins instead: edges 1/30, 16/30, 1.0 -> bins of 16 and 14 images. Right where
    // c > 1/2: bin 0 has mean conf 8.5/30 and accuracy 1/16 (16/30 is right), bin 1
    // mean conf 23.5/30 and accuracy 1.
    let right: Vec<bool> = conf.iter().map(|&c| c > 0.5).collect();
    let want = 16.0 / 30.0 * (8.5 / 30.0 - 1.0 / 16.0) + 14.0 / 30.0 * (1.0 - 23.5 / 30.0);
    assert_close!(metrics::adaptive_calibration_error(&conf, &right, 2), want);
    // Identical confidences share one bin; no images, no error.
    assert_close!(
        metrics::adaptive_calibration_error(&[0.7; 4], &[true, true, false, true], ECE_BINS),
        0.05
    );
    assert_eq!(metrics::adaptive_calibration_error(&[], &[], ECE_BINS), 0.0);
}

#[test]
fn classwise_ece_by_hand() {
    // five(), two classes: each class's probabilities fall in separate bins, so both classes'
    // ECE are (.1 + .92 + .38 + .70 + .45) / 5 = .51 (two classes mirror each other).
    let (p, y) = five();
    let m = Metrics::from_probabilities(&p, &y, &names(2)).unwrap();
    assert_close!(m.classwise_ece, 0.51);
    // Three classes, two images: [.5 .3 .2] of class 0, [.2 .5 .3] of class 2.
    // class 0: .5 (is 0) bin 7, .2 (not) bin 2 -> (.5 + .2)/2 = .35
    // class 1: .3, .5, neither of class 1 -> (.3 + .5)/2 = .4
    // class 2: .2 (not), .3 (is 2) -> (.2 + .7)/2 = .45; mean .4
    let p = [0.5, 0.3, 0.2, 0.2, 0.5, 0.3];
    let m = Metrics::from_probabilities(&p, &[0, 2], &names(3)).unwrap();
    assert_close!(m.classwise_ece, 0.4);
    // Both of class 2's probabilities in one bin, (.1333, .2]: .19 and .2, one of class 2:
    // gap |.5 - .195| weighs 1.
    let p = [0.5, 0.31, 0.19, 0.2, 0.6, 0.2];
    let cw = metrics::classwise_calibration_error(&p, &[0, 2], 3, ECE_BINS);
    // class 0: .5 (is) bin 7, .2 (not) bin 2 -> .35; class 1: .31 bin 4, .6 bin 8 -> .455
    assert_close!(cw, (0.35 + 0.455 + (0.5f64 - 0.195).abs()) / 3.0);
}

#[test]
fn sigmoid_outputs_are_normalised_for_the_single_label_metrics() {
    // Logits [ln 3, 0]: sigmoids .75 and .5, normalised .6 and .4 (in the log domain).
    let z = [3f32.ln(), 0.0];
    let m = Metrics::from_logits(&z, &[0], &names(2), 1.0, Output::Sigmoid).unwrap();
    assert!((m.nll - -(0.6f64.ln())).abs() < 1e-7, "{}", m.nll);
    assert!((m.mean_confidence - 0.6).abs() < 1e-7);
    // The same logits through a softmax: .75 / .25.
    let s = Metrics::from_logits(&z, &[0], &names(2), 1.0, Output::Softmax).unwrap();
    assert!((s.mean_confidence - 0.75).abs() < 1e-7);
    // predict reports each class's own sigmoid.
    let p = metrics::prediction_rows(&z, 2, 1.0, Output::Sigmoid);
    assert!((p[0] - 0.75).abs() < 1e-7 && (p[1] - 0.5).abs() < 1e-12);
    // Saturated logits stay finite.
    let m = Metrics::from_logits(&[200.0, -200.0], &[1], &names(2), 1.0, Output::Sigmoid).unwrap();
    assert!((m.nll - 200.0).abs() < 1e-6, "{}", m.nll);
}
