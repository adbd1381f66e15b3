//! Helpers shared by the test crates: the end-to-end tests that run the `focalflow`
//! binary, and the GPU tests' skip rule.
// Each test crate uses a different subset of these.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const BIN: &str = env!("CARGO_BIN_EXE_focalflow");

/// A fresh, empty folder under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "focalflow-test-{label}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        assert!(!dir.exists(), "{} exists already", dir.display());
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    /// A path inside the folder (not created).
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command running the binary: the one cargo built, or `FOCALFLOW_BIN` (the bundled
/// binary on the GPU machine, scripts/gpu-check.sh, where the build-time path does not
/// exist).
pub fn command() -> Command {
    Command::new(std::env::var("FOCALFLOW_BIN").unwrap_or_else(|_| BIN.to_string()))
}

/// Runs the binary (see [`command`]) with `args`.
pub fn run(args: &[&str]) -> Output {
    command()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the focalflow binary: {e}"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Says that `what` was skipped and why, as a `SKIPPED {what}` line written straight to the
/// stderr handle, which the harness does not capture (it captures `println!` and
/// `eprintln!`): a skip is seen in every run, passing or not.
pub fn skipped(what: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {what}");
}

/// The GPU resource in `cell`, made once by `init`. Where `init` fails (no GPU, no driver)
/// the test is skipped visibly: `None` after a `SKIPPED (no GPU): {test}: {reason}` line
/// written straight to the stderr handle (the harness captures `eprintln!`); with
/// `FOCALFLOW_REQUIRE_GPU=1` (the GPU check script) it panics instead.
pub fn gpu_or_skip<T>(
    cell: &'static OnceLock<Result<T, String>>,
    init: impl FnOnce() -> Result<T, String>,
    test: &str,
) -> Option<&'static T> {
    match cell.get_or_init(init) {
        Ok(resource) => Some(resource),
        Err(reason) => {
            if std::env::var("FOCALFLOW_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("FOCALFLOW_REQUIRE_GPU=1 but the GPU is unavailable: {reason}");
            }
            skipped(&format!("(no GPU): {test}: {reason}"));
            None
        }
    }
}

/// The Python interpreter with TensorBoard, onnx and onnxruntime that `.ci/run` installs
/// (`FOCALFLOW_PYTHON`), or `None` after a visible `SKIPPED (no FOCALFLOW_PYTHON)` line:
/// these checks always run in CI.
pub fn python_or_skip(test: &str) -> Option<PathBuf> {
    match std::env::var_os("FOCALFLOW_PYTHON") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED (no FOCALFLOW_PYTHON; .ci/run sets it): {test}"
            );
            None
        }
    }
}
pub mod loss_configs;
pub mod loss_fixture;
pub mod targets;

/// Asserts `|got - want| <= rtol * max|want|` element by element (`want` is the reference).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rtol * scale,
            "{what}: element {i} is {g}, the reference says {w} (scale {scale})"
        );
    }
}

/// A class-per-folder set of `n` PNGs of the built-in stripes (another seed than the
/// training set's), with the built-in class names.
pub fn stripes_folder(dir: &std::path::Path, n: usize, seed: u64) {
    let set = focalflow::data::synthetic::generate(n, 32, seed);
    for i in 0..set.len() {
        let class = &set.class_names[set.labels[i] as usize];
        let folder = dir.join(class);
        std::fs::create_dir_all(&folder).unwrap();
        image::save_buffer(
            folder.join(format!("img{i:03}.png")),
            set.image(i),
            32,
            32,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    }
}

/// The lines of `metrics.jsonl` in `dir`, each parsed.
pub fn metrics(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let path = dir.join("metrics.jsonl");
    let body = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    body.lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("metrics.jsonl line {line:?} is not JSON: {e}"))
        })
        .collect()
}
