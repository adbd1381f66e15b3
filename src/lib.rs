//! focalflow: train image classifiers with losses made for imbalanced data and
//! overconfident models, on a fast CPU backend and hand-written CUDA kernels.

pub mod element;
pub mod error;

pub use element::Element;
pub use error::{Error, Result};
