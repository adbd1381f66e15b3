//! The streaming dense passes at the reference CNN's dense1 (batch 32, 43264 -> 256, 44 MB of
//! weights), each alone, with the caches flushed before every call (as in training, where the
//! rest of the step has evicted the weights) and warm (the same call repeated):
//! `cargo bench --bench dense_streaming [-- --rounds N]`. Prints the best of N rounds per
//! pass and a hash of each result's bits, so two builds can be compared for both speed
//! (alternating runs) and sameness.

use std::time::Instant;

use focalflow::ops::dense::DenseShape;
use focalflow::ops::dense::streaming;

fn main() {
    let mut rounds = 7;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rounds N")
            }
            "--bench" => {} // passed by cargo bench
            other => panic!("unknown flag {other} (--rounds N)"),
        }
    }
    if !streaming::supported(&DenseShape {
        batch: 1,
        inputs: 1,
        outputs: 64,
    }) {
        println!("SKIPPED: the streaming dense passes need AVX-512F");
        return;
    }
    let s = DenseShape {
        batch: 32,
        inputs: 43264,
        outputs: 256,
    };
    let mut rng = focalflow::rng::Rng::new(12345);
    let mut next = || rng.range(-0.5, 0.5) as f32;
    let x: Vec<f32> = (0..s.batch * s.inputs).map(|_| next()).collect();
    let w: Vec<f32> = (0..s.inputs * s.outputs).map(|_| next() * 0.01).collect();
    let dy: Vec<f32> = (0..s.batch * s.outputs).map(|_| next()).collect();
    let mut y = vec![0f32; s.batch * s.outputs];
    let mut dx = vec![0f32; s.batch * s.inputs];
    let mut dw = vec![0f32; s.inputs * s.outputs];
    // Larger than any cache here: reading it evicts the weights (reading only: dirty lines
    // would be written back during the timed call).
    let flush = vec![1u8; 256 << 20];
    let mut sink = 0u64;
    println!("dense1 shape (batch 32, 43264 -> 256), best of {rounds} rounds, ms:");
    println!("  pass              cold     warm   result bits");
    for pass in ["forward", "input gradient", "weight gradient"] {
        let mut run = || match pass {
            "forward" => streaming::forward(&s, &x, &w, &mut y),
            "input gradient" => streaming::input_gradient(&s, &dy, &w, &mut dx),
            _ => streaming::weight_gradient(&s, &x, &dy, &mut dw),
        };
        let (mut cold, mut warm) = (f64::MAX, f64::MAX);
        for _ in 0..rounds {
            sink += flush.iter().step_by(64).map(|&b| u64::from(b)).sum::<u64>();
            let start = Instant::now();
            run();
            cold = cold.min(start.elapsed().as_secs_f64() * 1e3);
            let start = Instant::now();
            run();
            warm = warm.min(start.elapsed().as_secs_f64() * 1e3);
        }
        let out = match pass {
            "forward" => &y,
            "input gradient" => &dx,
            _ => &dw,
        };
        let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
        let hash = focalflow::data::cache::fnv1a(&bytes);
        println!("  {pass:16} {cold:7.2}  {warm:7.2}   {hash:016x}");
    }
    std::hint::black_box(sink);
}
