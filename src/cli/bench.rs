//! `focalflow bench`: times training and inference steps of a model on random data.

use crate::Result;
use crate::bench::BenchOptions;
use crate::cli::DeviceChoice;
use crate::cli::device::{self, on_device};
use crate::cli::flags::loss::LossFlags;
use crate::model::REFERENCE_ARCH;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    #[command(flatten)]
    pub precision: device::PrecisionFlag,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Timed steps, after two warm-up steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value = REFERENCE_ARCH)]
    pub arch: String,
    #[command(flatten)]
    pub loss: LossFlags,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print a per-phase time table of the timed training steps.
    #[arg(long)]
    pub profile: bool,
    /// Also time whole epochs of `train` on N generated images (data path included),
    /// beside the kernels-only figure: 3 epochs, the first one untimed.
    #[arg(long, value_name = "N")]
    pub end_to_end: Option<usize>,
    /// `--device-cache` of the --end-to-end run (see `train --help`).
    #[arg(long, value_name = "auto|off|GiB", default_value = "auto")]
    pub device_cache: crate::feed::DeviceCache,
}

/// Runs `focalflow bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    let device = device::resolve(args.device)?;
    let precision = args.precision.precision;
    device::check_precision(device, precision)?;
    let opts = BenchOptions {
        arch: args.arch.parse()?,
        image_size: args.image_size,
        batch_size: args.batch_size,
        classes: 2,
        steps: args.steps,
        warmup: 2,
        loss: args.loss.to_config_with_default(true)?,
        end_to_end: args.end_to_end,
        device_cache: args.device_cache,
    };
    let clock = device::clock_name(device);
    let (report, table) = on_device!(device, precision, |backend| {
        crate::bench::run_profiled(backend, &opts, args.profile, clock)
    })?;
    if let Some(table) = table {
        // On stderr with --json, so that stdout stays one JSON object.
        if args.json {
            eprintln!("{table}")
        } else {
            println!("{table}")
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("JSON"));
    } else {
        println!(
            "{} {} {}x{} batch {}, {} threads: train {:.1} img/s ({:.0} ms/step, {:.1} GFLOP/s), inference {:.1} img/s, peak RSS {}",
            report.device,
            report.precision,
            report.image_size,
            report.image_size,
            report.batch_size,
            rayon::current_num_threads(),
            report.train_images_per_second,
            report.train_step_ms,
            report.train_gflops,
            report.inference_images_per_second,
            report.peak_rss_bytes.map_or("unknown".into(), |b| format!(
                "{:.0} MiB",
                b as f64 / 1048576.0
            ))
        );
        for layer in &report.conv_layers {
            println!("  {}", layer.line());
        }
        if let (Some(e2e), Some(path)) = (
            report.end_to_end_images_per_second,
            &report.end_to_end_data_path,
        ) {
            println!(
                "end to end (train, {} generated images): {e2e:.1} img/s, {:.0}% of the kernels-only figure; {}{path}",
                args.end_to_end.unwrap_or(0),
                100.0 * e2e / report.train_images_per_second,
                crate::feed::DATA_PATH_LINE
            );
        }
    }
    Ok(())
}
