//! A dense layer's backward pass with its kernel's Adam step fused in (the optimizer in the
//! backward pass): where a backend computes the weight gradient band by band of weight rows
//! (the CPU's streaming and AMX passes), each band goes straight into the update of those
//! rows while it is in cache, and the gradient is never stored. For the reference CNN's
//! dense1 (11 M weights) that saves writing its 44 MB gradient and reading it back in the
//! Adam pass, a quarter of the two passes' memory traffic.
//!
//! The update is Adam's own (`crate::ops::adam::update_slice`, element by element), on the
//! same gradient values, so a fused step gives the bits of the unfused one.

use rayon::prelude::*;

use super::{DenseOps, DenseShape};
use crate::Result;
use crate::ops::adam::{AdamOps, AdamStep, update_slice};
use crate::profile::{Phase, Profiled, Timeline};

/// A dense layer's kernel and its optimizer state.
pub struct Kernel<'a, Buf> {
    pub value: &'a mut Buf,
    /// Its gradient: written where the update is not fused, left as it was where it is.
    pub grad: &'a mut Buf,
    pub m: &'a mut Buf,
    pub v: &'a mut Buf,
}

/// The dense backward pass with the kernel's Adam step.
pub trait DenseAdamOps: DenseOps + AdamOps {
    /// Whether [`Self::dense_backward_adam`] fuses the update into the pass for `s`. Where
    /// it does not, a train step keeps the gradients and the Adam pass apart.
    fn fuses_dense_adam(&self, _s: &DenseShape) -> bool {
        false
    }

    /// `db`, and `dx` from the kernel before its update, as [`DenseOps::dense_backward`]
    /// computes them; then the kernel's Adam step with its gradient (`len` = inputs x
    /// outputs), skipped once `counters` record a failed step, as
    /// [`AdamOps::adam_update`] skips it. The bias is left to the caller's Adam step, as
    /// every other parameter. This default runs the two ops in turn.
    #[allow(clippy::too_many_arguments)]
    fn dense_backward_adam(
        &self,
        s: &DenseShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
        kernel: Kernel<'_, Self::Buf>,
        db: &mut Self::Buf,
        step: &AdamStep<Self::E>,
        counters: Option<&Self::Counters>,
    ) -> Result<()> {
        backward_then_adam(self, s, x, dy, dx, kernel, db, step, counters)
    }
}

/// The unfused [`DenseAdamOps::dense_backward_adam`]: the gradient stored by
/// [`DenseOps::dense_backward`], then [`AdamOps::adam_update`] (or its skip).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_then_adam<B: DenseOps + AdamOps + ?Sized>(
    backend: &B,
    s: &DenseShape,
    x: &B::Buf,
    dy: &B::Buf,
    dx: Option<&mut B::Buf>,
    kernel: Kernel<'_, B::Buf>,
    db: &mut B::Buf,
    step: &AdamStep<B::E>,
    counters: Option<&B::Counters>,
) -> Result<()> {
    backend.dense_backward(s, x, kernel.value, dy, dx, kernel.grad, db)?;
    let len = s.inputs * s.outputs;
    backend.adam_update(
        len,
        step,
        kernel.value,
        kernel.grad,
        kernel.m,
        kernel.v,
        counters,
    )
}

/// Under `--profile`: the fused pass is timed as backward (the kernel's update with it).
impl<B: DenseAdamOps + Timeline> DenseAdamOps for Profiled<'_, B> {
    fn fuses_dense_adam(&self, s: &DenseShape) -> bool {
        self.inner.fuses_dense_adam(s)
    }

    fn dense_backward_adam(
        &self,
        s: &DenseShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
        kernel: Kernel<'_, Self::Buf>,
        db: &mut Self::Buf,
        step: &AdamStep<Self::E>,
        counters: Option<&Self::Counters>,
    ) -> Result<()> {
        self.enter(Phase::Backward)?;
        self.inner
            .dense_backward_adam(s, x, dy, dx, kernel, db, step, counters)
    }
}

/// Where the CPU's dense passes put a weight gradient, band of weight rows by band.
pub(crate) enum GradientSink<'a> {
    /// Into `dw` (`[inputs, outputs]`).
    Store(&'a mut [f32]),
    /// Straight into the kernel's Adam step: `w`, `m`, `v` updated row band by band.
    Adam {
        w: &'a mut [f32],
        m: &'a mut [f32],
        v: &'a mut [f32],
        step: AdamStep<f32>,
    },
}

impl GradientSink<'_> {
    /// Values of the kernel the gradient is for.
    pub(crate) fn len(&self) -> usize {
        match self {
            GradientSink::Store(dw) => dw.len(),
            GradientSink::Adam { w, .. } => w.len(),
        }
    }

    /// `band(row0, rows)` writes the gradient of weight rows `row0..` (as many as `rows`
    /// holds, whole rows of `outputs`) into every value of `rows`; bands of `band_rows`
    /// rows run in parallel, each stored or applied as it is done.
    pub(crate) fn bands(
        self,
        outputs: usize,
        band_rows: usize,
        band: impl Fn(usize, &mut [f32]) + Sync + Send,
    ) {
        let n = band_rows * outputs;
        match self {
            GradientSink::Store(dw) => dw
                .par_chunks_mut(n)
                .enumerate()
                .for_each(|(i, rows)| band(i * band_rows, rows)),
            GradientSink::Adam { w, m, v, step } => w
                .par_chunks_mut(n)
                .zip(m.par_chunks_mut(n))
                .zip(v.par_chunks_mut(n))
                .enumerate()
                .for_each_init(
                    || vec![0f32; n],
                    |gradient, (i, ((w, m), v))| {
                        let g = &mut gradient[..w.len()];
                        band(i * band_rows, g);
                        update_slice(w, g, m, v, &step);
                    },
                ),
        }
    }
}
