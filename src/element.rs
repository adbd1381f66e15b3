//! The floating-point element type of tensors.
//!
//! Training runs in `f32`; the same CPU code runs in `f64` so that gradient checks by
//! central finite differences are accurate to ~1e-8 rather than ~1e-3.

use std::fmt::{Debug, Display};

/// A float the CPU backend and the losses are generic over (`f32` or `f64`).
pub trait Element:
    num_traits::Float
    + num_traits::FromPrimitive
    + num_traits::ToPrimitive
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + 'static
{
    /// Convert from an f64 constant (exact for f64, rounded to nearest for f32).
    fn of(x: f64) -> Self {
        <Self as num_traits::FromPrimitive>::from_f64(x).expect("f64 converts to any float")
    }
    /// Widen to f64 (exact).
    fn f64(self) -> f64 {
        num_traits::ToPrimitive::to_f64(&self).expect("float converts to f64")
    }
}

impl Element for f32 {}
impl Element for f64 {}
