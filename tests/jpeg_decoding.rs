//! JPEG decoding against TensorFlow: `tests/data/tf_jpeg/` holds small JPEGs of the common
//! kinds (4:2:0, 4:2:2, 4:4:4, progressive, restart markers, grey) and the pixels
//! `tf.image.decode_jpeg(channels=3)` gave for each (scripts/tf_jpeg_fixtures.py,
//! TensorFlow 2.21). The libjpeg-turbo path must reproduce them bit for bit; the zune-jpeg
//! fallback must stay within a few levels. Damaged files behave as in TensorFlow.
//!
//! Without libjpeg in the build the exact test prints `SKIPPED` and passes, unless
//! `FOCALFLOW_LIBJPEG=require` (as in CI), where it fails.

mod common;

use std::path::PathBuf;

use focalflow::data::decode::{Skip, decode_jpeg_with_zune, decode_rgb8};
use focalflow::data::libjpeg;

struct Fixture {
    name: String,
    jpeg: Vec<u8>,
    width: usize,
    height: usize,
    tf_pixels: Vec<u8>,
}

fn fixtures() -> Vec<Fixture> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tf_jpeg");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let all: Vec<Fixture> = index["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|img| {
            let name = img["name"].as_str().unwrap().to_string();
            let fixture = Fixture {
                jpeg: std::fs::read(dir.join(format!("{name}.jpg"))).unwrap(),
                tf_pixels: std::fs::read(dir.join(format!("{name}.rgb"))).unwrap(),
                width: img["width"].as_u64().unwrap() as usize,
                height: img["height"].as_u64().unwrap() as usize,
                name,
            };
            assert_eq!(
                fixture.tf_pixels.len(),
                fixture.width * fixture.height * 3,
                "{}",
                fixture.name
            );
            fixture
        })
        .collect();
    assert_eq!(all.len(), 6, "fixtures in index.json");
    all
}

/// (largest, mean) absolute difference of two equal-length pixel buffers.
fn difference(a: &[u8], b: &[u8]) -> (u8, f64) {
    assert_eq!(a.len(), b.len());
    let diffs = a.iter().zip(b).map(|(&x, &y)| x.abs_diff(y));
    let max = diffs.clone().max().unwrap_or(0);
    let mean = diffs.map(f64::from).sum::<f64>() / a.len() as f64;
    (max, mean)
}

/// False (after saying so) when this build has no libjpeg and that is allowed.
fn libjpeg_built() -> bool {
    if libjpeg::AVAILABLE {
        return true;
    }
    let required = std::env::var("FOCALFLOW_LIBJPEG").is_ok_and(|v| v == "require");
    assert!(
        !required,
        "FOCALFLOW_LIBJPEG=require, but this build has no libjpeg ({})",
        libjpeg::jpeg_decoder()
    );
    common::skipped("(built without libjpeg-turbo): jpeg_decoding: the decode is zune-jpeg's");
    false
}

#[test]
fn libjpeg_path_gives_tensorflows_pixels_exactly() {
    if !libjpeg_built() {
        return;
    }
    for f in fixtures() {
        let img = decode_rgb8(&f.jpeg).unwrap_or_else(|e| panic!("{}: {e:?}", f.name));
        assert_eq!((img.width, img.height), (f.width, f.height), "{}", f.name);
        let (max, mean) = difference(&img.data, &f.tf_pixels);
        assert!(
            max == 0,
            "{}: differs from tf.image.decode_jpeg by up to {max} (mean {mean:.3}) with {}",
            f.name,
            libjpeg::jpeg_decoder()
        );
    }
}

#[test]
fn zune_fallback_stays_within_a_few_levels_of_tensorflow() {
    for f in fixtures() {
        let img = decode_jpeg_with_zune(&f.jpeg).unwrap_or_else(|e| panic!("{}: {e:?}", f.name));
        assert_eq!((img.width, img.height), (f.width, f.height), "{}", f.name);
        let (max, mean) = difference(&img.data, &f.tf_pixels);
        eprintln!(
            "{}: zune-jpeg vs TensorFlow: max {max}, mean {mean:.3}",
            f.name
        );
        assert!(
            max <= 12 && mean < 1.5,
            "{}: max {max}, mean {mean:.3}",
            f.name
        );
    }
}

#[test]
fn damaged_files_behave_as_in_tensorflow() {
    let base = fixtures()
        .into_iter()
        .find(|f| f.name == "baseline_420_q90")
        .unwrap();
    let sos = base
        .jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xDA])
        .unwrap();

    // Garbled entropy-coded data (no 0xFF bytes added): TensorFlow decodes it with a
    // "corrupt JPEG data" warning, and so does focalflow (the image is kept, not skipped).
    let mut garbled = base.jpeg.clone();
    for b in &mut garbled[sos + 40..sos + 60] {
        *b = ((u32::from(*b) * 7 + 13) % 255) as u8;
    }
    let mut buf = Vec::new();
    let img = focalflow::data::decode::decode_rgb8_into(&garbled, &mut buf)
        .expect("garbled scan data still decodes");
    assert_eq!((img.width, img.height), (base.width, base.height));
    if libjpeg::AVAILABLE {
        // TensorFlow printed the same: "Corrupt JPEG data: 37 extraneous bytes before
        // marker 0xd9".
        assert_eq!(
            img.warning.as_deref(),
            Some("libjpeg: Corrupt JPEG data: 37 extraneous bytes before marker 0xd9")
        );
    }

    // A quantisation table with index 7 (0..3 exist): TensorFlow fails ("Bogus DQT
    // index 7"); focalflow skips the file as corrupt, naming libjpeg's reason.
    let mut bad_table = base.jpeg.clone();
    let dqt = bad_table
        .windows(2)
        .position(|w| w == [0xFF, 0xDB])
        .unwrap();
    bad_table[dqt + 4] = 0x07;
    let skip = decode_rgb8(&bad_table).expect_err("a bogus table index is an error");
    assert_eq!(skip.category(), "corrupt data", "{skip:?}");
    if libjpeg::AVAILABLE {
        assert_eq!(skip, Skip::Corrupt("JPEG: Bogus DQT index 7".into()));
    }

    // Cut before the end-of-image marker: skipped as truncated (TensorFlow: "premature
    // end of JPEG data"), whichever decoder the build has.
    let cut = &base.jpeg[..base.jpeg.len() - 200];
    let skip = decode_rgb8(cut).expect_err("truncated");
    assert_eq!(skip.category(), "truncated", "{skip:?}");
}

#[test]
fn a_reused_buffer_of_another_size_is_fitted_to_each_image() {
    // The loader reuses one buffer per thread: a larger image, then smaller ones, then a
    // larger one again, must each come out exactly as when decoded alone.
    let all = fixtures();
    let mut buf = Vec::new();
    for f in all.iter().chain(all.iter().rev()) {
        let d = focalflow::data::decode::decode_rgb8_into(&f.jpeg, &mut buf).unwrap();
        let (w, h) = (d.width, d.height);
        assert_eq!(d.warning, None, "{}: a clean file", f.name);
        assert_eq!((w, h), (f.width, f.height), "{}", f.name);
        assert_eq!(buf.len(), w * h * 3, "{}", f.name);
        assert_eq!(buf, decode_rgb8(&f.jpeg).unwrap().data, "{}", f.name);
    }
}

#[test]
fn mutated_files_never_crash_the_decoder() {
    // Seeded byte flips, marker insertions and cuts of every fixture: each must come back
    // decoded or as a Skip, whichever decoder takes it (a crash here would be a fault
    // across the C boundary, not a failed assertion).
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut decoded, mut skipped) = (0, 0);
    for f in fixtures() {
        for _ in 0..150 {
            let mut bytes = f.jpeg.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes
                        .splice(at..at, [0xFF, 0xC0 + (next() % 16) as u8])
                        .for_each(drop),
                    _ => bytes[at] ^= 1 << (next() % 8),
                }
            }
            if next() % 4 == 0 {
                // Cut the middle out but keep the end-of-image marker.
                let cut = 2 + (next() as usize) % (bytes.len() - 4);
                bytes.drain(cut..(cut + 64).min(bytes.len() - 2));
            }
            match decode_rgb8(&bytes) {
                Ok(img) => {
                    assert_eq!(img.data.len(), img.width * img.height * 3);
                    decoded += 1;
                }
                Err(_) => skipped += 1,
            }
        }
    }
    // Both outcomes occur, so both paths were exercised.
    assert!(
        decoded > 50 && skipped > 50,
        "decoded {decoded}, skipped {skipped}"
    );
}
