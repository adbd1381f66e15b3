//! The command line: it parses and dispatches, one file per command (`train`, `loss`,
//! `bench`, `eval`, `predict`, `calibrate`, `compare`, `export`; `info` is one call),
//! flag groups shared by several commands in [`flags`], `--device` in [`device`].

pub mod bench;
pub mod calibrate;
pub mod compare;
pub mod device;
pub mod eval;
pub mod export;
pub mod flags;
pub mod loss;
pub mod predict;
mod text;
pub mod train;

use clap::{Parser, Subcommand};

use crate::Result;

#[derive(Parser, Debug)]
#[command(
    name = "focalflow",
    version,
    about = "Train image classifiers with focal and calibration losses, on CPU or CUDA"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (the reference CNN by default) and write a run folder.
    Train(Box<train::TrainArgs>),
    /// Evaluate a loss (and its gradient) on arrays from .npy files.
    Loss(loss::LossArgs),
    /// Time training and inference steps of a model on random data.
    Bench(bench::BenchArgs),
    /// What this build and machine can run: kernels, executors, GPUs, versions.
    Info,
    /// Metrics of a checkpoint on a folder of labelled images (per-class table, ECE, plots).
    Eval(eval::EvalArgs),
    /// Class and probabilities of image files or folders.
    Predict(predict::PredictArgs),
    /// Fit a temperature on held-out images and store it in the checkpoint.
    Calibrate(calibrate::CalibrateArgs),
    /// The final metrics of several runs side by side.
    Compare(compare::CompareArgs),
    /// Write a checkpoint's network as an ONNX model (onnxruntime, TensorRT, OpenVINO).
    Export(export::ExportArgs),
}

/// Where to run: `auto` picks the best available and says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
    CudaEmu,
}

/// Runs the command `cli` names.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Loss(args) => loss::run(&args),
        Command::Bench(args) => bench::run(args),
        Command::Info => crate::info::print_info(),
        Command::Eval(args) => eval::run(&args),
        Command::Predict(args) => predict::run(&args),
        Command::Calibrate(args) => calibrate::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Export(args) => export::run(&args),
    }
}
