//! The losses on CUDA: host side of kernels/loss.cu; the same code drives a GPU and the
//! emulator (cuda-emu).
//!
//! - [`LossOps::loss`] computes exactly what
//!   [`loss_forward_backward::<f32>`](crate::ops::loss::loss_forward_backward) computes (every
//!   loss and option; same formulas and numerically careful forms, in f32) from
//!   `[batch, classes]` device buffers, and writes dLoss/dpred (or d/dlogits) into `grad`
//!   when given (overwritten). Two launches: the configuration's row kernel (one function
//!   each below), then `loss_reduce`, a one-block deterministic reduction (no atomics,
//!   bit-reproducible). Without a [`CountStep`] it reads back two floats (the loss and an
//!   input-error flag); with one, what training uses, it reads nothing: `count_step`
//!   (kernels/counters.cu) adds the two floats to the pass's counters on the device.
//! - Errors are those of `loss_forward_backward`: parameters via [`LossConfig::validate`],
//!   shapes as `Error::Shape`, a non-finite input as `Error::NonFinite` naming the row and
//!   column, a non-positive row sum (keras-focal/ce on probabilities) as
//!   `Error::InvalidArgument`. The kernels detect bad inputs cheaply (a flag); only then are
//!   the inputs downloaded and the host reference run to produce the identical message.
//! - As everywhere in the `Backend` trait, buffers may be longer than the operation needs:
//!   only the `[batch, classes]` prefix is read and written.
//! - A per-class alpha and a table of gamma bins (flsd-53, adafocal) are uploaded once per
//!   configuration (cached by value in [`LossKernels`]), not once per step.
//!
//! Launch shapes: the row kernels (`loss_*_rows`) run one warp per row,
//! [`ROWS_PER_BLOCK`](crate::ops::kernel_abi::ROWS_PER_BLOCK) rows per block
//! ([`row_grid`]); `loss_reduce` one block of [`LOSS_REDUCE_THREADS`] threads.

use super::{CountStep, LossOps};
use super::{LengthRule, check_loss_shapes, loss_forward_backward};
use crate::executor::{DeviceBuffer, Executor, Launch, LaunchConfig};
use crate::loss::{Alpha, GammaBins, LossConfig};
use crate::ops::check_len;
use crate::ops::counters::cuda::count_step;
use crate::ops::cuda::CudaBackend;
use crate::ops::kernel_abi::{LOSS_REDUCE_THREADS, LOSS_TERMS_PER_ROW};
use crate::ops::launch::{int, row_grid};
use crate::{Error, Result};

/// Reusable device state of the loss, kept by its backend (`CudaBackend::op_state`): the
/// per-class alpha and the gamma table of the current configuration, the per-row partial
/// sums and the two-float result. Allocated on first use, grown when a larger batch comes.
#[derive(Default)]
struct LossKernels {
    alpha: CachedUpload,
    gamma_table: CachedUpload,
    terms: Option<DeviceBuffer<f32>>,
    result: Option<DeviceBuffer<f32>>,
}

/// A small array of a configuration on the device, uploaded again only when its values change.
#[derive(Default)]
struct CachedUpload(Option<(Vec<f32>, DeviceBuffer<f32>)>);

impl CachedUpload {
    fn device(&mut self, exec: &Executor, values: Vec<f32>) -> Result<&DeviceBuffer<f32>> {
        if self.0.as_ref().is_none_or(|(v, _)| *v != values) {
            let buf = exec.upload(&values)?;
            self.0 = Some((values, buf));
        }
        Ok(&self.0.as_ref().expect("just set").1)
    }
}

/// The per-row gamma as the kernels take it: `(gamma_fixed, table, bins)`, the table (edges,
/// then gammas) uploaded for more than one bin.
fn gamma_args(exec: &Executor, k: &mut LossKernels, g: &GammaBins) -> Result<(f32, u64, i32)> {
    if g.gammas.len() == 1 {
        return Ok((g.gammas[0] as f32, 0, 1));
    }
    let table = g.edges.iter().chain(&g.gammas).map(|&v| v as f32).collect();
    let ptr = k.gamma_table.device(exec, table)?.device_ptr();
    Ok((0.0, ptr, g.gammas.len() as i32))
}

/// `buf` if it holds at least `len` elements, else a new one.
fn ensure(exec: &Executor, buf: &mut Option<DeviceBuffer<f32>>, len: usize) -> Result<()> {
    if buf.as_ref().is_none_or(|b| b.len() < len) {
        *buf = Some(exec.alloc::<f32>(len)?);
    }
    Ok(())
}

/// The row kernel of a loss configuration and its scalar arguments.
enum RowKernel {
    FocalProbs {
        gamma: GammaBins,
        l1: f32,
        l2: f32,
    },
    /// Fused softmax + focal from logits; `ce` from logits is the case alpha 1, gamma 0,
    /// l1 = l2 = 0 with smoothed labels, `flsd-53` and `adafocal` alpha 1 with their
    /// per-sample gamma.
    SoftmaxFocal {
        gamma: GammaBins,
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
    DualFocal {
        gamma: f32,
        from_logits: bool,
    },
    SigmoidFocal {
        gamma: f32,
        from_logits: bool,
    },
}

/// Keras' label smoothing `y*keep + add`, with the constants as `smooth_labels` in
/// src/ops/loss/cpu/ computes them (keep 1, add 0 leave the labels unchanged).
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
            let (gamma, l1, l2) = (GammaBins::fixed(*gamma), *l1 as f32, *l2 as f32);
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
                    gamma: GammaBins::fixed(0.0),
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
        LossConfig::SigmoidFocal {
            alpha,
            gamma,
            from_logits,
        } => (
            Some(alpha),
            RowKernel::SigmoidFocal {
                gamma: *gamma as f32,
                from_logits: *from_logits,
            },
        ),
        LossConfig::DualFocal { gamma, from_logits } => (
            None,
            RowKernel::DualFocal {
                gamma: *gamma as f32,
                from_logits: *from_logits,
            },
        ),
        LossConfig::Flsd53 { .. } | LossConfig::AdaFocal { .. } => {
            let gamma = cfg
                .sample_gammas()
                .expect("flsd-53 and adafocal have sample gammas");
            let from_logits = cfg.from_logits();
            let kernel = if from_logits {
                RowKernel::SoftmaxFocal {
                    gamma,
                    l1: 0.0,
                    l2: 0.0,
                    keep: 1.0,
                    add: 0.0,
                }
            } else {
                RowKernel::FocalProbs {
                    gamma,
                    l1: 0.0,
                    l2: 0.0,
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
            (k.alpha.device(exec, values)?.device_ptr(), 0.0f32)
        }
    };

    let gamma = match &kernel {
        RowKernel::FocalProbs { gamma, .. } | RowKernel::SoftmaxFocal { gamma, .. } => {
            gamma_args(exec, k, gamma)?
        }
        _ => (0.0, 0, 1),
    };
    ensure(exec, &mut k.terms, LOSS_TERMS_PER_ROW * batch)?;
    ensure(exec, &mut k.result, 2)?;
    let rows = Rows {
        exec,
        y_true,
        pred,
        alpha: alpha_ptr,
        alpha_scalar,
        inv_batch: 1.0f32 / batch as f64 as f32,
        batch: batch as i32,
        classes: classes as i32,
        grad: grad.as_deref(),
        terms: k.terms.as_mut().expect("allocated above"),
    };
    let reduce = match kernel {
        RowKernel::FocalProbs { l1, l2, .. } => focal_probs_rows(rows, gamma, l1, l2)?,
        RowKernel::SoftmaxFocal {
            l1, l2, keep, add, ..
        } => softmax_focal_rows(rows, gamma, l1, l2, keep, add)?,
        RowKernel::CalibratedMse {
            facture,
            from_logits,
        } => calibrated_mse_rows(rows, n, facture, from_logits)?,
        RowKernel::Keras {
            gamma,
            keep,
            add,
            focal,
            from_logits,
        } => keras_rows(rows, gamma, keep, add, focal, from_logits)?,
        RowKernel::DualFocal { gamma, from_logits } => dual_focal_rows(rows, gamma, from_logits)?,
        RowKernel::SigmoidFocal { gamma, from_logits } => {
            sigmoid_focal_rows(rows, n, gamma, from_logits)?
        }
    };
    let terms = k.terms.as_ref().expect("allocated above");
    let result = k.result.as_mut().expect("allocated above");
    // SAFETY: loss_reduce(const float*, int, int, float x3, float*) reads the 4*batch terms
    // the row kernel wrote and writes the 2-float result (both allocated above).
    unsafe {
        exec.launch_builder("loss_reduce", LaunchConfig::new(1u32, LOSS_REDUCE_THREADS))
            .arg(terms)
            .arg(batch as i32)
            .arg(reduce.mode)
            .arg(reduce.c0)
            .arg(reduce.c1)
            .arg(reduce.c2)
            .arg(result)
            .launch()?
    };
    Ok(n)
}

/// What every row kernel takes: the `[batch, classes]` inputs, the alpha (a per-class
/// device array, or null and a scalar), the gradient (or null: the loss only) and the
/// per-row terms it writes (`LOSS_TERMS_PER_ROW * batch`), all checked by [`launch_loss`].
struct Rows<'a> {
    exec: &'a Executor,
    y_true: &'a DeviceBuffer<f32>,
    pred: &'a DeviceBuffer<f32>,
    alpha: u64,
    alpha_scalar: f32,
    inv_batch: f32,
    batch: i32,
    classes: i32,
    grad: Option<&'a DeviceBuffer<f32>>,
    terms: &'a mut DeviceBuffer<f32>,
}

impl Rows<'_> {
    /// Launches the row kernel `kernel` on the parameter layout every one of them shares:
    /// `(y, pred, [alpha, alpha_scalar,] own..., [inv_batch,] batch, classes, grad, terms)`,
    /// the bracketed ones for the class-weighted means (`weighted`), `own` the kernel's own
    /// scalars, pushed by `own`.
    ///
    /// # Safety
    /// `own` must push exactly the kernel's own parameters, in order and type (see
    /// kernels/loss.cu); the buffers' extents were checked by [`launch_loss`].
    unsafe fn launch(
        self,
        kernel: &str,
        weighted: bool,
        own: impl FnOnce(&mut Launch<'_>),
    ) -> Result<()> {
        let mut l = self
            .exec
            .launch_builder(kernel, row_grid(self.batch as usize));
        l.arg(self.y_true).arg(self.pred);
        if weighted {
            l.arg(self.alpha).arg(self.alpha_scalar);
        }
        own(&mut l);
        if weighted {
            l.arg(self.inv_batch);
        }
        l.arg(self.batch)
            .arg(self.classes)
            .arg(self.grad)
            .arg(self.terms);
        // SAFETY: forwarded to the caller.
        unsafe { l.launch() }
    }
}

/// How `loss_reduce` combines the row terms `S0..S2`: `mode` 0 is `S0*c0 + c1*S1 + c2*S2`
/// (the mean focal term plus the L1/L2 terms), 1 the calibrated MSE's
/// `S0/c0 + c1*(S1/c0)`.
struct Reduce {
    mode: i32,
    c0: f32,
    c1: f32,
    c2: f32,
}

// One function per row kernel: its own parameters, and how loss_reduce combines its terms.
// SAFETY (every launch below): the closure pushes the kernel's own parameters in the order
// and types of kernels/loss.cu.

/// Pushes the per-row gamma ([`gamma_args`]) as the kernels take it:
/// `gamma_fixed, gamma_table, gamma_bins`.
fn push_gamma(l: &mut Launch<'_>, (fixed, table, bins): (f32, u64, i32)) {
    l.arg(fixed).arg(table).arg(bins);
}

fn focal_probs_rows(r: Rows<'_>, gamma: (f32, u64, i32), l1: f32, l2: f32) -> Result<Reduce> {
    let c0 = r.inv_batch;
    unsafe {
        r.launch("loss_focal_probs_rows", true, |l| {
            push_gamma(l, gamma);
            l.arg(l1).arg(l2);
        })?
    };
    Ok(Reduce {
        mode: 0,
        c0,
        c1: l1,
        c2: l2,
    })
}

fn softmax_focal_rows(
    r: Rows<'_>,
    gamma: (f32, u64, i32),
    l1: f32,
    l2: f32,
    keep: f32,
    add: f32,
) -> Result<Reduce> {
    let c0 = r.inv_batch;
    unsafe {
        r.launch("loss_softmax_focal_rows", true, |l| {
            push_gamma(l, gamma);
            l.arg(l1).arg(l2).arg(keep).arg(add);
        })?
    };
    Ok(Reduce {
        mode: 0,
        c0,
        c1: l1,
        c2: l2,
    })
}

fn dual_focal_rows(r: Rows<'_>, gamma: f32, from_logits: bool) -> Result<Reduce> {
    let c0 = r.inv_batch;
    unsafe {
        r.launch("loss_dual_focal_rows", false, |l| {
            l.arg(gamma).arg(i32::from(from_logits)).arg(c0);
        })?
    };
    Ok(Reduce {
        mode: 0,
        c0,
        c1: 0.0,
        c2: 0.0,
    })
}

fn sigmoid_focal_rows(r: Rows<'_>, n: usize, gamma: f32, from_logits: bool) -> Result<Reduce> {
    // As the CPU reference: 1 / (batch * classes) in f32.
    let inv_n = 1.0f32 / (n as f64 as f32);
    let (alpha, alpha_scalar) = (r.alpha, r.alpha_scalar);
    // Not the `weighted` layout: that one ends in 1/batch, this loss's mean is over
    // batch x classes (inv_n, pushed with its own parameters).
    unsafe {
        r.launch("loss_sigmoid_focal_rows", false, |l| {
            l.arg(alpha)
                .arg(alpha_scalar)
                .arg(gamma)
                .arg(i32::from(from_logits))
                .arg(inv_n);
        })?
    };
    Ok(Reduce {
        mode: 0,
        c0: inv_n,
        c1: 0.0,
        c2: 0.0,
    })
}

fn calibrated_mse_rows(r: Rows<'_>, n: usize, facture: f32, from_logits: bool) -> Result<Reduce> {
    let n_f = n as f64 as f32;
    unsafe {
        r.launch("loss_calibrated_mse_rows", false, |l| {
            l.arg(facture).arg(n_f).arg(from_logits as i32);
        })?
    };
    Ok(Reduce {
        mode: 1,
        c0: n_f,
        c1: facture,
        c2: 0.0,
    })
}

fn keras_rows(
    r: Rows<'_>,
    gamma: f32,
    keep: f32,
    add: f32,
    focal: bool,
    from_logits: bool,
) -> Result<Reduce> {
    let c0 = r.inv_batch;
    unsafe {
        r.launch("loss_keras_rows", true, |l| {
            l.arg(gamma)
                .arg(keep)
                .arg(add)
                .arg(focal as i32)
                .arg(from_logits as i32);
        })?
    };
    Ok(Reduce {
        mode: 0,
        c0,
        c1: 0.0,
        c2: 0.0,
    })
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
        count: Option<CountStep<'_, DeviceBuffer<f32>, DeviceBuffer<f64>>>,
    ) -> Result<Option<f32>> {
        let exec = &self.exec;
        self.op_state(|k: &mut LossKernels| {
            let n = launch_loss(exec, k, cfg, batch, classes, y_true, pred, grad)?;
            let result = k.result.as_ref().expect("launch_loss allocates it");
            if let Some(c) = count {
                check_len("probabilities", c.probs.len(), n)?;
                count_step(
                    exec, result, c.probs, y_true, batch, classes, c.step, c.counters,
                )?;
                return Ok(None);
            }
            let mut out = [0.0f32; 2];
            exec.copy_dtoh(result, &mut out)?;
            if out[1] != 0.0 {
                return Err(input_error(exec, cfg, batch, classes, n, y_true, pred));
            }
            Ok(Some(out[0]))
        })
    }
}
