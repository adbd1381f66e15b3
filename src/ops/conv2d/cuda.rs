//! The convolutions on CUDA: launches of the implicit-GEMM kernels of `conv2d.cu` (or the
//! naive ones of `conv2d_naive.cu`) through the GEMM planner (`gemm::cuda`).

use super::{Conv2dOps, ConvPaths, ConvShape};
use crate::Result;
use crate::executor::DeviceBuffer;
use crate::ops::cuda::{CudaBackend, int};
use crate::ops::gemm::cuda::{GemmArgs, Op, Variant};

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

impl Conv2dOps for CudaBackend {
    fn conv2d_paths(&self, _s: &ConvShape) -> ConvPaths {
        match self.variant() {
            Variant::Tiled => ConvPaths {
                forward: "implicit GEMM, bias + ReLU fused",
                backward_data: "implicit GEMM",
                backward_filter: "implicit GEMM, split-K",
            },
            Variant::Naive => ConvPaths {
                forward: "naive (one thread per output)",
                backward_data: "naive (one thread per output)",
                backward_filter: "naive (one thread per output)",
            },
        }
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
}
