//! `--data DIR` to an [`ImageSet`]: discover, look up the cache, else decode and resize every
//! file in parallel (rayon) with a progress bar, skipping and counting what cannot be used,
//! and write the cache.
//!
//! Images are processed in chunks: the pool decodes a chunk into a buffer (one slot per
//! file), then the usable slots are appended, in file order, to the cache file (or to
//! memory with `--no-cache`). The order of the set, and so every seeded split, does not
//! depend on the number of threads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use super::cache::{self, Key, Meta, Skipped};
use super::decode::{Skip, decode_rgb8_into};
use super::discover::discover;
use super::resize::resize_bilinear;
use super::source::Source;
use super::tfrecord::{self, RecordSpan};
use super::{ImageSet, Pixels};
use crate::model::ImageShape;
use crate::{Error, Result};

/// Names the decoders, the conversions and the resize: part of the cache key, so changing
/// any of them (bump the version) invalidates every cache, and a cache written by a build
/// with another JPEG decoder is rebuilt rather than mixed.
pub fn preprocess_recipe() -> String {
    format!(
        "rgb8 (JPEG: {}; CMYK JPEG: zune-jpeg 0.5, inverted-Adobe; others: image 0.25; alpha dropped); bilinear half-pixel f32, rounded; v2",
        super::libjpeg::jpeg_decoder()
    )
}

/// The category of a file kept although its decoder warned (libjpeg's "corrupt JPEG
/// data: ..."; TensorFlow and PIL decode these too).
pub const DECODED_WITH_WARNINGS: &str = "decoded with warnings";

/// How to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Square images of this many pixels a side.
    pub image_size: usize,
    /// Folder of cache files; `None`: no cache (`--no-cache`).
    pub cache_dir: Option<PathBuf>,
    pub progress: bool,
    /// Decoding threads (default: rayon's pool, all cores).
    pub threads: Option<usize>,
}

/// What happened to the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheUse {
    Disabled,
    Hit(PathBuf),
    /// Written now; the string says why an existing one was not used.
    Written {
        path: PathBuf,
        replaced: Option<String>,
    },
    /// The cache folder could not be written: loaded without a cache (the reason).
    Unwritable(String),
}

/// A loaded set and the facts for the summary and the skip report.
#[derive(Debug)]
pub struct Loaded {
    pub set: ImageSet<Pixels>,
    pub meta: Meta,
    pub cache: CacheUse,
    pub seconds: f64,
}

impl Loaded {
    /// Skipped items by category, most frequent first.
    pub fn skip_counts(&self) -> Vec<(String, usize)> {
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &self.meta.skipped {
            *by.entry(&s.category).or_default() += 1;
        }
        let mut v: Vec<(String, usize)> = by.into_iter().map(|(k, n)| (k.to_string(), n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// One line: images, classes (with counts), skipped by reason, time, cache.
    pub fn summary(&self) -> String {
        let all: Vec<usize> = (0..self.set.len()).collect();
        let counts = self.set.class_counts(&all);
        let classes: Vec<String> = self
            .set
            .class_names
            .iter()
            .zip(&counts)
            .map(|(n, c)| format!("{n} {c}"))
            .collect();
        let skipped = if self.meta.skipped.is_empty() {
            "0 skipped".to_string()
        } else {
            let parts: Vec<String> = self
                .skip_counts()
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect();
            format!("{} skipped ({})", self.meta.skipped.len(), parts.join(", "))
        };
        let skipped = match self.meta.warnings.len() {
            0 => skipped,
            n => format!("{skipped}, {n} kept with decoder warnings"),
        };
        let cache = match &self.cache {
            CacheUse::Disabled => "no cache".to_string(),
            CacheUse::Unwritable(why) => format!("no cache ({why})"),
            CacheUse::Hit(p) => format!("from cache {}", p.display()),
            CacheUse::Written { path, replaced } => format!(
                "cache written to {}{}",
                path.display(),
                replaced
                    .as_ref()
                    .map(|r| format!(" (previous one {r})"))
                    .unwrap_or_default()
            ),
        };
        // Decoding speed where images were decoded (what `--preprocess-threads` changes).
        let time = match &self.cache {
            CacheUse::Hit(_) => format!("{:.2} s", self.seconds),
            _ => format!(
                "{:.2} s ({:.0} images/s decoded)",
                self.seconds,
                self.meta.candidates as f64 / self.seconds.max(1e-9)
            ),
        };
        format!(
            "data: {} images {}x{} in {} classes ({}) from {} [{}], {}; {}, {}",
            self.set.len(),
            self.set.shape.height,
            self.set.shape.width,
            self.set.classes(),
            classes.join(", "),
            self.meta.source,
            self.meta.kind,
            skipped,
            time,
            cache
        )
    }
}

/// One thing to decode.
enum Item<'a> {
    File { path: &'a Path, label: u32 },
    Record { shard: usize, span: RecordSpan },
}

/// The recipe and every input file: what the cache key hashes.
fn manifest(source: &Source, shape: ImageShape) -> String {
    let mut m = format!(
        "focalflow image cache\nrecipe: {}\nshape: {}x{}x{}\nkind: {}\nclasses: {}\n",
        preprocess_recipe(),
        shape.height,
        shape.width,
        shape.channels,
        source.kind(),
        source.class_names().join("/")
    );
    let root = source.root();
    for f in source.input_files() {
        let rel = f.path.strip_prefix(root).unwrap_or(&f.path);
        m.push_str(&format!(
            "{}\t{}\t{}\n",
            rel.display(),
            f.size,
            f.modified_ns
        ));
    }
    m
}

/// The cache file for `source` at `size`: named after the folder, a hash of its full path,
/// and the size; one file per (folder, size), replaced when stale.
pub fn cache_path(dir: &Path, source_root: &Path, size: usize) -> PathBuf {
    let full = std::fs::canonicalize(source_root).unwrap_or_else(|_| source_root.to_path_buf());
    let mut name = full
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        // A TFDS version folder: cats_vs_dogs-4.0.1.
        if let Some(parent) = full.parent().and_then(|p| p.file_name()) {
            name = format!("{}-{name}", parent.to_string_lossy());
        }
    }
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = cache::fnv1a(full.to_string_lossy().as_bytes());
    dir.join(format!("{name}-{:08x}-{size}px.ffcache", hash as u32))
}

/// The largest `--image-size`: 48 MiB per image already.
pub const MAX_IMAGE_SIZE: usize = 4096;

/// Loads `dir` (see the module documentation).
pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Loaded> {
    load_source(dir, discover(dir)?, opts)
}

/// [`load`] of what `discover(dir)` found already (`train` discovers first, to check its
/// options against the classes before any image is read).
pub fn load_source(dir: &Path, source: Source, opts: &LoadOptions) -> Result<Loaded> {
    if opts.image_size == 0 || opts.image_size > MAX_IMAGE_SIZE {
        return Err(Error::invalid(format!(
            "--image-size {}: must be between 1 and {MAX_IMAGE_SIZE}",
            opts.image_size
        )));
    }
    let start = Instant::now();
    let shape = ImageShape {
        height: opts.image_size,
        width: opts.image_size,
        channels: 3,
    };
    let key = Key::of(&manifest(&source, shape));
    let (mut replaced, mut unwritable) = (None, None);
    // A --labels set is decoded each run: the cache keys a folder's class tree, and its
    // labels live in the list, not in the images.
    let listed = matches!(source, Source::Listed { .. });
    let cache_file = opts
        .cache_dir
        .as_ref()
        .filter(|_| !listed)
        .map(|d| cache_path(d, source.root(), opts.image_size));
    if let Some(path) = &cache_file {
        match cache::open(path, key, shape) {
            Ok((set, meta)) => {
                let loaded = Loaded {
                    set,
                    meta,
                    cache: CacheUse::Hit(path.clone()),
                    seconds: start.elapsed().as_secs_f64(),
                };
                check_classes(&loaded, dir)?;
                return Ok(loaded);
            }
            Err(why) if path.exists() => replaced = Some(why),
            Err(_) => {}
        }
    }
    let pool = match opts.threads {
        Some(n) => Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n.max(1))
                .build()
                .map_err(|e| Error::invalid(format!("cannot start {n} threads: {e}")))?,
        ),
        None => None,
    };
    // The decoded set's size (class-per-folder: every candidate file; TFDS: unknown until
    // read): a cache that would not fit the disk is not started, and a set held in memory
    // must fit the memory, both said before any image is decoded.
    let set_bytes = source
        .candidate_count()
        .map(|n| (n as u64).saturating_mul(shape.len() as u64));
    if let (Some(path), Some(need)) = (&cache_file, set_bytes)
        && let Some(free) = crate::system::free_disk_space(path)
        && need > free
    {
        unwritable = Some(format!(
            "it would take {} of disk, {} is free there",
            crate::system::gib(need),
            crate::system::gib(free)
        ));
    }
    // A cache folder that cannot be written (read-only, no permission) costs the speed-up
    // of the next run, not this run: say so and go on in memory.
    let writer = match &cache_file {
        Some(_) if unwritable.is_some() => None,
        Some(path) => match cache::Writer::create(path) {
            Ok(w) => Some(w),
            Err(e) => {
                unwritable = Some(e.to_string());
                None
            }
        },
        None => None,
    };
    if writer.is_none()
        && let (Some(need), Some(available)) = (set_bytes, crate::system::available_memory())
        && need > available
    {
        return Err(Error::file(
            dir,
            format!(
                "--image-size {}: the decoded images take {} of memory, {} is available; use a smaller --image-size",
                opts.image_size,
                crate::system::gib(need),
                crate::system::gib(available)
            ),
        ));
    }
    let run = || preprocess(&source, shape, key, writer, opts.progress, start);
    let (mut set, meta) = match &pool {
        Some(p) => p.install(run)?,
        None => run()?,
    };
    if let Source::Listed { label_sets, .. } = &source {
        // The decoded images' labels are their lines in the list: their label sets now.
        let sets: Vec<Vec<u32>> = set
            .labels
            .iter()
            .map(|&k| label_sets[k as usize].clone())
            .collect();
        set.labels = sets
            .iter()
            .map(|s| s.first().copied().unwrap_or(0))
            .collect();
        set.multi = Some(sets);
    }
    let loaded = Loaded {
        set,
        meta,
        cache: match (cache_file, unwritable) {
            (_, Some(why)) => CacheUse::Unwritable(why),
            (Some(path), None) => CacheUse::Written { path, replaced },
            (None, None) => CacheUse::Disabled,
        },
        seconds: start.elapsed().as_secs_f64(),
    };
    check_classes(&loaded, dir)?;
    Ok(loaded)
}

/// Every class needs a readable image, and the set needs two classes.
fn check_classes(loaded: &Loaded, dir: &Path) -> Result<()> {
    let skipped = || {
        let parts: Vec<String> = loaded
            .skip_counts()
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(
                " ({} skipped: {})",
                loaded.meta.skipped.len(),
                parts.join(", ")
            )
        }
    };
    if loaded.set.is_empty() {
        return Err(Error::file(
            dir,
            format!(
                "no readable image among {} files{}; --data needs JPEG, PNG, BMP, GIF or WebP images",
                loaded.meta.candidates,
                skipped()
            ),
        ));
    }
    let all: Vec<usize> = (0..loaded.set.len()).collect();
    let counts = loaded.set.class_counts(&all);
    // (A multi-label set may lack a label: its sigmoid then learns "absent".)
    if loaded.set.multi.is_none()
        && let Some(c) = counts.iter().position(|&n| n == 0)
    {
        return Err(Error::file(
            dir,
            format!(
                "class {:?} has no readable image{}; every class needs at least one",
                loaded.set.class_names[c],
                skipped()
            ),
        ));
    }
    if loaded.set.classes() < 2 {
        return Err(Error::file(
            dir,
            "the data has a single class; a classifier needs at least 2",
        ));
    }
    Ok(())
}

/// Where decoded pixels go: the cache file, or memory (the decode buffer itself).
enum Sink {
    Cache(cache::Writer),
    Memory,
}

fn preprocess(
    source: &Source,
    shape: ImageShape,
    key: Key,
    writer: Option<cache::Writer>,
    progress: bool,
    start: Instant,
) -> Result<(ImageSet<Pixels>, Meta)> {
    let mut skipped: Vec<Skipped> = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    // TFRecord shards are mapped and framed (both CRCs checked) first, in parallel.
    let (shard_maps, shard_names) = match source {
        Source::Listed { files, .. } => {
            // The label is the line's index until load_source turns it into its label set.
            items.extend(files.iter().enumerate().map(|(k, f)| Item::File {
                path: &f.path,
                label: k as u32,
            }));
            (Vec::new(), Vec::new())
        }
        Source::Folders { files, loops, .. } => {
            items.extend(files.iter().map(|(f, label)| Item::File {
                path: &f.path,
                label: *label,
            }));
            skipped.extend(loops.iter().map(|(l, why)| Skipped {
                item: l.display().to_string(),
                category: (*why).into(),
                detail:
                    "a symbolic link to a folder above it or of another class: not followed".into(),
            }));
            (Vec::new(), Vec::new())
        }
        Source::Tfds { shards, .. } => {
            let maps = shards
                .iter()
                .map(|s| {
                    let file = std::fs::File::open(&s.path).map_err(|e| Error::file(&s.path, e))?;
                    // SAFETY: read-only; a shard changed meanwhile shows up as CRC errors.
                    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::file(&s.path, e))
                })
                .collect::<Result<Vec<memmap2::Mmap>>>()?;
            let names: Vec<String> = shards
                .iter()
                .map(|s| {
                    s.path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            (maps, names)
        }
    };
    let framed: Vec<_> = shard_maps.par_iter().map(|m| tfrecord::frame(m)).collect();
    for (shard, (spans, problems)) in framed.into_iter().enumerate() {
        items.extend(spans.into_iter().map(|span| Item::Record { shard, span }));
        skipped.extend(problems.into_iter().map(|p| Skipped {
            item: format!("{}@{}", shard_names[shard], p.offset),
            category: "damaged record".into(),
            detail: p.message,
        }));
    }
    let candidates = items.len() + skipped.len();
    let known_classes = source.class_names().len();

    let bar = if progress {
        let bar = ProgressBar::new(items.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "preprocessing [{bar:30}] {pos}/{len} images, {per_sec}, {msg} ({eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let skipped_so_far = AtomicUsize::new(skipped.len());
    bar.set_message(format!("{} skipped", skipped.len()));

    // The label, and the decoder's warning if the image was kept despite one.
    type Processed = std::result::Result<(u32, Option<String>), Skip>;
    let process = |item: &Item, slot: &mut [u8]| -> Processed {
        match item {
            Item::File { path, label } => {
                let bytes = std::fs::read(path).map_err(|e| Skip::Unreadable(e.to_string()))?;
                let warning = decode_resized(&bytes, shape, slot)?;
                Ok((*label, warning))
            }
            Item::Record { shard, span } => {
                let record = &shard_maps[*shard][span.offset..][..span.len];
                let (image, label) = tfrecord::image_and_label(record).map_err(Skip::Corrupt)?;
                let in_range = if known_classes > 0 {
                    (0..known_classes as i64).contains(&label)
                } else {
                    (0..=65_535).contains(&label)
                };
                if !in_range {
                    return Err(Skip::Corrupt(format!(
                        "label {label} is outside the {known_classes} classes of the data set"
                    )));
                }
                let warning = decode_resized(&image, shape, slot)?;
                Ok((label as u32, warning))
            }
        }
    };
    let item_name = |item: &Item| match item {
        Item::File { path, .. } => path.display().to_string(),
        Item::Record { shard, span } => format!("{}@{}", shard_names[*shard], span.offset - 12),
    };

    let len = shape.len();
    // In memory, every image is decoded in place in one parallel pass: no barrier between
    // chunks, and no copy (a skipped image's slot is closed up afterwards). Into the cache,
    // in chunks, each written while its buffer is reused; large ones, so that the barrier
    // at each (the slowest image of the chunk) costs little.
    let chunk = match writer {
        None => items.len().max(1),
        Some(_) => (rayon::current_num_threads() * 128).clamp(256, 1024),
    };
    let mut sink = match writer {
        Some(w) => Sink::Cache(w),
        None => Sink::Memory,
    };
    let mut buffer = vec![0u8; chunk.min(items.len()).max(1) * len];
    let mut kept = 0usize;
    let mut labels: Vec<u32> = Vec::new();
    let mut warnings: Vec<Skipped> = Vec::new();
    for items in items.chunks(chunk) {
        let results: Vec<Processed> = buffer
            .par_chunks_mut(len)
            .zip(items.par_iter())
            .map(|(slot, item)| {
                let r = process(item, slot);
                bar.inc(1);
                if r.is_err() {
                    let n = skipped_so_far.fetch_add(1, Ordering::Relaxed) + 1;
                    bar.set_message(format!("{n} skipped"));
                }
                r
            })
            .collect();
        for (k, (r, item)) in results.into_iter().zip(items).enumerate() {
            match r {
                Ok((label, warning)) => {
                    match &mut sink {
                        Sink::Cache(w) => w.push(&buffer[k * len..][..len])?,
                        // (One chunk holds every image: `kept` <= k.)
                        Sink::Memory => {
                            if kept != k {
                                buffer.copy_within(k * len..(k + 1) * len, kept * len);
                            }
                            kept += 1;
                        }
                    }
                    labels.push(label);
                    if let Some(detail) = warning {
                        warnings.push(Skipped {
                            item: item_name(item),
                            category: DECODED_WITH_WARNINGS.into(),
                            detail,
                        });
                    }
                }
                Err(skip) => skipped.push(Skipped {
                    item: item_name(item),
                    category: skip.category().into(),
                    detail: skip.detail(),
                }),
            }
        }
    }
    bar.finish_and_clear();
    let class_names: Vec<String> = if known_classes > 0 {
        source.class_names().to_vec()
    } else {
        let max = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
        (0..max.max(2)).map(|c| c.to_string()).collect()
    };
    let meta = Meta {
        class_names,
        source: source.root().display().to_string(),
        kind: match source {
            Source::Tfds {
                split: Some(split), ..
            } => format!("{}, split {split}", source.kind()),
            _ => source.kind().to_string(),
        },
        candidates,
        skipped,
        warnings,
        preprocess_seconds: start.elapsed().as_secs_f64(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    match sink {
        Sink::Cache(w) => w.finish(key, shape, &labels, &meta),
        Sink::Memory => Ok((
            ImageSet {
                shape,
                class_names: meta.class_names.clone(),
                pixels: Pixels::Owned({
                    buffer.truncate(kept * len);
                    buffer
                }),
                labels,
                multi: None,
            },
            meta,
        )),
    }
}

/// Decodes `bytes` and resizes the image into `slot` (`shape`, RGB8); returns the
/// decoder's warning, if it had one.
pub fn decode_resized(
    bytes: &[u8],
    shape: ImageShape,
    slot: &mut [u8],
) -> std::result::Result<Option<String>, Skip> {
    thread_local! {
        /// The decoded full-size image, reused by each worker thread.
        static DECODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    DECODED.with_borrow_mut(|buf| {
        let decoded = decode_rgb8_into(bytes, buf)?;
        let (width, height) = (decoded.width, decoded.height);
        // A fresh slot's pages mapped (and zeroed) only now: still in cache when written.
        crate::system::populate(slot);
        resize_bilinear(buf, width, height, slot, shape.width, shape.height, 3);
        if buf.capacity() > 64 << 20 {
            *buf = Vec::new(); // do not hold on to a huge photo's buffer
        }
        Ok(decoded.warning)
    })
}
