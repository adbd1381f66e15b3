//! Softmax on CUDA (kernels/softmax.cu): one warp per row,
//! [`ROWS_PER_BLOCK`](crate::ops::kernel_abi::ROWS_PER_BLOCK) rows per block, grid
//! `ceil(rows / ROWS_PER_BLOCK)` (capped, then grid-stride).

use super::SoftmaxOps;
use crate::executor::{DeviceBuffer, Executor};
use crate::ops::check_len;
use crate::ops::cuda::CudaBackend;
use crate::ops::launch::{elementwise_config, int, row_grid};
use crate::{Error, Result};

fn rows_cols(rows: usize, cols: usize) -> Result<(i32, i32, usize)> {
    let n = rows.checked_mul(cols).ok_or_else(|| {
        Error::Shape(format!(
            "[rows={rows}, cols={cols}] overflows the address space"
        ))
    })?;
    Ok((int("rows", rows)?, int("cols", cols)?, n))
}

/// Row-wise softmax of `[rows, cols]` logits into `probs` (`exp(z - max) / sum`).
fn softmax_forward(
    exec: &Executor,
    rows: usize,
    cols: usize,
    logits: &DeviceBuffer<f32>,
    probs: &mut DeviceBuffer<f32>,
) -> Result<()> {
    let (r, c, n) = rows_cols(rows, cols)?;
    check_len("logits", logits.len(), n)?;
    check_len("probabilities", probs.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    // SAFETY: softmax_forward_rows(const float*, float*, int, int) reads and writes the
    // [rows, cols] prefixes checked above.
    unsafe {
        exec.launch_builder("softmax_forward_rows", row_grid(rows))
            .arg(logits)
            .arg(probs)
            .arg(r)
            .arg(c)
            .launch()
    }
}

/// `dlogits = p * (dprobs - sum(dprobs * p))` per row of `[rows, cols]`.
fn softmax_backward(
    exec: &Executor,
    rows: usize,
    cols: usize,
    probs: &DeviceBuffer<f32>,
    dprobs: &DeviceBuffer<f32>,
    dlogits: &mut DeviceBuffer<f32>,
) -> Result<()> {
    let (r, c, n) = rows_cols(rows, cols)?;
    check_len("probabilities", probs.len(), n)?;
    check_len("probability gradient", dprobs.len(), n)?;
    check_len("logit gradient", dlogits.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    // SAFETY: softmax_backward_rows(const float*, const float*, float*, int, int) on the
    // [rows, cols] prefixes checked above.
    unsafe {
        exec.launch_builder("softmax_backward_rows", row_grid(rows))
            .arg(probs)
            .arg(dprobs)
            .arg(dlogits)
            .arg(r)
            .arg(c)
            .launch()
    }
}

/// Elementwise sigmoid (`grad` false: `probs = sigmoid(logits)`) or its gradient (`dlogits =
/// dprobs * p (1 - p)`), over the first `n` elements.
fn sigmoid_elems(
    exec: &Executor,
    kernel: &str,
    n: usize,
    bufs: [(&str, &DeviceBuffer<f32>); 2],
    out: &mut DeviceBuffer<f32>,
) -> Result<()> {
    for (what, b) in bufs {
        check_len(what, b.len(), n)?;
    }
    check_len("output", out.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let count = int("sigmoid length", n)?;
    // SAFETY: sigmoid_forward_elems(const float*, const float*, float*, int) and
    // sigmoid_backward_elems(same) read the first n of both inputs (the forward ignores the
    // second) and write the first n of `out`, all checked above.
    unsafe {
        exec.launch_builder(kernel, elementwise_config(n))
            .arg(bufs[0].1)
            .arg(bufs[1].1)
            .arg(out)
            .arg(count)
            .launch()
    }
}

impl SoftmaxOps for CudaBackend {
    fn sigmoid_forward(
        &self,
        n: usize,
        logits: &DeviceBuffer<f32>,
        probs: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        sigmoid_elems(
            &self.exec,
            "sigmoid_forward_elems",
            n,
            [("logits", logits), ("logits", logits)],
            probs,
        )
    }

    fn sigmoid_backward(
        &self,
        n: usize,
        probs: &DeviceBuffer<f32>,
        dprobs: &DeviceBuffer<f32>,
        dlogits: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        sigmoid_elems(
            &self.exec,
            "sigmoid_backward_elems",
            n,
            [("probabilities", probs), ("probability gradient", dprobs)],
            dlogits,
        )
    }

    fn softmax_forward(
        &self,
        rows: usize,
        cols: usize,
        logits: &DeviceBuffer<f32>,
        probs: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        softmax_forward(&self.exec, rows, cols, logits, probs)
    }

    fn softmax_backward(
        &self,
        rows: usize,
        cols: usize,
        probs: &DeviceBuffer<f32>,
        dprobs: &DeviceBuffer<f32>,
        dlogits: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        softmax_backward(&self.exec, rows, cols, probs, dprobs, dlogits)
    }
}
