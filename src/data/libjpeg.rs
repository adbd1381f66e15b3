//! JPEG decoding through the system's libjpeg-turbo (`libjpeg_decode.c`), configured as
//! `tf.image.decode_jpeg` configures it (integer-fast IDCT, fancy chroma upsampling): with
//! the same libjpeg-turbo version the pixels equal TensorFlow's, so a Keras experiment's
//! inputs are reproduced exactly. It is also faster: 0.83 ms against zune-jpeg's 1.03 ms of
//! CPU per 500x375 photo on the build machine (`cargo bench --bench preprocess`).
//!
//! Present when the build found libjpeg's headers (the `focalflow_libjpeg` cfg set by
//! build.rs); otherwise [`decode`] hands every file to zune-jpeg. CMYK and YCCK files are
//! always left to zune-jpeg, which converts them the way TensorFlow does.

use super::outcome::{Decoded, Skip, check_size};

/// Which decoder handles ordinary (YCbCr and grey) JPEGs in this build, for `info`,
/// the cache key and the README's claims.
pub fn jpeg_decoder() -> String {
    #[cfg(focalflow_libjpeg)]
    {
        let v = ffi_version();
        if v > 0 {
            format!(
                "libjpeg-turbo {}.{}.{} (IFAST, fancy upsampling: as tf.image.decode_jpeg)",
                v / 1_000_000,
                v / 1000 % 1000,
                v % 1000
            )
        } else {
            "libjpeg (not libjpeg-turbo; IFAST, fancy upsampling)".to_string()
        }
    }
    #[cfg(not(focalflow_libjpeg))]
    {
        "zune-jpeg 0.5 (built without libjpeg-turbo)".to_string()
    }
}

/// True when this build decodes JPEGs with libjpeg.
pub const AVAILABLE: bool = cfg!(focalflow_libjpeg);

/// Decodes a complete JPEG (one with its end-of-image marker) into `buf` as RGB8, with
/// libjpeg's first warning (and their number) if it had any. `Ok(None)`: not handled here
/// (no libjpeg in this build, or a CMYK/YCCK file); the caller decodes it with zune-jpeg.
pub fn decode(bytes: &[u8], buf: &mut Vec<u8>) -> Result<Option<Decoded>, Skip> {
    #[cfg(focalflow_libjpeg)]
    {
        decode_with_libjpeg(bytes, buf)
    }
    #[cfg(not(focalflow_libjpeg))]
    {
        let _ = (bytes, buf);
        Ok(None)
    }
}

#[cfg(focalflow_libjpeg)]
mod ffi {
    use std::ffi::{c_char, c_int, c_long, c_uchar, c_uint, c_ulong};

    // Return codes of focalflow_libjpeg_decode (libjpeg_decode.c).
    pub const OK: c_int = 0;
    pub const ERROR: c_int = 1;
    pub const NOT_HANDLED: c_int = 2;
    pub const NEED_SPACE: c_int = 3;

    unsafe extern "C" {
        pub fn focalflow_libjpeg_version() -> c_int;
        pub fn focalflow_libjpeg_decode(
            data: *const c_uchar,
            len: c_ulong,
            out: *mut c_uchar,
            capacity: usize,
            width: *mut c_uint,
            height: *mut c_uint,
            warnings: *mut c_long,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
    }
}

#[cfg(focalflow_libjpeg)]
fn ffi_version() -> i32 {
    // SAFETY: returns a constant compiled into the shim.
    unsafe { ffi::focalflow_libjpeg_version() }
}

#[cfg(focalflow_libjpeg)]
fn decode_with_libjpeg(bytes: &[u8], buf: &mut Vec<u8>) -> Result<Option<Decoded>, Skip> {
    let len = std::ffi::c_ulong::try_from(bytes.len())
        .map_err(|_| Skip::Unsupported("JPEG file over 4 GiB".into()))?;
    let mut err = [0 as std::ffi::c_char; 200];
    // At most two calls: the first learns the size when `buf` is too small.
    for _ in 0..2 {
        let (mut width, mut height, mut warnings) = (0, 0, 0);
        // SAFETY: `bytes` and `buf` are valid for the lengths passed; the shim writes at
        // most `capacity` bytes to `out` and a NUL-terminated message of at most `err_len`
        // bytes to `err`, and keeps no pointer after returning.
        let status = unsafe {
            ffi::focalflow_libjpeg_decode(
                bytes.as_ptr(),
                len,
                buf.as_mut_ptr(),
                buf.len(),
                &mut width,
                &mut height,
                &mut warnings,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        match status {
            ffi::OK => {
                // A buffer reused from a larger image is cut to this one.
                buf.truncate(width as usize * height as usize * 3);
                let warning = (warnings > 0).then(|| {
                    let first = message(&err);
                    match warnings {
                        1 => format!("libjpeg: {first}"),
                        n => format!("libjpeg: {n} warnings, the first: {first}"),
                    }
                });
                return Ok(Some(Decoded {
                    width: width as usize,
                    height: height as usize,
                    warning,
                }));
            }
            ffi::NOT_HANDLED => return Ok(None),
            ffi::NEED_SPACE => {
                check_size(u64::from(width), u64::from(height))?;
                // Every byte is written by the decoder, so no clearing is needed beyond
                // what resize does for new capacity.
                buf.resize(width as usize * height as usize * 3, 0);
            }
            ffi::ERROR => return Err(Skip::Corrupt(format!("JPEG: {}", message(&err)))),
            other => unreachable!("focalflow_libjpeg_decode returned {other}"),
        }
    }
    Err(Skip::Corrupt(
        "JPEG: libjpeg asked for a larger buffer twice".into(),
    ))
}

/// The NUL-terminated message the shim wrote into `err`.
#[cfg(focalflow_libjpeg)]
fn message(err: &[std::ffi::c_char]) -> String {
    // SAFETY: the shim NUL-terminates every message within `err` (and `err` starts zeroed).
    unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}
