//! Bad input, as a new user gives it: one table of commands, each with the exit code, the
//! words its one-line error must contain, and the promise that it left no new file or
//! folder anywhere (the working folder, where default runs go; the cache; the data).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::TempDir;

/// Every file and folder under `root`, relative to it.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.insert(p.strip_prefix(root).unwrap().to_path_buf());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out
}

/// A sandbox: the command runs in `root/work` with its cache in `root/cache`, beside a
/// small class-per-folder set in `root/data` and, once made, a trained run in `root/run`.
struct Sandbox {
    root: TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let root = TempDir::new("bad-input");
        std::fs::create_dir_all(root.join("work")).unwrap();
        for (class, colour) in [("cat", [200u8, 40, 40]), ("dog", [40, 40, 200])] {
            let dir = root.join("data").join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..6u8 {
                let img = image::RgbImage::from_fn(12, 12, |x, y| {
                    image::Rgb([
                        colour[0].wrapping_add(i * 7),
                        colour[1] ^ (x as u8 * 9),
                        colour[2] ^ (y as u8 * 5),
                    ])
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
        Sandbox { root }
    }
    fn path(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }
    /// Runs `args` (`{data}`, `{run}`, `{root}` replaced) in the sandbox.
    fn run(&self, args: &[&str]) -> std::process::Output {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("{data}", &self.path("data"))
                    .replace("{run}", &self.path("run"))
                    .replace("{root}", &self.path(""))
            })
            .collect();
        common::command()
            .args(&args)
            .current_dir(self.root.join("work"))
            .env("XDG_CACHE_HOME", self.root.join("cache"))
            .env("HOME", self.root.join("home"))
            .output()
            .unwrap()
    }
}

/// A small, fast training command on the built-in set, to which a case adds its mistake.
const TINY: &[&str] = &[
    "train",
    "--quiet",
    "--synthetic-images",
    "8",
    "--image-size",
    "32",
];

struct Case {
    /// Arguments after TINY's (when `tiny`) or alone.
    args: &'static [&'static str],
    tiny: bool,
    /// Words the error line must contain.
    words: &'static [&'static str],
}

const fn tiny(args: &'static [&'static str], words: &'static [&'static str]) -> Case {
    Case {
        args,
        tiny: true,
        words,
    }
}
const fn bare(args: &'static [&'static str], words: &'static [&'static str]) -> Case {
    Case {
        args,
        tiny: false,
        words,
    }
}

/// Cases that need nothing but the sandbox.
const CASES: &[Case] = &[
    tiny(&["--lr", "nan"], &["--lr NaN", "positive"]),
    tiny(
        &["--device", "cpu", "--precision", "tf32"],
        &["--precision tf32 on cpu", "NVIDIA"],
    ),
    tiny(&["--lr", "-1"], &["--lr -1", "positive"]),
    tiny(&["--lr=-1"], &["--lr -1", "positive"]),
    tiny(&["--lr", "0"], &["--lr 0", "positive"]),
    tiny(&["--epochs", "0"], &["--epochs 0", "at least 1"]),
    tiny(&["--batch-size", "0"], &["--batch-size 0", "at least 1"]),
    tiny(&["--arch", ""], &["--arch", "empty"]),
    tiny(&["--arch", "c16,,p"], &["--arch", "empty layer"]),
    tiny(&["--arch", "x3"], &["--arch", "unknown layer `x3`"]),
    tiny(&["--arch", "c2,p,p,p,p,p"], &["--arch", "too small"]),
    tiny(&["--alpha", "0.2,0.3,0.5"], &["--alpha", "3"]),
    tiny(
        &["--loss", "dual-focal", "--gamma", "-1"],
        &["--gamma must be a finite number >= 0"],
    ),
    tiny(
        &["--loss", "dual-focal", "--alpha", "0.5"],
        &["--alpha applies only to", "dual-focal"],
    ),
    tiny(
        &["--loss", "flsd-53", "--gamma", "2"],
        &["--gamma applies only to", "flsd-53"],
    ),
    tiny(
        &["--loss", "flsd-53", "--alpha", "0.5"],
        &["--alpha applies only to", "flsd-53"],
    ),
    tiny(
        &["--loss", "adafocal", "--val-fraction", "0"],
        &["--loss adafocal", "--val-fraction above 0"],
    ),
    tiny(
        &["--loss", "adafocal", "--adafocal-gamma-min", "-50"],
        &["--adafocal-gamma-min -50", "[-20,"],
    ),
    tiny(
        &["--loss", "adafocal", "--adafocal-lambda", "inf"],
        &["--adafocal-lambda inf", "finite"],
    ),
    tiny(
        &["--loss", "adafocal", "--gamma", "2"],
        &["--gamma applies only to", "adafocal"],
    ),
    tiny(
        &["--loss", "focal", "--adafocal-lambda", "2"],
        &["--adafocal-lambda applies only to --loss adafocal"],
    ),
    tiny(
        &["--early-stop", "2", "--val-fraction", "0"],
        &["--early-stop", "--val-fraction"],
    ),
    tiny(
        &["--warmup-epochs", "50"],
        &["--warmup-epochs 50", "--epochs 10"],
    ),
    tiny(&["--warmup-epochs", "-1"], &["--warmup-epochs -1"]),
    tiny(
        &["--val-fraction", "0.01"],
        &["--val-fraction 0.01", "no validation image"],
    ),
    tiny(&["--val-fraction", "1.5"], &["--val-fraction 1.5"]),
    tiny(
        &[
            "--class-fraction",
            "vertical=0.5",
            "--class-fraction",
            "vertical=0.3",
        ],
        &["--class-fraction", "twice"],
    ),
    tiny(
        &["--resume", "{root}/no-such-run"],
        &["--resume", "no-such-run"],
    ),
    tiny(
        &["--batch-size", "100000000"],
        &["--batch-size 100000000", "memory"],
    ),
    tiny(&["--arch", "d100000000"], &["memory"]),
    tiny(&["--arch", "c100000000"], &["memory"]),
    bare(
        &["train", "--quiet", "--image-size", "0"],
        &["--image-size 0"],
    ),
    bare(
        &["train", "--quiet", "--image-size", "100000"],
        &["--image-size 100000", "4096"],
    ),
    bare(
        &["train", "--quiet", "--synthetic-images", "2"],
        &["--synthetic-images 2"],
    ),
    bare(
        &[
            "train",
            "--quiet",
            "--data",
            "{data}",
            "--image-size",
            "32",
            "--val-fraction",
            "0.01",
        ],
        &["no validation image"],
    ),
    bare(
        &[
            "train",
            "--quiet",
            "--data",
            "{data}",
            "--out",
            "{data}/run",
        ],
        &["--out", "inside", "--data"],
    ),
    bare(
        &[
            "train",
            "--quiet",
            "--data",
            "{data}",
            "--image-size",
            "8",
            "--arch",
            "c2,p,p,p,p",
        ],
        &["too small"],
    ),
    bare(
        &["train", "--quiet", "--data", "{data}", "--alpha", "1,2,3"],
        &["--alpha"],
    ),
    bare(
        &["train", "--quiet", "--data", "{root}/nowhere"],
        &["--data", "nowhere"],
    ),
    // --labels (multi-label data): a missing list, a list without --data, a softmax loss.
    bare(
        &[
            "train",
            "--quiet",
            "--data",
            "{data}",
            "--labels",
            "{root}/nowhere.csv",
            "--loss",
            "sigmoid-focal",
        ],
        &["nowhere.csv", "cannot read"],
    ),
    bare(
        &["train", "--quiet", "--labels", "{root}/nowhere.csv"],
        &["--labels needs --data"],
    ),
    bare(
        &[
            "train",
            "--quiet",
            "--data",
            "{data}",
            "--labels",
            "{root}/nowhere.csv",
        ],
        &["--loss focal", "sigmoid-focal"],
    ),
    // The largest values the flags take.
    bare(
        &[
            "train",
            "--quiet",
            "--synthetic-images",
            "18446744073709551615",
        ],
        &["--synthetic-images", "memory"],
    ),
    tiny(&["--batch-size", "18446744073709551615"], &["memory"]),
    bare(
        &[
            "train",
            "--quiet",
            "--data",
            "{data}",
            "--preprocess-threads",
            "100000000",
        ],
        &["--preprocess-threads 100000000", "1024"],
    ),
    bare(
        &[
            "train",
            "--quiet",
            "--data",
            "{data}",
            "--image-size",
            "4096",
        ],
        &["--image-size"],
    ),
    bare(
        &["train", "--quiet", "--data", "{data}", "--lr", "nan"],
        &["--lr NaN"],
    ),
    bare(
        &[
            "train",
            "--quiet",
            "--data",
            "{data}",
            "--warmup-epochs",
            "50",
        ],
        &["--warmup-epochs 50"],
    ),
    bare(
        &[
            "bench",
            "--device",
            "cpu",
            "--batch-size",
            "100000000",
            "--image-size",
            "32",
        ],
        &["--batch-size 100000000", "memory"],
    ),
    bare(
        &[
            "bench",
            "--device",
            "cuda-emu",
            "--batch-size",
            "100000000",
            "--image-size",
            "32",
        ],
        &["--batch-size 100000000", "memory"],
    ),
    bare(
        &["bench", "--device", "cpu", "--image-size", "100000"],
        &["--image-size 100000"],
    ),
    bare(
        &["bench", "--device", "cpu", "--precision", "tf32"],
        &["--precision tf32 on cpu", "NVIDIA"],
    ),
    bare(
        &[
            "eval",
            "--checkpoint",
            "{root}/nowhere.safetensors",
            "--data",
            "{data}",
        ],
        &["nowhere.safetensors"],
    ),
    bare(
        &[
            "predict",
            "--checkpoint",
            "{root}/nowhere.safetensors",
            "{data}",
        ],
        &["nowhere.safetensors"],
    ),
];

fn check(sandbox: &Sandbox, case_args: &[&str], words: &[&str]) {
    let before = tree(&sandbox.root.0);
    let out = sandbox.run(case_args);
    let stderr = common::text(&out.stderr);
    let what = format!("focalflow {}", case_args.join(" "));
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit code; stderr:\n{stderr}"
    );
    let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(
        last.starts_with("error: "),
        "{what}: the last line is the error: {stderr}"
    );
    for w in words {
        assert!(
            last.contains(w),
            "{what}: expected `{w}` in the error: {last}"
        );
    }
    assert!(
        out.stdout.is_empty(),
        "{what}: nothing on stdout: {}",
        common::text(&out.stdout)
    );
    let after = tree(&sandbox.root.0);
    let new: Vec<_> = after.difference(&before).collect();
    assert!(new.is_empty(), "{what}: left new files behind: {new:?}");
}

#[test]
fn every_bad_input_fails_with_one_line_and_leaves_nothing() {
    let sandbox = Sandbox::new();
    for case in CASES {
        let mut args: Vec<&str> = if case.tiny { TINY.to_vec() } else { Vec::new() };
        args.extend_from_slice(case.args);
        check(&sandbox, &args, case.words);
    }
}

/// A small run of the built-in set, finished.
const RUN: &[&str] = &[
    "train",
    "--quiet",
    "--synthetic-images",
    "8",
    "--image-size",
    "16",
    "--arch",
    "c2,p,d3",
    "--epochs",
    "1",
];

/// A finished run is never overwritten, and a checkpoint with one flipped bit is refused by
/// every command that reads it, naming the tensor, leaving nothing behind.
#[test]
fn a_run_is_kept_and_a_damaged_checkpoint_is_refused_everywhere() {
    let sandbox = Sandbox::new();
    let mut first: Vec<&str> = RUN.to_vec();
    first.extend(["--out", "{run}"]);
    let out = sandbox.run(&first);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let metrics = std::fs::read(sandbox.root.join("run/metrics.jsonl")).unwrap();
    // config.json says where the data came from, and the cache settings.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sandbox.root.join("run/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["data"]["built_in"]["images"], 8, "{config}");
    assert_eq!(config["data"]["image_size"], 16, "{config}");
    assert_eq!(config["device_cache"], "auto", "{config}");
    check(
        &sandbox,
        &first,
        &["--out", "holds a run already", "--resume"],
    );
    // No readable image: nothing on stdout (no table header), one error line.
    std::fs::write(sandbox.root.join("not-an-image.png"), b"text").unwrap();
    for format in [&[][..], &["--json"], &["--csv"]] {
        let mut args = vec![
            "predict",
            "--checkpoint",
            "{run}",
            "{root}/not-an-image.png",
        ];
        args.extend_from_slice(format);
        check(
            &sandbox,
            &args,
            &["no image could be read among the 1 files given"],
        );
    }
    assert_eq!(
        std::fs::read(sandbox.root.join("run/metrics.jsonl")).unwrap(),
        metrics,
        "the run is kept"
    );

    // A resume that could not go on is refused before any image is read.
    let mut resume: Vec<&str> = RUN.to_vec();
    resume.extend(["--resume", "{run}"]);
    check(
        &sandbox,
        &resume,
        &["--resume", "completed 1 of --epochs 1"],
    );
    let mut other_lr: Vec<&str> = RUN
        .iter()
        .map(|a| if *a == "1" { "3" } else { a })
        .collect();
    other_lr.extend(["--lr", "0.5", "--resume", "{run}"]);
    check(
        &sandbox,
        &other_lr,
        &["--resume", "--lr is 0.001 in the run but 0.5 now"],
    );
    // eval and calibrate check before reading images (no cache entry is made).
    let mut early: Vec<(Vec<&str>, &[&str])> = Vec::new();
    for command in ["eval", "calibrate"] {
        early.push((
            vec![
                command,
                "--quiet",
                "--checkpoint",
                "{run}",
                "--data",
                "{data}",
                "--batch-size",
                "0",
            ],
            &["--batch-size"],
        ));
        early.push((
            vec![
                command,
                "--quiet",
                "--checkpoint",
                "{run}",
                "--data",
                "{data}",
                "--out",
                "{data}/cat/out",
            ],
            &["--out is inside --data"],
        ));
    }
    for (command, words) in early {
        check(&sandbox, &command, words);
    }
    // One bit of the first convolution's kernel.
    let last = sandbox.root.join("run/checkpoints/last.safetensors");
    let mut bytes = std::fs::read(&last).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let start = header["conv2d/kernel"]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[8 + header_len + start + 5] ^= 0x04;
    std::fs::write(&last, &bytes).unwrap();
    std::fs::copy(&last, sandbox.root.join("run/checkpoints/best.safetensors")).unwrap();
    let ck = "{run}/checkpoints/last.safetensors";
    let mut resume: Vec<&str> = RUN.to_vec();
    resume.extend(["--resume", "{run}"]);
    let commands: Vec<Vec<&str>> = vec![
        resume,
        vec!["eval", "--quiet", "--checkpoint", ck, "--data", "{data}"],
        vec!["predict", "--checkpoint", ck, "{data}"],
        vec![
            "calibrate",
            "--quiet",
            "--checkpoint",
            ck,
            "--data",
            "{data}",
        ],
        vec!["export", "--checkpoint", ck, "--onnx", "{root}/model.onnx"],
    ];
    for command in commands {
        check(
            &sandbox,
            &command,
            &[
                "tensor `conv2d/kernel` fails its checksum",
                "last.safetensors",
            ],
        );
    }
}

/// A default run folder (runs/ under the working folder) inside the data is refused too.
#[test]
fn the_default_run_folder_may_not_be_inside_the_data() {
    let sandbox = Sandbox::new();
    let before = tree(&sandbox.root.0);
    let out = common::command()
        .args(["train", "--quiet", "--data", "."])
        .current_dir(sandbox.root.join("data"))
        .env("XDG_CACHE_HOME", sandbox.root.join("cache"))
        .output()
        .unwrap();
    let stderr = common::text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--out is inside --data") || stderr.contains("runs"),
        "{stderr}"
    );
    assert_eq!(tree(&sandbox.root.0), before);
}

/// Two runs started in the same second with the default folder each get their own.
#[test]
fn runs_started_together_get_folders_of_their_own() {
    let sandbox = Sandbox::new();
    let start = || {
        common::command()
            .args(RUN)
            .current_dir(sandbox.root.join("work"))
            .env("XDG_CACHE_HOME", sandbox.root.join("cache"))
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(), start());
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", common::text(&out.stderr));
    }
    let runs: Vec<PathBuf> = std::fs::read_dir(sandbox.root.join("work/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for run in &runs {
        let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        assert_eq!(
            lines.lines().count(),
            1,
            "{}: one epoch, its own",
            run.display()
        );
    }
}

/// Under an address-space limit (`ulimit -v`, 4 GiB here) the memory checks count the limit:
/// a model that fits the machine but not the limit is refused in one line, never an abort.
#[test]
fn memory_checks_respect_an_address_space_limit() {
    let sandbox = Sandbox::new();
    let bin = std::env::var("FOCALFLOW_BIN").unwrap_or_else(|_| common::BIN.to_string());
    // 15x15x2 features into a million units: 450 million parameters, 7.2 GB with Adam's state.
    for extra in [
        &["--arch", "c2,p,d1000000"][..],
        &["--batch-size", "100000000"],
        &["--arch", "c100000000"],
    ] {
        let mut args: Vec<&str> = TINY.to_vec();
        args.extend_from_slice(extra);
        let before = tree(&sandbox.root.0);
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(r#"ulimit -v 4194304 && exec "$0" "$@""#)
            .arg(&bin)
            .args(&args)
            .current_dir(sandbox.root.join("work"))
            .output()
            .unwrap();
        let stderr = common::text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        assert!(
            last.starts_with("error: ") && last.contains("memory"),
            "{extra:?}: {stderr}"
        );
        assert_eq!(
            tree(&sandbox.root.0),
            before,
            "{extra:?}: nothing left behind"
        );
    }
}

/// The emulator's settings come from the environment: a bad value is one line naming the
/// variable and what it takes, and nothing is left behind.
#[test]
fn bad_emulator_settings_are_named() {
    let sandbox = Sandbox::new();
    for (var, value, words) in [
        (
            "FOCALFLOW_EMU_STRICT",
            "2",
            "expected 1 (strict checks) or 0",
        ),
        (
            "FOCALFLOW_EMU_DEVICE",
            "later",
            "expected sync, async or lazy",
        ),
        (
            "FOCALFLOW_EMU_MEMCHECK",
            "yes",
            "expected 1 (check every access, the default) or 0",
        ),
        (
            "FOCALFLOW_EMU_SCHEDULE",
            "sideways",
            "expected forward, reverse, random",
        ),
    ] {
        let before = tree(&sandbox.root.0);
        let mut args: Vec<&str> = TINY.to_vec();
        args.extend(["--device", "cuda-emu"]);
        let out = common::command()
            .args(&args)
            .env(var, value)
            .current_dir(sandbox.root.join("work"))
            .output()
            .unwrap();
        let stderr = common::text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        assert!(
            last.contains(&format!("{var}={value}")) && last.contains(words),
            "{var}={value}: {stderr}"
        );
        // Checked before the set is generated: no line about the data precedes the error.
        assert!(
            !stderr.contains("built-in set"),
            "{var}={value}: checked after work: {stderr}"
        );
        assert_eq!(
            tree(&sandbox.root.0),
            before,
            "{var}={value}: nothing left behind"
        );
    }
}
