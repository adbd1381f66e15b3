//! The image pipeline end to end on fixtures generated here: decoding of every format and
//! colour type, exact skip counts and reasons, resizing against independent values, the
//! cache (reuse, invalidation, damage), splits, and the errors for bad folders.

use std::path::{Path, PathBuf};

use focalflow::data::cache::Skipped;
use focalflow::data::decode::{Skip, decode_rgb8};
use focalflow::data::load::{CacheUse, LoadOptions, Loaded, load};
use focalflow::data::resize::resize_bilinear;
use focalflow::data::{ClassFraction, ImageSet, Pixels};
use image::{ImageEncoder, codecs};

/// A fresh, empty folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("data_pipeline")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A smooth, colourful test picture (so JPEG keeps it close).
fn picture(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            px.push(((x * 255) / w.max(1)) as u8);
            px.push(((y * 255) / h.max(1)) as u8);
            px.push(((x + y + seed * 40) % 256) as u8);
        }
    }
    px
}

fn jpeg(px: &[u8], w: u32, h: u32, colour: image::ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
        .write_image(px, w, h, colour)
        .unwrap();
    out
}

fn png(px: &[u8], w: u32, h: u32, colour: image::ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    codecs::png::PngEncoder::new(&mut out)
        .write_image(px, w, h, colour)
        .unwrap();
    out
}

fn cmyk_jpeg(c: u8, m: u8, y: u8, k: u8, w: u16, h: u16) -> Vec<u8> {
    let px: Vec<u8> = (0..w as usize * h as usize)
        .flat_map(|_| [c, m, y, k])
        .collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 95)
        .encode(&px, w, h, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    out
}

fn mean_rgb(img: &[u8]) -> [f64; 3] {
    let mut m = [0.0; 3];
    for px in img.chunks_exact(3) {
        for c in 0..3 {
            m[c] += f64::from(px[c]);
        }
    }
    m.map(|v| v / (img.len() / 3) as f64)
}

fn opts(size: usize, cache: Option<&Path>) -> LoadOptions {
    LoadOptions {
        image_size: size,
        cache_dir: cache.map(Path::to_path_buf),
        progress: false,
        threads: Some(2),
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The mixed folder: 2 classes, 7 good images of assorted formats, 5 bad files, a hidden
/// file and a stray file at the top.
fn mixed_folder(root: &Path) {
    use image::ExtendedColorType as C;
    let (w, h) = (37, 23);
    let rgb = picture(w, h, 1);
    let good_jpeg = jpeg(&rgb, w, h, C::Rgb8);
    // cat: RGB JPEG, grey JPEG, RGBA PNG, 16-bit PNG, a PNG named .jpg
    write(&root.join("cat/a_rgb.jpg"), &good_jpeg);
    let grey: Vec<u8> = (0..w * h).map(|i| (i % 251) as u8).collect();
    write(&root.join("cat/b_grey.jpeg"), &jpeg(&grey, w, h, C::L8));
    let rgba: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 7])
        .collect();
    write(&root.join("cat/c_rgba.png"), &png(&rgba, w, h, C::Rgba8));
    let rgb16: Vec<u8> = rgb
        .iter()
        .flat_map(|&v| (u16::from(v) * 257).to_be_bytes())
        .collect();
    write(&root.join("cat/d_16bit.png"), &png(&rgb16, w, h, C::Rgb16));
    write(
        &root.join("cat/nested/e_png_named.jpg"),
        &png(&rgb, w, h, C::Rgb8),
    );
    // dog: CMYK JPEG, BMP with no extension; bad files
    write(
        &root.join("dog/a_cmyk.jpg"),
        &cmyk_jpeg(0, 255, 255, 0, 31, 17),
    );
    let mut bmp = Vec::new();
    codecs::bmp::BmpEncoder::new(&mut bmp)
        .write_image(&rgb, w, h, C::Rgb8)
        .unwrap();
    write(&root.join("dog/b_bitmap"), &bmp);
    write(
        &root.join("dog/c_truncated.jpg"),
        &good_jpeg[..good_jpeg.len() / 2],
    );
    write(&root.join("dog/d_empty.jpg"), b"");
    write(
        &root.join("dog/e_text.jpg"),
        b"<html><body>404 Not Found</body></html>\n",
    );
    write(
        &root.join("dog/Thumbs.db"),
        &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1, 0, 0],
    );
    write(&root.join("dog/f_tiff.jpg"), b"II*\0\x08\0\0\0junk");
    write(&root.join("dog/.DS_Store"), b"\0\0\0\x01Bud1");
    write(&root.join("README.txt"), b"not a class");
}

fn skipped_by_name(skipped: &[Skipped]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = skipped
        .iter()
        .map(|s| {
            let name = Path::new(&s.item)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (name, s.category.clone())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn mixed_folder_decodes_what_it_can_and_reports_the_rest() {
    let root = scratch("mixed");
    mixed_folder(&root);
    let loaded = load(&root, &opts(16, None)).unwrap();
    assert_eq!(loaded.cache, CacheUse::Disabled);
    assert_eq!(loaded.set.class_names, vec!["cat", "dog"]);
    assert_eq!(loaded.set.labels, vec![0, 0, 0, 0, 0, 1, 1]);
    assert_eq!(loaded.set.pixels.len(), 7 * 16 * 16 * 3);
    assert_eq!(loaded.meta.candidates, 12);
    assert_eq!(
        skipped_by_name(&loaded.meta.skipped),
        vec![
            ("Thumbs.db".to_string(), "not an image".to_string()),
            ("c_truncated.jpg".into(), "truncated".into()),
            ("d_empty.jpg".into(), "empty file".into()),
            ("e_text.jpg".into(), "not an image".into()),
            ("f_tiff.jpg".into(), "unsupported format".into()),
        ]
    );
    let text = loaded
        .meta
        .skipped
        .iter()
        .find(|s| s.item.ends_with("e_text.jpg"))
        .unwrap();
    assert_eq!(
        (text.category.as_str(), text.detail.as_str()),
        ("not an image", "text")
    );
    let summary = loaded.summary();
    assert!(
        summary.contains("7 images 16x16 in 2 classes (cat 5, dog 2)")
            && summary.contains(
                "5 skipped (2 not an image, 1 empty file, 1 truncated, 1 unsupported format)"
            ),
        "{summary}"
    );
    // The CMYK JPEG (C=0, M=255, Y=255, K=0) is red.
    let cmyk = mean_rgb(loaded.set.image(5));
    assert!(
        cmyk[0] > 245.0 && cmyk[1] < 10.0 && cmyk[2] < 10.0,
        "{cmyk:?}"
    );
    // RGBA, 16-bit and the misnamed PNG all equal the RGB source resized.
    let mut expected = vec![0u8; 16 * 16 * 3];
    resize_bilinear(&picture(37, 23, 1), 37, 23, &mut expected, 16, 16, 3);
    for i in [2, 3, 4] {
        assert_eq!(loaded.set.image(i), &expected[..], "image {i}");
    }
    // The grey JPEG has three equal channels.
    assert!(
        loaded
            .set
            .image(1)
            .chunks_exact(3)
            .all(|p| p[0] == p[1] && p[1] == p[2])
    );
    // The JPEG is close to the source (lossy, quality 92).
    let diff = loaded
        .set
        .image(0)
        .iter()
        .zip(&expected)
        .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
        .max()
        .unwrap();
    assert!(diff <= 12, "JPEG differs by {diff}");
}

#[test]
fn cmyk_with_black_and_other_formats() {
    // C=0 M=255 Y=255 K=128 (Adobe inverted storage): R = 255 * (255-128) / 255 = 127.
    let img = decode_rgb8(&cmyk_jpeg(0, 255, 255, 128, 9, 9)).unwrap();
    let m = mean_rgb(&img.data);
    assert!(
        (m[0] - 127.0).abs() < 4.0 && m[1] < 6.0 && m[2] < 6.0,
        "{m:?}"
    );
    // GIF (first frame) and lossless WebP.
    let px = picture(11, 7, 3);
    let mut gif = Vec::new();
    {
        let mut enc = codecs::gif::GifEncoder::new(&mut gif);
        let rgba: Vec<u8> = px
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect();
        let frame = image::Frame::new(image::RgbaImage::from_raw(11, 7, rgba).unwrap());
        let mut second = frame.clone();
        second
            .buffer_mut()
            .pixels_mut()
            .for_each(|p| *p = image::Rgba([0, 0, 0, 255]));
        enc.encode_frames([frame, second]).unwrap();
    }
    let g = decode_rgb8(&gif).unwrap();
    assert_eq!((g.width, g.height), (11, 7));
    assert!(
        mean_rgb(&g.data)[0] > 50.0,
        "first frame, not the black second one"
    );
    let mut webp = Vec::new();
    codecs::webp::WebPEncoder::new_lossless(&mut webp)
        .write_image(&px, 11, 7, image::ExtendedColorType::Rgb8)
        .unwrap();
    assert_eq!(decode_rgb8(&webp).unwrap().data, px);
    // Junk after a valid JPEG's end marker is tolerated; bad data inside is not fatal.
    let mut tail = jpeg(&px, 11, 7, image::ExtendedColorType::Rgb8);
    tail.extend_from_slice(b"trailing bytes");
    assert!(decode_rgb8(&tail).is_ok());
    let mut broken = jpeg(&px, 11, 7, image::ExtendedColorType::Rgb8);
    let n = broken.len();
    broken[n - 2] = 0x12; // the EOI marker is gone: truncated
    assert!(matches!(decode_rgb8(&broken), Err(Skip::Truncated(_))));
}

/// `tf.image.resize(img, (h, w), "bilinear", antialias=False)` of the 3x5 RGB image below,
/// printed by TensorFlow 2.21 (4 decimals).
#[test]
fn resize_matches_tensorflow_values() {
    let img: [[u8; 3]; 15] = [
        [0, 10, 200],
        [50, 60, 70],
        [255, 0, 30],
        [90, 91, 92],
        [3, 140, 250],
        [20, 30, 40],
        [100, 110, 120],
        [5, 6, 7],
        [200, 201, 202],
        [60, 0, 60],
        [255, 255, 255],
        [0, 0, 0],
        [128, 64, 32],
        [33, 66, 99],
        [240, 120, 60],
    ];
    let src: Vec<u8> = img.iter().flatten().copied().collect();
    let cases: [(usize, usize, &[f64]); 2] = [
        (
            2,
            3,
            &[
                24.1667, 34.1667, 134.1667, 192.5, 1.5, 24.25, 50.6667, 109.5, 174.8333, 139.1667,
                141.6667, 144.1667, 97.25, 49.5, 25.75, 154.9167, 93.25, 81.5833,
            ],
        ),
        (
            7,
            2,
            &[
                37.5, 47.5, 102.5, 68.25, 103.25, 131.5, 43.5714, 53.5714, 102.1429, 82.0714,
                110.0357, 136.5, 61.7857, 71.7857, 101.0714, 123.5357, 130.3928, 151.5, 80.0, 90.0,
                100.0, 165.0, 150.75, 166.5, 73.0357, 78.75, 84.4643, 130.6072, 120.2143, 133.3928,
                66.0714, 67.5, 68.9286, 96.2143, 89.6786, 100.2857, 63.75, 63.75, 63.75, 84.75,
                79.5, 89.25,
            ],
        ),
    ];
    for (h, w, tf) in cases {
        let mut out = vec![0u8; h * w * 3];
        resize_bilinear(&src, 5, 3, &mut out, w, h, 3);
        for (i, (&o, &t)) in out.iter().zip(tf).enumerate() {
            assert!(
                (f64::from(o) - t).abs() <= 0.5 + 1e-3,
                "{h}x{w} [{i}]: {o} vs {t}"
            );
        }
    }
}

/// The same resize written independently in f64, straight from the definition.
fn reference_resize(src: &[u8], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<f64> {
    let at = |x: usize, y: usize, c: usize| f64::from(src[(y * sw + x) * 3 + c]);
    let coord = |o: usize, n_in: usize, n_out: usize| {
        let p = (o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5;
        let f = p.floor();
        let lo = f.max(0.0).min(n_in as f64 - 1.0) as usize;
        let hi = (f + 1.0).max(0.0).min(n_in as f64 - 1.0) as usize;
        (lo, hi, p - f)
    };
    let mut out = Vec::new();
    for y in 0..dh {
        let (y0, y1, fy) = coord(y, sh, dh);
        for x in 0..dw {
            let (x0, x1, fx) = coord(x, sw, dw);
            for c in 0..3 {
                let top = at(x0, y0, c) * (1.0 - fx) + at(x1, y0, c) * fx;
                let bottom = at(x0, y1, c) * (1.0 - fx) + at(x1, y1, c) * fx;
                out.push(top * (1.0 - fy) + bottom * fy);
            }
        }
    }
    out
}

#[test]
fn resize_matches_an_independent_reference_on_odd_sizes() {
    let mut seed = 12345u32;
    let src: Vec<u8> = (0..57 * 31 * 3)
        .map(|_| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 16) as u8
        })
        .collect();
    for (dw, dh) in [(13, 29), (224, 224), (57, 31), (100, 7), (1, 1)] {
        let mut out = vec![0u8; dw * dh * 3];
        resize_bilinear(&src, 57, 31, &mut out, dw, dh, 3);
        let reference = reference_resize(&src, 57, 31, dw, dh);
        assert_eq!(reference.len(), out.len(), "{dw}x{dh}: reference size");
        for (i, (&o, &r)) in out.iter().zip(&reference).enumerate() {
            assert!(
                (f64::from(o) - r).abs() <= 0.5 + 1e-3,
                "{dw}x{dh} [{i}]: {o} vs {r}"
            );
        }
    }
}

fn cache_hit(l: &Loaded) -> bool {
    matches!(l.cache, CacheUse::Hit(_))
}

fn same_set(a: &ImageSet<Pixels>, b: &ImageSet<Pixels>) -> bool {
    a.labels == b.labels && a.class_names == b.class_names && a.pixels[..] == b.pixels[..]
}

#[test]
fn cache_is_reused_and_rebuilt_when_stale_or_damaged() {
    let root = scratch("cache/data");
    let cache_dir = root.parent().unwrap().join("cache_files");
    let _ = std::fs::remove_dir_all(&cache_dir);
    mixed_folder(&root);
    let o = opts(12, Some(&cache_dir));
    let first = load(&root, &o).unwrap();
    let CacheUse::Written {
        path,
        replaced: None,
    } = &first.cache
    else {
        panic!("{:?}", first.cache)
    };
    let path = path.clone();
    assert!(path.exists());
    let second = load(&root, &o).unwrap();
    assert!(cache_hit(&second), "{:?}", second.cache);
    assert!(same_set(&first.set, &second.set));
    assert_eq!(first.meta.skipped, second.meta.skipped);
    assert!(matches!(second.set.pixels, Pixels::Mapped { .. }));
    // Same set without a cache, and with other thread counts.
    let plain = load(
        &root,
        &LoadOptions {
            threads: Some(1),
            ..opts(12, None)
        },
    )
    .unwrap();
    assert!(same_set(&first.set, &plain.set));
    // Another size is another cache file.
    let other = load(&root, &opts(10, Some(&cache_dir))).unwrap();
    assert!(matches!(other.cache, CacheUse::Written { .. }));
    assert!(cache_hit(&load(&root, &o).unwrap()));

    // A changed file: stale, rebuilt, and the new content is used.
    let px = picture(20, 20, 9);
    write(
        &root.join("dog/c_truncated.jpg"),
        &png(&px, 20, 20, image::ExtendedColorType::Rgb8),
    );
    let rebuilt = load(&root, &o).unwrap();
    match &rebuilt.cache {
        CacheUse::Written {
            replaced: Some(why),
            ..
        } => assert!(why.starts_with("stale"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(rebuilt.set.len(), 8);
    assert_eq!(rebuilt.meta.skipped.len(), 4);
    assert!(cache_hit(&load(&root, &o).unwrap()));

    // A removed file is a change too.
    std::fs::remove_file(root.join("dog/d_empty.jpg")).unwrap();
    assert!(!cache_hit(&load(&root, &o).unwrap()));

    // A flipped pixel byte: damaged, rebuilt.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096 + 100] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let repaired = load(&root, &o).unwrap();
    match &repaired.cache {
        CacheUse::Written {
            replaced: Some(why),
            ..
        } => {
            assert!(why.contains("pixel checksum"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // A truncated cache file, and garbage: rebuilt too.
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 10).unwrap();
    drop(f);
    assert!(!cache_hit(&load(&root, &o).unwrap()));
    std::fs::write(&path, b"garbage").unwrap();
    let again = load(&root, &o).unwrap();
    assert!(matches!(
        &again.cache,
        CacheUse::Written {
            replaced: Some(_),
            ..
        }
    ));
    assert!(same_set(&again.set, &load(&root, &o).unwrap().set));
    // A cache folder that cannot be made (its parent is a file): loaded anyway, said why.
    let blocked = cache_dir.join("a_file");
    std::fs::write(&blocked, b"x").unwrap();
    let fallback = load(&root, &opts(12, Some(&blocked.join("sub")))).unwrap();
    match &fallback.cache {
        CacheUse::Unwritable(why) => assert!(why.contains("--cache-dir"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(same_set(&fallback.set, &again.set));
    assert!(
        fallback.summary().contains("no cache ("),
        "{}",
        fallback.summary()
    );
    std::fs::remove_file(&blocked).unwrap();
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&cache_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn balanced_folder(root: &Path, per_class: usize, classes: &[&str]) {
    for (c, name) in classes.iter().enumerate() {
        for i in 0..per_class {
            let px = picture(9, 7, (i + c * 100) as u32);
            write(
                &root.join(name).join(format!("{i:03}.png")),
                &png(&px, 9, 7, image::ExtendedColorType::Rgb8),
            );
        }
    }
}

#[test]
fn split_is_deterministic_stratified_and_class_fraction_subsamples() {
    let root = scratch("split");
    balanced_folder(&root, 40, &["a", "b", "c"]);
    let set = load(&root, &opts(8, None)).unwrap().set;
    let (train, val) = set.training_split(0.25, 7, &[]).unwrap();
    assert_eq!(set.class_counts(&train), vec![30, 30, 30]);
    assert_eq!(set.class_counts(&val), vec![10, 10, 10]);
    assert_eq!(
        (train.clone(), val.clone()),
        set.training_split(0.25, 7, &[]).unwrap()
    );
    assert_ne!(val, set.training_split(0.25, 8, &[]).unwrap().1);
    let fractions = vec![ClassFraction {
        class: "b".into(),
        fraction: 0.25,
    }];
    let (train_f, val_f) = set.training_split(0.25, 7, &fractions).unwrap();
    assert_eq!(set.class_counts(&train_f), vec![30, 7, 30]);
    assert_eq!(set.class_counts(&val_f), vec![10, 3, 10]);
    assert_eq!(
        (train_f.clone(), val_f),
        set.training_split(0.25, 7, &fractions).unwrap()
    );
    let kept = set.subsample(&fractions, 7).unwrap();
    assert_eq!(set.class_counts(&kept), vec![40, 10, 40]);
    let mut both = [
        train_f.clone(),
        set.training_split(0.25, 7, &fractions).unwrap().1,
    ]
    .concat();
    both.sort_unstable();
    assert_eq!(both, kept);
    // By index, and unknown classes named with the valid ones.
    let by_index: ClassFraction = "1=0.25".parse().unwrap();
    assert_eq!(set.training_split(0.25, 7, &[by_index]).unwrap().0, train_f);
    let err = set
        .subsample(&["dog=0.5".parse().unwrap()], 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no class \"dog\"") && err.contains("a, b, c"),
        "{err}"
    );
    for bad in ["b", "b=0", "b=1.5", "b=x", "=0.5"] {
        let err = bad.parse::<ClassFraction>().unwrap_err().to_string();
        assert!(
            err.contains("--class-fraction") && err.contains("CLASS=F"),
            "{err}"
        );
    }
}

#[test]
fn flips_mirror_rows_and_are_seeded() {
    let root = scratch("flip");
    balanced_folder(&root, 16, &["a", "b"]);
    let set = load(&root, &opts(6, None)).unwrap().set;
    let idx: Vec<usize> = (0..32).collect();
    let (mut plain, mut y0) = (Vec::new(), Vec::new());
    set.fill_batch(&idx, &mut plain, &mut y0);
    let (mut f1, mut y1) = (Vec::new(), Vec::new());
    set.fill_batch_augmented(&idx, Some(3), &mut f1, &mut y1);
    let (mut f2, mut y2) = (Vec::new(), Vec::new());
    set.fill_batch_augmented(&idx, Some(3), &mut f2, &mut y2);
    assert_eq!(f1, f2);
    assert_eq!(y0, y1);
    let len = 6 * 6 * 3;
    let mut flipped = 0;
    for s in 0..32 {
        let (p, f) = (&plain[s * len..][..len], &f1[s * len..][..len]);
        if p != f {
            flipped += 1;
            for y in 0..6 {
                for x in 0..6 {
                    for c in 0..3 {
                        assert_eq!(f[(y * 6 + x) * 3 + c], p[(y * 6 + 5 - x) * 3 + c]);
                    }
                }
            }
        }
    }
    assert!((6..=26).contains(&flipped), "{flipped} of 32 flipped");
}

#[test]
fn bad_folders_give_one_clear_line() {
    let err = |dir: &Path| load(dir, &opts(8, None)).unwrap_err().to_string();
    let root = scratch("errors");
    let missing = err(&root.join("nope"));
    assert!(
        missing.contains("nope") && missing.contains("--data"),
        "{missing}"
    );
    balanced_folder(&root.join("one"), 2, &["only"]);
    let one = err(&root.join("one"));
    assert!(
        one.contains("at least 2 class folders") && one.contains("only \"only\""),
        "{one}"
    );
    balanced_folder(&root.join("empty"), 2, &["a"]);
    std::fs::create_dir_all(root.join("empty/b")).unwrap();
    let empty = err(&root.join("empty"));
    assert!(empty.contains("class \"b\" is empty"), "{empty}");
    write(&root.join("junk/a/x.jpg"), b"hello");
    write(&root.join("junk/b/y.jpg"), b"");
    let junk = err(&root.join("junk"));
    assert!(
        junk.contains("no readable image among 2 files") && junk.contains("1 empty file"),
        "{junk}"
    );
    balanced_folder(&root.join("half"), 2, &["a"]);
    write(&root.join("half/b/y.jpg"), b"not really");
    let half = err(&root.join("half"));
    assert!(half.contains("class \"b\" has no readable image"), "{half}");
    for e in [missing, one, empty, junk, half] {
        assert!(!e.contains('\n'), "one line: {e}");
    }
}

// --- TFDS TFRecord shards -------------------------------------------------------------

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Field `tag` with wire type 2 (length-delimited).
fn field(tag: u64, body: &[u8], out: &mut Vec<u8>) {
    varint(tag << 3 | 2, out);
    varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// A `tf.train.Example` encoded by hand: features { feature { key, value: Feature } }.
fn example(image: &[u8], label: i64, image_key: &str) -> Vec<u8> {
    let entry = |key: &str, feature: Vec<u8>| {
        let mut e = Vec::new();
        field(1, key.as_bytes(), &mut e);
        field(2, &feature, &mut e);
        e
    };
    let mut bytes_list = Vec::new();
    field(1, image, &mut bytes_list);
    let mut image_feature = Vec::new();
    field(1, &bytes_list, &mut image_feature);
    let mut packed = Vec::new();
    varint(label as u64, &mut packed);
    let mut int64_list = Vec::new();
    field(1, &packed, &mut int64_list);
    let mut label_feature = Vec::new();
    field(3, &int64_list, &mut label_feature);
    let mut name_list = Vec::new();
    field(1, b"some/file.jpg", &mut name_list);
    let mut name_feature = Vec::new();
    field(1, &name_list, &mut name_feature);
    let mut features = Vec::new();
    field(1, &entry(image_key, image_feature), &mut features);
    field(1, &entry("label", label_feature), &mut features);
    field(1, &entry("image/filename", name_feature), &mut features);
    let mut ex = Vec::new();
    field(1, &features, &mut ex);
    ex
}

fn masked(data: &[u8]) -> u32 {
    let c = crc32c::crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn tfrecord(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let len = (r.len() as u64).to_le_bytes();
        out.extend_from_slice(&len);
        out.extend_from_slice(&masked(&len).to_le_bytes());
        out.extend_from_slice(r);
        out.extend_from_slice(&masked(r).to_le_bytes());
    }
    out
}

#[test]
fn tfds_shards_are_read_with_crcs_checked() {
    let base = scratch("tfds");
    let version = base.join("cats_vs_dogs").join("4.0.1");
    let old = base.join("cats_vs_dogs").join("3.0.0");
    let imgs: Vec<Vec<u8>> = (0..5)
        .map(|i| png(&picture(13, 11, i), 13, 11, image::ExtendedColorType::Rgb8))
        .collect();
    let shard0 = tfrecord(&[
        example(&imgs[0], 0, "image"),
        example(&imgs[1], 1, "image"),
        example(b"not an image at all", 0, "image"),
    ]);
    let mut shard1 = tfrecord(&[
        example(&imgs[2], 1, "image/encoded"),
        example(&imgs[3], 0, "image"),
        example(&imgs[4], 7, "image"),
    ]);
    // Damage the data of the second record of shard 1.
    let first_len = 16 + example(&imgs[2], 1, "image/encoded").len();
    shard1[first_len + 20] ^= 0xFF;
    write(
        &version.join("cats_vs_dogs-train.tfrecord-00000-of-00002"),
        &shard0,
    );
    write(
        &version.join("cats_vs_dogs-train.tfrecord-00001-of-00002"),
        &shard1,
    );
    write(
        &version.join("cats_vs_dogs-test.tfrecord-00000-of-00001"),
        &tfrecord(&[example(&imgs[0], 0, "image")]),
    );
    write(&version.join("label.labels.txt"), b"cat\ndog\n");
    write(
        &version.join("dataset_info.json"),
        br#"{"name": "cats_vs_dogs", "version": "4.0.1"}"#,
    );
    write(&old.join("dataset_info.json"), b"{}");
    // The data set folder: the newest version is used.
    let loaded = load(&base.join("cats_vs_dogs"), &opts(13, None)).unwrap();
    assert_eq!(loaded.set.class_names, vec!["cat", "dog"]);
    assert_eq!(loaded.set.labels, vec![0, 1, 1]);
    assert!(
        loaded.meta.kind.contains("split train"),
        "{}",
        loaded.meta.kind
    );
    assert_eq!(loaded.meta.candidates, 6);
    let cats: Vec<(String, String)> = loaded
        .meta
        .skipped
        .iter()
        .map(|s| (s.category.clone(), s.detail.clone()))
        .collect();
    assert_eq!(cats.len(), 3, "{cats:?}");
    assert!(
        cats.iter()
            .any(|(c, d)| c == "damaged record" && d.contains("data CRC"))
    );
    assert!(cats.iter().any(|(c, _)| c == "not an image"));
    assert!(
        cats.iter()
            .any(|(_, d)| d.contains("label 7 is outside the 2 classes"))
    );
    // Pixels are the images themselves (13x11 -> 13x13 resize), as from a folder.
    let mut expected = vec![0u8; 13 * 13 * 3];
    resize_bilinear(&picture(13, 11, 2), 13, 11, &mut expected, 13, 13, 3);
    assert_eq!(loaded.set.image(2), &expected[..]);
    // Class names from dataset_info.json when there is no labels file.
    std::fs::remove_file(version.join("label.labels.txt")).unwrap();
    write(
        &version.join("dataset_info.json"),
        br#"{"features": {"featuresDict": {"features": {"label": {"classLabel": {"numClasses": "2", "names": ["Cat", "Dog"]}}}}}}"#,
    );
    let loaded = load(&version, &opts(13, None)).unwrap();
    assert_eq!(loaded.set.class_names, vec!["Cat", "Dog"]);
}

/// A symbolic link back to a folder above it (here the data folder) is left out and listed
/// with the skipped files; it neither fails the run nor pulls another class's images in.
#[cfg(unix)]
#[test]
fn a_symbolic_link_loop_is_skipped_and_listed() {
    let root = scratch("link-loop");
    for (class, seed) in [("cat", 1), ("dog", 2)] {
        for i in 0..3 {
            write(
                &root.join(class).join(format!("{i}.png")),
                &png(
                    &picture(9, 7, seed * 10 + i),
                    9,
                    7,
                    image::ExtendedColorType::Rgb8,
                ),
            );
        }
    }
    std::os::unix::fs::symlink("..", root.join("cat/up")).unwrap();
    std::os::unix::fs::symlink(".", root.join("dog/here")).unwrap();
    // A link from one class into another would give the other's images this label.
    std::os::unix::fs::symlink("../dog", root.join("cat/dogs")).unwrap();
    let loaded = load(&root, &opts(8, None)).unwrap();
    assert_eq!(
        loaded
            .set
            .class_counts(&(0..loaded.set.len()).collect::<Vec<_>>()),
        [3, 3]
    );
    let skipped = skipped_by_name(&loaded.meta.skipped);
    assert_eq!(
        skipped,
        [
            ("dogs".to_string(), "link into another class".to_string()),
            ("here".to_string(), "symbolic-link loop".to_string()),
            ("up".to_string(), "symbolic-link loop".to_string())
        ],
        "{skipped:?}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
