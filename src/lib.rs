//! focalflow: train image classifiers with losses made for imbalanced data and
//! overconfident models, on a fast CPU backend and hand-written CUDA kernels.

pub mod adafocal;
pub mod bench;
pub mod calibrate;
pub mod checkpoint;
pub mod class_balance;
pub mod cli;
pub mod compare;
pub mod data;
pub mod element;
pub mod error;
pub mod executor;
pub mod feed;
pub mod inference;
pub mod info;
pub mod interrupt;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod onnx;
pub mod ops;
pub mod optim;
pub mod plots;
pub mod precision;
pub mod profile;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod system;
pub mod tensorboard;
pub mod train;

pub use element::Element;
pub use error::{Error, Result};

/// build.rs's toolkit discovery, compiled here too so that `cargo test` checks it.
#[cfg(test)]
#[path = "../build/nvcc.rs"]
#[allow(dead_code)]
mod build_nvcc;
