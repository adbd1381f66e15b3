//! What a run prints: the line of each epoch, the table of a finished run, the progress
//! bar.

use indicatif::{ProgressBar, ProgressStyle};

use crate::run::EpochMetrics;

/// The line logged after an epoch.
pub(super) fn epoch_line(m: &EpochMetrics, epochs: usize, best: bool) -> String {
    let val = match (m.val_loss, m.val_accuracy, &m.validation) {
        (Some(l), Some(a), Some(v)) => format!(
            "val loss {l:.4} acc {:.1}% bal {:.1}% ECE {:.3}{}",
            a * 100.0,
            v.val_balanced_accuracy * 100.0,
            v.val_ece,
            if best { " (best)" } else { "" }
        ),
        (Some(l), Some(a), None) => match &m.multilabel {
            Some(ml) => format!(
                "val loss {l:.4} top-1 {:.1}% micro-F1 {:.3} mAP {:.3}{}",
                a * 100.0,
                ml.val_micro_f1,
                ml.val_map,
                if best { " (best)" } else { "" }
            ),
            None => format!("val loss {l:.4} acc {:.1}%", a * 100.0),
        },
        _ => "no validation split".to_string(),
    };
    format!(
        "epoch {}/{epochs}: train loss {:.4} acc {:.1}% | {val} | {:.1} img/s, {:.1} s",
        m.epoch,
        m.train_loss,
        m.train_accuracy * 100.0,
        m.images_per_second,
        m.seconds
    )
}

/// The compact per-epoch table printed at the end of training.
pub fn epoch_table(history: &[EpochMetrics]) -> String {
    let f = |v: Option<f64>, pct: bool| match v {
        Some(v) if pct => format!("{:.1}%", v * 100.0),
        Some(v) => format!("{v:.4}"),
        None => "-".into(),
    };
    let mut out = format!(
        "{:>5} {:>10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7}\n",
        "epoch",
        "train loss",
        "train acc",
        "val loss",
        "val acc",
        "bal acc",
        "macro-F1",
        "NLL",
        "Brier",
        "ECE",
        "s"
    );
    for m in history {
        let v = m.validation.as_ref();
        out.push_str(&format!(
            "{:>5} {:>10.4} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7.1}\n",
            m.epoch,
            m.train_loss,
            f(Some(m.train_accuracy), true),
            f(m.val_loss, false),
            f(m.val_accuracy, true),
            f(v.map(|v| v.val_balanced_accuracy), true),
            f(v.map(|v| v.val_macro_f1), false),
            f(v.map(|v| v.val_nll), false),
            f(v.map(|v| v.val_brier), false),
            f(v.map(|v| v.val_ece), false),
            m.seconds
        ));
    }
    out.pop();
    out
}

pub(super) fn progress_bar(show: bool, steps: u64, epoch: usize, epochs: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps);
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{epoch}/{epochs}"));
    bar
}
