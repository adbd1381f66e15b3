//! Finding what `--data DIR` points at, without decoding anything:
//!
//! - a **class-per-folder tree**: each sub-folder of `DIR` is a class (sorted by name, as
//!   Keras and torchvision do), holding its images at any depth. Hidden entries (`.name`)
//!   are ignored; every other file is a candidate, recognised as an image by its content
//!   later (so `Thumbs.db` in `PetImages` shows up in the skip report as "not an image").
//!   Files directly in `DIR` are not part of any class and are ignored.
//! - a **TFDS folder** (what `tfds.load` prepares under
//!   `~/tensorflow_datasets/<name>/<version>/`): TFRecord shards and `dataset_info.json`.
//!   `DIR` may also be `~/tensorflow_datasets/<name>`: the newest version folder is used.
//!
//! Each input file is listed with its size and modification time: that list is the
//! cache key.

use std::path::{Path, PathBuf};

use super::source::{InputFile, Source, input_file_from};
use super::tfrecord::find_tfds;
use crate::{Error, Result};

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

fn sorted_entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let read = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot list: {e}")))?;
    let mut entries = read
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| Error::file(dir, format!("cannot list: {e}")))?;
    entries.retain(|e| !is_hidden(&e.file_name()));
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

/// Is `path` a directory (following symbolic links)?
fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}

/// Finds what `dir` holds; see the module documentation.
pub fn discover(dir: &Path) -> Result<Source> {
    let meta = std::fs::metadata(dir).map_err(|e| {
        Error::file(
            dir,
            format!("--data: {e}; expected a folder with one sub-folder of images per class"),
        )
    })?;
    if !meta.is_dir() {
        return Err(Error::file(
            dir,
            "--data must be a folder with one sub-folder of images per class (or a TFDS data set folder), not a file",
        ));
    }
    if let Some(tfds) = find_tfds(dir)? {
        return Ok(tfds);
    }
    let entries = sorted_entries(dir)?;
    let class_dirs: Vec<PathBuf> = entries
        .iter()
        .map(|e| e.path())
        .filter(|p| is_dir(p))
        .collect();
    if class_dirs.len() < 2 {
        return Err(Error::file(
            dir,
            format!(
                "--data needs at least 2 class folders (one sub-folder of images per class, e.g. PetImages/Cat and PetImages/Dog); found {}",
                match class_dirs.first() {
                    Some(d) => format!("only {:?}", d.file_name().unwrap_or_default()),
                    None => "none".to_string(),
                }
            ),
        ));
    }
    let mut class_names = Vec::new();
    let mut files = Vec::new();
    let mut loops = Vec::new();
    let class_roots: Vec<PathBuf> = class_dirs
        .iter()
        .map(|d| std::fs::canonicalize(d).map_err(|e| Error::file(d, e)))
        .collect::<Result<_>>()?;
    for (label, class_dir) in class_dirs.iter().enumerate() {
        let name = class_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let before = files.len();
        // The data folder counts as above: a link back to it would put other classes'
        // images into this one.
        let mut above = vec![std::fs::canonicalize(dir).map_err(|e| Error::file(dir, e))?];
        let others: Vec<PathBuf> = class_roots
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != label)
            .map(|(_, r)| r.clone())
            .collect();
        let mut walk = Walk {
            label: label as u32,
            others: &others,
            files: &mut files,
            loops: &mut loops,
        };
        walk.collect(class_dir, &mut above)?;
        if files.len() == before {
            return Err(Error::file(
                class_dir,
                format!("class {name:?} is empty: every class folder needs at least one image"),
            ));
        }
        class_names.push(name);
    }
    Ok(Source::Folders {
        root: dir.to_path_buf(),
        class_names,
        files,
        loops,
    })
}

/// One class folder's walk: its files, and the links it leaves out.
struct Walk<'a> {
    label: u32,
    /// The other classes' folders, canonical: a link into one would mislabel its images.
    others: &'a [PathBuf],
    files: &'a mut Vec<(InputFile, u32)>,
    loops: &'a mut Vec<(PathBuf, &'static str)>,
}

impl Walk<'_> {
    /// The files under `dir`, at any depth; a folder that is one of the folders above it
    /// (through a symbolic link), or inside another class's folder, goes to `loops` instead of
    /// being walked. `above`: the canonical paths of `dir`'s ancestors in the walk.
    fn collect(&mut self, dir: &Path, above: &mut Vec<PathBuf>) -> Result<()> {
        let canonical = std::fs::canonicalize(dir).map_err(|e| Error::file(dir, e))?;
        if above.contains(&canonical) {
            self.loops.push((dir.to_path_buf(), "symbolic-link loop"));
            return Ok(());
        }
        if self.others.iter().any(|o| canonical.starts_with(o)) {
            self.loops
                .push((dir.to_path_buf(), "link into another class"));
            return Ok(());
        }
        if above.len() > 64 {
            return Err(Error::file(dir, "folders nested more than 64 deep"));
        }
        above.push(canonical);
        for entry in sorted_entries(dir)? {
            let path = entry.path();
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                // A dangling link: not an image, and nothing to key on.
                Err(_) => continue,
            };
            if meta.is_dir() {
                self.collect(&path, above)?;
            } else if meta.is_file() {
                self.files.push((input_file_from(path, &meta), self.label));
            }
        }
        above.pop();
        Ok(())
    }
}
