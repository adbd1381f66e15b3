//! Multi-label data: `--labels FILE` beside `--data DIR`. The file is a CSV with one line per
//! image: its path relative to `DIR`, then the labels that apply (any number, none
//! included), e.g.
//!
//! ```text
//! beach/0001.jpg,sea,sand,sky
//! city/0042.jpg,sky
//! misc/0007.jpg
//! ```
//!
//! Fields are separated by commas and trimmed; a field may be quoted (`"a, b"`, `""` for a
//! quote). Empty lines and lines starting with `#` are skipped; a label given twice on a line
//! counts once. A training set's classes are the labels it uses, sorted; `eval` and `predict`
//! take the checkpoint's and refuse a label it does not know. Every check names the file and
//! the line.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use super::source::{Source, input_file};
use crate::{Error, Result};

/// One line of the list.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// 1-based, for messages.
    pub line: usize,
    /// The image's path under the data folder.
    pub path: PathBuf,
    pub labels: Vec<String>,
}

/// A parsed `--labels` file.
#[derive(Clone, Debug)]
pub struct LabelList {
    pub file: PathBuf,
    pub entries: Vec<Entry>,
}

/// Splits one CSV line into trimmed fields (double quotes group, `""` is a quote).
fn fields(line: &str) -> std::result::Result<Vec<String>, &'static str> {
    let (mut out, mut field, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut field).trim().to_string()),
            c => field.push(c),
        }
    }
    if quoted {
        return Err("a quote is not closed");
    }
    out.push(field.trim().to_string());
    Ok(out)
}

impl LabelList {
    /// Reads `file`, with the images under `root`: every image must exist there (a missing
    /// one is an error naming the file and line), be given by a relative path that stays
    /// inside `root`, and be listed once.
    pub fn read(file: &Path, root: &Path) -> Result<LabelList> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            Error::file(
                file,
                format!("--labels: cannot read: {e}; expected a CSV of IMAGE,LABEL,.. lines"),
            )
        })?;
        let mut entries: Vec<Entry> = Vec::new();
        let mut seen: std::collections::HashMap<PathBuf, usize> = Default::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let at = |why: String| Error::invalid(format!("{}:{line}: {why}", file.display()));
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let parts = fields(trimmed).map_err(|why| at(why.into()))?;
            let rel = PathBuf::from(&parts[0]);
            if parts[0].is_empty() {
                return Err(at(
                    "the image path is empty; a line is IMAGE,LABEL,..".into()
                ));
            }
            if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err(at(format!(
                    "{:?}: give the image's path relative to --data {}, inside it",
                    parts[0],
                    root.display()
                )));
            }
            let path = root.join(&rel);
            if !path.is_file() {
                return Err(at(format!(
                    "image {:?} not found under --data {}",
                    parts[0],
                    root.display()
                )));
            }
            if let Some(first) = seen.insert(path.clone(), line) {
                return Err(at(format!(
                    "image {:?} is listed twice (first on line {first}); give each image one line with all its labels",
                    parts[0]
                )));
            }
            let mut labels: Vec<String> = Vec::new();
            for label in parts[1..].iter().filter(|l| !l.is_empty()) {
                if !labels.contains(label) {
                    labels.push(label.clone());
                }
            }
            entries.push(Entry { line, path, labels });
        }
        if entries.is_empty() {
            return Err(Error::file(
                file,
                "--labels: no image lines; expected IMAGE,LABEL,.. lines",
            ));
        }
        Ok(LabelList {
            file: file.to_path_buf(),
            entries,
        })
    }

    /// The labels the lines use, sorted: a training set's classes.
    pub fn classes(&self) -> Vec<String> {
        let all: BTreeSet<&String> = self.entries.iter().flat_map(|e| &e.labels).collect();
        all.into_iter().cloned().collect()
    }

    /// Each line's labels as indices into `classes` (ascending); a label not among them is
    /// an error naming the line (`eval` of a checkpoint that never saw it).
    pub fn label_sets(&self, classes: &[String]) -> Result<Vec<Vec<u32>>> {
        self.entries
            .iter()
            .map(|e| {
                let mut set = e
                    .labels
                    .iter()
                    .map(|l| {
                        classes
                            .iter()
                            .position(|c| c == l)
                            .map(|c| c as u32)
                            .ok_or_else(|| {
                                Error::invalid(format!(
                                    "{}:{}: label {l:?} is not one of the model's classes ({})",
                                    self.file.display(),
                                    e.line,
                                    classes.join(", ")
                                ))
                            })
                    })
                    .collect::<Result<Vec<u32>>>()?;
                set.sort_unstable();
                Ok(set)
            })
            .collect()
    }

    /// The data source of these images with `classes` (the list's own for training, the
    /// checkpoint's for `eval`).
    pub fn source(&self, root: &Path, classes: Vec<String>) -> Result<Source> {
        if classes.len() < 2 {
            return Err(Error::file(
                &self.file,
                format!(
                    "--labels: the lines use {} label(s) ({}); a classifier needs at least 2",
                    classes.len(),
                    classes.join(", ")
                ),
            ));
        }
        let label_sets = self.label_sets(&classes)?;
        let files = self
            .entries
            .iter()
            .map(|e| input_file(e.path.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Source::Listed {
            root: root.to_path_buf(),
            class_names: classes,
            files,
            label_sets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_split_trimmed_and_unquoted() {
        assert_eq!(fields("a.png, x ,y").unwrap(), ["a.png", "x", "y"]);
        assert_eq!(
            fields("\"a, b.png\",\"say \"\"hi\"\"\"").unwrap(),
            ["a, b.png", "say \"hi\""]
        );
        assert_eq!(fields("a.png,").unwrap(), ["a.png", ""]);
        assert!(fields("\"a.png").is_err());
    }
}
