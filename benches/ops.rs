//! Per-op timing of the CPU backend at the reference CNN's shapes (224x224, batch 32):
//! `cargo bench --bench ops`. Prints ms per call and GFLOP/s where the op is a GEMM, so a
//! slow op shows up next to its neighbours (compare ratios in one run, not across runs).

use std::time::Instant;

use focalflow::ops::prelude::*;
use focalflow::ops::{ConvShape, CpuBackend, DenseShape, Padding, PoolShape};

fn time(name: &str, flops: f64, reps: usize, mut f: impl FnMut()) {
    f(); // warm-up
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    let s = start.elapsed().as_secs_f64() / reps as f64;
    if flops > 0.0 {
        println!(
            "{name:<34} {:>8.2} ms  {:>6.1} GFLOP/s",
            s * 1e3,
            flops / s / 1e9
        );
    } else {
        println!("{name:<34} {:>8.2} ms", s * 1e3);
    }
}

fn main() {
    let b = CpuBackend::<f32>::new();
    let batch = 32;
    let reps = 3;
    let convs = [(224, 3, 16), (111, 16, 32), (54, 32, 64)];
    for (i, &(size, in_c, out_c)) in convs.iter().enumerate() {
        let s = ConvShape {
            batch,
            in_h: size,
            in_w: size,
            in_c,
            out_c,
            kernel_h: 3,
            kernel_w: 3,
            padding: Padding::Valid,
        };
        let x: Vec<f32> = (0..s.input_len()).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..s.kernel_len()).map(|i| (i % 5) as f32 * 0.01).collect();
        let bias = vec![0.1f32; out_c];
        let mut y = vec![0f32; s.output_len()];
        let mut dx = vec![0f32; s.input_len()];
        let (mut dw, mut db) = (vec![0f32; s.kernel_len()], vec![0f32; out_c]);
        let f = s.forward_flops();
        time(&format!("conv{} forward", i + 1), f, reps, || {
            b.conv2d_forward(&s, &x, &w, &bias, &mut y, true).unwrap()
        });
        time(&format!("conv{} backward filter", i + 1), f, reps, || {
            b.conv2d_backward_filter(&s, &x, &y, &mut dw, &mut db)
                .unwrap()
        });
        if i > 0 {
            time(&format!("conv{} backward data", i + 1), f, reps, || {
                b.conv2d_backward_data(&s, &y, &w, &mut dx).unwrap()
            });
        }
        let mut dy = y.clone();
        time(&format!("conv{} relu backward", i + 1), 0.0, reps, || {
            b.relu_backward(s.output_len(), &y, &mut dy).unwrap()
        });
        let p = PoolShape {
            batch,
            in_h: s.out_h(),
            in_w: s.out_w(),
            channels: out_c,
            size: 2,
        };
        let mut py = vec![0f32; p.output_len()];
        let mut pdx = vec![0f32; p.input_len()];
        time(&format!("pool{} forward", i + 1), 0.0, reps, || {
            b.maxpool2d_forward(&p, &y, &mut py).unwrap()
        });
        time(&format!("pool{} backward", i + 1), 0.0, reps, || {
            b.maxpool2d_backward(&p, &y, &py, &mut pdx).unwrap()
        });
        // What training runs: the pool's backward with the conv's ReLU mask in one pass
        // (in place of "pool backward" + "relu backward" above).
        time(
            &format!("pool{} + conv{} relu backward", i + 1, i + 1),
            0.0,
            reps,
            || b.maxpool2d_relu_backward(&p, &y, &py, &mut pdx).unwrap(),
        );
    }
    let d = DenseShape {
        batch,
        inputs: 43264,
        outputs: 256,
    };
    let x: Vec<f32> = (0..batch * d.inputs)
        .map(|i| (i % 7) as f32 * 0.1)
        .collect();
    let w: Vec<f32> = (0..d.inputs * d.outputs)
        .map(|i| (i % 5) as f32 * 0.01)
        .collect();
    let bias = vec![0f32; d.outputs];
    let mut y = vec![0f32; batch * d.outputs];
    let (mut dx, mut dw, mut db) = (
        vec![0f32; x.len()],
        vec![0f32; w.len()],
        vec![0f32; d.outputs],
    );
    time("dense forward", d.forward_flops(), reps, || {
        b.dense_forward(&d, &x, &w, &bias, &mut y, true).unwrap()
    });
    time(
        "dense backward (dw, db, dx)",
        2.0 * d.forward_flops(),
        reps,
        || {
            b.dense_backward(&d, &x, &w, &y, Some(&mut dx), &mut dw, &mut db)
                .unwrap()
        },
    );
    let (mut m, mut v, mut p) = (vec![0f32; w.len()], vec![0f32; w.len()], w.clone());
    let mut adam = focalflow::optim::Adam::default();
    time("adam (11.1M parameters)", 0.0, reps, || {
        let step = adam.next_step::<f32>();
        b.adam_update(w.len(), &step, &mut p, &dw, &mut m, &mut v)
            .unwrap()
    });
}
