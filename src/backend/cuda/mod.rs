//! The CUDA backend: the [`Backend`] trait over the kernel executor ([`Executor`]), so the
//! same host code drives a GPU (`cuda`) or the CPU emulator running the very same kernel
//! sources (`cuda-emu`).
//!
//! Parameters, activations, gradients and optimizer state live in device buffers; nothing
//! comes back to the host inside a step except the loss value (the trait's `loss` returns it)
//! and what [`Backend::read`] asks for. The only scratch memory, the split-K workspace of
//! the filter/dense gradients, is allocated once at its largest size and reused.
//!
//! Kernels (kernels/*.cu):
//! - convolution forward / backward-data / backward-filter: implicit GEMMs on the tiled,
//!   register-blocked core of kernels/gemm_tile.cuh (conv.cu), bias and ReLU fused into the
//!   forward epilogue, the bias gradient computed as an extra row of the filter-gradient
//!   GEMM, split-K with a deterministic second pass for the long pixel reductions;
//! - dense forward / weight+bias gradient / input gradient: the same core (dense.cu);
//! - max-pooling forward/backward (pool.cu) and the ReLU gradient (elementwise.cu);
//! - loss, softmax and Adam: [`loss`] (kernels/loss.cu, kernels/optim.cu).
//!
//! [`Variant::Naive`] swaps the GEMM-shaped ops for one-thread-per-output reference kernels
//! (kernels/naive.cu), for validation and timing beside the tiled ones.

pub mod counters;
mod gemm;
pub mod loss;

use std::sync::Mutex;

pub(crate) use gemm::int;
use gemm::{Gemm, Op, Planner};
pub use gemm::{GemmArgs, KernelChoice, TILES, Variant};

use super::{AdamStep, Backend, ConvShape, DenseShape, PoolShape, StepTotals};
use crate::Result;
use crate::gpu::{DeviceBuffer, Executor, Launch, LaunchConfig};
use crate::loss::LossConfig;

/// Threads per block of the elementwise and pooling kernels.
const ELEMENTWISE_THREADS: u32 = 256;
/// Most blocks of a grid-stride elementwise launch (enough to fill an H200 several times).
const MAX_ELEMENTWISE_BLOCKS: usize = 8192;

/// The CUDA backend over a GPU or the emulator.
pub struct CudaBackend {
    exec: Executor,
    /// Launch shapes; the kernel choice can be changed between ops (`set_choice`).
    planner: Mutex<Planner>,
    /// Split-K partial sums; grown to the largest need, then reused by every step.
    workspace: Mutex<Option<DeviceBuffer<f32>>>,
    /// The loss kernels' reusable device state (per-row sums, result, class weights).
    loss_state: Mutex<loss::LossKernels>,
}

impl CudaBackend {
    /// The backend on `exec` with the tiled kernels.
    pub fn new(exec: Executor) -> Self {
        Self::with_variant(exec, Variant::Tiled)
    }

    /// The backend on `exec` with the given implementation of the GEMM-shaped ops.
    pub fn with_variant(exec: Executor, variant: Variant) -> Self {
        Self::with_choice(exec, variant, KernelChoice::default())
    }

    /// The backend on `exec` with the given implementation of the GEMM-shaped ops and
    /// overrides of the tiled kernels' automatic choice (to validate and time them all).
    pub fn with_choice(exec: Executor, variant: Variant, choice: KernelChoice) -> Self {
        let target_blocks = match &exec {
            // A few resident blocks per SM (the tiled kernels fit two of 256 threads).
            Executor::Cuda(c) => (c.info().multiprocessors.max(1) as usize) * 4,
            // The emulator has a handful of OS threads; a small target still makes the
            // tests exercise split-K on small shapes.
            Executor::Emu(_) => 16,
        };
        CudaBackend {
            exec,
            planner: Mutex::new(Planner {
                variant,
                target_blocks,
                choice,
            }),
            workspace: Mutex::new(None),
            loss_state: Mutex::new(loss::LossKernels::new()),
        }
    }

    /// The executor the kernels run on.
    pub fn executor(&self) -> &Executor {
        &self.exec
    }

    fn planner(&self) -> Planner {
        *self.planner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn variant(&self) -> Variant {
        self.planner().variant
    }

    pub fn choice(&self) -> KernelChoice {
        self.planner().choice
    }

    /// Changes the implementation and kernel choice of later GEMM-shaped ops (one executor,
    /// so one module load, can then validate or time every variant).
    pub fn set_choice(&self, variant: Variant, choice: KernelChoice) {
        let mut p = self.planner.lock().unwrap_or_else(|e| e.into_inner());
        p.variant = variant;
        p.choice = choice;
    }

    /// Launches one GEMM-shaped kernel (and its split-K reduction), growing the workspace
    /// first if it needs more.
    ///
    /// # Safety
    /// The pointers in `args` must be valid for the extents its sizes describe.
    unsafe fn gemm(&self, op: Op, args: GemmArgs, vector: bool) -> Result<()> {
        let g = Gemm { op, args, vector };
        let planner = self.planner();
        let need = planner.workspace_len(&g);
        let mut ws = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        if need > 0 && ws.as_ref().is_none_or(|w| w.len() < need) {
            *ws = None; // free the old one first
            *ws = Some(self.exec.alloc::<f32>(need)?);
        }
        // SAFETY: forwarded to the caller; the workspace holds `need` floats.
        unsafe { planner.launch(&self.exec, &g, ws.as_mut()) }
    }

    /// `p[..n] = value`.
    fn fill(&self, p: &mut DeviceBuffer<f32>, n: usize, value: f32) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        check_len("buffer", p, n)?;
        let cfg = elementwise_config(n);
        // SAFETY: fill_f32(float*, int, float) writes the first n elements of p.
        unsafe {
            self.exec
                .launch_builder("fill_f32", cfg)
                .arg(p)
                .arg(int("fill length", n)?)
                .arg(value)
                .launch()
        }
    }
}

fn check_len(what: &str, buf: &DeviceBuffer<f32>, needed: usize) -> Result<()> {
    super::check_len(what, buf.len(), needed)
}

/// The pooling kernel for `s` (the float4 one when the channels allow it) and its thread
/// count (one per output element, or per 4 with float4).
fn pool_kernel(s: &PoolShape, scalar: &'static str, v4: &'static str) -> (&'static str, usize) {
    if s.channels.is_multiple_of(4) {
        (v4, s.output_len() / 4)
    } else {
        (scalar, s.output_len())
    }
}

/// The shape arguments every pooling kernel takes after its buffers.
fn pool_dims<'l, 'a>(launch: &'l mut Launch<'a>, s: &PoolShape) -> &'l mut Launch<'a> {
    launch
        .arg(s.batch as i32)
        .arg(s.in_h as i32)
        .arg(s.in_w as i32)
        .arg(s.channels as i32)
        .arg(s.size as i32)
}

/// One thread per element in blocks of ELEMENTWISE_THREADS, grid-stride beyond the cap.
pub(crate) fn elementwise_config(n: usize) -> LaunchConfig {
    let blocks = n
        .div_ceil(ELEMENTWISE_THREADS as usize)
        .clamp(1, MAX_ELEMENTWISE_BLOCKS);
    LaunchConfig::new(blocks as u32, ELEMENTWISE_THREADS)
}

/// A GemmArgs with the geometry of a convolution filled in.
fn conv_args(s: &ConvShape) -> Result<GemmArgs> {
    int("conv input", s.input_len())?;
    int("conv output", s.output_len())?;
    int("conv kernel", s.kernel_len() + s.out_c)?;
    let (pad_top, pad_left) = s.pad_before();
    Ok(GemmArgs {
        batch: s.batch as i32,
        in_h: s.in_h as i32,
        in_w: s.in_w as i32,
        in_c: s.in_c as i32,
        out_h: s.out_h() as i32,
        out_w: s.out_w() as i32,
        out_c: s.out_c as i32,
        kernel_h: s.kernel_h as i32,
        kernel_w: s.kernel_w as i32,
        pad_top: pad_top as i32,
        pad_left: pad_left as i32,
        ones_row: -1,
        ..GemmArgs::default()
    })
}

fn dense_check(s: &DenseShape) -> Result<()> {
    int("dense input", s.batch * s.inputs)?;
    int("dense output", s.batch * s.outputs)?;
    int("dense kernel", (s.inputs + 1) * s.outputs)?;
    Ok(())
}

impl Backend for CudaBackend {
    type E = f32;
    type Buf = DeviceBuffer<f32>;

    fn name(&self) -> &'static str {
        self.exec.kind().name()
    }

    fn zeros(&self, len: usize) -> Result<DeviceBuffer<f32>> {
        self.exec.alloc_zeros(len)
    }

    fn write(&self, buf: &mut DeviceBuffer<f32>, host: &[f32]) -> Result<()> {
        check_len("destination buffer", buf, host.len())?;
        self.exec.copy_htod(host, buf)
    }

    fn read(&self, buf: &DeviceBuffer<f32>, len: usize) -> Result<Vec<f32>> {
        check_len("source buffer", buf, len)?;
        let mut v = vec![0f32; len];
        self.exec.copy_dtoh(buf, &mut v)?;
        Ok(v)
    }

    fn conv2d_forward(
        &self,
        s: &ConvShape,
        x: &DeviceBuffer<f32>,
        w: &DeviceBuffer<f32>,
        b: &DeviceBuffer<f32>,
        y: &mut DeviceBuffer<f32>,
        relu: bool,
    ) -> Result<()> {
        s.check_forward(x.len(), w.len(), b.len(), y.len())?;
        let m = s.batch * s.out_h() * s.out_w();
        let args = GemmArgs {
            a: x.device_ptr(),
            b: w.device_ptr(),
            bias: b.device_ptr(),
            out: y.device_ptr(),
            m: int("conv output pixels", m)?,
            n: s.out_c as i32,
            k: s.patch_len() as i32,
            ldb: s.out_c as i32,
            ldo: s.out_c as i32,
            m_split: m as i32,
            relu: relu as i32,
            ..conv_args(s)?
        };
        let vector = s.in_c.is_multiple_of(4) && s.out_c.is_multiple_of(4);
        // SAFETY: the lengths were checked against the shape the arguments describe.
        unsafe { self.gemm(Op::ConvForward, args, vector) }
    }

    fn conv2d_backward_data(
        &self,
        s: &ConvShape,
        dy: &DeviceBuffer<f32>,
        w: &DeviceBuffer<f32>,
        dx: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        s.check_backward_data(dy.len(), w.len(), dx.len())?;
        let m = s.batch * s.in_h * s.in_w;
        let args = GemmArgs {
            a: dy.device_ptr(),
            b: w.device_ptr(),
            out: dx.device_ptr(),
            m: int("conv input pixels", m)?,
            n: s.in_c as i32,
            k: (s.kernel_h * s.kernel_w * s.out_c) as i32,
            ldo: s.in_c as i32,
            m_split: m as i32,
            ..conv_args(s)?
        };
        let vector = s.out_c.is_multiple_of(4);
        // SAFETY: the lengths were checked against the shape the arguments describe.
        unsafe { self.gemm(Op::ConvBackwardData, args, vector) }
    }

    fn conv2d_backward_filter(
        &self,
        s: &ConvShape,
        x: &DeviceBuffer<f32>,
        dy: &DeviceBuffer<f32>,
        dw: &mut DeviceBuffer<f32>,
        db: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        s.check_backward_filter(x.len(), dy.len(), dw.len(), db.len())?;
        let pixels = s.batch * s.out_h() * s.out_w();
        if pixels == 0 {
            // A sum over no pixels (the kernels divide by the image size).
            self.fill(dw, s.kernel_len(), 0.0)?;
            return self.fill(db, s.out_c, 0.0);
        }
        let patch = s.patch_len();
        let args = GemmArgs {
            a: x.device_ptr(),
            b: dy.device_ptr(),
            out: dw.device_ptr(),
            out2: db.device_ptr(),
            m: (patch + 1) as i32,
            n: s.out_c as i32,
            k: int("conv output pixels", pixels)?,
            ldb: s.out_c as i32,
            ldo: s.out_c as i32,
            m_split: patch as i32,
            ones_row: patch as i32,
            ..conv_args(s)?
        };
        let vector = s.in_c.is_multiple_of(4) && s.out_c.is_multiple_of(4);
        // SAFETY: the lengths were checked against the shape the arguments describe.
        unsafe { self.gemm(Op::ConvBackwardFilter, args, vector) }
    }

    fn maxpool2d_forward(
        &self,
        s: &PoolShape,
        x: &DeviceBuffer<f32>,
        y: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        s.check_forward(x.len(), y.len())?;
        int("pool input", s.input_len())?;
        let (name, n) = pool_kernel(s, "maxpool_fwd", "maxpool_fwd_v4");
        if n == 0 {
            return Ok(());
        }
        let mut launch = self.exec.launch_builder(name, elementwise_config(n));
        launch.arg(x).arg(y);
        // SAFETY: the kernel reads the input and writes the output the shape describes.
        unsafe { pool_dims(&mut launch, s).launch() }
    }

    fn maxpool2d_backward(
        &self,
        s: &PoolShape,
        x: &DeviceBuffer<f32>,
        dy: &DeviceBuffer<f32>,
        dx: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        s.check_backward(x.len(), dy.len(), dx.len())?;
        int("pool input", s.input_len())?;
        if s.output_len() == 0 {
            // No window at all: every input gets zero.
            return self.fill(dx, s.input_len(), 0.0);
        }
        let (name, n) = pool_kernel(s, "maxpool_bwd", "maxpool_bwd_v4");
        let mut launch = self.exec.launch_builder(name, elementwise_config(n));
        launch.arg(x).arg(dy).arg(dx);
        // SAFETY: the kernel reads x and dy and writes every element of dx the shape describes.
        unsafe { pool_dims(&mut launch, s).launch() }
    }

    fn dense_forward(
        &self,
        s: &DenseShape,
        x: &DeviceBuffer<f32>,
        w: &DeviceBuffer<f32>,
        b: &DeviceBuffer<f32>,
        y: &mut DeviceBuffer<f32>,
        relu: bool,
    ) -> Result<()> {
        s.check_forward(x.len(), w.len(), b.len(), y.len())?;
        dense_check(s)?;
        let args = GemmArgs {
            a: x.device_ptr(),
            b: w.device_ptr(),
            bias: b.device_ptr(),
            out: y.device_ptr(),
            m: s.batch as i32,
            n: s.outputs as i32,
            k: s.inputs as i32,
            lda: s.inputs as i32,
            ldb: s.outputs as i32,
            ldo: s.outputs as i32,
            m_split: s.batch as i32,
            ones_row: -1,
            relu: relu as i32,
            ..GemmArgs::default()
        };
        let vector = s.inputs.is_multiple_of(4) && s.outputs.is_multiple_of(4);
        // SAFETY: the lengths were checked against the shape the arguments describe.
        unsafe { self.gemm(Op::DenseForward, args, vector) }
    }

    fn dense_backward(
        &self,
        s: &DenseShape,
        x: &DeviceBuffer<f32>,
        w: &DeviceBuffer<f32>,
        dy: &DeviceBuffer<f32>,
        dx: Option<&mut DeviceBuffer<f32>>,
        dw: &mut DeviceBuffer<f32>,
        db: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        let dx_len = dx.as_ref().map(|d| d.len());
        s.check_backward(x.len(), w.len(), dy.len(), dx_len, dw.len(), db.len())?;
        dense_check(s)?;
        // [dw; db][in + 1, out] = [x | 1]^T [in + 1, batch] * dy[batch, out]
        let args = GemmArgs {
            a: x.device_ptr(),
            b: dy.device_ptr(),
            out: dw.device_ptr(),
            out2: db.device_ptr(),
            m: (s.inputs + 1) as i32,
            n: s.outputs as i32,
            k: s.batch as i32,
            lda: s.inputs as i32,
            ldb: s.outputs as i32,
            ldo: s.outputs as i32,
            m_split: s.inputs as i32,
            ones_row: s.inputs as i32,
            ..GemmArgs::default()
        };
        let vector = s.inputs.is_multiple_of(4) && s.outputs.is_multiple_of(4);
        // SAFETY: the lengths were checked against the shape the arguments describe.
        unsafe { self.gemm(Op::DenseBackwardWeights, args, vector)? };
        if let Some(dx) = dx {
            // dx[batch, in] = dy[batch, out] * w^T[out, in]
            let args = GemmArgs {
                a: dy.device_ptr(),
                b: w.device_ptr(),
                out: dx.device_ptr(),
                m: s.batch as i32,
                n: s.inputs as i32,
                k: s.outputs as i32,
                lda: s.outputs as i32,
                ldb: s.outputs as i32,
                ldo: s.inputs as i32,
                m_split: s.batch as i32,
                ones_row: -1,
                ..GemmArgs::default()
            };
            let vector = s.outputs.is_multiple_of(4);
            // SAFETY: the lengths were checked against the shape the arguments describe.
            unsafe { self.gemm(Op::DenseBackwardInput, args, vector)? };
        }
        Ok(())
    }

    fn relu_backward(
        &self,
        len: usize,
        y: &DeviceBuffer<f32>,
        dy: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        check_len("relu output", y, len)?;
        check_len("relu gradient", dy, len)?;
        if len == 0 {
            return Ok(());
        }
        let cfg = elementwise_config(len.div_ceil(4));
        // SAFETY: relu_bwd(const float*, float*, int) touches the first len elements.
        unsafe {
            self.exec
                .launch_builder("relu_bwd", cfg)
                .arg(y)
                .arg(dy)
                .arg(int("relu length", len)?)
                .launch()
        }
    }

    fn softmax_forward(
        &self,
        rows: usize,
        cols: usize,
        logits: &DeviceBuffer<f32>,
        probs: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        loss::softmax_forward(&self.exec, rows, cols, logits, probs)
    }

    fn softmax_backward(
        &self,
        rows: usize,
        cols: usize,
        probs: &DeviceBuffer<f32>,
        dprobs: &DeviceBuffer<f32>,
        dlogits: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        loss::softmax_backward(&self.exec, rows, cols, probs, dprobs, dlogits)
    }

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
        loss::loss(
            &self.exec, &mut state, cfg, batch, classes, y_true, pred, grad,
        )
    }

    fn adam_update(
        &self,
        len: usize,
        step: &AdamStep<f32>,
        param: &mut DeviceBuffer<f32>,
        grad: &DeviceBuffer<f32>,
        m: &mut DeviceBuffer<f32>,
        v: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        loss::adam_update(&self.exec, len, step, param, grad, m, v, None)
    }

    type Counters = DeviceBuffer<f64>;

    fn counters(&self) -> Result<DeviceBuffer<f64>> {
        self.exec.alloc_zeros(counters::COUNT)
    }

    fn set_counters(&self, counters: &mut DeviceBuffer<f64>, totals: &StepTotals) -> Result<()> {
        counters::write(&self.exec, counters, totals)
    }

    fn read_counters(&self, counters: &DeviceBuffer<f64>) -> Result<StepTotals> {
        counters::read(&self.exec, counters)
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
        loss::loss_counted(
            &self.exec, &mut state, cfg, batch, classes, y_true, pred, probs, grad, step, counters,
        )
    }

    fn adam_update_counted(
        &self,
        len: usize,
        step: &AdamStep<f32>,
        param: &mut DeviceBuffer<f32>,
        grad: &DeviceBuffer<f32>,
        m: &mut DeviceBuffer<f32>,
        v: &mut DeviceBuffer<f32>,
        counters: &DeviceBuffer<f64>,
    ) -> Result<()> {
        loss::adam_update(&self.exec, len, step, param, grad, m, v, Some(counters))
    }

    fn copy_into(
        &self,
        src: &DeviceBuffer<f32>,
        len: usize,
        dst: &mut DeviceBuffer<f32>,
        offset: usize,
    ) -> Result<()> {
        check_len("source buffer", src, len)?;
        check_len("destination buffer", dst, offset + len)?;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: copy_f32(const float*, float*, long long) copies `len` elements, which
        // both ranges hold (checked above).
        unsafe {
            self.exec
                .launch_builder("copy_f32", elementwise_config(len))
                .arg(src)
                .arg(dst.slice(offset..offset + len))
                .arg(len as i64)
                .launch()
        }
    }

    fn free_memory(&self) -> Result<Option<u64>> {
        self.exec.free_memory()
    }
}
