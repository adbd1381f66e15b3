//! `focalflow train`: trains a model (the reference CNN by default) and writes a run folder.

use std::path::{Path, PathBuf};

use crate::class_balance::with_alpha;
use crate::cli::DeviceChoice;
use crate::cli::device::{self, on_device};
use crate::cli::flags::data::DataFlags;
use crate::cli::flags::loss::LossFlags;
use crate::data::load::MAX_IMAGE_SIZE;
use crate::data::source::Source;
use crate::data::{ImageSet, PixelStore, synthetic, validation_share};
use crate::model::{Arch, ImageShape, REFERENCE_ARCH};
use crate::run::RunFolder;
use crate::train::{Split, TrainOptions};
use crate::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataFlags,
    /// Images in the built-in set (used when --data is not given).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 640,
        allow_hyphen_values = true
    )]
    pub synthetic_images: usize,
    #[arg(long, default_value_t = 10, allow_hyphen_values = true)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32, allow_hyphen_values = true)]
    pub batch_size: usize,
    /// Adam's learning rate.
    #[arg(long = "lr", default_value_t = 1e-3, allow_hyphen_values = true)]
    pub learning_rate: f64,
    /// Images are square, this many pixels a side.
    #[arg(long, default_value_t = 224, allow_hyphen_values = true)]
    pub image_size: usize,
    #[command(flatten)]
    pub loss: LossFlags,
    /// Layers before the classifier head, e.g. c16,p,c32,p,c64,p,d256 (see README).
    #[arg(long, default_value = REFERENCE_ARCH)]
    pub arch: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Fraction of each class held out for validation.
    #[arg(long, default_value_t = 0.2, allow_hyphen_values = true)]
    pub val_fraction: f64,
    /// At most this many batches per epoch (like Keras' fit(steps_per_epoch=)).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub steps_per_epoch: Option<usize>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    #[command(flatten)]
    pub precision: device::PrecisionFlag,
    /// Learning rate over the run: constant, cosine (to 0 at the last epoch, per step),
    /// step:EPOCHS:FACTOR (times FACTOR every EPOCHS epochs) or plateau:PATIENCE:FACTOR
    /// (times FACTOR when --monitor has not improved for PATIENCE epochs).
    #[arg(long, value_name = "SCHEDULE", default_value = "constant")]
    pub lr_schedule: crate::schedule::LrSchedule,
    /// Linear warm-up of the learning rate over the first W epochs (fractions allowed).
    #[arg(
        long,
        value_name = "W",
        default_value_t = 0.0,
        allow_hyphen_values = true
    )]
    pub warmup_epochs: f64,
    /// Stop when --monitor has not improved for PATIENCE epochs.
    #[arg(long, value_name = "PATIENCE", allow_hyphen_values = true)]
    pub early_stop: Option<usize>,
    /// The validation metric that picks checkpoints/best, early stopping and the plateau
    /// schedule.
    #[arg(long, value_enum, default_value = "val-loss")]
    pub monitor: crate::schedule::Monitor,
    /// On a GPU: device memory the u8 image set may take, in GiB (auto: half of the free
    /// memory); a larger set is streamed batch by batch through pinned host memory (off:
    /// always streamed).
    #[arg(long, value_name = "auto|off|GiB", default_value = "auto")]
    pub device_cache: crate::feed::DeviceCache,
    /// Run folder for config.json and metrics.jsonl (default: a new folder under runs/).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// No progress bars (they are also hidden when stderr is not a terminal).
    #[arg(long)]
    pub quiet: bool,
    /// Continue the run in RUN_DIR from its last checkpoint (give the run's flags again;
    /// only --epochs may change, e.g. raised to train longer).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Print a per-phase time table (data, forward, loss, backward, optimizer) at the end.
    #[arg(long)]
    pub profile: bool,
}

/// Runs `focalflow train`: every option checked before any image is read, the data loaded
/// and split, the split checked, and only then the run folder made.
pub fn run(args: TrainArgs) -> Result<()> {
    let auto_alpha = args.loss.auto_alpha()?;
    let device = device::resolve(args.device)?;
    device::check_precision(device, args.precision.precision)?;
    let loss = args.loss.to_config_with_auto_alpha(true)?;
    let arch: Arch = args.arch.parse()?;
    let class_fraction = args.data.class_fractions()?;
    let mut opts = TrainOptions {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.learning_rate,
        loss,
        arch,
        seed: args.seed,
        val_fraction: args.val_fraction,
        steps_per_epoch: args.steps_per_epoch,
        class_fraction,
        augment: args.data.augment,
        device_cache: args.device_cache,
        lr_schedule: args.lr_schedule,
        warmup_epochs: args.warmup_epochs,
        monitor: args.monitor,
        early_stop: args.early_stop,
        precision: args.precision.precision,
        progress: !args.quiet,
        resume: args.resume.is_some(),
        origin: data_origin(&args),
    };
    let source = check_before_data(&args, &opts, device)?;
    let (data, report) = match args.data.load(args.image_size, !args.quiet, source)? {
        Some((set, meta)) => (set, Some(meta)),
        None => {
            eprintln!(
                "no --data given: training on the built-in set ({} generated {}x{} images of horizontal vs vertical stripes, seed {})",
                args.synthetic_images, args.image_size, args.image_size, args.seed
            );
            let set = synthetic::generate(args.synthetic_images, args.image_size, args.seed);
            (set.into_pixels(), None)
        }
    };
    // Split once, here: its counts are printed and give `--alpha auto`, and training
    // takes it as it is.
    let split = Split::of(&data, &opts)?;
    eprintln!("{}", split_counts_line(&data, &split));
    if let Some(rule) = auto_alpha {
        let alpha = rule.alpha(&data.class_counts(&split.train), &data.class_names)?;
        eprintln!("{}", rule.line(&alpha, &data.class_names));
        opts.loss = with_alpha(opts.loss, alpha);
    }
    crate::train::check_run(&data, &split, &opts)?;
    // Every check has passed: the run folder (a resumed run's exists).
    let folder = match &args.resume {
        Some(_) => None,
        None => Some(RunFolder::create(args.out.as_deref(), &opts.loss)?),
    };
    let out = match (&folder, &args.resume) {
        (Some(f), _) => f.path.clone(),
        (None, run) => run.clone().expect("a resumed run"),
    };
    let trained = start_run(&args, &data, &split, &opts, report.as_ref(), device, &out);
    let history = trained.map_err(|e| match e {
        Error::Interrupted(what) => Error::Interrupted(format!(
            "{what}\ncontinue with: {}",
            resume_command(std::env::args(), &out)
        )),
        other => {
            if let Some(f) = &folder {
                f.discard();
            }
            other
        }
    })?;
    if !history.is_empty() {
        eprintln!(
            "done: metrics in {}",
            crate::run::metrics_path(&out).display()
        );
    }
    Ok(())
}

/// Where a run's images come from, as `config.json` records it.
fn data_origin(args: &TrainArgs) -> serde_json::Value {
    let p = &args.data.preprocessing;
    match &args.data.dir {
        Some(dir) => serde_json::json!({
            "dir": std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone()),
            "image_size": args.image_size,
            "cache_dir": if p.no_cache { None } else { Some(p.cache_dir.clone().unwrap_or_else(crate::data::cache::default_dir)) },
            "preprocess_threads": p.preprocess_threads,
        }),
        None => serde_json::json!({
            "built_in": { "images": args.synthetic_images, "seed": args.seed },
            "image_size": args.image_size,
        }),
    }
}

/// The checks that need no image: the flags, the folders (`--out`, `--resume`), the network
/// on images of `--image-size` in the classes of `--data`'s sub-folders, and the memory a
/// CPU (or the emulator, whose device memory is the host's) needs for it.
/// Returns what `--data` holds (discovered once, then loaded).
fn check_before_data(
    args: &TrainArgs,
    opts: &TrainOptions,
    device: DeviceChoice,
) -> Result<Option<Source>> {
    if args.image_size == 0 || args.image_size > MAX_IMAGE_SIZE {
        return Err(Error::invalid(format!(
            "--image-size {}: must be 1 to {MAX_IMAGE_SIZE} pixels",
            args.image_size
        )));
    }
    if args.data.dir.is_none() {
        if args.synthetic_images < 4 {
            return Err(Error::invalid(format!(
                "--synthetic-images {}: the built-in set needs at least 4",
                args.synthetic_images
            )));
        }
        // The generated set is held in memory, 3 bytes a pixel.
        let need =
            (args.synthetic_images as u64).saturating_mul(3 * (args.image_size as u64).pow(2));
        if let Some(free) = crate::system::available_memory()
            && need > free
        {
            return Err(Error::invalid(format!(
                "--synthetic-images {}: {} images of {}x{} take {} of memory, {} is available; generate fewer",
                args.synthetic_images,
                args.synthetic_images,
                args.image_size,
                args.image_size,
                crate::system::gib(need),
                crate::system::gib(free)
            )));
        }
    }
    args.data
        .preprocessing
        .load_options(args.image_size, false)?;
    if device == DeviceChoice::CudaEmu {
        crate::executor::EmuOptions::from_env()?; // its FOCALFLOW_EMU_* settings
    }
    match (&args.resume, &args.out) {
        (Some(run), Some(out)) if run != out => {
            return Err(Error::invalid(format!(
                "--resume {} writes into that run folder; drop --out {}",
                run.display(),
                out.display()
            )));
        }
        (Some(run), _) => crate::checkpoint::check_resume_before_data(
            run,
            &serde_json::to_value(opts).expect("JSON"),
            opts.epochs,
            if args.loss.auto_alpha()?.is_some() {
                &["loss"]
            } else {
                &[]
            },
        )?,
        (None, Some(out)) => {
            crate::run::check_new_run_folder(out)?;
            if let Some(data) = &args.data.dir {
                crate::run::check_outside_data(out, data)?;
            }
        }
        // The default folder, runs/ under the working folder, may not be inside the data.
        (None, None) => {
            if let Some(data) = &args.data.dir {
                crate::run::check_outside_data(Path::new("runs"), data)?;
            }
        }
    }
    let source = match (&args.data.dir, &args.data.labels) {
        (Some(dir), Some(csv)) => {
            crate::train::check_multi_label(opts)?;
            let list = crate::data::label_list::LabelList::read(csv, dir)?;
            Some(list.source(dir, list.classes())?)
        }
        (Some(dir), None) => Some(crate::data::discover::discover(dir)?),
        (None, Some(csv)) => {
            return Err(Error::file(
                csv,
                "--labels needs --data DIR, the folder its image paths are relative to",
            ));
        }
        (None, None) => None,
    };
    let classes = match &source {
        Some(source) => {
            if let Some(counts) = source.files_per_class()
                && opts.class_fraction.is_empty()
            {
                let val = counts
                    .iter()
                    .map(|&c| validation_share(opts.val_fraction, c))
                    .sum();
                crate::train::check_validation_left(opts.val_fraction, val, &counts)?;
            }
            source.class_names().len()
        }
        None => synthetic::CLASS_NAMES.len(),
    };
    let shape = ImageShape {
        height: args.image_size,
        width: args.image_size,
        channels: 3,
    };
    let plan = crate::train::check_options_for(shape, classes, opts)?;
    if device != DeviceChoice::Cuda {
        crate::train::check_host_memory(&plan, opts.batch_size)?;
    }
    Ok(source)
}

/// Lists the skipped files in the run folder, then trains.
fn start_run(
    args: &TrainArgs,
    data: &ImageSet<crate::data::Pixels>,
    split: &Split,
    opts: &TrainOptions,
    report: Option<&crate::data::cache::Meta>,
    device: DeviceChoice,
    out: &Path,
) -> Result<Vec<crate::run::EpochMetrics>> {
    if let Some(meta) = report {
        let list = crate::run::write_item_list(out, "skipped.tsv", &meta.skipped)?;
        if !meta.skipped.is_empty() {
            eprintln!("skipped files and reasons: {}", list.display());
        }
        if !meta.warnings.is_empty() {
            let list = crate::run::write_item_list(out, "decode_warnings.tsv", &meta.warnings)?;
            eprintln!("files kept despite decoder warnings: {}", list.display());
        }
    }
    eprintln!(
        "device: {}; run folder: {}",
        device::name(device),
        out.display()
    );
    crate::interrupt::install()?;
    let clock = device::clock_name(device);
    on_device!(device, opts.precision, |backend| {
        crate::train::train_profiled(
            backend,
            data,
            split,
            opts,
            out,
            args.profile,
            clock,
            |line| println!("{line}"),
        )
    })
}

/// The class counts of both splits, by name: `classes: Cat 9993/2498, Dog 9411/2353 (train/val)`.
fn split_counts_line<P: PixelStore>(data: &ImageSet<P>, split: &Split) -> String {
    let (t, v) = (
        data.class_counts(&split.train),
        data.class_counts(&split.val),
    );
    let parts: Vec<String> = data
        .class_names
        .iter()
        .enumerate()
        .map(|(c, n)| format!("{n} {}/{}", t[c], v[c]))
        .collect();
    format!(
        "classes (train/val): {}; {} / {} images",
        parts.join(", "),
        split.train.len(),
        split.val.len()
    )
}

/// The command line that continues an interrupted run: this one with `--out DIR` replaced
/// by `--resume DIR` (or `--resume DIR` added), arguments quoted for a POSIX shell.
fn resume_command(args: impl IntoIterator<Item = String>, out: &std::path::Path) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut args = args.into_iter();
    let mut resuming = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => {
                args.next();
            }
            _ if a.starts_with("--out=") => {}
            "--resume" => {
                resuming = true;
                words.push(a);
            }
            _ => {
                resuming |= a.starts_with("--resume=");
                words.push(a);
            }
        }
    }
    if !resuming {
        words.push("--resume".into());
        words.push(out.display().to_string());
    }
    words
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+%@".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::resume_command;

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn the_resume_command_replaces_out_and_quotes() {
        let out = std::path::Path::new("runs/a b");
        assert_eq!(
            resume_command(
                words("focalflow train --epochs 3 --out runs/x --lr 1e-3"),
                out
            ),
            "focalflow train --epochs 3 --lr 1e-3 --resume 'runs/a b'"
        );
        assert_eq!(
            resume_command(words("focalflow train --resume runs/x"), out),
            "focalflow train --resume runs/x"
        );
        assert_eq!(
            resume_command(words("focalflow train --out=runs/x --data it's"), out),
            "focalflow train --data 'it'\\''s' --resume 'runs/a b'"
        );
    }
}
