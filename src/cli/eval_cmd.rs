//! `focalflow eval | predict | calibrate | compare`: what a trained model does on other
//! images, how to make its confidences honest, and how runs compare. The model runs on the
//! backend `--device` picks (as for train).

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{Value, json};

use super::DeviceChoice;
use super::data_args::PreprocessFlags;
use super::device::{self, on_device};
use crate::calibrate::fit_temperature;
use crate::checkpoint::{self, Checkpoint};
use crate::data::load::{decode_resized, load};
use crate::data::{ImageSet, PixelStore, Pixels};
use crate::feed::{DeviceCache, Feeds};
use crate::metrics::{Metrics, softmax_rows};
use crate::model::{ImageShape, Model};
use crate::run::EpochMetrics;
use crate::train;
use crate::{Error, Result};

/// A checkpoint: a `.safetensors` file, or a run folder.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckpointFlag {
    /// A checkpoint written by train (RUN/checkpoints/best.safetensors or last.safetensors),
    /// or a run folder (its best checkpoint, else its last).
    #[arg(long, value_name = "FILE|RUN")]
    pub checkpoint: PathBuf,
}

/// Where the model runs.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceFlag {
    /// auto: cuda when a GPU and compiled kernels are present, else cpu (said on stderr).
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
}

/// A labelled folder of images, loaded as `train --data` loads it.
#[derive(clap::Args, Debug, Clone)]
pub struct LabelledData {
    /// Images: a folder with one sub-folder per class, named as the checkpoint's classes
    /// (a class may be missing; an unknown one is an error).
    #[arg(long = "data", value_name = "DIR")]
    pub dir: PathBuf,
    #[command(flatten)]
    pub preprocessing: PreprocessFlags,
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub checkpoint: CheckpointFlag,
    #[command(flatten)]
    pub device: DeviceFlag,
    #[command(flatten)]
    pub data: LabelledData,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Folder for metrics.json and reliability.{svg,png} (default: eval-<data folder name>
    /// in the run folder of the checkpoint).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Ignore the temperature stored by `calibrate` (evaluate the raw model).
    #[arg(long)]
    pub no_temperature: bool,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub checkpoint: CheckpointFlag,
    #[command(flatten)]
    pub device: DeviceFlag,
    /// Image files or folders (searched recursively; hidden files are left out).
    #[arg(value_name = "IMAGES", required = true)]
    pub images: Vec<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Ignore the temperature stored by `calibrate`.
    #[arg(long)]
    pub no_temperature: bool,
    /// One JSON object (predictions and skipped files) instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV: file, class, confidence, then one probability column per class.
    #[arg(long)]
    pub csv: bool,
}

#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub checkpoint: CheckpointFlag,
    #[command(flatten)]
    pub device: DeviceFlag,
    /// Held-out images (not the training images) to fit the temperature on.
    #[command(flatten)]
    pub data: LabelledData,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Write the calibrated checkpoint here instead of updating --checkpoint in place.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Run folders written by train.
    #[arg(value_name = "RUN_DIR", required = true)]
    pub runs: Vec<PathBuf>,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The checkpoint behind `--checkpoint` and its path.
fn open_checkpoint(flag: &CheckpointFlag) -> Result<(PathBuf, Checkpoint)> {
    let path = checkpoint::resolve(&flag.checkpoint)?;
    let ck = Checkpoint::load(&path)?;
    if ck.input.height != ck.input.width || ck.input.channels != 3 {
        return Err(Error::file(
            &path,
            format!(
                "input shape {}x{}x{}: only square RGB models can read image files",
                ck.input.height, ck.input.width, ck.input.channels
            ),
        ));
    }
    Ok((path, ck))
}

fn describe(path: &Path, ck: &Checkpoint, temperature: f64) -> String {
    format!(
        "checkpoint {} ({}{}arch {}, {}x{}, classes {}; {})",
        path.display(),
        if ck.kind.is_empty() {
            String::new()
        } else {
            format!("{}, ", ck.kind)
        },
        ck.epoch.map_or(String::new(), |e| format!("epoch {e}, ")),
        ck.arch,
        ck.input.height,
        ck.input.width,
        ck.class_names.join(", "),
        if temperature == 1.0 {
            "no temperature".to_string()
        } else {
            format!("temperature {temperature:.4}")
        }
    )
}

/// Loads `--data` at the checkpoint's size with its labels in the checkpoint's class order.
fn load_labelled(
    flags: &LabelledData,
    ck: &Checkpoint,
    progress: bool,
) -> Result<ImageSet<Pixels>> {
    let opts = flags
        .preprocessing
        .load_options(ck.input.height, progress)?;
    let loaded = load(&flags.dir, &opts)?;
    eprintln!("{}", loaded.summary());
    let set = loaded.set;
    let mut map = Vec::with_capacity(set.classes());
    for name in &set.class_names {
        match ck.class_names.iter().position(|c| c == name) {
            Some(i) => map.push(i as u32),
            None => {
                return Err(Error::file(
                    &flags.dir,
                    format!(
                        "class folder {name:?} is not a class of the checkpoint ({}); --data needs sub-folders named after those",
                        ck.class_names.join(", ")
                    ),
                ));
            }
        }
    }
    if set.is_empty() {
        return Err(Error::file(&flags.dir, "no usable images"));
    }
    Ok(ImageSet {
        shape: set.shape,
        class_names: ck.class_names.clone(),
        labels: set.labels.iter().map(|&l| map[l as usize]).collect(),
        pixels: set.pixels,
    })
}

/// Logits of every image of `set`, computed on `device`.
fn logits_of_set(
    ck: &Checkpoint,
    set: &ImageSet<Pixels>,
    batch_size: usize,
    device: DeviceChoice,
) -> Result<Vec<f32>> {
    if batch_size == 0 {
        return Err(Error::invalid("--batch-size must be at least 1"));
    }
    let device = device::resolve(device)?;
    eprintln!("device: {}", device::name(device));
    on_device!(device, |backend| {
        let mut model = ck.model(backend)?;
        logits_of_images(backend, &mut model, set, batch_size)
    })
}

/// Logits of every image of `set`, `batch_size` at a time through the backend's data path
/// (the set on the device for CUDA).
fn logits_of_images<B: Feeds>(
    backend: &B,
    model: &mut Model<B>,
    set: &ImageSet<impl PixelStore>,
    batch_size: usize,
) -> Result<Vec<f32>> {
    let all: Vec<usize> = (0..set.len()).collect();
    let batch = batch_size.min(set.len()).max(1);
    let mut feeder = backend.feeder(set, batch, DeviceCache::Auto)?;
    Ok(train::logits_of(backend, model, None, feeder.as_mut(), &all)?.1)
}

fn labels_of(set: &ImageSet<Pixels>) -> Vec<usize> {
    set.labels.iter().map(|&l| l as usize).collect()
}

/// `focalflow eval`.
pub fn run_eval(args: &EvalArgs) -> Result<()> {
    let (path, ck) = open_checkpoint(&args.checkpoint)?;
    let temperature = if args.no_temperature {
        1.0
    } else {
        ck.temperature_or_one()
    };
    eprintln!("{}", describe(&path, &ck, temperature));
    let set = load_labelled(&args.data, &ck, !args.quiet && !args.json)?;
    let logits = logits_of_set(&ck, &set, args.batch_size, args.device.device)?;
    let labels = labels_of(&set);
    let m = Metrics::from_logits(&logits, &labels, &ck.class_names, temperature)?;
    let raw = (temperature != 1.0)
        .then(|| Metrics::from_logits(&logits, &labels, &ck.class_names, 1.0))
        .transpose()?;
    let out = match &args.out {
        Some(o) => o.clone(),
        None => default_eval_dir(&path, &args.data.dir),
    };
    let data_name = args
        .data
        .dir
        .file_name()
        .map_or("data".into(), |n| n.to_string_lossy().into_owned());
    let mut files = crate::plots::reliability_diagram(
        &m,
        &format!(
            "{data_name}{}",
            if temperature != 1.0 {
                ", T applied"
            } else {
                ""
            }
        ),
        &out,
        "reliability",
    )?;
    let report = json!({
        "checkpoint": path,
        "data": args.data.dir,
        "temperature": temperature,
        "metrics": m,
        "uncalibrated": raw.as_ref().map(|r| json!({
            "nll": r.nll, "brier": r.brier, "ece": r.ece, "mce": r.mce,
            "mean_confidence": r.mean_confidence
        })),
    });
    let metrics_path = out.join("metrics.json");
    crate::run::write_atomically(
        &metrics_path,
        serde_json::to_string_pretty(&report)
            .expect("JSON")
            .as_bytes(),
    )?;
    files.insert(0, metrics_path);
    if args.json {
        let mut report = report;
        report["files"] = json!(files);
        println!("{}", serde_json::to_string(&report).expect("JSON"));
        return Ok(());
    }
    println!("{}", m.summary_line());
    if let Some(r) = &raw {
        println!(
            "without the temperature: NLL {:.4}  Brier {:.4}  ECE {:.4}  MCE {:.4}",
            r.nll, r.brier, r.ece, r.mce
        );
    }
    println!();
    print!("{}", m.per_class_table());
    println!();
    println!("{}", reliability_table(&m));
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    println!("wrote {}", names.join(", "));
    Ok(())
}

/// `RUN/eval-<data>` for `RUN/checkpoints/x.safetensors`, else `eval-<data>` beside the file.
fn default_eval_dir(checkpoint: &Path, data: &Path) -> PathBuf {
    let parent = checkpoint.parent().unwrap_or(Path::new("."));
    let base = if parent.file_name().is_some_and(|n| n == "checkpoints") {
        parent.parent().unwrap_or(Path::new("."))
    } else {
        parent
    };
    let name = std::fs::canonicalize(data)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "data".into());
    base.join(format!("eval-{name}"))
}

/// The non-empty confidence bins as a small table.
pub fn reliability_table(m: &Metrics) -> String {
    let mut out = format!(
        "confidence bins (ECE {:.4}, MCE {:.4}; empty bins left out)\n{:>13}  {:>7}  {:>10}  {:>8}  {:>7}\n",
        m.ece, m.mce, "bin", "images", "confidence", "accuracy", "gap"
    );
    for b in &m.reliability {
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

/// Every file behind `inputs` (folders recursively, sorted; hidden entries left out).
fn image_files(inputs: &[PathBuf]) -> Vec<(PathBuf, Option<String>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Option<String>)>) {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(e) => {
                out.push((
                    dir.to_path_buf(),
                    Some(format!("cannot list the folder: {e}")),
                ));
                return;
            }
        };
        entries.sort();
        for p in entries {
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push((p, None));
            }
        }
    }
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            walk(p, &mut out);
        } else if p.exists() {
            out.push((p.clone(), None));
        } else {
            out.push((p.clone(), Some("no such file".into())));
        }
    }
    out
}

/// One prediction.
#[derive(serde::Serialize)]
struct Prediction {
    file: String,
    class: String,
    confidence: f64,
    probabilities: serde_json::Map<String, Value>,
}

/// Files that could not be used, with why.
type Skips = Vec<(String, String)>;

/// Files decoded per round of `predict` (then sent to the device as one u8 set).
const PREDICT_CHUNK: usize = 1024;

/// Predictions for `files` (decoded and resized in parallel, a chunk at a time, then run
/// `batch_size` at a time through the same data path as training and `eval`) on `backend`,
/// and the files that could not be read.
fn predict_files<B: Feeds>(
    backend: &B,
    ck: &Checkpoint,
    files: &[(PathBuf, Option<String>)],
    batch_size: usize,
    temperature: f64,
) -> Result<(Vec<Prediction>, Skips)> {
    let shape: ImageShape = ck.input;
    let mut model = ck.model(backend)?;
    let classes = ck.class_names.len();
    let mut predictions = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    for chunk in files.chunks(PREDICT_CHUNK.max(batch_size)) {
        let decoded: Vec<std::result::Result<Vec<u8>, String>> = chunk
            .par_iter()
            .map(|(file, problem)| {
                if let Some(p) = problem {
                    return Err(p.clone());
                }
                let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
                let mut slot = vec![0u8; shape.len()];
                decode_resized(&bytes, shape, &mut slot).map_err(|s| s.describe())?;
                Ok(slot)
            })
            .collect();
        let mut pixels = Vec::new();
        let mut names = Vec::new();
        for ((file, _), d) in chunk.iter().zip(decoded) {
            match d {
                Ok(image) => {
                    pixels.extend_from_slice(&image);
                    names.push(file.display().to_string());
                }
                Err(why) => {
                    eprintln!("skipped {}: {why}", file.display());
                    skipped.push((file.display().to_string(), why));
                }
            }
        }
        if names.is_empty() {
            continue;
        }
        let set = ImageSet {
            shape,
            class_names: ck.class_names.clone(),
            pixels,
            labels: vec![0; names.len()],
        };
        let logits = logits_of_images(backend, &mut model, &set, batch_size)?;
        let probs = softmax_rows(&logits, classes, temperature);
        for (file, row) in names.into_iter().zip(probs.chunks_exact(classes)) {
            let best = crate::metrics::argmax(row);
            predictions.push(Prediction {
                file,
                class: ck.class_names[best].clone(),
                confidence: row[best],
                probabilities: ck
                    .class_names
                    .iter()
                    .zip(row)
                    .map(|(c, &p)| (c.clone(), json!(p)))
                    .collect(),
            });
        }
    }
    Ok((predictions, skipped))
}

/// `focalflow predict`.
pub fn run_predict(args: &PredictArgs) -> Result<()> {
    let (path, ck) = open_checkpoint(&args.checkpoint)?;
    if args.batch_size == 0 {
        return Err(Error::invalid("--batch-size must be at least 1"));
    }
    let temperature = if args.no_temperature {
        1.0
    } else {
        ck.temperature_or_one()
    };
    eprintln!("{}", describe(&path, &ck, temperature));
    let classes = ck.class_names.len();
    let files = image_files(&args.images);
    let device = device::resolve(args.device.device)?;
    eprintln!("device: {}", device::name(device));
    let (predictions, skipped) = on_device!(device, |backend| {
        predict_files(backend, &ck, &files, args.batch_size, temperature)
    })?;
    if args.json {
        let report = json!({
            "checkpoint": path,
            "temperature": temperature,
            "classes": ck.class_names,
            "predictions": predictions,
            "skipped": skipped.iter().map(|(f, w)| json!({"file": f, "reason": w})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string(&report).expect("JSON"));
    } else if args.csv {
        let mut header = vec!["file".to_string(), "class".into(), "confidence".into()];
        header.extend(ck.class_names.iter().map(|c| format!("p_{c}")));
        println!(
            "{}",
            header
                .iter()
                .map(|h| csv_field(h))
                .collect::<Vec<_>>()
                .join(",")
        );
        for p in &predictions {
            let mut row = vec![
                csv_field(&p.file),
                csv_field(&p.class),
                format!("{:.6}", p.confidence),
            ];
            row.extend(
                ck.class_names
                    .iter()
                    .map(|c| format!("{:.6}", p.probabilities[c].as_f64().unwrap_or(f64::NAN))),
            );
            println!("{}", row.join(","));
        }
    } else {
        let width = predictions
            .iter()
            .map(|p| p.file.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let shown: Vec<&String> = ck.class_names.iter().take(6).collect();
        let mut header = format!("{:<width$}  {:<12} {:>10}", "file", "class", "confidence");
        for c in &shown {
            header.push_str(&format!("  {:>10}", format!("p({})", short(c, 7))));
        }
        println!("{header}");
        for p in &predictions {
            let mut line = format!(
                "{:<width$}  {:<12} {:>10.4}",
                p.file,
                short(&p.class, 12),
                p.confidence
            );
            for c in &shown {
                line.push_str(&format!(
                    "  {:>10.4}",
                    p.probabilities[c.as_str()].as_f64().unwrap_or(f64::NAN)
                ));
            }
            println!("{line}");
        }
        if classes > shown.len() {
            println!(
                "({} more classes: use --json or --csv for every probability)",
                classes - shown.len()
            );
        }
    }
    eprintln!("{} predicted, {} skipped", predictions.len(), skipped.len());
    if predictions.is_empty() {
        return Err(Error::invalid(format!(
            "no image could be read among the {} files given",
            files.len()
        )));
    }
    Ok(())
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n.saturating_sub(1)).chain(['~']).collect()
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `focalflow calibrate`.
pub fn run_calibrate(args: &CalibrateArgs) -> Result<()> {
    let (path, mut ck) = open_checkpoint(&args.checkpoint)?;
    eprintln!("{}", describe(&path, &ck, ck.temperature_or_one()));
    let set = load_labelled(&args.data, &ck, !args.quiet && !args.json)?;
    let logits = logits_of_set(&ck, &set, args.batch_size, args.device.device)?;
    let labels = labels_of(&set);
    let fit = fit_temperature(&logits, &labels, ck.class_names.len())?;
    let before = Metrics::from_logits(&logits, &labels, &ck.class_names, 1.0)?;
    let after = Metrics::from_logits(&logits, &labels, &ck.class_names, fit.temperature)?;
    let previous = ck.temperature;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let summary = |m: &Metrics| {
        json!({"nll": m.nll, "brier": m.brier, "ece": m.ece, "mce": m.mce,
               "mean_confidence": m.mean_confidence, "accuracy": m.accuracy})
    };
    let calibration = json!({
        "method": "temperature scaling (NLL, Guo et al. 2017)",
        "temperature": fit.temperature,
        "at_bound": fit.at_bound,
        "data": args.data.dir,
        "images": labels.len(),
        "before": summary(&before),
        "after": summary(&after),
        "fitted_unix": unix,
    });
    ck.temperature = Some(fit.temperature);
    ck.calibration = Some(calibration.clone());
    let target = args.out.clone().unwrap_or_else(|| path.clone());
    ck.save(&target)?;
    if args.json {
        let mut c = calibration;
        c["checkpoint"] = json!(target);
        c["previous_temperature"] = json!(previous);
        println!("{}", serde_json::to_string(&c).expect("JSON"));
        return Ok(());
    }
    println!(
        "temperature {:.4} fitted on {} images{}{}",
        fit.temperature,
        labels.len(),
        previous.map_or(String::new(), |p| format!(" (replaces {p:.4})")),
        if fit.at_bound {
            " - at the edge of the search range: the data may be separable or too small"
        } else {
            ""
        }
    );
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8}",
        "", "NLL", "Brier", "ECE", "MCE", "mean conf", "acc"
    );
    for (name, m) in [("before (T = 1)", &before), ("after", &after)] {
        println!(
            "{:<16} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>10.4} {:>8.4}",
            name, m.nll, m.brier, m.ece, m.mce, m.mean_confidence, m.accuracy
        );
    }
    println!(
        "stored in {} (metadata `temperature`); eval and predict apply it",
        target.display()
    );
    Ok(())
}

/// One run's final numbers for `compare`.
#[derive(serde::Serialize)]
struct RunSummary {
    run: String,
    loss: String,
    epochs: usize,
    train_loss: f64,
    val_loss: Option<f64>,
    val_accuracy: Option<f64>,
    val_balanced_accuracy: Option<f64>,
    val_macro_f1: Option<f64>,
    val_worst_recall: Option<f64>,
    val_nll: Option<f64>,
    val_brier: Option<f64>,
    val_ece: Option<f64>,
    val_mce: Option<f64>,
    best_epoch: Option<usize>,
    temperature: Option<f64>,
}

fn summarise_run(run: &Path) -> Result<RunSummary> {
    let metrics_path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics_path).map_err(|e| {
        Error::file(
            &metrics_path,
            format!("cannot read: {e}; compare takes run folders written by focalflow train"),
        )
    })?;
    let mut history: Vec<EpochMetrics> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::file(&metrics_path, format!("line {}: {e}", i + 1)))
        })
        .collect::<Result<_>>()?;
    // An interrupted epoch (no validation yet) is not a result.
    history.retain(|m| !m.partial);
    let last = history
        .last()
        .ok_or_else(|| Error::file(&metrics_path, "no epochs yet"))?;
    let config: Value = std::fs::read_to_string(run.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let loss = serde_json::from_value::<crate::loss::LossConfig>(config["options"]["loss"].clone())
        .map(|l| l.describe())
        .unwrap_or_else(|_| "?".into());
    let best = history
        .iter()
        .filter_map(|m| m.val_loss.map(|l| (m.epoch, l)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(e, _)| e);
    let temperature = checkpoint::resolve(run)
        .ok()
        .and_then(|p| checkpoint::read_metadata(&p).ok())
        .and_then(|m| m.get("temperature").and_then(|t| t.parse().ok()));
    let v = last.validation.as_ref();
    Ok(RunSummary {
        run: run.display().to_string(),
        loss,
        epochs: last.epoch,
        train_loss: last.train_loss,
        val_loss: last.val_loss,
        val_accuracy: last.val_accuracy,
        val_balanced_accuracy: v.map(|v| v.val_balanced_accuracy),
        val_macro_f1: v.map(|v| v.val_macro_f1),
        val_worst_recall: v.and_then(|v| {
            v.val_per_class
                .iter()
                .filter_map(|c| c.recall)
                .reduce(f64::min)
        }),
        val_nll: v.map(|v| v.val_nll),
        val_brier: v.map(|v| v.val_brier),
        val_ece: v.map(|v| v.val_ece),
        val_mce: v.map(|v| v.val_mce),
        best_epoch: best,
        temperature,
    })
}

/// `focalflow compare`.
pub fn run_compare(args: &CompareArgs) -> Result<()> {
    let runs: Vec<RunSummary> = args
        .runs
        .iter()
        .map(|r| summarise_run(r))
        .collect::<Result<_>>()?;
    if args.json {
        println!("{}", serde_json::to_string(&runs).expect("JSON"));
        return Ok(());
    }
    println!("{}", compare_table(&runs));
    println!(
        "final epoch, validation split; * marks the best of each column (lower is better for NLL, Brier, ECE, MCE)"
    );
    Ok(())
}

fn compare_table(runs: &[RunSummary]) -> String {
    type Col = (&'static str, fn(&RunSummary) -> Option<f64>, bool, bool);
    // (header, value, higher is better, as percent). The validation loss is left out: runs
    // with different losses measure it on different scales (it is in --json).
    let cols: [Col; 8] = [
        ("val acc", |r| r.val_accuracy, true, true),
        ("bal acc", |r| r.val_balanced_accuracy, true, true),
        ("macro-F1", |r| r.val_macro_f1, true, false),
        ("worst rec", |r| r.val_worst_recall, true, true),
        ("NLL", |r| r.val_nll, false, false),
        ("Brier", |r| r.val_brier, false, false),
        ("ECE", |r| r.val_ece, false, false),
        ("MCE", |r| r.val_mce, false, false),
    ];
    let run_w = runs
        .iter()
        .map(|r| r.run.chars().count())
        .max()
        .unwrap_or(3)
        .max(3);
    let loss_w = runs
        .iter()
        .map(|r| r.loss.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 56);
    let mut out = format!("{:<run_w$}  {:<loss_w$}  {:>6}", "run", "loss", "epochs");
    for (h, ..) in &cols {
        out.push_str(&format!("  {h:>10}"));
    }
    out.push_str(&format!("  {:>5}  {:>6}\n", "best", "T"));
    let best: Vec<Option<f64>> = cols
        .iter()
        .map(|(_, f, higher, _)| {
            runs.iter().filter_map(f).reduce(|a, b| {
                if (*higher && b > a) || (!*higher && b < a) {
                    b
                } else {
                    a
                }
            })
        })
        .collect();
    for r in runs {
        out.push_str(&format!(
            "{:<run_w$}  {:<loss_w$}  {:>6}",
            r.run,
            short(&r.loss, loss_w),
            r.epochs
        ));
        for ((_, f, _, pct), b) in cols.iter().zip(&best) {
            let cell = match f(r) {
                Some(v) => {
                    let mark = if runs.len() > 1 && Some(v) == *b {
                        "*"
                    } else {
                        " "
                    };
                    if *pct {
                        format!("{:.1}%{mark}", v * 100.0)
                    } else {
                        format!("{v:.4}{mark}")
                    }
                }
                None => "- ".into(),
            };
            out.push_str(&format!("  {cell:>10}"));
        }
        out.push_str(&format!(
            "  {:>5}  {:>6}\n",
            r.best_epoch.map_or("-".into(), |e| e.to_string()),
            r.temperature.map_or("-".into(), |t| format!("{t:.3}"))
        ));
    }
    out.pop();
    out
}
