//! TensorBoard event files, so `tensorboard --logdir runs/` shows and compares runs while
//! they train. A run folder holds `events.out.tfevents.<time>.<host>.<pid>.focalflow`: TFRecord
//! framing (length, masked CRC-32C of the length, data, masked CRC-32C of the data) around
//! `Event` protobufs (TensorFlow's `event.proto` / `summary.proto`, the fields used here):
//! the file version first, then per epoch every scalar of the `metrics.jsonl` line (tag =
//! its key, step = the epoch), per step the learning rate (tag `learning_rate`, step = the
//! global step), and at the end the reliability diagram as a PNG image. The file is flushed
//! after each epoch; a resumed run starts a new file, which TensorBoard reads with the others.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::data::tfrecord::masked_crc;
use crate::run::EpochMetrics;
use crate::{Error, Result};

/// `tensorflow.Event` (the fields written).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "EventKind", tags = "3, 5")]
    pub kind: Option<EventKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventKind {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(oneof = "ValueKind", tags = "2, 4")]
    pub kind: Option<ValueKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ValueKind {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(message, tag = "4")]
    Image(Image),
}

/// `tensorflow.Summary.Image`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    #[prost(int32, tag = "1")]
    pub height: i32,
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// 3: RGB, 4: RGBA.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// An open event file.
pub struct EventWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// A new event file in `dir`, starting with the file-version event.
    pub fn create(dir: &Path) -> Result<Self> {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .unwrap_or_else(|| "localhost".into());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}.focalflow",
            now() as u64,
            std::process::id()
        ));
        let file = std::fs::File::create(&path).map_err(|e| Error::file(&path, e))?;
        let mut w = EventWriter {
            path,
            file: std::io::BufWriter::new(file),
        };
        w.write(&Event {
            wall_time: now(),
            step: 0,
            kind: Some(EventKind::FileVersion("brain.Event:2".into())),
        })?;
        w.flush()?;
        Ok(w)
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let mut record = Vec::with_capacity(data.len() + 16);
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc(&len).to_le_bytes());
        record.extend_from_slice(&data);
        record.extend_from_slice(&masked_crc(&data).to_le_bytes());
        self.file
            .write_all(&record)
            .map_err(|e| Error::file(&self.path, e))
    }

    fn summary(&mut self, step: i64, value: Vec<SummaryValue>) -> Result<()> {
        self.write(&Event {
            wall_time: now(),
            step,
            kind: Some(EventKind::Summary(Summary { value })),
        })
    }

    /// The epoch's scalars (every number of its metrics.jsonl line) and the learning rate
    /// of each of its steps (global steps from `(epoch - 1) * steps_per_epoch`), flushed.
    pub fn epoch(&mut self, m: &EpochMetrics, steps_per_epoch: usize) -> Result<()> {
        let line = serde_json::to_value(m).expect("JSON");
        let scalars = line
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != "epoch")
            .filter_map(|(k, v)| {
                v.as_f64().map(|x| SummaryValue {
                    tag: k.clone(),
                    kind: Some(ValueKind::SimpleValue(x as f32)),
                })
            })
            .collect();
        self.summary(m.epoch as i64, scalars)?;
        let first = (m.epoch - 1) * steps_per_epoch;
        for (i, &lr) in m.learning_rates.iter().enumerate() {
            self.summary(
                (first + i) as i64,
                vec![SummaryValue {
                    tag: "learning_rate".into(),
                    kind: Some(ValueKind::SimpleValue(lr as f32)),
                }],
            )?;
        }
        self.flush()
    }

    /// A PNG file as an image summary under `tag`.
    pub fn png(&mut self, tag: &str, step: i64, png_path: &Path) -> Result<()> {
        let bytes = std::fs::read(png_path).map_err(|e| Error::file(png_path, e))?;
        // The IHDR chunk: width and height (big-endian) at bytes 16..24, then the bit depth
        // and the colour type (2 RGB, 6 RGBA).
        if bytes.len() < 26 || &bytes[1..4] != b"PNG" {
            return Err(Error::file(png_path, "not a PNG file"));
        }
        let be = |at: usize| i32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let image = Image {
            width: be(16),
            height: be(20),
            colorspace: if bytes[25] == 6 { 4 } else { 3 },
            encoded_image_string: bytes,
        };
        self.summary(
            step,
            vec![SummaryValue {
                tag: tag.into(),
                kind: Some(ValueKind::Image(image)),
            }],
        )?;
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|e| Error::file(&self.path, e))
    }
}
