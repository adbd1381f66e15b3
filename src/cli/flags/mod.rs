//! Flag groups shared by several commands (`#[command(flatten)]` them).

pub mod checkpoint;
pub mod data;
pub mod loss;
