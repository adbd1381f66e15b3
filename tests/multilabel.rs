//! Multi-label data (`--labels`) end to end, its metrics by hand, and the list's errors.

mod common;

use std::path::Path;

use common::{TempDir, run, text};
use focalflow::metrics::multilabel::{MultiLabelMetrics, average_precision};
use image::{ImageEncoder, codecs};

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * (1.0 + b.abs())
}

#[test]
fn average_precision_by_hand_with_ties() {
    // Scores .9 (pos) .8 (neg) .7 (pos) .7 (neg) .1 (pos): thresholds .9 -> P 1, R 1/3;
    // .8 -> P 1/2, R 1/3; .7 (two images, one threshold) -> P 2/4, R 2/3; .1 -> P 3/5, R 1.
    // AP = 1/3 * 1 + 1/3 * 1/2 + 1/3 * 3/5 (scikit-learn's average_precision_score).
    let scores = [0.9, 0.8, 0.7, 0.7, 0.1];
    let pos = [true, false, true, false, true];
    let ap = average_precision(&scores, &pos).unwrap();
    assert!(close(ap, (1.0 + 0.5 + 0.6) / 3.0), "{ap}");
    assert_eq!(average_precision(&scores, &[false; 5]), None);
    assert!(close(
        average_precision(&[0.2, 0.1], &[true, false]).unwrap(),
        1.0
    ));
}

#[test]
fn set_metrics_by_hand() {
    // 3 images x 3 classes (a, b, c); logits 0 is p = .5 (predicted, at the threshold).
    // image 0: labels {a, b}, p (.88, .5, .12) -> predicts {a, b}: exact, top-1 a hit
    // image 1: labels {},     p (.12, .12, .73) -> predicts {c}: 1 wrong pair, top-1 c miss
    // image 2: labels {c},    p (.73, .12, .12) -> predicts {a}: 2 wrong pairs, top-1 a miss
    let z = |p: f64| (p / (1.0 - p)).ln() as f32;
    let logits = [
        z(0.88),
        0.0,
        z(0.12),
        z(0.12),
        z(0.12),
        z(0.73),
        z(0.73),
        z(0.12),
        z(0.12),
    ];
    let sets = vec![vec![0, 1], vec![], vec![2]];
    let m = MultiLabelMetrics::from_logits(&logits, &sets, &names(&["a", "b", "c"]), 1.0).unwrap();
    assert!(close(m.subset_accuracy, 1.0 / 3.0));
    assert!(close(m.top1_accuracy, 1.0 / 3.0));
    assert!(close(m.hamming_loss, 3.0 / 9.0));
    // a: TP 1 FP 1 FN 0 -> P 1/2, R 1, F1 2/3; b: TP 1 -> F1 1; c: TP 0 FP 1 FN 1 -> F1 0.
    let f1: Vec<Option<f64>> = m.per_class.iter().map(|c| c.f1).collect();
    assert!(close(f1[0].unwrap(), 2.0 / 3.0) && close(f1[1].unwrap(), 1.0) && f1[2] == Some(0.0));
    assert!(close(m.macro_f1, (2.0 / 3.0 + 1.0) / 3.0));
    // micro: TP 2, FP 2, FN 1 -> 4 / 7.
    assert!(close(m.micro_f1, 4.0 / 7.0));
    // AP: a (.88 pos, .73 neg, .12 neg) 1; b (.5 pos, .12 .12 neg) 1; c (.73 neg, .12 pos,
    // .12 neg): thresholds .73 -> R 0; .12 -> P 1/3, R 1: AP 1/3.
    assert!(close(
        m.mean_average_precision,
        (1.0 + 1.0 + 1.0 / 3.0) / 3.0
    ));
    assert_eq!(m.per_class[0].precision, Some(0.5));
}

/// 24x24 PNGs with a red left half (label `red`) and/or a blue right half (`blue`), or
/// neither, and the list; returns the list's path.
fn colour_set(root: &Path, count: usize) -> std::path::PathBuf {
    let mut lines = Vec::new();
    for i in 0..count {
        let (red, blue) = (i % 2 == 0, i % 3 == 0);
        let px: Vec<u8> = (0..24 * 24)
            .flat_map(|p| {
                let x = p % 24;
                let noise = ((p * 7 + i * 13) % 50) as u8;
                let r = if red && x < 12 { 220 } else { noise };
                let b = if blue && x >= 12 { 220 } else { noise };
                [r, noise, b]
            })
            .collect();
        let mut png = Vec::new();
        codecs::png::PngEncoder::new(&mut png)
            .write_image(&px, 24, 24, image::ExtendedColorType::Rgb8)
            .unwrap();
        let rel = format!("img/{i:03}.png");
        std::fs::create_dir_all(root.join("img")).unwrap();
        std::fs::write(root.join(&rel), png).unwrap();
        let mut line = vec![rel];
        if red {
            line.push("red".into());
        }
        if blue {
            line.push("blue".into());
        }
        lines.push(line.join(","));
    }
    let csv = root.join("labels.csv");
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    csv
}

#[test]
fn a_multi_label_set_trains_evaluates_and_predicts() {
    let dir = TempDir::new("multilabel");
    let data = dir.0.join("data");
    let csv = colour_set(&data, 60);
    let out = dir.0.join("run");
    let (d, c, o) = (
        data.to_str().unwrap(),
        csv.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let r = run(&[
        "train",
        "--data",
        d,
        "--labels",
        c,
        "--loss",
        "sigmoid-focal",
        "--image-size",
        "24",
        "--arch",
        "c4,p,d8",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "0.01",
        "--out",
        o,
        "--quiet",
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let lines = common::metrics(&out);
    let last = lines.last().unwrap();
    for field in [
        "val_subset_accuracy",
        "val_hamming_loss",
        "val_micro_f1",
        "val_macro_f1",
        "val_map",
    ] {
        assert!(last[field].is_f64(), "metrics.jsonl lacks {field}: {last}");
    }
    assert_eq!(last["val_per_class"].as_array().unwrap().len(), 2);
    assert!(
        last.get("val_balanced_accuracy").is_none(),
        "no single-label metrics: {last}"
    );
    // The classes are the labels, sorted.
    let e = run(&[
        "eval",
        "--checkpoint",
        o,
        "--data",
        d,
        "--labels",
        c,
        "--json",
        "--quiet",
    ]);
    assert!(e.status.success(), "{}", text(&e.stderr));
    let report: serde_json::Value = serde_json::from_str(text(&e.stdout).trim()).unwrap();
    let ml = &report["multi_label"];
    assert_eq!(ml["images"], 60);
    assert_eq!(ml["per_class"][0]["class"], "blue");
    assert_eq!(ml["per_class"][0]["support"], 20);
    assert_eq!(ml["per_class"][1]["support"], 30);
    // A label the checkpoint does not know: the file and line, before any image is decoded.
    let unknown = dir.0.join("unknown.csv");
    std::fs::write(&unknown, "img/000.png,red\nimg/001.png,green\n").unwrap();
    let u = unknown.to_str().unwrap();
    let e = run(&[
        "eval",
        "--checkpoint",
        o,
        "--data",
        d,
        "--labels",
        u,
        "--quiet",
    ]);
    let err = text(&e.stderr);
    assert!(
        !e.status.success() && err.contains("unknown.csv:2") && err.contains("\"green\""),
        "{err}"
    );
    // A model with a softmax head cannot score several labels per image: said, with the fix.
    let softmax = dir.0.join("softmax");
    let s = softmax.to_str().unwrap();
    let r = run(&[
        "train",
        "--synthetic-images",
        "16",
        "--image-size",
        "24",
        "--arch",
        "c4,p,d8",
        "--epochs",
        "1",
        "--out",
        s,
        "--quiet",
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    for cmd in [
        vec!["eval", "--checkpoint", s, "--data", d, "--labels", c],
        vec!["predict", "--checkpoint", s, "--labels", c, "--data", d],
    ] {
        let r = run(&cmd);
        let err = text(&r.stderr);
        assert!(
            !r.status.success() && err.contains("softmax head") && err.contains("sigmoid-focal"),
            "{err}"
        );
    }
    let p = run(&[
        "predict",
        "--checkpoint",
        o,
        "--labels",
        c,
        "--data",
        d,
        "--json",
    ]);
    assert!(p.status.success(), "{}", text(&p.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&p.stdout).trim()).unwrap();
    let first = &v["predictions"][0];
    assert!(
        first["file"].as_str().unwrap().ends_with("img/000.png"),
        "{first}"
    );
    assert_eq!(first["true_labels"], serde_json::json!(["red", "blue"]));
    assert!(first["labels"].is_array());
}

#[test]
fn the_list_and_its_use_are_checked_before_any_image_is_read() {
    let dir = TempDir::new("multilabel-errors");
    let data = dir.0.join("data");
    colour_set(&data, 6);
    let d = data.to_str().unwrap();
    let list = |name: &str, body: &str| {
        let p = dir.0.join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let train = |csv: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--data",
            d,
            "--labels",
            csv,
            "--image-size",
            "24",
            "--epochs",
            "1",
            "--quiet",
        ];
        if !extra.contains(&"--loss") {
            args.extend(["--loss", "sigmoid-focal"]);
        }
        args.extend(extra);
        let r = run(&args);
        assert!(!r.status.success());
        text(&r.stderr)
    };
    let missing = list("missing.csv", "img/000.png,red\n\nimg/999.png,blue\n");
    let err = train(&missing, &[]);
    assert!(
        err.contains("missing.csv:3") && err.contains("img/999.png") && err.contains("not found"),
        "{err}"
    );
    let twice = list("twice.csv", "img/000.png,red\nimg/000.png,blue\n");
    assert!(train(&twice, &[]).contains("listed twice (first on line 1)"));
    let outside = list("outside.csv", "../data/img/000.png,red\n");
    assert!(train(&outside, &[]).contains("relative to --data"));
    let quote = list("quote.csv", "\"img/000.png,red\n");
    assert!(train(&quote, &[]).contains("quote.csv:1: a quote is not closed"));
    let one = list("one.csv", "img/000.png,red\nimg/001.png\n");
    assert!(train(&one, &[]).contains("a classifier needs at least 2"));
    let good = list(
        "good.csv",
        "img/000.png,red\nimg/001.png,blue\nimg/002.png\n",
    );
    assert!(train(&good, &["--loss", "focal"]).contains("use --loss sigmoid-focal"));
    assert!(train(&good, &["--class-fraction", "red=0.5"]).contains("--class-fraction"));
    assert!(train(&good, &["--monitor", "val-ece"]).contains("val-loss or val-accuracy"));
    let r = run(&["train", "--labels", &good, "--loss", "sigmoid-focal"]);
    assert!(
        text(&r.stderr).contains("--labels needs --data"),
        "{}",
        text(&r.stderr)
    );
}
