//! The losses on CUDA: host side of `loss.cu`'s kernels; the same code drives a GPU and the
//! emulator (cuda-emu).
//!
//! # API
//!
//! ```text
//! pub struct LossKernels            // per-backend state: the cached per-class alpha, the
//! impl LossKernels {                // per-row scratch and the device result, allocated on
//!     pub fn new() -> Self          // first use and reused across steps
//! }
//! pub fn loss(exec, k: &mut LossKernels, cfg, batch, classes, y_true, pred, grad: Option<..>) -> Result<f32>
//! pub fn loss_counted(exec, k, cfg, batch, classes, y_true, pred, probs, grad, step, counters) -> Result<()>
//! ```
//!
//! - [`loss`] computes exactly what [`loss_forward_backward::<f32>`](crate::loss::loss_forward_backward)
//!   computes (every loss and option; same formulas and numerically careful forms, in f32)
//!   from `[batch, classes]` device buffers, writes dLoss/dpred (or d/dlogits) into `grad`
//!   when given (overwritten), and returns the loss. Two launches (per-row kernel, then a
//!   one-block deterministic reduction: no atomics, bit-reproducible) and one download of
//!   two floats (the loss and an input-error flag). [`loss_counted`], what training uses,
//!   downloads nothing: `count_step` adds the two floats to the pass's counters on the
//!   device.
//! - Errors are those of `loss_forward_backward`: parameters via [`LossConfig::validate`],
//!   shapes as `Error::Shape`, a non-finite input as `Error::NonFinite` naming the row and
//!   column, a non-positive row sum (keras-focal/ce on probabilities) as
//!   `Error::InvalidArgument`. The kernels detect bad inputs cheaply (a flag); only then are
//!   the inputs downloaded and the host reference run to produce the identical message.
//! - As everywhere in the `Backend` trait, buffers may be longer than the operation needs:
//!   only the `[batch, classes]` (`[rows, cols]`, `len`) prefix is read and written.
//! - A per-class alpha is uploaded once per configuration (cached by value in
//!   [`LossKernels`]), not once per step.
//!
//! Launch shapes: the row kernels (`loss_*_rows`) run one warp per row,
//! [`ROWS_PER_BLOCK`](crate::ops::cuda::ROWS_PER_BLOCK) rows per block of 128 threads, grid `ceil(rows / 4)` (capped, then
//! grid-stride); `loss_reduce` one block of 256 threads.

use super::LossOps;
use crate::executor::{DeviceBuffer, Executor, LaunchConfig};
use crate::loss::{Alpha, LengthRule, LossConfig, check_loss_shapes, loss_forward_backward};
use crate::ops::check_len;
use crate::ops::counters::cuda::count_step;
use crate::ops::cuda::{CudaBackend, int, row_grid};
use crate::{Error, Result};

/// `LOSS_REDUCE_THREADS` in loss.cu.
const REDUCE_THREADS: u32 = 256;
/// Per-row partial sums the loss kernels write (three sums and a flag).
const TERMS_PER_ROW: usize = 4;

/// Reusable device state of the loss: the per-class alpha of the current configuration,
/// the per-row partial sums and the two-float result. Allocated on first use, grown when a
/// larger batch comes, reallocated if used with another executor.
#[derive(Default)]
pub struct LossKernels {
    alpha: Option<(Vec<f32>, DeviceBuffer<f32>)>,
    terms: Option<DeviceBuffer<f32>>,
    result: Option<DeviceBuffer<f32>>,
}

impl LossKernels {
    pub fn new() -> Self {
        Self::default()
    }

    /// The per-class alpha on the device, uploaded only when the values change.
    fn alpha_buffer(&mut self, exec: &Executor, values: Vec<f32>) -> Result<&DeviceBuffer<f32>> {
        let stale = match &self.alpha {
            Some((v, buf)) => *v != values || buf.kind() != exec.kind(),
            None => true,
        };
        if stale {
            let buf = exec.upload(&values)?;
            self.alpha = Some((values, buf));
        }
        Ok(&self.alpha.as_ref().expect("just set").1)
    }
}

/// `buf` if it belongs to `exec` and holds at least `len` elements, else a new one.
fn ensure(exec: &Executor, buf: &mut Option<DeviceBuffer<f32>>, len: usize) -> Result<()> {
    if !buf
        .as_ref()
        .is_some_and(|b| b.len() >= len && b.kind() == exec.kind())
    {
        *buf = Some(exec.alloc::<f32>(len)?);
    }
    Ok(())
}

/// The row kernel of a loss configuration and its scalar arguments.
enum RowKernel {
    FocalProbs {
        gamma: f32,
        l1: f32,
        l2: f32,
    },
    /// Fused softmax + focal from logits; `ce` from logits is the case alpha 1, gamma 0,
    /// l1 = l2 = 0 with smoothed labels.
    SoftmaxFocal {
        gamma: f32,
        l1: f32,
        l2: f32,
        keep: f32,
        add: f32,
    },
    CalibratedMse {
        facture: f32,
        from_logits: bool,
    },
    Keras {
        gamma: f32,
        keep: f32,
        add: f32,
        focal: bool,
        from_logits: bool,
    },
}

/// Keras' label smoothing `y*keep + add`, with the constants as `smooth_labels` in
/// src/loss.rs computes them (keep 1, add 0 leave the labels unchanged).
fn smoothing(label_smoothing: f64, classes: usize) -> (f32, f32) {
    if label_smoothing == 0.0 {
        (1.0, 0.0)
    } else {
        (
            (1.0 - label_smoothing) as f32,
            label_smoothing as f32 / classes as f64 as f32,
        )
    }
}

/// The loss of `pred` against `y_true` (`[batch, classes]` on the device) and its gradient
/// into `grad` (if Some). Returns the loss value (a host round trip; the training loop
/// uses [`loss_counted`] instead). See the module documentation for the semantics and
/// errors.
#[allow(clippy::too_many_arguments)]
pub fn loss(
    exec: &Executor,
    k: &mut LossKernels,
    cfg: &LossConfig,
    batch: usize,
    classes: usize,
    y_true: &DeviceBuffer<f32>,
    pred: &DeviceBuffer<f32>,
    grad: Option<&mut DeviceBuffer<f32>>,
) -> Result<f32> {
    let n = launch_loss(exec, k, cfg, batch, classes, y_true, pred, grad)?;
    let mut out = [0.0f32; 2];
    exec.copy_dtoh(
        k.result.as_ref().expect("launch_loss allocates it"),
        &mut out,
    )?;
    if out[1] != 0.0 {
        return Err(input_error(exec, cfg, batch, classes, n, y_true, pred));
    }
    Ok(out[0])
}

/// [`loss`] without reading it back: the loss and the input-error flag stay in the device
/// result, and `count_step` (counters/counters.cu) adds them and the batch's correctly
/// classified images (`probs` against `y_true`) to `counters` as step `step`.
#[allow(clippy::too_many_arguments)]
pub fn loss_counted(
    exec: &Executor,
    k: &mut LossKernels,
    cfg: &LossConfig,
    batch: usize,
    classes: usize,
    y_true: &DeviceBuffer<f32>,
    pred: &DeviceBuffer<f32>,
    probs: &DeviceBuffer<f32>,
    grad: Option<&mut DeviceBuffer<f32>>,
    step: usize,
    counters: &mut DeviceBuffer<f64>,
) -> Result<()> {
    let n = launch_loss(exec, k, cfg, batch, classes, y_true, pred, grad)?;
    check_len("probabilities", probs.len(), n)?;
    let result = k.result.as_ref().expect("launch_loss allocates it");
    count_step(exec, result, probs, y_true, batch, classes, step, counters)
}

/// Launches the loss kernels: the loss and the input-error flag into `k.result`, the
/// gradient into `grad` when given. Returns `batch * classes`.
#[allow(clippy::too_many_arguments)]
fn launch_loss(
    exec: &Executor,
    k: &mut LossKernels,
    cfg: &LossConfig,
    batch: usize,
    classes: usize,
    y_true: &DeviceBuffer<f32>,
    pred: &DeviceBuffer<f32>,
    grad: Option<&mut DeviceBuffer<f32>>,
) -> Result<usize> {
    let n = check_loss_shapes(
        batch,
        classes,
        y_true.len(),
        pred.len(),
        grad.as_ref().map(|g| g.len()),
        LengthRule::AtLeast,
    )?;
    // The kernels take the sizes as C ints.
    int("batch", batch)?;
    int("classes", classes)?;
    cfg.validate(classes)?;

    // Alpha: scalar by value, per class as a cached device array (null pointer otherwise).
    let (alpha, kernel) = match cfg {
        LossConfig::Focal {
            alpha,
            gamma,
            l1,
            l2,
            from_logits,
        } => {
            let (gamma, l1, l2) = (*gamma as f32, *l1 as f32, *l2 as f32);
            let kernel = if *from_logits {
                RowKernel::SoftmaxFocal {
                    gamma,
                    l1,
                    l2,
                    keep: 1.0,
                    add: 0.0,
                }
            } else {
                RowKernel::FocalProbs { gamma, l1, l2 }
            };
            (Some(alpha), kernel)
        }
        LossConfig::CalibratedMse {
            facture,
            from_logits,
        } => (
            None,
            RowKernel::CalibratedMse {
                facture: *facture as f32,
                from_logits: *from_logits,
            },
        ),
        LossConfig::KerasFocal {
            alpha,
            gamma,
            label_smoothing,
            from_logits,
        } => {
            let (keep, add) = smoothing(*label_smoothing, classes);
            (
                Some(alpha),
                RowKernel::Keras {
                    gamma: *gamma as f32,
                    keep,
                    add,
                    focal: true,
                    from_logits: *from_logits,
                },
            )
        }
        LossConfig::CrossEntropy {
            label_smoothing,
            from_logits,
        } => {
            let (keep, add) = smoothing(*label_smoothing, classes);
            let kernel = if *from_logits {
                RowKernel::SoftmaxFocal {
                    gamma: 0.0,
                    l1: 0.0,
                    l2: 0.0,
                    keep,
                    add,
                }
            } else {
                RowKernel::Keras {
                    gamma: 0.0,
                    keep,
                    add,
                    focal: false,
                    from_logits: false,
                }
            };
            (None, kernel)
        }
    };
    let (alpha_ptr, alpha_scalar) = match alpha {
        None => (0u64, 1.0f32),
        Some(Alpha::Scalar(a)) => (0u64, *a as f32),
        Some(Alpha::PerClass(v)) => {
            let values = v.iter().map(|&a| a as f32).collect();
            (k.alpha_buffer(exec, values)?.device_ptr(), 0.0f32)
        }
    };

    ensure(exec, &mut k.terms, TERMS_PER_ROW * batch)?;
    ensure(exec, &mut k.result, 2)?;
    let terms = k.terms.as_mut().expect("allocated above");
    let result = k.result.as_mut().expect("allocated above");
    let (b, c) = (batch as i32, classes as i32);
    let inv_batch = 1.0f32 / batch as f64 as f32;
    let cfg_rows = row_grid(batch);
    // The gradient, or a null pointer (the loss only).
    let grad_ptr = grad.as_deref();

    // SAFETY (all launches below): the arguments match the kernels' parameters in order
    // and type (pointers to [batch, classes] f32 arrays checked above, the alpha array of
    // `classes` values or null, the gradient of at least batch*classes values or null,
    // `terms` of 4*batch values, `result` of 2); the kernels stay within those extents.
    let (mode, c0, c1, c2) = match kernel {
        RowKernel::FocalProbs { gamma, l1, l2 } => {
            unsafe {
                exec.launch_builder("loss_focal_probs_rows", cfg_rows)
                    .arg(y_true)
                    .arg(pred)
                    .arg(alpha_ptr)
                    .arg(alpha_scalar)
                    .arg(gamma)
                    .arg(l1)
                    .arg(l2)
                    .arg(inv_batch)
                    .arg(b)
                    .arg(c)
                    .arg(grad_ptr)
                    .arg(&mut *terms)
                    .launch()?
            };
            (0i32, inv_batch, l1, l2)
        }
        RowKernel::SoftmaxFocal {
            gamma,
            l1,
            l2,
            keep,
            add,
        } => {
            unsafe {
                exec.launch_builder("loss_softmax_focal_rows", cfg_rows)
                    .arg(y_true)
                    .arg(pred)
                    .arg(alpha_ptr)
                    .arg(alpha_scalar)
                    .arg(gamma)
                    .arg(l1)
                    .arg(l2)
                    .arg(keep)
                    .arg(add)
                    .arg(inv_batch)
                    .arg(b)
                    .arg(c)
                    .arg(grad_ptr)
                    .arg(&mut *terms)
                    .launch()?
            };
            (0, inv_batch, l1, l2)
        }
        RowKernel::CalibratedMse {
            facture,
            from_logits,
        } => {
            let n_f = n as f64 as f32;
            unsafe {
                exec.launch_builder("loss_calibrated_mse_rows", cfg_rows)
                    .arg(y_true)
                    .arg(pred)
                    .arg(facture)
                    .arg(n_f)
                    .arg(from_logits as i32)
                    .arg(b)
                    .arg(c)
                    .arg(grad_ptr)
                    .arg(&mut *terms)
                    .launch()?
            };
            (1, n_f, facture, 0.0)
        }
        RowKernel::Keras {
            gamma,
            keep,
            add,
            focal,
            from_logits,
        } => {
            unsafe {
                exec.launch_builder("loss_keras_rows", cfg_rows)
                    .arg(y_true)
                    .arg(pred)
                    .arg(alpha_ptr)
                    .arg(alpha_scalar)
                    .arg(gamma)
                    .arg(keep)
                    .arg(add)
                    .arg(focal as i32)
                    .arg(from_logits as i32)
                    .arg(inv_batch)
                    .arg(b)
                    .arg(c)
                    .arg(grad_ptr)
                    .arg(&mut *terms)
                    .launch()?
            };
            (0, inv_batch, 0.0, 0.0)
        }
    };
    unsafe {
        exec.launch_builder("loss_reduce", LaunchConfig::new(1u32, REDUCE_THREADS))
            .arg(&*terms)
            .arg(b)
            .arg(mode)
            .arg(c0)
            .arg(c1)
            .arg(c2)
            .arg(&mut *result)
            .launch()?
    };
    Ok(n)
}

/// The error of bad inputs flagged by a kernel: the host reference on the downloaded inputs
/// gives the exact error (which row and column, which check) that the CPU backend gives.
fn input_error(
    exec: &Executor,
    cfg: &LossConfig,
    batch: usize,
    classes: usize,
    n: usize,
    y_true: &DeviceBuffer<f32>,
    pred: &DeviceBuffer<f32>,
) -> Error {
    let download = |b: &DeviceBuffer<f32>| -> Result<Vec<f32>> {
        let mut v = vec![0.0f32; n];
        exec.copy_dtoh(b, &mut v)?;
        Ok(v)
    };
    let (y, p) = match (download(y_true), download(pred)) {
        (Ok(y), Ok(p)) => (y, p),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    match loss_forward_backward::<f32>(cfg, &y, &p, batch, classes, None) {
        Err(e) => e,
        // The device saw a row sum at the edge of f32 range that the host's order of
        // summation keeps finite: still refuse it.
        Ok(_) => Error::NonFinite(format!(
            "{}: a prediction row sums to a value that is not positive and finite on the device",
            cfg.describe()
        )),
    }
}

impl LossOps for CudaBackend {
    fn loss(
        &self,
        cfg: &LossConfig,
        batch: usize,
        classes: usize,
        y_true: &DeviceBuffer<f32>,
        pred: &DeviceBuffer<f32>,
        grad: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<f32> {
        let mut state = self.loss_state.lock().unwrap_or_else(|e| e.into_inner());
        loss(
            &self.exec, &mut state, cfg, batch, classes, y_true, pred, grad,
        )
    }

    fn loss_counted(
        &self,
        cfg: &LossConfig,
        batch: usize,
        classes: usize,
        y_true: &DeviceBuffer<f32>,
        pred: &DeviceBuffer<f32>,
        probs: &DeviceBuffer<f32>,
        grad: Option<&mut DeviceBuffer<f32>>,
        step: usize,
        counters: &mut DeviceBuffer<f64>,
    ) -> Result<()> {
        let mut state = self.loss_state.lock().unwrap_or_else(|e| e.into_inner());
        loss_counted(
            &self.exec, &mut state, cfg, batch, classes, y_true, pred, probs, grad, step, counters,
        )
    }
}
