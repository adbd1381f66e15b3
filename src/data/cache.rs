//! The preprocessed-set cache: one file per source folder and image size, written once and
//! memory-mapped afterwards.
//!
//! Layout (little-endian):
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `FFIMGSET` |
//! | 8 | format version (u32, [`VERSION`]) |
//! | 12 | CRC-32C of bytes 16..128 (u32) |
//! | 16 | key: FNV-1a 64 of the manifest (u64) |
//! | 24 | key: CRC-32C of the manifest (u32), reserved (u32) |
//! | 32 | height, width, channels, classes (u32 each) |
//! | 48 | image count (u64) |
//! | 56 | pixels offset, length (u64, u64): u8 NHWC, starting at 4096 |
//! | 72 | labels offset, length (u64, u64): u32 per image |
//! | 88 | metadata offset, length (u64, u64): JSON ([`Meta`]) |
//! | 104 | CRC-32C of pixels, labels, metadata (u32 each), reserved (u32) |
//! | 120 | file length (u64) |
//!
//! The manifest is the preprocessing recipe plus every input file's relative path, size
//! and modification time (see `load`): any change to the files or the recipe changes the
//! key, and the cache is rebuilt. Opening checks the magic, version, header CRC, key, shape,
//! every offset and length against the file's real size, and the three CRCs (pixels in
//! parallel chunks), so a damaged file is rebuilt, never trusted. A cache is written to a
//! temporary file in the same folder, synced and renamed over the old one: a crash leaves
//! the old cache or the new one.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{ImageSet, Pixels};
use crate::model::ImageShape;
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"FFIMGSET";
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 128;
const PIXELS_OFFSET: u64 = 4096;
const CRC_CHUNK: usize = 8 << 20;

/// The identity of a cache's content: two independent hashes of its manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub fnv: u64,
    pub crc: u32,
}

impl Key {
    pub fn of(manifest: &str) -> Key {
        Key {
            fnv: fnv1a(manifest.as_bytes()),
            crc: crc32c::crc32c(manifest.as_bytes()),
        }
    }
}

/// FNV-1a, 64 bits: stable across platforms and versions (unlike std's hasher).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A file or record left out, and why (also used for files kept with a decoder warning).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    /// The file path, or `shard@offset` for a TFRecord record.
    pub item: String,
    pub category: String,
    pub detail: String,
}

/// What the cache remembers beside pixels and labels.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub class_names: Vec<String>,
    pub source: String,
    pub kind: String,
    /// Files (or records) looked at.
    pub candidates: usize,
    pub skipped: Vec<Skipped>,
    /// Files kept although the decoder warned about their data (category "decoded with
    /// warnings"); absent in caches written before it existed.
    #[serde(default)]
    pub warnings: Vec<Skipped>,
    pub preprocess_seconds: f64,
    pub created_unix: u64,
}

/// CRC-32C of `bytes`, computed in parallel chunks and combined.
pub fn parallel_crc(bytes: &[u8]) -> u32 {
    bytes
        .par_chunks(CRC_CHUNK)
        .map(|c| (crc32c::crc32c(c), c.len()))
        .collect::<Vec<_>>()
        .into_iter()
        .fold(0, |acc, (crc, len)| crc32c::crc32c_combine(acc, crc, len))
}

/// Appends images one by one into a temporary cache file; [`Writer::finish`] completes
/// and publishes it.
pub struct Writer {
    tmp: PathBuf,
    path: PathBuf,
    out: BufWriter<File>,
    pixels_len: u64,
    pixels_crc: u32,
}

impl Writer {
    pub fn create(path: &Path) -> Result<Writer> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::file(
                dir,
                format!("cannot create the cache folder: {e}; choose another with --cache-dir or use --no-cache"),
            )
        })?;
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".tmp{}", std::process::id()));
        let tmp = path.with_file_name(name);
        let file = File::create(&tmp).map_err(|e| {
            Error::file(
                &tmp,
                format!("cannot create the cache: {e}; choose another folder with --cache-dir or use --no-cache"),
            )
        })?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let zeros = vec![0u8; PIXELS_OFFSET as usize];
        out.write_all(&zeros).map_err(|e| Error::file(&tmp, e))?;
        Ok(Writer {
            tmp,
            path: path.to_path_buf(),
            out,
            pixels_len: 0,
            pixels_crc: 0,
        })
    }

    /// Appends one image's pixels.
    pub fn push(&mut self, pixels: &[u8]) -> Result<()> {
        self.pixels_crc = crc32c::crc32c_append(self.pixels_crc, pixels);
        self.pixels_len += pixels.len() as u64;
        self.out.write_all(pixels).map_err(|e| self.fail(e))
    }

    fn fail(&self, e: std::io::Error) -> Error {
        let _ = std::fs::remove_file(&self.tmp);
        Error::file(
            &self.tmp,
            format!(
                "cannot write the cache: {e}; free some space, choose another --cache-dir, or use --no-cache"
            ),
        )
    }

    /// Writes labels, metadata and the header, syncs, renames into place, and maps the
    /// result.
    pub fn finish(
        mut self,
        key: Key,
        shape: ImageShape,
        labels: &[u32],
        meta: &Meta,
    ) -> Result<(ImageSet<Pixels>, Meta)> {
        let count = labels.len() as u64;
        assert_eq!(
            self.pixels_len,
            count * shape.len() as u64,
            "pixels per image"
        );
        let label_bytes: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        let meta_bytes = serde_json::to_vec(meta).expect("JSON");
        let labels_offset = PIXELS_OFFSET + self.pixels_len;
        let meta_offset = labels_offset + label_bytes.len() as u64;
        let file_len = meta_offset + meta_bytes.len() as u64;
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(MAGIC);
        put32(&mut h, 8, VERSION);
        put64(&mut h, 16, key.fnv);
        put32(&mut h, 24, key.crc);
        put32(&mut h, 32, shape.height as u32);
        put32(&mut h, 36, shape.width as u32);
        put32(&mut h, 40, shape.channels as u32);
        put32(&mut h, 44, meta.class_names.len() as u32);
        put64(&mut h, 48, count);
        put64(&mut h, 56, PIXELS_OFFSET);
        put64(&mut h, 64, self.pixels_len);
        put64(&mut h, 72, labels_offset);
        put64(&mut h, 80, label_bytes.len() as u64);
        put64(&mut h, 88, meta_offset);
        put64(&mut h, 96, meta_bytes.len() as u64);
        put32(&mut h, 104, self.pixels_crc);
        put32(&mut h, 108, crc32c::crc32c(&label_bytes));
        put32(&mut h, 112, crc32c::crc32c(&meta_bytes));
        put64(&mut h, 120, file_len);
        let header_crc = crc32c::crc32c(&h[16..]);
        put32(&mut h, 12, header_crc);
        let written = (|| {
            self.out.write_all(&label_bytes)?;
            self.out.write_all(&meta_bytes)?;
            self.out.flush()?;
            let file = self.out.get_mut();
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&h)?;
            file.sync_all()?;
            std::fs::rename(&self.tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                // Make the rename itself durable; not every platform can open a folder.
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
            }
            Ok(())
        })();
        if let Err(e) = written {
            return Err(self.fail(e));
        }
        open(&self.path, key, shape).map_err(|why| {
            Error::file(
                &self.path,
                format!("the cache just written does not read back ({why}); is the disk full or the folder shared?"),
            )
        })
    }
}

fn put32(h: &mut [u8], at: usize, v: u32) {
    h[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(h: &mut [u8], at: usize, v: u64) {
    h[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get32(h: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"))
}
fn get64(h: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"))
}

/// Maps and validates the cache at `path` for `key` and `shape`. `Err` says in a few words
/// why it cannot be used (missing, stale, damaged), and the caller rebuilds it.
pub fn open(
    path: &Path,
    key: Key,
    shape: ImageShape,
) -> std::result::Result<(ImageSet<Pixels>, Meta), String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let real_len = file.metadata().map_err(|e| e.to_string())?.len();
    if real_len < PIXELS_OFFSET {
        return Err(format!("damaged: {real_len} bytes, shorter than a header"));
    }
    // SAFETY: the file is only read through the map; a cache file is replaced by rename,
    // never rewritten in place, so an open map keeps seeing the file it mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("cannot map: {e}"))?;
    let h = &map[..HEADER_LEN];
    if &h[..8] != MAGIC {
        return Err("damaged or not a focalflow cache (bad magic)".into());
    }
    let version = get32(h, 8);
    if version != VERSION {
        return Err(format!(
            "stale: format version {version}, this focalflow writes {VERSION}"
        ));
    }
    if get32(h, 12) != crc32c::crc32c(&h[16..]) {
        return Err("damaged: header checksum mismatch".into());
    }
    if get64(h, 16) != key.fnv || get32(h, 24) != key.crc {
        return Err("stale: the files or the preprocessing changed since it was written".into());
    }
    let stored = (
        get32(h, 32) as usize,
        get32(h, 36) as usize,
        get32(h, 40) as usize,
    );
    if stored != (shape.height, shape.width, shape.channels) {
        return Err(format!("stale: images are {stored:?}, not {shape:?}"));
    }
    let count = get64(h, 48);
    let file_len = get64(h, 120);
    if file_len != real_len {
        return Err(format!(
            "damaged: {real_len} bytes on disk, the header says {file_len}"
        ));
    }
    let region = |at: usize, what: &str| -> std::result::Result<(usize, usize), String> {
        let (off, len) = (get64(h, at), get64(h, at + 8));
        match off.checked_add(len) {
            Some(end) if off >= HEADER_LEN as u64 && end <= real_len => {
                Ok((off as usize, len as usize))
            }
            _ => Err(format!("damaged: the {what} region lies outside the file")),
        }
    };
    let (p_off, p_len) = region(56, "pixels")?;
    let (l_off, l_len) = region(72, "labels")?;
    let (m_off, m_len) = region(88, "metadata")?;
    if Some(p_len as u64) != count.checked_mul(shape.len() as u64) || l_len as u64 != count * 4 {
        return Err("damaged: region lengths do not match the image count".into());
    }
    let (labels_bytes, meta_bytes) = (&map[l_off..][..l_len], &map[m_off..][..m_len]);
    if crc32c::crc32c(labels_bytes) != get32(h, 108) || crc32c::crc32c(meta_bytes) != get32(h, 112)
    {
        return Err("damaged: label or metadata checksum mismatch".into());
    }
    let meta: Meta =
        serde_json::from_slice(meta_bytes).map_err(|e| format!("damaged metadata: {e}"))?;
    let classes = get32(h, 44) as usize;
    if meta.class_names.len() != classes {
        return Err("damaged: class count mismatch".into());
    }
    let labels: Vec<u32> = labels_bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    if labels.iter().any(|&l| l as usize >= classes) {
        return Err("damaged: a label is out of range".into());
    }
    if parallel_crc(&map[p_off..][..p_len]) != get32(h, 104) {
        return Err("damaged: pixel checksum mismatch".into());
    }
    let set = ImageSet {
        shape,
        class_names: meta.class_names.clone(),
        pixels: Pixels::Mapped {
            map,
            offset: p_off,
            len: p_len,
        },
        labels,
        multi: None,
    };
    Ok((set, meta))
}

/// `$XDG_CACHE_HOME/focalflow`, else `~/.cache/focalflow`, else `.focalflow-cache`.
pub fn default_dir() -> PathBuf {
    let non_empty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    if let Some(x) = non_empty("XDG_CACHE_HOME") {
        PathBuf::from(x).join("focalflow")
    } else if let Some(home) = non_empty("HOME") {
        PathBuf::from(home).join(".cache").join("focalflow")
    } else {
        PathBuf::from(".focalflow-cache")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn parallel_crc_equals_serial() {
        let data: Vec<u8> = (0..CRC_CHUNK * 2 + 12345)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        assert_eq!(parallel_crc(&data), crc32c::crc32c(&data));
    }
}
