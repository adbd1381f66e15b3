//! The libjpeg-turbo shim (`src/data/libjpeg_decode.c`).

use std::env;
use std::path::Path;

/// Compiles `src/data/libjpeg_decode.c` against the system's libjpeg(-turbo) and sets the
/// `focalflow_libjpeg` cfg, so that JPEGs decode as `tf.image.decode_jpeg` decodes them.
/// Without the headers (Debian: `libjpeg62-turbo-dev`), the build goes on with zune-jpeg
/// alone and says so. `FOCALFLOW_LIBJPEG=0` leaves libjpeg out; `=require` makes its
/// absence an error (CI sets it, so the libjpeg tests cannot be skipped there).
pub(crate) fn build_libjpeg(root: &Path) {
    println!("cargo::rustc-check-cfg=cfg(focalflow_libjpeg)");
    println!("cargo:rerun-if-env-changed=FOCALFLOW_LIBJPEG");
    let shim = root.join("src").join("data").join("libjpeg_decode.c");
    println!("cargo:rerun-if-changed={}", shim.display());
    let setting = env::var("FOCALFLOW_LIBJPEG").unwrap_or_default();
    if setting == "0" {
        println!("cargo:warning=FOCALFLOW_LIBJPEG=0: JPEGs decode with zune-jpeg only");
        return;
    }
    let compiled = cc::Build::new()
        .file(&shim)
        .opt_level(2)
        .warnings(true)
        .cargo_warnings(false)
        .try_compile("focalflow_libjpeg");
    match compiled {
        Ok(()) => {
            println!("cargo:rustc-link-lib=jpeg");
            println!("cargo:rustc-cfg=focalflow_libjpeg");
        }
        Err(e) if setting == "require" => panic!(
            "FOCALFLOW_LIBJPEG=require, but {} does not compile against libjpeg ({e}); \
             install libjpeg-turbo's headers (Debian: apt install libjpeg62-turbo-dev)",
            shim.display()
        ),
        Err(_) => println!(
            "cargo:warning=libjpeg-turbo headers not found (Debian: libjpeg62-turbo-dev): \
             JPEGs decode with zune-jpeg, close to but not bit-identical with tf.image"
        ),
    }
}
