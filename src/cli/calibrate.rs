//! `focalflow calibrate`: fits a temperature on held-out images and stores it in the
//! checkpoint (eval, predict and export apply it).

use std::path::PathBuf;

use serde_json::json;

use crate::Result;
use crate::calibrate::Calibration;
use crate::cli::device::DeviceFlag;
use crate::cli::flags::checkpoint::{
    CheckpointFlag, LabelledData, check_before_data, describe, logits_on_device,
};
use crate::inference::labels_of;

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

/// `focalflow calibrate`.
pub fn run(args: &CalibrateArgs) -> Result<()> {
    let (path, mut ck) = args.checkpoint.open()?;
    if let Some(csv) = &args.data.labels {
        return Err(crate::Error::file(
            csv,
            "calibrate fits one softmax temperature to single-label images; --labels (multi-label data) does not apply",
        ));
    }
    if ck.output() == crate::loss::Output::Sigmoid {
        return Err(crate::Error::invalid(format!(
            "{}: a model with sigmoid outputs (trained with sigmoid-focal); calibrate fits a softmax temperature, and scaling independent sigmoids is not supported",
            path.display()
        )));
    }
    eprintln!("{}", describe(&path, &ck, ck.temperature_or_one()));
    let device = check_before_data(
        args.batch_size,
        &args.device,
        args.out.as_deref(),
        &args.data.dir,
    )?;
    let set = args.data.load(&ck, !args.quiet && !args.json)?;
    let precision = args.device.precision.precision;
    let logits = logits_on_device(&ck, &set, args.batch_size, device, precision)?;
    let labels = labels_of(&set);
    let cal = Calibration::fit(&logits, &labels, &ck.class_names)?;
    let previous = ck.temperature;
    let calibration = cal.record(&args.data.dir);
    ck.temperature = Some(cal.fit.temperature);
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
        cal.fit.temperature,
        cal.images,
        previous.map_or(String::new(), |p| format!(" (replaces {p:.4})")),
        if cal.fit.at_bound {
            " - at the edge of the search range: the data may be separable or too small"
        } else {
            ""
        }
    );
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8}",
        "", "NLL", "Brier", "ECE", "MCE", "AdaECE", "cw-ECE", "mean conf", "acc"
    );
    for (name, m) in [("before (T = 1)", &cal.before), ("after", &cal.after)] {
        println!(
            "{:<16} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>10.4} {:>8.4}",
            name,
            m.nll,
            m.brier,
            m.ece,
            m.mce,
            m.adaptive_ece,
            m.classwise_ece,
            m.mean_confidence,
            m.accuracy
        );
    }
    println!(
        "stored in {} (metadata `temperature`); eval and predict apply it",
        target.display()
    );
    Ok(())
}
