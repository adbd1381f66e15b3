//! What a data set is made of: its input files (with the size and modification time that
//! key the cache) and how they form classes ([`Source`]). Found by `discover.rs`.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::{Error, Result};

/// One input file and the metadata that keys the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    pub size: u64,
    /// Nanoseconds since 1970 (0 where the file system has no times).
    pub modified_ns: u128,
}

/// A class-per-folder tree, a TFDS folder, or images listed with their labels (`--labels`).
#[derive(Clone, Debug)]
pub enum Source {
    Folders {
        root: PathBuf,
        class_names: Vec<String>,
        /// Every candidate file, sorted by class then path, with its class.
        files: Vec<(InputFile, u32)>,
        /// Symbolic links to a folder above them (a loop) or into another class's folder:
        /// left out, and listed with the skipped files, with the reason.
        loops: Vec<(PathBuf, &'static str)>,
    },
    Tfds {
        root: PathBuf,
        class_names: Vec<String>,
        /// The shards read, sorted.
        shards: Vec<InputFile>,
        /// The split read (e.g. "train"), when the shard names say.
        split: Option<String>,
    },
    /// Multi-label: the images of a `--labels` file, each with its classes.
    Listed {
        root: PathBuf,
        class_names: Vec<String>,
        /// In the file's order.
        files: Vec<InputFile>,
        /// Each file's classes, ascending.
        label_sets: Vec<Vec<u32>>,
    },
}

impl Source {
    pub fn root(&self) -> &Path {
        match self {
            Source::Folders { root, .. }
            | Source::Tfds { root, .. }
            | Source::Listed { root, .. } => root,
        }
    }
    pub fn class_names(&self) -> &[String] {
        match self {
            Source::Folders { class_names, .. }
            | Source::Tfds { class_names, .. }
            | Source::Listed { class_names, .. } => class_names,
        }
    }
    /// The files whose names, sizes and times key the cache.
    pub fn input_files(&self) -> Vec<&InputFile> {
        match self {
            Source::Folders { files, .. } => files.iter().map(|(f, _)| f).collect(),
            Source::Tfds { shards, .. } => shards.iter().collect(),
            Source::Listed { files, .. } => files.iter().collect(),
        }
    }
    /// The number of candidate files where it is known before reading (not for TFDS).
    pub fn candidate_count(&self) -> Option<usize> {
        match self {
            Source::Folders { files, .. } => Some(files.len()),
            Source::Listed { files, .. } => Some(files.len()),
            Source::Tfds { .. } => None,
        }
    }
    /// Candidate files per class (a class-per-folder tree; `None` for TFDS, whose records
    /// are counted only as they are read). Unreadable files are among them.
    pub fn files_per_class(&self) -> Option<Vec<usize>> {
        match self {
            Source::Folders {
                class_names, files, ..
            } => {
                let mut counts = vec![0; class_names.len()];
                for (_, class) in files {
                    counts[*class as usize] += 1;
                }
                Some(counts)
            }
            Source::Tfds { .. } | Source::Listed { .. } => None,
        }
    }
    /// "class-per-folder" or "TFDS".
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Folders { .. } => "class-per-folder",
            Source::Tfds { .. } => "TFDS TFRecord",
            Source::Listed { .. } => "multi-label list",
        }
    }
}

pub(crate) fn input_file(path: PathBuf) -> Result<InputFile> {
    let meta = std::fs::metadata(&path).map_err(|e| Error::file(&path, e))?;
    Ok(input_file_from(path, &meta))
}

pub(crate) fn input_file_from(path: PathBuf, meta: &std::fs::Metadata) -> InputFile {
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    InputFile {
        path,
        size: meta.len(),
        modified_ns,
    }
}
