//! `focalflow train --data` end to end on a generated class-per-folder set with broken
//! files: the summary and skip report, the cache on the second run, `--no-cache`,
//! `--class-fraction`, `--alpha auto`, `--augment flip`, and bad flags.

use std::path::{Path, PathBuf};
use std::process::Output;

use image::{ImageEncoder, codecs};

mod common;
use common::{run, text};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("data_cli")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// `per_class` JPEGs per class (odd sizes, horizontal vs vertical gradient; Dog/1.jpg with
/// garbled scan data) and bad files: an empty one, a text file and truncated JPEGs.
fn pets(root: &Path, per_class: usize) {
    for (c, class) in ["Cat", "Dog"].iter().enumerate() {
        for i in 0..per_class {
            let (w, h) = (23 + i as u32 % 5, 19 + i as u32 % 3);
            let px: Vec<u8> = (0..w * h)
                .flat_map(|p| {
                    let (x, y) = (p % w, p / w);
                    let v = if c == 0 { x * 255 / w } else { y * 255 / h } as u8;
                    [v, v / 2, 255 - v]
                })
                .collect();
            let mut jpeg = Vec::new();
            codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
                .write_image(&px, w, h, image::ExtendedColorType::Rgb8)
                .unwrap();
            if c == 1 && i == 1 {
                // Garbled entropy-coded data (no 0xFF added): decoders carry on with a
                // warning, as TensorFlow does; the image is kept and the warning listed.
                let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
                for b in &mut jpeg[sos + 30..sos + 50] {
                    *b = ((u32::from(*b) * 7 + 13) % 255) as u8;
                }
            }
            write(&root.join(class).join(format!("{i}.jpg")), &jpeg);
            if i == 0 {
                write(
                    &root.join(class).join("broken.jpg"),
                    &jpeg[..jpeg.len() * 2 / 3],
                );
            }
        }
    }
    write(&root.join("Cat/666.jpg"), b"");
    write(&root.join("Dog/11702.jpg"), b"GIF? no: plain text\n");
}

fn train(data: &Path, cache: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--image-size",
        "16",
        "--arch",
        "c4,p,d8",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

#[test]
fn train_on_a_folder_reports_skips_and_reuses_the_cache() {
    let dir = scratch("pets");
    let (data, cache) = (dir.join("PetImages"), dir.join("cache"));
    pets(&data, 12);
    let first = ok(
        "first run",
        &train(&data, &cache, &dir.join("run1"), &["--alpha", "auto"]),
    );
    assert!(
        first.contains("data: 24 images 16x16 in 2 classes (Cat 12, Dog 12)")
            && first.contains("4 skipped (2 truncated, 1 empty file, 1 not an image)")
            && first.contains("cache written to"),
        "{first}"
    );
    assert!(
        first.contains("classes (train/val): Cat 10/2, Dog 10/2"),
        "{first}"
    );
    assert!(
        first.contains(
            "--alpha auto (effective number of samples, beta 0.999): Cat 0.5000, Dog 0.5000"
        ),
        "{first}"
    );
    let skipped = std::fs::read_to_string(dir.join("run1/skipped.tsv")).unwrap();
    assert_eq!(skipped.lines().count(), 5, "{skipped}");
    assert!(skipped.contains("666.jpg\tempty file\t"), "{skipped}");
    assert!(
        skipped.contains("11702.jpg\tnot an image\ttext\n"),
        "{skipped}"
    );
    // libjpeg reports the garbled file's damage; zune-jpeg (builds without libjpeg) is silent.
    let warnings = std::fs::read_to_string(dir.join("run1/decode_warnings.tsv"));
    if focalflow::data::libjpeg::AVAILABLE {
        assert!(first.contains("1 kept with decoder warnings"), "{first}");
        let warnings = warnings.unwrap();
        assert_eq!(warnings.lines().count(), 2, "{warnings}");
        assert!(
            warnings.contains("1.jpg\tdecoded with warnings\tlibjpeg: Corrupt JPEG data"),
            "{warnings}"
        );
    } else {
        assert!(warnings.is_err(), "no warnings file without warnings");
    }

    let second = ok(
        "second run",
        &train(&data, &cache, &dir.join("run2"), &["--augment", "flip"]),
    );
    assert!(second.contains("from cache"), "{second}");
    assert!(dir.join("run2/skipped.tsv").exists());

    let uncached = ok(
        "--no-cache",
        &train(&data, &cache, &dir.join("run3"), &["--no-cache"]),
    );
    assert!(uncached.contains("no cache"), "{uncached}");

    let imbalanced = ok(
        "--class-fraction",
        &train(
            &data,
            &cache,
            &dir.join("run4"),
            &["--class-fraction", "Dog=0.25", "--alpha", "auto:inverse"],
        ),
    );
    assert!(
        imbalanced.contains("classes (train/val): Cat 10/2, Dog 2/1"),
        "{imbalanced}"
    );
    // Inverse frequency over 10 and 2 training images: 2/12 and 10/12.
    assert!(
        imbalanced.contains("(inverse class frequency): Cat 0.1667, Dog 0.8333"),
        "{imbalanced}"
    );
    let config = std::fs::read_to_string(dir.join("run4/config.json")).unwrap();
    assert!(
        config.contains("\"class_fraction\"") && config.contains("\"Dog\""),
        "{config}"
    );
}

#[test]
fn bad_data_flags_are_one_clear_line() {
    let dir = scratch("bad");
    let (data, cache) = (dir.join("set"), dir.join("cache"));
    pets(&data, 3);
    let cases: [(&[&str], &str); 4] = [
        (&["--class-fraction", "Bird=0.5"], "no class \"Bird\""),
        (&["--class-fraction", "Cat=2"], "--class-fraction \"Cat=2\""),
        (&["--alpha", "auto:sideways"], "--alpha \"auto:sideways\""),
        (&["--loss", "ce", "--alpha", "auto"], "--alpha applies only"),
    ];
    for (extra, want) in cases {
        let out = train(&data, &cache, &dir.join("run"), extra);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{extra:?} should fail");
        assert!(err.contains(want), "{extra:?}: {err}");
    }
    let out = train(&dir.join("missing"), &cache, &dir.join("run"), &[]);
    assert!(
        text(&out.stderr).contains("missing"),
        "{}",
        text(&out.stderr)
    );
}
