//! The run folder: where a training run's files live and how they are written.
//!
//! ```text
//! RUN/config.json                 every option, the classes and their counts (train)
//! RUN/metrics.jsonl               one EpochMetrics line per epoch (a "partial" one after Ctrl-C)
//! RUN/checkpoints/last.safetensors, best.safetensors   (crate::checkpoint)
//! RUN/events.out.tfevents.*       TensorBoard (crate::tensorboard)
//! RUN/*.svg, *.png                plots (crate::plots)
//! RUN/skipped.tsv, decode_warnings.tsv   files of --data left out / kept despite warnings
//! RUN/eval-<data>/                `focalflow eval`'s metrics.json and plots (default)
//! ```
//!
//! Every file is written through [`write_atomically`] (temporary file, fsync, rename, fsync
//! of the folder), except metrics.jsonl, which is appended to line by line and rewritten
//! atomically when a run resumes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::data::cache::Skipped;
use crate::loss::LossConfig;
use crate::{Error, Result};

/// `RUN/config.json`.
pub fn config_path(run: &Path) -> PathBuf {
    run.join("config.json")
}

/// Creates the run folder `run` if need be and writes its `config.json` (atomically).
pub fn write_config(run: &Path, config: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(run)
        .map_err(|e| Error::file(run, format!("cannot create the run folder: {e}")))?;
    write_atomically(
        &config_path(run),
        serde_json::to_string_pretty(config)
            .expect("JSON")
            .as_bytes(),
    )
}

/// `RUN/metrics.jsonl`.
pub fn metrics_path(run: &Path) -> PathBuf {
    run.join("metrics.jsonl")
}

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub images_per_second: f64,
    pub seconds: f64,
    /// `--precision` of the products this epoch ran (lines of runs before the flag: fp32).
    #[serde(default)]
    pub precision: crate::precision::Precision,
    /// Validation metrics beyond loss and accuracy (`val_balanced_accuracy`, `val_ece`, ...;
    /// absent without a validation split).
    #[serde(flatten, default)]
    pub validation: Option<crate::metrics::EpochValidation>,
    /// A multi-label run's validation metrics instead (`val_subset_accuracy`, `val_map`,
    /// ...; `val_accuracy` is the top-1 accuracy).
    #[serde(flatten, default)]
    pub multilabel: Option<crate::metrics::multilabel::EpochMultiLabel>,
    /// The learning rate of each step of the epoch.
    #[serde(default)]
    pub learning_rates: Vec<f64>,
    /// `adafocal`: the bins of the validation split after this epoch (edges, `C_b`, `A_b`)
    /// and the gammas before and after the update they made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adafocal: Option<crate::adafocal::AdaFocalUpdate>,
    /// The epoch was interrupted (Ctrl-C): the line covers its steps so far, without
    /// validation; `--resume` replaces it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// Test-only fail point: when set to N, [`write_atomically`] aborts the process after
/// writing N bytes of the temporary file (a "killed write").
pub const ABORT_AFTER_BYTES_ENV: &str = "FOCALFLOW_TEST_ABORT_CHECKPOINT_WRITE_AFTER_BYTES";

/// The checkpoint folder of a run.
pub fn dir_of_run(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// `RUN/checkpoints/last.safetensors`.
pub fn last_path(run: &Path) -> PathBuf {
    dir_of_run(run).join("last.safetensors")
}

/// `RUN/checkpoints/best.safetensors`.
pub fn best_path(run: &Path) -> PathBuf {
    dir_of_run(run).join("best.safetensors")
}

/// Writes `bytes` to `path` so that a crash or kill at any point leaves either the old
/// file or the new one: a temporary file in the same folder, written and `fsync`ed, renamed
/// over `path`, then the folder `fsync`ed (so the rename itself is durable). A failed write
/// removes its temporary file; one left by a killed process is removed by the next write.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::file(&dir, format!("cannot create the folder: {e}")))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    let prefix = format!(".{name}.tmp-");
    // Leftovers of killed writes (never the file itself).
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let tmp = dir.join(format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let abort_after: Option<usize> = std::env::var(ABORT_AFTER_BYTES_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    let result = (|| -> std::io::Result<()> {
        // A second Ctrl-C exits at once: it removes this file first.
        let (mut f, _writing) = crate::interrupt::create_temporary(&tmp)?;
        match abort_after {
            Some(n) if n < bytes.len() => {
                f.write_all(&bytes[..n])?;
                f.sync_all()?;
                eprintln!(
                    "{ABORT_AFTER_BYTES_ENV}: aborting after {n} bytes of {}",
                    tmp.display()
                );
                std::process::abort();
            }
            _ => f.write_all(bytes)?,
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Make the rename durable; not every platform can open a folder, so best effort.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(path, format!("cannot write: {e}"))
    })
}

/// The epochs of a `metrics.jsonl` read from `path`, each with its line (blank lines
/// skipped; a line that is not an epoch's metrics is an error naming it).
pub fn parse_metrics<'t>(path: &Path, text: &'t str) -> Result<Vec<(&'t str, EpochMetrics)>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line)
                .map(|m| (line, m))
                .map_err(|e| Error::file(path, format!("line {}: not a metrics line: {e}", n + 1)))
        })
        .collect()
}

/// Keeps the lines of `metrics.jsonl` up to `epoch` (a run killed after writing a line but
/// before its checkpoint has one more) and returns them with the file opened for appending.
pub fn reopen_metrics(path: &Path, epoch: usize) -> Result<(Vec<EpochMetrics>, std::fs::File)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::file(
            path,
            format!("cannot read the run's metrics to resume: {e}"),
        )
    })?;
    let mut kept = Vec::new();
    let mut lines = String::new();
    for (line, m) in parse_metrics(path, &text)? {
        if m.epoch <= epoch {
            lines.push_str(line);
            lines.push('\n');
            kept.push(m);
        }
    }
    let epochs: Vec<usize> = kept.iter().map(|m| m.epoch).collect();
    if epochs != (1..=epoch).collect::<Vec<_>>() {
        return Err(Error::file(
            path,
            format!(
                "has epochs {epochs:?}, the checkpoint is at epoch {epoch}: the run folder is inconsistent"
            ),
        ));
    }
    write_atomically(path, lines.as_bytes())?;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::file(path, e))?;
    Ok((kept, file))
}

/// Appends one line to metrics.jsonl (flushed: a run's progress is on disk as it goes).
pub fn append_metrics(file: &mut std::fs::File, path: &Path, m: &EpochMetrics) -> Result<()> {
    writeln!(file, "{}", serde_json::to_string(m).expect("JSON"))
        .and_then(|_| file.flush())
        .map_err(|e| Error::file(path, e))
}

/// What makes a folder a run's: a new run is never started in one that has any of them.
const RUN_MARKERS: [&str; 3] = ["config.json", "metrics.jsonl", "checkpoints"];

/// Refuses `out` for a new run when it holds a run already, or other files; an empty or
/// missing folder is fine. Creates nothing.
pub fn check_new_run_folder(out: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(out) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::file(
                out,
                format!("--out: {e}; give a new or empty folder"),
            ));
        }
    };
    check_holds_no_run(out)?;
    if entries.count() > 0 {
        return Err(Error::file(
            out,
            "--out is a folder with other files in it; give a new or empty folder for the run",
        ));
    }
    Ok(())
}

/// `--out` may not lie inside `--data`: what a command writes there would be read as classes
/// (or as images) next time.
pub fn check_outside_data(out: &Path, data: &Path) -> Result<()> {
    let Ok(data) = std::fs::canonicalize(data) else {
        return Ok(()); // the data set's own check names the problem
    };
    let cwd = std::env::current_dir().unwrap_or_default();
    let absolute = cwd.join(out);
    let existing = absolute.ancestors().find(|p| p.exists()).unwrap_or(&cwd);
    let existing = std::fs::canonicalize(existing).unwrap_or_default();
    if existing.starts_with(&data) {
        return Err(Error::file(
            out,
            format!(
                "--out is inside --data {}: what is written there would be read as classes or images next time; choose a place outside it",
                data.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses to start a run in `out` when it holds one already (whatever else is in it).
pub fn check_holds_no_run(out: &Path) -> Result<()> {
    match RUN_MARKERS.iter().find(|m| out.join(m).exists()) {
        Some(marker) => Err(Error::file(
            out,
            format!(
                "--out holds a run already ({marker}); continue it with --resume {}, or choose another folder",
                out.display()
            ),
        )),
        None => Ok(()),
    }
}

/// The folder of a run this command started: made after every check passed, removed again
/// (see [`RunFolder::discard`]) if the run fails before it has a checkpoint.
#[derive(Debug)]
pub struct RunFolder {
    pub path: PathBuf,
    /// Made by this command (else it existed, empty).
    created: bool,
    /// Its parents this command made (`runs/`, or those of `--out a/b/c`), deepest first.
    parents: Vec<PathBuf>,
}

impl RunFolder {
    /// Creates the folder of a new run: `out` (new or empty), or a new
    /// `runs/<date>-<time>-<loss>`, with `-2`, `-3`, ... when that name is taken (also by a
    /// run another process starts in the same second: creating a folder is atomic).
    pub fn create(out: Option<&Path>, loss: &LossConfig) -> Result<RunFolder> {
        let make = |p: &Path| std::fs::create_dir(p);
        if let Some(out) = out {
            check_new_run_folder(out)?;
            let existed = out.exists();
            let parents = make_parents(out)?;
            return match make(out) {
                Ok(()) => Ok(RunFolder {
                    path: out.to_path_buf(),
                    created: true,
                    parents,
                }),
                // An empty folder the user made (checked above) is the run's.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && existed => {
                    Ok(RunFolder {
                        path: out.to_path_buf(),
                        created: false,
                        parents,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::file(
                    out,
                    "--out: another run made this folder just now; choose another folder",
                )),
                Err(e) => Err(Error::file(
                    out,
                    format!("cannot create the run folder: {e}"),
                )),
            };
        }
        let base = default_run_dir(loss);
        let parents = make_parents(&base)?;
        for n in 1..=1000 {
            let path = if n == 1 {
                base.clone()
            } else {
                PathBuf::from(format!("{}-{n}", base.display()))
            };
            match make(&path) {
                Ok(()) => {
                    return Ok(RunFolder {
                        path,
                        created: true,
                        parents,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::file(
                        &path,
                        format!("cannot create the run folder: {e}"),
                    ));
                }
            }
        }
        Err(Error::file(
            &base,
            "1000 runs of this name exist already; give --out",
        ))
    }

    /// Removes what the run wrote when it failed before its first checkpoint (nothing of it
    /// could be resumed): the folder and the parents this command made; in a folder the
    /// user made, the files a run writes there.
    pub fn discard(&self) {
        if last_path(&self.path).exists() {
            return;
        }
        if self.created {
            let _ = std::fs::remove_dir_all(&self.path);
        } else {
            for name in RUN_MARKERS.iter().chain(&RUN_FILES) {
                let p = self.path.join(name);
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        // Deepest first; a parent another run has filled in the meantime stays.
        for parent in &self.parents {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// What else a run writes before its first checkpoint (besides [`RUN_MARKERS`]).
const RUN_FILES: [&str; 2] = ["skipped.tsv", "decode_warnings.tsv"];

/// Creates the missing parents of `path`; returns them, deepest first.
fn make_parents(path: &Path) -> Result<Vec<PathBuf>> {
    let missing: Vec<PathBuf> = path
        .ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
        .take_while(|p| !p.exists())
        .map(Path::to_path_buf)
        .collect();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::file(parent, format!("cannot create the folder: {e}")))?;
    }
    Ok(missing)
}

/// `runs/<date>-<time>-<loss>`: a new folder name for a run (UTC).
pub fn default_run_dir(loss: &LossConfig) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    PathBuf::from("runs").join(format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}-{}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        loss.cli_name()
    ))
}

/// Writes `name` (`skipped.tsv`, `decode_warnings.tsv`: item, category, detail) into the
/// run folder `out` and returns its path.
pub fn write_item_list(out: &Path, name: &str, items: &[Skipped]) -> Result<PathBuf> {
    std::fs::create_dir_all(out)
        .map_err(|e| Error::file(out, format!("cannot create the run folder: {e}")))?;
    let path = out.join(name);
    let mut text = String::from("item\tcategory\tdetail\n");
    for s in items {
        text.push_str(&format!("{}\t{}\t{}\n", s.item, s.category, s.detail));
    }
    write_atomically(&path, text.as_bytes())?;
    Ok(path)
}

/// Where `eval` writes by default: `RUN/eval-<data>` for `RUN/checkpoints/x.safetensors`,
/// else `eval-<data>` beside the file.
pub fn default_eval_dir(checkpoint: &Path, data: &Path) -> PathBuf {
    let parent = checkpoint.parent().unwrap_or(Path::new("."));
    let base = if parent.file_name().is_some_and(|n| n == "checkpoints") {
        parent.parent().unwrap_or(Path::new("."))
    } else {
        parent
    };
    let name = std::fs::canonicalize(data)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "data".into());
    base.join(format!("eval-{name}"))
}
