//! The convolutions on CUDA: launches of the implicit-GEMM kernels of kernels/conv2d.cu (or
//! the naive ones of kernels/conv2d_naive.cu) through the GEMM planner (`gemm::cuda`).

use super::{Conv2dOps, ConvPaths, ConvShape};
use crate::Result;
use crate::executor::DeviceBuffer;
use crate::ops::cuda::CudaBackend;
use crate::ops::gemm::cuda::{Op, Variant, vector_loads};
use crate::ops::kernel_abi::GemmArgs;
use crate::ops::launch::int;

/// `args` with the geometry of the convolution `s` filled in.
fn with_geometry(args: GemmArgs, s: &ConvShape) -> Result<GemmArgs> {
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
        ..args
    })
}

impl Conv2dOps for CudaBackend {
    fn conv2d_paths(&self, _s: &ConvShape) -> ConvPaths {
        use crate::precision::Precision;
        match (self.variant(), self.gemm_precision()) {
            (Variant::Tiled, Precision::Fp32) => ConvPaths {
                forward: "implicit GEMM, bias + ReLU fused",
                backward_data: "implicit GEMM",
                backward_filter: "implicit GEMM, split-K",
            },
            (Variant::Tiled, Precision::Tf32) => ConvPaths {
                forward: "implicit GEMM on TF32 tensor cores, bias + ReLU fused",
                backward_data: "implicit GEMM on TF32 tensor cores",
                backward_filter: "implicit GEMM on TF32 tensor cores, split-K",
            },
            (Variant::Tiled, Precision::Bf16) => ConvPaths {
                forward: "implicit GEMM on BF16 tensor cores, bias + ReLU fused",
                backward_data: "implicit GEMM on BF16 tensor cores",
                backward_filter: "implicit GEMM on BF16 tensor cores, split-K",
            },
            (Variant::Naive, _) => ConvPaths {
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
        int("conv output pixels", m)?;
        let product = GemmArgs::product(
            x.device_ptr(),
            w.device_ptr(),
            y.device_ptr(),
            [m, s.out_c, s.patch_len()],
            [0, s.out_c, s.out_c],
        );
        let args = with_geometry(product.with_bias(b.device_ptr(), relu), s)?;
        let vector = vector_loads(&[s.in_c, s.out_c]);
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
        int("conv input pixels", m)?;
        let product = GemmArgs::product(
            dy.device_ptr(),
            w.device_ptr(),
            dx.device_ptr(),
            [m, s.in_c, s.kernel_h * s.kernel_w * s.out_c],
            [0, 0, s.in_c],
        );
        let args = with_geometry(product, s)?;
        let vector = vector_loads(&[s.out_c]);
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
        int("conv output pixels", pixels)?;
        let product = GemmArgs::product(
            x.device_ptr(),
            dy.device_ptr(),
            dw.device_ptr(),
            [s.patch_len() + 1, s.out_c, pixels],
            [0, s.out_c, s.out_c],
        );
        let args = with_geometry(product.with_bias_gradient_row(db.device_ptr()), s)?;
        let vector = vector_loads(&[s.in_c, s.out_c]);
        // SAFETY: the lengths were checked against the shape the arguments describe.
        unsafe { self.gemm(Op::ConvBackwardFilter, args, vector) }
    }
}
