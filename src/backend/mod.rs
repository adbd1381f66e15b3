//! The `Backend` trait: every tensor operation a training step needs, implemented once per
//! device. Layers (`crate::model`) call these; they never touch device memory themselves.
//!
//! Conventions (Keras'): activations NHWC, conv kernels HWIO, dense kernels `[in, out]`,
//! all row-major. Buffers may be longer than an operation needs (a workspace sized for the
//! largest batch serves a smaller last batch); an operation reads and writes only the prefix
//! its shape describes, and *overwrites* its outputs (gradients are not accumulated).

pub mod cpu;
pub mod cuda;
pub mod direct_conv;
mod gemm;

use crate::Element;
use crate::Result;
use crate::loss::LossConfig;

pub use cpu::CpuBackend;

/// Spatial padding of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// No padding: the output shrinks by `kernel - 1` (Keras `padding="valid"`).
    Valid,
    /// Zero padding so that the output keeps the input's size (Keras `padding="same"`,
    /// stride 1: `(kernel-1)/2` before, the rest after).
    Same,
}

/// Shape of a 2-D convolution with stride 1 over an NHWC batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub in_c: usize,
    pub out_c: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub padding: Padding,
}

impl ConvShape {
    /// Zero rows/columns added before the input (top, left).
    pub fn pad_before(&self) -> (usize, usize) {
        match self.padding {
            Padding::Valid => (0, 0),
            Padding::Same => ((self.kernel_h - 1) / 2, (self.kernel_w - 1) / 2),
        }
    }
    pub fn out_h(&self) -> usize {
        match self.padding {
            Padding::Valid => self.in_h + 1 - self.kernel_h,
            Padding::Same => self.in_h,
        }
    }
    pub fn out_w(&self) -> usize {
        match self.padding {
            Padding::Valid => self.in_w + 1 - self.kernel_w,
            Padding::Same => self.in_w,
        }
    }
    /// Length of one im2col row: the receptive field of one output pixel.
    pub fn patch_len(&self) -> usize {
        self.kernel_h * self.kernel_w * self.in_c
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.in_h * self.in_w * self.in_c
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.out_h() * self.out_w() * self.out_c
    }
    pub fn kernel_len(&self) -> usize {
        self.patch_len() * self.out_c
    }
    /// Multiply-adds of the forward pass, times two (FLOPs).
    pub fn forward_flops(&self) -> f64 {
        2.0 * (self.batch * self.out_h() * self.out_w()) as f64
            * (self.patch_len() * self.out_c) as f64
    }
}

/// Shape of a max-pooling with a square window and equal stride over an NHWC batch; odd
/// sizes are floored, as in Keras (109 -> 54).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub channels: usize,
    pub size: usize,
}

impl PoolShape {
    pub fn out_h(&self) -> usize {
        self.in_h / self.size
    }
    pub fn out_w(&self) -> usize {
        self.in_w / self.size
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.in_h * self.in_w * self.channels
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.out_h() * self.out_w() * self.channels
    }
}

/// Shape of a dense layer `y[batch, out] = x[batch, in] @ w[in, out] + b[out]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseShape {
    pub batch: usize,
    pub inputs: usize,
    pub outputs: usize,
}

impl DenseShape {
    pub fn forward_flops(&self) -> f64 {
        2.0 * self.batch as f64 * self.inputs as f64 * self.outputs as f64
    }
}

/// One Adam step's scalars, computed on the host once per step (Keras 3 semantics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep<T> {
    /// `lr * sqrt(1 - beta2^t) / (1 - beta1^t)`: the bias correction folded into the step.
    pub step_size: T,
    /// `1 - beta1` and `1 - beta2`, the moving-average rates.
    pub one_minus_beta1: T,
    pub one_minus_beta2: T,
    /// Added to `sqrt(v)` (not to the bias-corrected v), as Keras does.
    pub epsilon: T,
}

/// What the steps of a pass add up to, kept by the backend's counters
/// ([`Backend::loss_counted`]) and read once per pass ([`Backend::read_counters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepTotals {
    /// The loss summed as `loss * batch` per step (divide by `seen` for the mean).
    pub loss_sum: f64,
    /// Images whose largest probability is their label's.
    pub correct: u64,
    pub seen: u64,
    /// The first step whose loss could not be computed; nothing is counted from it on.
    pub failure: Option<StepFailure>,
}

/// A step whose loss was not finite (training stops; its weights were not updated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepFailure {
    /// The step's index in the pass (0-based).
    pub step: usize,
    /// The loss's inputs (the model's outputs) held a NaN or an infinity, not just the loss.
    pub bad_inputs: bool,
}

impl StepFailure {
    /// What failed, for an error message.
    pub fn describe(&self) -> &'static str {
        if self.bad_inputs {
            "the model's outputs are not finite"
        } else {
            "the loss is not finite"
        }
    }
}

/// Fails with a shape error naming `what` when a buffer of `have` elements is shorter than
/// the `needed` elements an operation touches. Shared by every backend, so that a wrong
/// buffer gives the same message on each.
pub fn check_len(what: &str, have: usize, needed: usize) -> Result<()> {
    if have < needed {
        return Err(crate::Error::Shape(format!(
            "{what} holds {have} elements, the operation needs {needed}"
        )));
    }
    Ok(())
}

// The buffer checks of each operation, given the buffers' lengths: written once here and
// called by every backend before it touches memory.
impl ConvShape {
    pub fn check_forward(&self, x: usize, w: usize, b: usize, y: usize) -> Result<()> {
        check_len("conv input", x, self.input_len())?;
        check_len("conv kernel", w, self.kernel_len())?;
        check_len("conv bias", b, self.out_c)?;
        check_len("conv output", y, self.output_len())
    }
    pub fn check_backward_data(&self, dy: usize, w: usize, dx: usize) -> Result<()> {
        check_len("conv output gradient", dy, self.output_len())?;
        check_len("conv kernel", w, self.kernel_len())?;
        check_len("conv input gradient", dx, self.input_len())
    }
    pub fn check_backward_filter(&self, x: usize, dy: usize, dw: usize, db: usize) -> Result<()> {
        check_len("conv input", x, self.input_len())?;
        check_len("conv output gradient", dy, self.output_len())?;
        check_len("conv kernel gradient", dw, self.kernel_len())?;
        check_len("conv bias gradient", db, self.out_c)
    }
}

impl PoolShape {
    /// A window of size 0 has no output size (`out_h` would divide by zero).
    fn check_window(&self) -> Result<()> {
        if self.size == 0 {
            return Err(crate::Error::Shape(
                "max-pooling with a window of size 0".into(),
            ));
        }
        Ok(())
    }
    pub fn check_forward(&self, x: usize, y: usize) -> Result<()> {
        self.check_window()?;
        check_len("pool input", x, self.input_len())?;
        check_len("pool output", y, self.output_len())
    }
    pub fn check_backward(&self, x: usize, dy: usize, dx: usize) -> Result<()> {
        self.check_window()?;
        check_len("pool input", x, self.input_len())?;
        check_len("pool output gradient", dy, self.output_len())?;
        check_len("pool input gradient", dx, self.input_len())
    }
}

impl DenseShape {
    pub fn check_forward(&self, x: usize, w: usize, b: usize, y: usize) -> Result<()> {
        check_len("dense input", x, self.batch * self.inputs)?;
        check_len("dense kernel", w, self.inputs * self.outputs)?;
        check_len("dense bias", b, self.outputs)?;
        check_len("dense output", y, self.batch * self.outputs)
    }
    /// `dx` is the input gradient's length when it is asked for.
    pub fn check_backward(
        &self,
        x: usize,
        w: usize,
        dy: usize,
        dx: Option<usize>,
        dw: usize,
        db: usize,
    ) -> Result<()> {
        check_len("dense input", x, self.batch * self.inputs)?;
        check_len("dense kernel", w, self.inputs * self.outputs)?;
        check_len("dense output gradient", dy, self.batch * self.outputs)?;
        check_len("dense kernel gradient", dw, self.inputs * self.outputs)?;
        check_len("dense bias gradient", db, self.outputs)?;
        match dx {
            Some(dx) => check_len("dense input gradient", dx, self.batch * self.inputs),
            None => Ok(()),
        }
    }
}

/// Every operation of a training step. `E` is the element type (f32 for training; the CPU
/// backend also runs in f64 for gradient checks); `Buf` is a device buffer of `E`.
pub trait Backend {
    type E: Element;
    type Buf;

    /// Short name for logs: "cpu", "cuda", "cuda-emu".
    fn name(&self) -> &'static str;

    /// A zero-filled buffer of `len` elements.
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// Copy `host` into the start of `buf`.
    fn write(&self, buf: &mut Self::Buf, host: &[Self::E]) -> Result<()>;
    /// Copy the first `len` elements of `buf` to the host.
    fn read(&self, buf: &Self::Buf, len: usize) -> Result<Vec<Self::E>>;
    /// A new buffer holding `host`.
    fn upload(&self, host: &[Self::E]) -> Result<Self::Buf> {
        let mut buf = self.zeros(host.len())?;
        self.write(&mut buf, host)?;
        Ok(buf)
    }

    /// `y = conv(x, w) + b`, then ReLU if `relu`.
    fn conv2d_forward(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        y: &mut Self::Buf,
        relu: bool,
    ) -> Result<()>;
    /// `dx = dL/dx` given `dy = dL/dy` (of the convolution's pre-activation output).
    fn conv2d_backward_data(
        &self,
        s: &ConvShape,
        dy: &Self::Buf,
        w: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()>;
    /// `dw = dL/dw`, `db = dL/db`, summed over the batch.
    fn conv2d_backward_filter(
        &self,
        s: &ConvShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
    ) -> Result<()>;

    fn maxpool2d_forward(&self, s: &PoolShape, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    /// Routes each output gradient to the first maximal input of its window (row-major
    /// order); inputs in no window (the floored edge) get zero.
    fn maxpool2d_backward(
        &self,
        s: &PoolShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()>;
    /// [`Self::maxpool2d_backward`] then [`Self::relu_backward`] of the layer before, for a
    /// pool whose input `x` is a ReLU's output: the gradient reaches the ReLU's input. A
    /// window's maximum is the only input with a gradient, so the ReLU mask reduces to
    /// "that maximum is above 0"; backends override this to do it in one pass.
    fn maxpool2d_relu_backward(
        &self,
        s: &PoolShape,
        x: &Self::Buf,
        dy: &Self::Buf,
        dx: &mut Self::Buf,
    ) -> Result<()> {
        self.maxpool2d_backward(s, x, dy, dx)?;
        self.relu_backward(s.input_len(), x, dx)
    }

    /// `y = x @ w + b`, then ReLU if `relu`.
    fn dense_forward(
        &self,
        s: &DenseShape,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        y: &mut Self::Buf,
        relu: bool,
    ) -> Result<()>;
    /// `dw = x^T @ dy`, `db = sum_rows(dy)`, and `dx = dy @ w^T` when `dx` is given.
    #[allow(clippy::too_many_arguments)]
    fn dense_backward(
        &self,
        s: &DenseShape,
        x: &Self::Buf,
        w: &Self::Buf,
        dy: &Self::Buf,
        dx: Option<&mut Self::Buf>,
        dw: &mut Self::Buf,
        db: &mut Self::Buf,
    ) -> Result<()>;

    /// `dy *= (y > 0)` over `len` elements, where `y` is the ReLU's output (TF's ReLU
    /// gradient at exactly 0 is 0).
    fn relu_backward(&self, len: usize, y: &Self::Buf, dy: &mut Self::Buf) -> Result<()>;

    /// Row-wise softmax of `[rows, cols]` logits.
    fn softmax_forward(
        &self,
        rows: usize,
        cols: usize,
        logits: &Self::Buf,
        probs: &mut Self::Buf,
    ) -> Result<()>;
    /// `dlogits = J_softmax^T dprobs`, i.e. `p * (dp - sum(dp * p))` per row.
    fn softmax_backward(
        &self,
        rows: usize,
        cols: usize,
        probs: &Self::Buf,
        dprobs: &Self::Buf,
        dlogits: &mut Self::Buf,
    ) -> Result<()>;

    /// The loss of `pred` (probabilities, or logits when `cfg.from_logits()`) against
    /// one-hot `y_true`, both `[batch, classes]`, and its gradient w.r.t. `pred` into `grad`.
    #[allow(clippy::too_many_arguments)]
    fn loss(
        &self,
        cfg: &LossConfig,
        batch: usize,
        classes: usize,
        y_true: &Self::Buf,
        pred: &Self::Buf,
        grad: Option<&mut Self::Buf>,
    ) -> Result<Self::E>;

    /// One Adam update of `len` parameters in place.
    #[allow(clippy::too_many_arguments)]
    fn adam_update(
        &self,
        len: usize,
        step: &AdamStep<Self::E>,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
    ) -> Result<()>;

    // The training loop's data path: batches in, per-pass totals out, with no read of the
    // device inside a step.

    /// The step counters of a pass (see [`StepTotals`]), kept where the backend computes:
    /// on the device for CUDA, so a step needs no read-back.
    type Counters;
    /// New counters at zero.
    fn counters(&self) -> Result<Self::Counters>;
    /// Sets `counters` to `totals` (zero for a new pass; a resumed epoch's partial sums, so
    /// that its sums continue in the order of an uninterrupted one).
    fn set_counters(&self, counters: &mut Self::Counters, totals: &StepTotals) -> Result<()>;
    /// The totals so far: the one read of the device a pass needs (waits for its work).
    fn read_counters(&self, counters: &Self::Counters) -> Result<StepTotals>;
    /// Whether [`Self::read_counters`] costs no more than a copy in host memory (then the
    /// training loop reads after every step and stops at a failed one at once).
    fn reads_are_cheap(&self) -> bool {
        false
    }
    /// [`Self::loss`] of step `step` of a pass, adding its loss and its correctly
    /// classified images (`probs` against `y_true`) to `counters` instead of returning them;
    /// a non-finite loss is recorded there as the pass's [`StepFailure`].
    #[allow(clippy::too_many_arguments)]
    fn loss_counted(
        &self,
        cfg: &LossConfig,
        batch: usize,
        classes: usize,
        y_true: &Self::Buf,
        pred: &Self::Buf,
        probs: &Self::Buf,
        grad: Option<&mut Self::Buf>,
        step: usize,
        counters: &mut Self::Counters,
    ) -> Result<()>;
    /// [`Self::adam_update`], skipped once `counters` record a failed step (so no NaN
    /// reaches the weights).
    #[allow(clippy::too_many_arguments)]
    fn adam_update_counted(
        &self,
        len: usize,
        step: &AdamStep<Self::E>,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        counters: &Self::Counters,
    ) -> Result<()>;
    /// Copies the first `len` elements of `src` to `dst[offset..offset + len]`.
    fn copy_into(
        &self,
        src: &Self::Buf,
        len: usize,
        dst: &mut Self::Buf,
        offset: usize,
    ) -> Result<()>;
    /// Free device memory in bytes, where the backend knows it (a GPU).
    fn free_memory(&self) -> Result<Option<u64>> {
        Ok(None)
    }
}
