//! TensorFlow Datasets' own copy: TFRecord shards of `tf.train.Example`.
//!
//! A TFRecord file is a sequence of records, each
//! `u64 length (LE) | u32 masked CRC-32C of the length bytes | data | u32 masked CRC-32C of
//! the data`, with `masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`. Both CRCs are
//! checked: a record whose data CRC fails is skipped and reported; a length whose CRC fails
//! loses the framing, so the rest of that shard is reported as one damaged tail.
//!
//! Each record is a `tf.train.Example`, decoded with `prost` from the message definitions
//! below (field numbers of TensorFlow's `example.proto`/`feature.proto`). The image is the
//! bytes feature `image` (TFDS) or `image/encoded` (TF object-detection style), the label
//! the int64 feature `label` or `image/class/label`. Class names come from
//! `label.labels.txt` (written by TFDS for a `ClassLabel`), else from `dataset_info.json`
//! if it lists them, else they are the label numbers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::source::{InputFile, Source, input_file};
use crate::{Error, Result};

/// `tf.train.Example`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Example {
    #[prost(message, optional, tag = "1")]
    pub features: Option<Features>,
}

/// `tf.train.Features`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Features {
    #[prost(map = "string, message", tag = "1")]
    pub feature: HashMap<String, Feature>,
}

/// `tf.train.Feature`: one of three lists.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Feature {
    #[prost(oneof = "Kind", tags = "1, 2, 3")]
    pub kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    #[prost(message, tag = "1")]
    BytesList(BytesList),
    #[prost(message, tag = "2")]
    FloatList(FloatList),
    #[prost(message, tag = "3")]
    Int64List(Int64List),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BytesList {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub value: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FloatList {
    #[prost(float, repeated, tag = "1")]
    pub value: Vec<f32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Int64List {
    #[prost(int64, repeated, tag = "1")]
    pub value: Vec<i64>,
}

/// TFRecord's masked CRC-32C.
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// Where a record's data lies in its shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordSpan {
    pub offset: usize,
    pub len: usize,
}

/// A problem found while framing a shard: at `offset`, `message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FramingProblem {
    pub offset: usize,
    pub message: String,
}

/// Splits a TFRecord file into records, checking both CRCs of each.
pub fn frame(bytes: &[u8]) -> (Vec<RecordSpan>, Vec<FramingProblem>) {
    let (mut records, mut problems) = (Vec::new(), Vec::new());
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < 12 {
            problems.push(FramingProblem {
                offset: at,
                message: format!(
                    "truncated record header ({} bytes left, 12 needed)",
                    rest.len()
                ),
            });
            break;
        }
        let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
        let len_crc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        if masked_crc(&rest[..8]) != len_crc {
            problems.push(FramingProblem {
                offset: at,
                message: format!(
                    "length CRC mismatch: framing lost, the last {} bytes of the shard are unreadable",
                    rest.len()
                ),
            });
            break;
        }
        let total = 12u64.saturating_add(len).saturating_add(4);
        if total > rest.len() as u64 {
            problems.push(FramingProblem {
                offset: at,
                message: format!(
                    "truncated record: {len} bytes announced, {} present",
                    rest.len().saturating_sub(16)
                ),
            });
            break;
        }
        let len = len as usize;
        let data = &rest[12..12 + len];
        let data_crc = u32::from_le_bytes(rest[12 + len..16 + len].try_into().expect("4 bytes"));
        if masked_crc(data) == data_crc {
            records.push(RecordSpan {
                offset: at + 12,
                len,
            });
        } else {
            problems.push(FramingProblem {
                offset: at,
                message: "data CRC mismatch (damaged record)".into(),
            });
        }
        at += 16 + len;
    }
    (records, problems)
}

/// The encoded image and the label of one serialised `tf.train.Example`.
pub fn image_and_label(record: &[u8]) -> std::result::Result<(Vec<u8>, i64), String> {
    use prost::Message;
    let example = Example::decode(record).map_err(|e| format!("not a tf.train.Example: {e}"))?;
    let mut features = example.features.map(|f| f.feature).unwrap_or_default();
    let mut take_bytes = |key: &str| match features.remove(key).and_then(|f| f.kind) {
        Some(Kind::BytesList(mut b)) if !b.value.is_empty() => Some(b.value.swap_remove(0)),
        _ => None,
    };
    let image = take_bytes("image")
        .or_else(|| take_bytes("image/encoded"))
        .ok_or("no bytes feature \"image\" or \"image/encoded\"")?;
    let label = ["label", "image/class/label"]
        .iter()
        .find_map(|k| match features.get(*k).and_then(|f| f.kind.as_ref()) {
            Some(Kind::Int64List(l)) => l.value.first().copied(),
            _ => None,
        })
        .ok_or("no int64 feature \"label\" or \"image/class/label\"")?;
    Ok((image, label))
}

fn is_shard(name: &str) -> bool {
    name.contains(".tfrecord")
}

/// The split named by a TFDS shard file name, `<name>-<split>.tfrecord-00000-of-00004`.
fn shard_split(name: &str) -> Option<String> {
    let stem = &name[..name.find(".tfrecord")?];
    Some(stem.rsplit_once('-')?.1.to_string())
}

fn shard_names(dir: &Path) -> Result<Vec<String>> {
    let read = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot list: {e}")))?;
    let mut names = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| Error::file(dir, format!("cannot list: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_shard(&name) && !name.starts_with('.') && entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Version folders compare by their numbers: 4.0.1 < 4.0.10.
fn version_key(name: &str) -> Vec<u64> {
    name.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// `dir` as a TFDS data set folder, or its newest version sub-folder; `None` when it is
/// neither (then it is read as class folders).
pub fn find_tfds(dir: &Path) -> Result<Option<Source>> {
    let has_info = |d: &Path| d.join("dataset_info.json").is_file();
    let mut folder = dir.to_path_buf();
    if !has_info(dir) && shard_names(dir)?.is_empty() {
        // `~/tensorflow_datasets/cats_vs_dogs`: version folders holding dataset_info.json.
        let mut versions: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::file(dir, format!("cannot list: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && has_info(p))
            .collect();
        if versions.is_empty() {
            return Ok(None);
        }
        versions.sort_by_key(|p| version_key(&p.file_name().unwrap_or_default().to_string_lossy()));
        folder = versions.pop().expect("not empty");
    }
    let names = shard_names(&folder)?;
    if names.is_empty() {
        return Err(Error::file(
            &folder,
            "looks like a TFDS data set folder (dataset_info.json) but has no *.tfrecord* shards; run tfds.load again or point --data at a class-per-folder tree",
        ));
    }
    let splits: Vec<Option<String>> = names.iter().map(|n| shard_split(n)).collect();
    let split = if splits.iter().any(|s| s.as_deref() == Some("train")) {
        Some("train".to_string())
    } else {
        None
    };
    let shards = names
        .iter()
        .zip(&splits)
        .filter(|(_, s)| split.is_none() || s.as_deref() == split.as_deref())
        .map(|(n, _)| input_file(folder.join(n)))
        .collect::<Result<Vec<InputFile>>>()?;
    let class_names = class_names(&folder)?;
    Ok(Some(Source::Tfds {
        root: folder,
        class_names,
        shards,
        split,
    }))
}

/// Class names from `label.labels.txt` or `dataset_info.json`; empty when neither says
/// (then the labels found in the records name the classes).
fn class_names(folder: &Path) -> Result<Vec<String>> {
    let labels_txt = folder.join("label.labels.txt");
    if labels_txt.is_file() {
        let text = std::fs::read_to_string(&labels_txt).map_err(|e| Error::file(&labels_txt, e))?;
        let names: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if !names.is_empty() {
            return Ok(names);
        }
    }
    let info = folder.join("dataset_info.json");
    if let Ok(text) = std::fs::read_to_string(&info) {
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::file(&info, format!("not valid JSON: {e}")))?;
        if let Some(names) = find_label_names(&json) {
            return Ok(names);
        }
    }
    Ok(Vec::new())
}

/// The `names` list of a `label` feature's `classLabel` anywhere in `dataset_info.json`.
fn find_label_names(v: &serde_json::Value) -> Option<Vec<String>> {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(names) = map
                .get("classLabel")
                .and_then(|c| c.get("names"))
                .and_then(|n| n.as_array())
            {
                let names: Vec<String> = names
                    .iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect();
                if !names.is_empty() {
                    return Some(names);
                }
            }
            map.values().find_map(find_label_names)
        }
        serde_json::Value::Array(items) => items.iter().find_map(find_label_names),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u64).to_le_bytes().to_vec();
        let len_crc = masked_crc(&out);
        out.extend_from_slice(&len_crc.to_le_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(&masked_crc(data).to_le_bytes());
        out
    }

    #[test]
    fn known_masked_crc() {
        // crc32c("123456789") = 0xe3069283 (the standard check value); rotated right by 15
        // and offset by 0xa282ead8 (mod 2^32): 0xc78ab0e5 (computed separately).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn framing_and_damage() {
        let mut file = record(b"first");
        file.extend(record(b"second!"));
        let (recs, problems) = frame(&file);
        assert!(problems.is_empty());
        assert_eq!(recs.len(), 2);
        assert_eq!(&file[recs[1].offset..][..recs[1].len], b"second!");
        // Flip a data byte of the first record: it is dropped, the second still read.
        let mut bad = file.clone();
        bad[13] ^= 1;
        let (recs, problems) = frame(&bad);
        assert_eq!((recs.len(), problems.len()), (1, 1));
        assert!(problems[0].message.contains("data CRC"));
        // Cut the file: the last record is truncated.
        let (recs, problems) = frame(&file[..file.len() - 3]);
        assert_eq!((recs.len(), problems.len()), (1, 1));
        assert!(problems[0].message.contains("truncated"), "{problems:?}");
    }

    #[test]
    fn split_names() {
        assert_eq!(
            shard_split("cats_vs_dogs-train.tfrecord-00000-of-00008").as_deref(),
            Some("train")
        );
        assert!(version_key("4.0.10") > version_key("4.0.9"));
    }
}
