//! The checkpoint file: the safetensors layout and metadata described in the module above,
//! written and read (atomically, and checked as it is read), and `--checkpoint` resolved.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, View};

use super::{
    Checkpoint, FORMAT, FORMAT_VERSION, OPTIMIZER_PREFIX, OptimizerState, PREPROCESSING,
    TrainingState,
};
use crate::model::{Arch, ImageShape};
use crate::optim::Adam;
use crate::run::{best_path, last_path, write_atomically};
use crate::{Error, Result};

impl Checkpoint {
    /// The string metadata written into the file.
    pub fn metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        let json = |v: &dyn erased::Json| v.to_json();
        m.insert("format".into(), FORMAT.into());
        m.insert("format_version".into(), FORMAT_VERSION.into());
        m.insert("focalflow_version".into(), env!("CARGO_PKG_VERSION").into());
        m.insert("arch".into(), self.arch.to_string());
        m.insert(
            "input_shape".into(),
            json(&[self.input.height, self.input.width, self.input.channels]),
        );
        m.insert("class_names".into(), json(&self.class_names));
        m.insert("preprocessing".into(), PREPROCESSING.into());
        if let Some(loss) = &self.loss {
            m.insert("loss".into(), json(loss));
        }
        if let Some(e) = self.epoch {
            m.insert("epoch".into(), e.to_string());
        }
        if let Some(v) = self.val_loss {
            m.insert("val_loss".into(), v.to_string());
        }
        if !self.kind.is_empty() {
            m.insert("kind".into(), self.kind.clone());
        }
        if let Some(t) = self.temperature {
            m.insert("temperature".into(), t.to_string());
        }
        if let Some(c) = &self.calibration {
            m.insert("calibration".into(), c.to_string());
        }
        if let Some(o) = &self.optimizer {
            m.insert("optimizer".into(), json(&o.adam));
        }
        if let Some(t) = &self.training {
            m.insert("training".into(), json(t));
        }
        m
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let plan = self.plan()?;
        if self.weights.len() != plan.params.len() {
            return Err(Error::Shape(format!(
                "{} weight tensors for a plan of {}",
                self.weights.len(),
                plan.params.len()
            )));
        }
        let mut entries: Vec<(String, &[usize], &[f32])> = Vec::new();
        for (spec, w) in plan.params.iter().zip(&self.weights) {
            entries.push((spec.name.clone(), &spec.shape, w));
        }
        if let Some(opt) = &self.optimizer {
            for ((spec, m), v) in plan.params.iter().zip(&opt.m).zip(&opt.v) {
                entries.push((format!("{OPTIMIZER_PREFIX}m/{}", spec.name), &spec.shape, m));
                entries.push((format!("{OPTIMIZER_PREFIX}v/{}", spec.name), &spec.shape, v));
            }
        }
        let mut tensors: Vec<(String, F32View)> = Vec::with_capacity(entries.len());
        let mut checksums = std::collections::BTreeMap::new();
        for (name, shape, data) in entries {
            if data.len() != shape.iter().product::<usize>() {
                return Err(Error::Shape(format!(
                    "{name}: {} values for shape {shape:?}",
                    data.len()
                )));
            }
            let view = F32View::new(shape, data);
            checksums.insert(name.clone(), checksum(&view.data()));
            tensors.push((name, view));
        }
        let mut metadata = self.metadata();
        metadata.insert(
            CHECKSUMS_KEY.into(),
            serde_json::to_string(&checksums).expect("JSON"),
        );
        safetensors::serialize(tensors, Some(metadata))
            .map_err(|e| Error::invalid(format!("cannot serialise the checkpoint: {e}")))
    }

    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomically(path, &self.to_bytes()?)
    }

    /// Reads a checkpoint written by [`Checkpoint::save`], every tensor checked against its
    /// checksum (a file written before checksums were kept loads with a note on stderr).
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::file(
                path,
                format!("cannot read the checkpoint: {e}; --checkpoint takes a .safetensors file written by focalflow train (e.g. RUN/checkpoints/best.safetensors)"),
            )
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a checkpoint file; `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
        let bad = |msg: String| Error::file(path, msg);
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |key: &str| {
            meta.get(key).ok_or_else(|| {
                bad(format!(
                    "metadata key `{key}` missing: not a focalflow checkpoint (format {FORMAT} has it)"
                ))
            })
        };
        if get("format")? != FORMAT {
            return Err(bad(format!(
                "metadata `format` is {:?}, expected {FORMAT:?}",
                meta["format"]
            )));
        }
        let version = get("format_version")?;
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "checkpoint format version {version}; this focalflow reads version {FORMAT_VERSION}"
            )));
        }
        fn parse<T: serde::de::DeserializeOwned>(text: &str, key: &str, path: &Path) -> Result<T> {
            serde_json::from_str(text)
                .map_err(|e| Error::file(path, format!("metadata `{key}` is not valid: {e}")))
        }
        let arch: Arch = get("arch")?
            .parse()
            .map_err(|e| bad(format!("metadata `arch`: {e}")))?;
        let [height, width, channels]: [usize; 3] =
            parse(get("input_shape")?, "input_shape", path)?;
        let class_names: Vec<String> = parse(get("class_names")?, "class_names", path)?;
        let opt_parse = |key: &str| -> Result<Option<f64>> {
            meta.get(key)
                .map(|v| {
                    v.parse::<f64>()
                        .map_err(|_| bad(format!("metadata `{key}` = {v:?} is not a number")))
                })
                .transpose()
        };
        let mut ck = Checkpoint {
            arch,
            input: ImageShape {
                height,
                width,
                channels,
            },
            class_names,
            loss: meta
                .get("loss")
                .map(|v| parse(v, "loss", path))
                .transpose()?,
            weights: Vec::new(),
            epoch: opt_parse("epoch")?.map(|e| e as usize),
            val_loss: opt_parse("val_loss")?,
            kind: meta.get("kind").cloned().unwrap_or_default(),
            temperature: opt_parse("temperature")?,
            calibration: meta
                .get("calibration")
                .map(|v| parse(v, "calibration", path))
                .transpose()?,
            optimizer: None,
            // An older checkpoint's best moves into `progress` as it is read, so no reader
            // sees the old layout.
            training: meta
                .get("training")
                .map(|v| parse::<TrainingState>(v, "training", path))
                .transpose()?
                .map(|mut t| {
                    t.adopt_legacy_best();
                    t
                }),
        };
        if let Some(t) = ck.temperature
            && !(t.is_finite() && t > 0.0)
        {
            return Err(bad(format!(
                "metadata `temperature` = {t}: must be a positive number"
            )));
        }
        let plan = ck
            .plan()
            .map_err(|e| bad(format!("the metadata does not describe a model: {e}")))?;
        let checksums: Option<HashMap<String, String>> = meta
            .get(CHECKSUMS_KEY)
            .map(|v| parse(v, CHECKSUMS_KEY, path))
            .transpose()?;
        if checksums.is_none() {
            eprintln!(
                "note: {} has no tensor checksums (written by an older focalflow): its tensors are not verified",
                path.display()
            );
        }
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|_| {
                bad(format!(
                    "tensor `{name}` missing; arch {} on {height}x{width}x{channels} with {} classes needs it",
                    ck.arch,
                    ck.class_names.len()
                ))
            })?;
            if t.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor `{name}` is {:?}, expected F32",
                    t.dtype()
                )));
            }
            if t.shape() != shape {
                return Err(bad(format!(
                    "tensor `{name}` has shape {:?}, the model needs {shape:?}",
                    t.shape()
                )));
            }
            if let Some(sums) = &checksums {
                let stored = sums.get(name).ok_or_else(|| {
                    bad(format!(
                        "tensor `{name}` has no checksum in the metadata: the file is damaged"
                    ))
                })?;
                let computed = checksum(t.data());
                if *stored != computed {
                    return Err(bad(format!(
                        "tensor `{name}` fails its checksum (stored {stored}, computed {computed}): the file is damaged; use another checkpoint (checkpoints/last or best) or train again"
                    )));
                }
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        ck.weights = plan
            .params
            .iter()
            .map(|spec| read(&spec.name, &spec.shape))
            .collect::<Result<_>>()?;
        if let Some(adam) = meta.get("optimizer") {
            let adam: Adam = parse(adam, "optimizer", path)?;
            let moment = |which: &str| {
                plan.params
                    .iter()
                    .map(|spec| {
                        read(
                            &format!("{OPTIMIZER_PREFIX}{which}/{}", spec.name),
                            &spec.shape,
                        )
                    })
                    .collect::<Result<Vec<_>>>()
            };
            ck.optimizer = Some(OptimizerState {
                adam,
                m: moment("m")?,
                v: moment("v")?,
            });
        }
        let known = plan.params.len() * if ck.optimizer.is_some() { 3 } else { 1 };
        if st.len() != known {
            let extra: Vec<&str> = st
                .names()
                .into_iter()
                .filter(|n| {
                    !plan.params.iter().any(|p| {
                        *n == p.name
                            || ck.optimizer.is_some()
                                && (*n == format!("{OPTIMIZER_PREFIX}m/{}", p.name)
                                    || *n == format!("{OPTIMIZER_PREFIX}v/{}", p.name))
                    })
                })
                .collect();
            return Err(bad(format!(
                "unexpected tensors {extra:?} for arch {}",
                ck.arch
            )));
        }
        Ok(ck)
    }
}

/// Metadata key of the tensors' checksums: a JSON object, tensor name -> `crc32c:<8 hex digits>`
/// of its bytes as stored.
pub const CHECKSUMS_KEY: &str = "checksums";

fn checksum(bytes: &[u8]) -> String {
    format!("crc32c:{:08x}", crc32c::crc32c(bytes))
}

/// Serialises values to JSON strings (a tiny helper so `metadata` reads as a list).
mod erased {
    pub trait Json {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize + ?Sized> Json for T {
        fn to_json(&self) -> String {
            serde_json::to_string(self).expect("metadata serialises to JSON")
        }
    }
}

/// An f32 slice seen as a safetensors tensor (little-endian bytes).
struct F32View<'a> {
    shape: Vec<usize>,
    data: &'a [f32],
}

impl<'a> F32View<'a> {
    fn new(shape: &[usize], data: &'a [f32]) -> Self {
        F32View {
            shape: shape.to_vec(),
            data,
        }
    }
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            std::borrow::Cow::Borrowed(bytemuck::cast_slice(self.data))
        } else {
            std::borrow::Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        }
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// The metadata of a checkpoint file without reading its tensors (for `compare`).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let bad = |msg: String| Error::file(path, msg);
    let mut f = std::fs::File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(bad(format!("not a safetensors file (header of {n} bytes)")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    Ok(v.get("__metadata__")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default())
}

/// `--checkpoint`: a `.safetensors` file, or a run folder (its best checkpoint, else last).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        for candidate in [
            best_path(path),
            last_path(path),
            path.join("best.safetensors"),
            path.join("last.safetensors"),
        ] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        return Err(Error::file(
            path,
            "a folder without checkpoints; --checkpoint takes a .safetensors file or a run folder holding checkpoints/best.safetensors",
        ));
    }
    Ok(path.to_path_buf())
}
