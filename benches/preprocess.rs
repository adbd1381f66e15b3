//! Decode + resize speed of the preprocessor on photo-sized JPEGs:
//! `cargo bench --bench preprocess [-- --images N --size S --dir DIR --rounds R --json]`.
//!
//! Writes N generated 500x375 JPEGs (quality 90, 4:2:0, photo-like: smooth shading, shapes,
//! texture and sensor-like noise) into DIR once (default `target/preprocess-bench`), then
//! times reading + decoding + resizing all of them to SxS (224) with 1 thread and with all
//! threads, best of R rounds. `scripts/preprocess_anchor.sh` runs PIL and tf.image on the
//! same files in the same run for the ratio.

use std::path::{Path, PathBuf};
use std::time::Instant;

use focalflow::data::decode::decode_rgb8;
use focalflow::data::load::decode_resized;
use focalflow::data::resize::resize_bilinear;
use focalflow::model::ImageShape;
use rayon::prelude::*;

struct Args {
    images: usize,
    size: usize,
    dir: PathBuf,
    rounds: usize,
    json: bool,
    /// `resize` or `decode`: time only that part, 1 thread (for `perf stat`).
    only: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        images: 300,
        size: 224,
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/preprocess-bench"),
        rounds: 3,
        json: false,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("a value after the flag");
        match flag.as_str() {
            "--images" => a.images = value().parse().expect("--images N"),
            "--size" => a.size = value().parse().expect("--size S"),
            "--dir" => a.dir = PathBuf::from(value()),
            "--rounds" => a.rounds = value().parse().expect("--rounds R"),
            "--json" => a.json = true,
            "--only" => a.only = Some(value()),
            "--bench" => {} // passed by cargo bench
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// A cheap deterministic generator (xorshift).
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A photo-like 500x375 picture: a shaded background, a few soft-edged ellipses in other
/// colours, a fine texture, and per-pixel noise (what makes real JPEGs 30-80 KB).
fn photo(seed: u64, w: usize, h: usize) -> Vec<u8> {
    let mut g = Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let base: [f32; 3] = [g.unit() * 200.0, g.unit() * 200.0, g.unit() * 200.0];
    let grad: [f32; 3] = [g.unit() * 80.0, g.unit() * 80.0, g.unit() * 80.0];
    let blobs: Vec<[f32; 7]> = (0..6)
        .map(|_| {
            [
                g.unit() * w as f32,
                g.unit() * h as f32,
                20.0 + g.unit() * 120.0,
                20.0 + g.unit() * 90.0,
                g.unit() * 255.0,
                g.unit() * 255.0,
                g.unit() * 255.0,
            ]
        })
        .collect();
    let (fx, fy) = (0.05 + g.unit() * 0.2, 0.05 + g.unit() * 0.2);
    let mut px = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let t = (x + y) as f32 / (w + h) as f32;
            let mut c = [0f32; 3];
            for k in 0..3 {
                c[k] = base[k] + grad[k] * t;
            }
            for b in &blobs {
                let dx = (x as f32 - b[0]) / b[2];
                let dy = (y as f32 - b[1]) / b[3];
                let d = dx * dx + dy * dy;
                if d < 1.2 {
                    let a = ((1.2 - d) * 5.0).min(1.0);
                    for k in 0..3 {
                        c[k] = c[k] * (1.0 - a) + b[4 + k] * a;
                    }
                }
            }
            let texture = 12.0 * ((x as f32 * fx).sin() * (y as f32 * fy).cos());
            for k in 0..3 {
                let noise = (g.unit() - 0.5) * 16.0;
                px[(y * w + x) * 3 + k] = (c[k] + texture + noise).clamp(0.0, 255.0) as u8;
            }
        }
    }
    px
}

fn ensure_files(dir: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("bench folder");
    let paths: Vec<PathBuf> = (0..n)
        .map(|i| dir.join(format!("photo_{i:04}.jpg")))
        .collect();
    paths.par_iter().enumerate().for_each(|(i, p)| {
        if p.exists() {
            return;
        }
        let (w, h) = (500u16, 375u16);
        let px = photo(i as u64 + 1, w as usize, h as usize);
        let mut out = Vec::new();
        let mut enc = jpeg_encoder::Encoder::new(&mut out, 90);
        enc.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
        enc.encode(&px, w, h, jpeg_encoder::ColorType::Rgb)
            .expect("encode");
        std::fs::write(p, out).expect("write");
    });
    paths
}

/// CPU time used so far by this process (all threads, finished ones included), in
/// nanoseconds, from Linux's `/proc/self/stat` (10 ms ticks; 0 elsewhere). Unlike wall time
/// it hardly depends on what else runs on the machine.
fn cpu_ns() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    (fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0)) * 10_000_000
}

/// (images per second, CPU milliseconds per image) over all `paths`, best of `rounds`.
fn measure(paths: &[PathBuf], shape: ImageShape, threads: usize, rounds: usize) -> (f64, f64) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let mut best = (0f64, 0f64);
    for _ in 0..rounds {
        let (start, cpu) = (Instant::now(), cpu_ns());
        pool.install(|| {
            paths.par_iter().for_each_init(
                || vec![0u8; shape.len()],
                |slot, p| {
                    let bytes = std::fs::read(p).expect("read");
                    decode_resized(&bytes, shape, slot).expect("decodes");
                },
            )
        });
        let rate = paths.len() as f64 / start.elapsed().as_secs_f64();
        let cpu_ms = cpu_ns().saturating_sub(cpu) as f64 / 1e6 / paths.len() as f64;
        if rate > best.0 {
            best = (rate, cpu_ms);
        }
    }
    best
}

fn main() {
    let a = args();
    let paths = ensure_files(&a.dir, a.images);
    let bytes: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    let shape = ImageShape {
        height: a.size,
        width: a.size,
        channels: 3,
    };
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (one, many) = if a.only.is_some() {
        ((0.0, 0.0), (0.0, 0.0))
    } else {
        measure(&paths[..paths.len().min(20)], shape, 1, 1); // warm the page cache and code
        (
            measure(&paths, shape, 1, a.rounds),
            measure(&paths, shape, all, a.rounds),
        )
    };
    // Where the time goes (1 thread): decoding alone, resizing alone.
    let first = decode_rgb8(&std::fs::read(&paths[0]).expect("read")).expect("decodes");
    let encoded: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let mut best_decode = f64::MAX;
    let mut best_resize = f64::MAX;
    let mut out = vec![0u8; shape.len()];
    for _ in 0..a.rounds {
        let start = cpu_ns();
        if a.only.as_deref() != Some("resize") {
            for e in &encoded {
                std::hint::black_box(decode_rgb8(e).expect("decodes"));
            }
        }
        best_decode =
            best_decode.min(cpu_ns().saturating_sub(start) as f64 / 1e9 / encoded.len() as f64);
        let start = cpu_ns();
        let n = if a.only.as_deref() == Some("decode") {
            0
        } else {
            encoded.len()
        };
        for _ in 0..n {
            resize_bilinear(
                &first.data,
                first.width,
                first.height,
                &mut out,
                shape.width,
                shape.height,
                3,
            );
            std::hint::black_box(&out);
        }
        best_resize = best_resize
            .min(cpu_ns().saturating_sub(start) as f64 / 1e9 / encoded.len().max(1) as f64);
    }
    if a.json {
        println!(
            "{{\"tool\": \"focalflow\", \"images\": {}, \"size\": {}, \"threads_1\": {:.1}, \"cpu_ms_1\": {:.3}, \"threads_all\": {:.1}, \"cpu_ms_all\": {:.3}, \"threads\": {all}, \"decode_ms\": {:.3}, \"resize_ms\": {:.3}, \"jpeg_decoder\": \"{}\"}}",
            paths.len(),
            a.size,
            one.0,
            one.1,
            many.0,
            many.1,
            best_decode * 1e3,
            best_resize * 1e3,
            focalflow::data::libjpeg::jpeg_decoder()
        );
    } else {
        println!(
            "{} JPEGs 500x375 q90 (mean {:.1} KB) in {} -> {}x{}:",
            paths.len(),
            bytes as f64 / paths.len() as f64 / 1024.0,
            a.dir.display(),
            a.size,
            a.size
        );
        println!(
            "focalflow decode+resize, 1 thread:  {:8.1} images/s, {:.3} CPU ms/image",
            one.0, one.1
        );
        println!(
            "focalflow decode+resize, {all} threads: {:8.1} images/s, {:.3} CPU ms/image",
            many.0, many.1
        );
        println!(
            "CPU time per image, 1 thread: decode {:.3} ms, resize {:.3} ms (JPEG decoder: {})",
            best_decode * 1e3,
            best_resize * 1e3,
            focalflow::data::libjpeg::jpeg_decoder()
        );
    }
}
