//! A reader and writer for 2-D NumPy `.npy` files (the tiny format, by hand).
//!
//! Read: format versions 1.0, 2.0 and 3.0, dtypes `<f4` and `<f8`, C order, exactly two
//! dimensions; anything else is rejected with one line naming the file and what was found
//! versus what is expected. Write: `<f4` or `<f8`, version 1.0, atomically (a temporary file
//! in the same folder, fsync, rename).
//!
//! Format: the magic `\x93NUMPY`, a major and minor version byte, the header length
//! (u16 little-endian for 1.0, u32 for 2.0/3.0), a Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }` padded with spaces and a
//! final newline so that the data starts at a multiple of 64 bytes, then the raw data.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The element types this module reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::F64 => "<f8",
        }
    }
    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// A 2-D array read from a `.npy` file: values widened to f64 (exact for both dtypes),
/// its shape `[rows, columns]` and the dtype it was stored with.
#[derive(Clone, Debug, PartialEq)]
pub struct Npy2 {
    pub data: Vec<f64>,
    pub shape: [usize; 2],
    pub dtype: Dtype,
}

/// Reads a 2-D `<f4` or `<f8` C-order `.npy` file into f64 values and its shape.
pub fn read_2d(path: impl AsRef<Path>) -> Result<(Vec<f64>, [usize; 2])> {
    let a = read_2d_full(path)?;
    Ok((a.data, a.shape))
}

/// Reads a 2-D `.npy` file and converts the values to f32 (rounding f64 values to nearest),
/// as training does with its inputs.
pub fn read_2d_f32(path: impl AsRef<Path>) -> Result<(Vec<f32>, [usize; 2])> {
    let (data, shape) = read_2d(path)?;
    Ok((data.into_iter().map(|v| v as f32).collect(), shape))
}

/// Reads a 2-D `.npy` file, also reporting the dtype it was stored with.
pub fn read_2d_full(path: impl AsRef<Path>) -> Result<Npy2> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    parse_2d(&bytes).map_err(|msg| Error::file(path, msg))
}

/// Parses the bytes of a 2-D `.npy` file; the error is a message without the file name.
pub fn parse_2d(bytes: &[u8]) -> std::result::Result<Npy2, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(format!(
            "not a .npy file: found {} bytes not starting with \\x93NUMPY, expected a NumPy array file",
            bytes.len()
        ));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated .npy header: found fewer than 12 bytes".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        _ => {
            return Err(format!(
                "unsupported .npy format version {major}.{minor}, expected 1.0, 2.0 or 3.0"
            ));
        }
    };
    let data_start = header_start + header_len;
    if bytes.len() < data_start {
        return Err(format!(
            "truncated .npy header: found {} bytes, expected a header of {header_len} bytes after the preamble",
            bytes.len()
        ));
    }
    let header = std::str::from_utf8(&bytes[header_start..data_start])
        .map_err(|_| "the .npy header is not valid text".to_string())?;
    let (descr, fortran, shape) = parse_header(header)?;
    let dtype = match descr.as_str() {
        "<f4" => Dtype::F32,
        "<f8" => Dtype::F64,
        other => {
            return Err(format!(
                "dtype {other:?} is not supported, expected '<f4' (float32) or '<f8' (float64)"
            ));
        }
    };
    if fortran {
        return Err(
            "array is in Fortran order, expected C order (save it with np.ascontiguousarray)"
                .into(),
        );
    }
    let shape: [usize; 2] = match shape.as_slice() {
        [r, c] => [*r, *c],
        other => {
            return Err(format!(
                "array has {} dimension(s) {:?}, expected a 2-D array [batch, classes]",
                other.len(),
                other
            ));
        }
    };
    let count = shape[0]
        .checked_mul(shape[1])
        .ok_or_else(|| format!("shape {shape:?} is too large"))?;
    let want = count
        .checked_mul(dtype.size())
        .ok_or_else(|| format!("shape {shape:?} is too large"))?;
    let have = bytes.len() - data_start;
    if have != want {
        let what = if have < want {
            "truncated data"
        } else {
            "trailing bytes after the data"
        };
        return Err(format!(
            "{what}: found {have} bytes of data, expected {want} for shape {shape:?} of {}",
            dtype.descr()
        ));
    }
    let raw = &bytes[data_start..];
    let data = match dtype {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            .collect(),
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect(),
    };
    Ok(Npy2 { data, shape, dtype })
}

/// Parses the header dict: returns (descr, fortran_order, shape).
fn parse_header(header: &str) -> std::result::Result<(String, bool, Vec<usize>), String> {
    let mut p = HeaderParser {
        s: header.as_bytes(),
        i: 0,
    };
    let bad = |what: &str| format!("malformed .npy header ({what}): {:?}", header.trim_end());
    p.skip_ws();
    if !p.eat(b'{') {
        return Err(bad("no opening brace"));
    }
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string().ok_or_else(|| bad("expected a quoted key"))?;
        p.skip_ws();
        if !p.eat(b':') {
            return Err(bad("expected ':'"));
        }
        p.skip_ws();
        match key.as_str() {
            "descr" => descr = Some(p.string().ok_or_else(|| bad("descr is not a string"))?),
            "fortran_order" => {
                fortran = Some(
                    p.boolean()
                        .ok_or_else(|| bad("fortran_order is not True/False"))?,
                )
            }
            "shape" => {
                shape = Some(
                    p.tuple()
                        .ok_or_else(|| bad("shape is not a tuple of integers"))?,
                )
            }
            _ => return Err(bad(&format!("unexpected key {key:?}"))),
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.skip_ws();
            if p.eat(b'}') {
                break;
            }
            return Err(bad("expected ',' or '}'"));
        }
    }
    match (descr, fortran, shape) {
        (Some(d), Some(f), Some(s)) => Ok((d, f, s)),
        _ => Err(bad("descr, fortran_order and shape are all required")),
    }
}

struct HeaderParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl HeaderParser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn string(&mut self) -> Option<String> {
        let quote = *self.s.get(self.i)?;
        if quote != b'\'' && quote != b'"' {
            return None;
        }
        let start = self.i + 1;
        let len = self.s[start..].iter().position(|&c| c == quote)?;
        self.i = start + len + 1;
        Some(String::from_utf8_lossy(&self.s[start..start + len]).into_owned())
    }
    fn boolean(&mut self) -> Option<bool> {
        for (word, v) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.i..].starts_with(word) {
                self.i += word.len();
                return Some(v);
            }
        }
        None
    }
    fn tuple(&mut self) -> Option<Vec<usize>> {
        if !self.eat(b'(') {
            return None;
        }
        let mut dims = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(b')') {
                return Some(dims);
            }
            let start = self.i;
            while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                self.i += 1;
            }
            // NumPy on some platforms wrote `3L`.
            let digits = std::str::from_utf8(&self.s[start..self.i]).ok()?;
            dims.push(digits.parse().ok()?);
            self.eat(b'L');
            self.skip_ws();
            if !self.eat(b',') {
                self.skip_ws();
                return if self.eat(b')') { Some(dims) } else { None };
            }
        }
    }
}

/// The bytes of a version 1.0 `.npy` file holding `data` as a C-order 2-D array.
fn encode_2d(dtype: Dtype, shape: [usize; 2], data: &[u8]) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({}, {}), }}",
        dtype.descr(),
        shape[0],
        shape[1]
    );
    // Preamble (10 bytes) + dict + padding + '\n' is a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    let header_len = dict.len() + padding + 1;
    let mut out = Vec::with_capacity(10 + header_len + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', padding));
    out.push(b'\n');
    out.extend_from_slice(data);
    out
}

fn check_len(path: &Path, len: usize, shape: [usize; 2]) -> Result<()> {
    if shape[0].checked_mul(shape[1]) != Some(len) {
        return Err(Error::Shape(format!(
            "cannot write {}: {len} values do not fill shape {shape:?}",
            path.display()
        )));
    }
    Ok(())
}

/// Writes `data` (row-major, `shape = [rows, columns]`) as an `<f4` `.npy` file, atomically.
pub fn write_2d_f32(path: impl AsRef<Path>, data: &[f32], shape: [usize; 2]) -> Result<()> {
    let path = path.as_ref();
    check_len(path, data.len(), shape)?;
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_atomic(path, &encode_2d(Dtype::F32, shape, &bytes))
}

/// Writes `data` (row-major, `shape = [rows, columns]`) as an `<f8` `.npy` file, atomically.
pub fn write_2d_f64(path: impl AsRef<Path>, data: &[f64], shape: [usize; 2]) -> Result<()> {
    let path = path.as_ref();
    check_len(path, data.len(), shape)?;
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_atomic(path, &encode_2d(Dtype::F64, shape, &bytes))
}

/// Writes `bytes` to a temporary file beside `path` (`<name>.tmp`), fsyncs it and renames it
/// over `path`, so that readers see either the old file or the complete new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::file(path, "is not a file path"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable; not every platform can open a directory.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(path, format!("cannot write: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("focalflow-npy-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A file as NumPy writes it, with a given version and header text.
    fn file_with(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[major, 0]);
        if major == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn round_trip_f32_and_f64() {
        let dir = temp_dir("rt");
        let path = dir.join("a.npy");
        let data = [1.5f32, -0.0, f32::MIN_POSITIVE, 0.99999994, 3.0, 1e-7];
        write_2d_f32(&path, &data, [2, 3]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            (bytes.len() - data.len() * 4) % 64,
            0,
            "data must start at a multiple of 64"
        );
        let a = read_2d_full(&path).unwrap();
        assert_eq!(a.shape, [2, 3]);
        assert_eq!(a.dtype, Dtype::F32);
        let back: Vec<f32> = a.data.iter().map(|&v| v as f32).collect();
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            data.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(!dir.join("a.npy.tmp").exists());

        let d64 = [0.1f64, 1.0 / 3.0, -2.5, 1e300];
        write_2d_f64(&path, &d64, [4, 1]).unwrap();
        let (v, shape) = read_2d(&path).unwrap();
        assert_eq!((v, shape), (d64.to_vec(), [4, 1]));
        let (v32, _) = read_2d_f32(&path).unwrap();
        assert_eq!(v32[0], 0.1f32);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn empty_and_wide_shapes_round_trip() {
        let dir = temp_dir("empty");
        let path = dir.join("e.npy");
        write_2d_f32(&path, &[], [0, 5]).unwrap();
        assert_eq!(read_2d(&path).unwrap(), (vec![], [0, 5]));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_versions_2_and_3_and_numpy_spacing() {
        let data = f32_bytes(&[1.0, 2.0]);
        for major in [2u8, 3] {
            let f = file_with(
                major,
                "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }      \n",
                &data,
            );
            assert_eq!(parse_2d(&f).unwrap().data, vec![1.0, 2.0]);
        }
        // Key order and quoting as other writers produce them.
        let f = file_with(
            1,
            "{\"shape\":(2,1),\"descr\":\"<f4\",\"fortran_order\":False}\n",
            &data,
        );
        assert_eq!(parse_2d(&f).unwrap().shape, [2, 1]);
    }

    #[test]
    fn rejects_with_one_line_reasons() {
        let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                file_with(
                    1,
                    "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }\n",
                    &data,
                ),
                "Fortran order",
            ),
            (
                file_with(
                    1,
                    "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 2), }\n",
                    &data,
                ),
                "dtype \"<i4\"",
            ),
            (
                file_with(
                    1,
                    "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 2), }\n",
                    &data,
                ),
                "dtype \">f4\"",
            ),
            (
                file_with(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }\n",
                    &data,
                ),
                "1 dimension(s) [4]",
            ),
            (
                file_with(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 2), }\n",
                    &data,
                ),
                "3 dimension(s)",
            ),
            (
                file_with(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }\n",
                    &data,
                ),
                "truncated data: found 16 bytes of data, expected 24",
            ),
            (
                file_with(
                    1,
                    "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }\n",
                    &data,
                ),
                "expected 32",
            ),
            (
                file_with(
                    1,
                    "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }\n",
                    &data,
                ),
                "trailing bytes",
            ),
            (file_with(4, "{}", &data), "version 4.0"),
            (
                file_with(1, "{'descr': '<f4', 'shape': (2, 2), }\n", &data),
                "required",
            ),
            (file_with(1, "{'descr': '<f4'", &data), "malformed"),
            (b"PK\x03\x04 not numpy".to_vec(), "not a .npy file"),
        ];
        for (bytes, want) in cases {
            let err = parse_2d(&bytes).unwrap_err();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
        // A truncated header.
        let mut f = file_with(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }\n",
            &data,
        );
        f.truncate(20);
        assert!(parse_2d(&f).unwrap_err().contains("truncated .npy header"));
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = temp_dir("err");
        let path = dir.join("bad.npy");
        std::fs::write(&path, b"hello").unwrap();
        let msg = read_2d(&path).unwrap_err().to_string();
        assert!(
            msg.contains("bad.npy") && msg.contains("not a .npy file"),
            "{msg}"
        );
        let msg = read_2d(dir.join("missing.npy")).unwrap_err().to_string();
        assert!(
            msg.contains("missing.npy") && msg.contains("cannot read"),
            "{msg}"
        );
        let err = write_2d_f32(dir.join("x.npy"), &[1.0; 3], [2, 2]).unwrap_err();
        assert!(matches!(err, Error::Shape(_)), "{err}");
        let err = write_2d_f32(dir.join("no/such/dir/x.npy"), &[1.0; 4], [2, 2]).unwrap_err();
        assert!(err.to_string().contains("cannot write"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
