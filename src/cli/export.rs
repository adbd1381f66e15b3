//! `focalflow export`: a checkpoint as an ONNX model (see [`crate::onnx`]).

use std::path::PathBuf;

use crate::Result;
use crate::checkpoint::{self, Checkpoint};
use crate::onnx::{ExportOptions, InputKind};

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A checkpoint written by train, or a run folder (its best checkpoint, else its last).
    #[arg(long, value_name = "FILE|RUN")]
    pub checkpoint: PathBuf,
    /// The ONNX file to write.
    #[arg(long, value_name = "FILE")]
    pub onnx: PathBuf,
    /// End in the softmax (output `probabilities`) rather than the logits (`logits`).
    #[arg(long)]
    pub probabilities: bool,
    /// What the model takes: u8 pixels 0-255 (NHWC, scaled inside as focalflow scales
    /// them) or f32 values in [0, 1].
    #[arg(long, value_enum, default_value = "u8")]
    pub input: InputKind,
    /// Leave out the temperature stored by `calibrate`.
    #[arg(long)]
    pub no_temperature: bool,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    let path = checkpoint::resolve(&args.checkpoint)?;
    let ck = Checkpoint::load(&path)?;
    let temperature = ck.temperature_unless(args.no_temperature);
    let bytes = crate::onnx::export(
        &ck,
        &ExportOptions {
            input: args.input,
            probabilities: args.probabilities,
            temperature,
        },
    )?;
    crate::run::write_atomically(&args.onnx, &bytes)?;
    eprintln!(
        "wrote {} ({} KiB): {} from {}, {} input, output {}{}; classes {:?}",
        args.onnx.display(),
        bytes.len() / 1024,
        ck.arch,
        path.display(),
        match args.input {
            InputKind::U8 => "uint8 NHWC",
            InputKind::F32 => "float32 NHWC in [0, 1]",
        },
        if args.probabilities {
            "probabilities"
        } else {
            "logits"
        },
        if temperature == 1.0 {
            String::new()
        } else {
            format!(" (temperature {temperature} folded in)")
        },
        ck.class_names
    );
    Ok(())
}
