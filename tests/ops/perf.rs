//! The op matrix's perf mode: every op of the reference CNN (224x224x3, batch 32) timed on
//! a target, by the target's own clock (CUDA events on a GPU, wall time on the CPU). Shared
//! by `cargo bench --bench ops` (every target present) and the GPU check's
//! `ops perf --ignored` (scripts/gpu-check.sh). Compare ratios within one run: machines are
//! shared and noisy.

use focalflow::ops::loss::uncounted;
use focalflow::ops::prelude::*;
use focalflow::ops::{ConvShape, DenseShape, Padding, PoolShape};
use focalflow::profile::Timeline;

/// One op's time on a target.
pub struct OpTime {
    pub op: String,
    pub ms: f64,
    /// FLOPs of one call (0 for memory-bound ops).
    pub flops: f64,
}

impl OpTime {
    /// `conv1 forward   12.34 ms   123.4 GFLOP/s`.
    pub fn line(&self) -> String {
        let rate = if self.flops > 0.0 {
            format!(" {:8.1} GFLOP/s", self.flops / self.ms / 1e6)
        } else {
            String::new()
        };
        format!("{:<34} {:>10.3} ms{rate}", self.op, self.ms)
    }
}

/// The reference CNN's shapes at `batch`: the three 3x3 valid convolutions.
pub fn conv_shapes(batch: usize) -> [ConvShape; 3] {
    [(224, 3, 16), (111, 16, 32), (54, 32, 64)].map(|(size, in_c, out_c)| ConvShape {
        batch,
        in_h: size,
        in_w: size,
        in_c,
        out_c,
        kernel_h: 3,
        kernel_w: 3,
        padding: Padding::Valid,
    })
}

/// Every op of a training step of the reference CNN at `batch` on `b`, `reps` calls each
/// after one warm-up call; `keep` says which ops to time (by name), so a caller can time one
/// family (e.g. the GEMM-shaped ops under each forced tile shape).
pub fn time_ops<B: Backend<E = f32> + Timeline>(
    b: &B,
    batch: usize,
    reps: usize,
    keep: &dyn Fn(&str) -> bool,
) -> Vec<OpTime> {
    let mut out = Vec::new();
    let mut time = |op: String, flops: f64, f: &mut dyn FnMut()| {
        if !keep(&op) {
            return;
        }
        f();
        let start = b.mark().unwrap();
        for _ in 0..reps {
            f();
        }
        let end = b.mark().unwrap();
        let ms = start.ms_until(&end).unwrap() / reps as f64;
        out.push(OpTime { op, ms, flops });
    };
    // Deterministic, non-trivial inputs (the values do not change the work).
    let buf = |n: usize, scale: f32| {
        let v: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * scale - scale).collect();
        b.upload(&v).unwrap()
    };
    for (i, s) in conv_shapes(batch).iter().enumerate() {
        let n = i + 1;
        let (x, w, bias) = (
            buf(s.input_len(), 0.1),
            buf(s.kernel_len(), 0.01),
            buf(s.out_c, 0.1),
        );
        let (mut y, mut dx) = (buf(s.output_len(), 0.0), buf(s.input_len(), 0.0));
        let (mut dw, mut db) = (buf(s.kernel_len(), 0.0), buf(s.out_c, 0.0));
        let f = s.forward_flops();
        time(format!("conv{n} forward"), f, &mut || {
            b.conv2d_forward(s, &x, &w, &bias, &mut y, true).unwrap()
        });
        time(format!("conv{n} backward filter"), f, &mut || {
            b.conv2d_backward_filter(s, &x, &y, &mut dw, &mut db)
                .unwrap()
        });
        if i > 0 {
            // The first layer's input needs no gradient: training never runs this one.
            time(format!("conv{n} backward data"), f, &mut || {
                b.conv2d_backward_data(s, &y, &w, &mut dx).unwrap()
            });
        }
        let mut dy = buf(s.output_len(), 0.1);
        time(format!("conv{n} relu backward"), 0.0, &mut || {
            b.relu_backward(s.output_len(), &y, &mut dy).unwrap()
        });
        let p = PoolShape {
            batch,
            in_h: s.out_h(),
            in_w: s.out_w(),
            channels: s.out_c,
            size: 2,
        };
        let (mut py, mut pdx) = (buf(p.output_len(), 0.0), buf(p.input_len(), 0.0));
        time(format!("pool{n} forward"), 0.0, &mut || {
            b.maxpool2d_forward(&p, &y, &mut py).unwrap()
        });
        time(format!("pool{n} backward"), 0.0, &mut || {
            b.maxpool2d_backward(&p, &y, &py, &mut pdx).unwrap()
        });
        // What training runs: the pool's backward with the conv's ReLU mask in one pass.
        time(format!("pool{n} + conv{n} relu backward"), 0.0, &mut || {
            b.maxpool2d_relu_backward(&p, &y, &py, &mut pdx).unwrap()
        });
        // Where the backend fuses the block (the CPU's direct first layer and its Winograd
        // layers): what training runs instead of the five ops above.
        if b.fuses_conv_relu_pool(s, &p) {
            let mut codes = buf(p.output_len(), 0.0);
            time(
                format!("conv{n} + relu + pool{n} forward, fused"),
                f,
                &mut || {
                    b.conv2d_relu_pool_forward(s, &p, &x, &w, &bias, &mut py, &mut codes)
                        .unwrap()
                },
            );
            time(
                format!("conv{n} + relu + pool{n} backward filter, fused"),
                f,
                &mut || {
                    b.conv2d_relu_pool_backward_filter(s, &p, &x, &codes, &py, &mut dw, &mut db)
                        .unwrap()
                },
            );
            if i > 0 {
                time(
                    format!("conv{n} + relu + pool{n} backward data, fused"),
                    f,
                    &mut || {
                        b.conv2d_relu_pool_backward_data(s, &p, &codes, &py, &w, &mut dx)
                            .unwrap()
                    },
                );
            }
        }
    }
    for (name, inputs, outputs) in [("dense1", 43264, 256), ("dense2", 256, 2)] {
        let d = DenseShape {
            batch,
            inputs,
            outputs,
        };
        let (x, w, bias) = (
            buf(batch * inputs, 0.1),
            buf(inputs * outputs, 0.01),
            buf(outputs, 0.0),
        );
        let mut y = buf(batch * outputs, 0.0);
        let (mut dx, mut dw, mut db) = (
            buf(batch * inputs, 0.0),
            buf(inputs * outputs, 0.0),
            buf(outputs, 0.0),
        );
        time(format!("{name} forward"), d.forward_flops(), &mut || {
            b.dense_forward(&d, &x, &w, &bias, &mut y, true).unwrap()
        });
        time(
            format!("{name} backward (dw, db, dx)"),
            2.0 * d.forward_flops(),
            &mut || {
                b.dense_backward(&d, &x, &w, &y, Some(&mut dx), &mut dw, &mut db)
                    .unwrap()
            },
        );
    }
    // The head's softmax and loss at the reference CNN's 2 classes, and at the shapes of a
    // larger classifier (1000 classes, batch 32 and 4096).
    for (rows, classes) in [(batch, 2), (32, 1000), (4096, 1000)] {
        let logits = buf(rows * classes, 0.5);
        let one_hot: Vec<f32> = (0..rows * classes)
            .map(|i| f32::from(i % classes == (i / classes) % classes))
            .collect();
        let y = b.upload(&one_hot).unwrap();
        let (mut probs, mut grad) = (buf(rows * classes, 0.0), buf(rows * classes, 0.0));
        time(
            format!("softmax forward [{rows}x{classes}]"),
            0.0,
            &mut || {
                b.softmax_forward(rows, classes, &logits, &mut probs)
                    .unwrap()
            },
        );
        for cfg in [
            focalflow::loss::LossConfig::Focal {
                alpha: focalflow::loss::Alpha::Scalar(0.25),
                gamma: 2.0,
                l1: 1e-3,
                l2: 1e-3,
                from_logits: true,
            },
            focalflow::loss::LossConfig::KerasFocal {
                alpha: focalflow::loss::Alpha::Scalar(0.25),
                gamma: 2.0,
                label_smoothing: 0.1,
                from_logits: true,
            },
        ] {
            // With the gradient, and the value read back (what `loss` returns).
            time(
                format!("loss {} [{rows}x{classes}]", cfg.describe()),
                0.0,
                &mut || {
                    b.loss(&cfg, rows, classes, &y, &logits, Some(&mut grad), None)
                        .map(uncounted)
                        .unwrap();
                },
            );
        }
    }
    let params = 43264 * 256;
    let (mut p, g, mut m, mut v) = (
        buf(params, 0.01),
        buf(params, 0.01),
        buf(params, 0.0),
        buf(params, 0.0),
    );
    let mut adam = focalflow::optim::Adam::default();
    time("adam (11.1M parameters)".into(), 0.0, &mut || {
        let step = adam.next_step::<f32>();
        b.adam_update(params, &step, &mut p, &g, &mut m, &mut v, None)
            .unwrap()
    });
    out
}
