//! Decoding one image file to RGB8: the format is recognised by content (never by the file
//! name). JPEG goes to libjpeg-turbo where the build found it ([`super::libjpeg`]: the
//! decoder and settings of `tf.image.decode_jpeg`), else and for CMYK files straight to
//! `zune-jpeg` (the decoder inside the `image` crate, called without the `DynamicImage`
//! round trip); PNG/BMP/GIF/WebP go through `image`.
//!
//! Conversions to RGB8 follow `tf.image.decode_image(channels=3)` and PIL's `convert("RGB")`:
//! grey is replicated, alpha is dropped (not composited), 16-bit samples are rounded to 8
//! bits, CMYK/YCCK JPEGs (Adobe's inverted convention) become `R = C' * K' / 255`, GIFs give
//! their first frame. EXIF orientation is not applied (neither TensorFlow nor Keras does).
//!
//! A file that cannot be used is a [`Skip`] with a category and a detail, never a panic.

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::outcome::check_size;
pub use super::outcome::{Decoded, MAX_PIXELS, Skip};

/// The formats decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Gif,
    Bmp,
    WebP,
}

/// What the first bytes of a file say it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sniffed {
    Image(Format),
    /// An image format that is recognised but not decoded (TIFF, HEIC, ...).
    Unsupported(&'static str),
    Empty,
    /// Printable text (HTML, an error page saved as `.jpg`, ...).
    Text,
    Unknown,
}

/// Recognises a file by its first bytes.
pub fn sniff(bytes: &[u8]) -> Sniffed {
    let starts = |sig: &[u8]| bytes.starts_with(sig);
    if bytes.is_empty() {
        Sniffed::Empty
    } else if starts(&[0xFF, 0xD8, 0xFF]) {
        Sniffed::Image(Format::Jpeg)
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        Sniffed::Image(Format::Png)
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Sniffed::Image(Format::Gif)
    } else if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Sniffed::Image(Format::WebP)
    } else if bytes.len() >= 18 && starts(b"BM") && bmp_header_plausible(bytes) {
        Sniffed::Image(Format::Bmp)
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        Sniffed::Unsupported("TIFF")
    } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        Sniffed::Unsupported(match &bytes[8..12] {
            b"avif" | b"avis" => "AVIF",
            b"heic" | b"heix" | b"mif1" | b"msf1" | b"hevc" => "HEIF/HEIC",
            _ => "ISO media (video?)",
        })
    } else if starts(b"8BPS") {
        Sniffed::Unsupported("Photoshop PSD")
    } else if starts(&[0, 0, 1, 0]) {
        Sniffed::Unsupported("ICO")
    } else if looks_like_text(bytes) {
        Sniffed::Text
    } else {
        Sniffed::Unknown
    }
}

/// `BM` followed by a DIB header size BMP decoders know (12, 40, 52, 56, 64, 108, 124).
fn bmp_header_plausible(bytes: &[u8]) -> bool {
    let dib = u32::from_le_bytes([bytes[14], bytes[15], bytes[16], bytes[17]]);
    matches!(dib, 12 | 16 | 40 | 52 | 56 | 64 | 108 | 124)
}

fn looks_like_text(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(512)];
    let text = match std::str::from_utf8(head) {
        Ok(s) => s,
        // A multi-byte character cut at the 512-byte boundary is still text.
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or("")
        }
        Err(_) => return false,
    };
    !text.is_empty()
        && text
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t' | '\x0c'))
}

/// An RGB8 image, row-major, 3 bytes a pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Decodes `bytes` (any supported format, recognised by content) to RGB8.
pub fn decode_rgb8(bytes: &[u8]) -> Result<Rgb8, Skip> {
    into_new_buffer(|buf| decode_rgb8_into(bytes, buf))
}

/// A JPEG through zune-jpeg whatever the build: the fallback decoder, for comparisons.
pub fn decode_jpeg_with_zune(bytes: &[u8]) -> Result<Rgb8, Skip> {
    into_new_buffer(|buf| decode_jpeg_zune(bytes, buf))
}

/// Runs a decoder that fills a buffer, into a fresh buffer.
fn into_new_buffer(
    decode: impl FnOnce(&mut Vec<u8>) -> Result<Decoded, Skip>,
) -> Result<Rgb8, Skip> {
    let mut data = Vec::new();
    let d = decode(&mut data)?;
    Ok(Rgb8 {
        width: d.width,
        height: d.height,
        data,
    })
}

/// [`decode_rgb8`] into `buf` (resized to fit; reusing it across images saves an
/// allocation and page faults per image).
pub fn decode_rgb8_into(bytes: &[u8], buf: &mut Vec<u8>) -> Result<Decoded, Skip> {
    match sniff(bytes) {
        Sniffed::Image(Format::Jpeg) => decode_jpeg(bytes, buf),
        Sniffed::Image(format) => {
            let img = decode_with_image(bytes, format)?;
            *buf = img.data;
            Ok(Decoded::size(img.width, img.height))
        }
        Sniffed::Empty => Err(Skip::Empty),
        Sniffed::Text => Err(Skip::NotImage("text".into())),
        Sniffed::Unknown => Err(Skip::NotImage(format!(
            "unknown content starting {}",
            hex_prefix(bytes)
        ))),
        Sniffed::Unsupported(what) => Err(Skip::Unsupported(what.into())),
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A JPEG: through libjpeg-turbo where this build has it (TensorFlow's pixels), else, and
/// for CMYK/YCCK files and incomplete ones (whose skip reasons zune-jpeg's path words more
/// precisely), through zune-jpeg.
fn decode_jpeg(bytes: &[u8], data: &mut Vec<u8>) -> Result<Decoded, Skip> {
    if has_eoi_after_last_scan(bytes)
        && let Some(decoded) = super::libjpeg::decode(bytes, data)?
    {
        return Ok(decoded);
    }
    decode_jpeg_zune(bytes, data)
}

/// zune-jpeg reports no warnings: in its non-strict mode it carries on silently.
fn decode_jpeg_zune(bytes: &[u8], data: &mut Vec<u8>) -> Result<Decoded, Skip> {
    // Not strict: like libjpeg (and so TensorFlow and PIL), data with recoverable defects
    // ("extraneous bytes before marker") decodes. Truncation is caught below instead.
    let options = DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(1 << 16)
        .set_max_height(1 << 16)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(|e| {
        if has_eoi_after_last_scan(bytes) {
            Skip::Corrupt(format!("JPEG headers: {e}"))
        } else {
            Skip::Truncated(format!("JPEG ends inside its headers ({e})"))
        }
    })?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| Skip::Corrupt("JPEG without a frame header".into()))?;
    check_size(width as u64, height as u64)?;
    // zune-jpeg fills missing data with grey and carries on; libjpeg calls that "premature
    // end of JPEG file" and TensorFlow rejects it. A complete file has an end-of-image
    // marker after its last scan.
    if !has_eoi_after_last_scan(bytes) {
        return Err(Skip::Truncated(
            "JPEG data ends before the end-of-image marker".into(),
        ));
    }
    // Every byte is written by the decoder (missing data becomes grey), so a reused
    // buffer of the right length needs no clearing.
    if data.len() != width * height * 3 {
        data.clear();
        data.resize(width * height * 3, 0);
    }
    decoder
        .decode_into(data)
        .map_err(|e| Skip::Corrupt(format!("JPEG data: {e}")))?;
    if decoder.output_colorspace() != Some(ColorSpace::RGB) {
        return Err(Skip::Unsupported(format!(
            "JPEG colour space {:?}",
            decoder.input_colorspace()
        )));
    }
    Ok(Decoded::size(width, height))
}

/// True when an EOI marker (FF D9) follows the last start-of-scan marker (FF DA). Inside
/// entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so
/// neither pair can appear by accident after the scan header. Searched from the end, where
/// a complete file has its EOI, so a good file costs a few bytes, not a pass over it.
fn has_eoi_after_last_scan(bytes: &[u8]) -> bool {
    let Some(eoi) = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]) else {
        return false;
    };
    let is_sos = |w: &[u8]| w == [0xFF, 0xDA];
    !bytes[eoi..].windows(2).any(is_sos) && bytes[..eoi].windows(2).any(is_sos)
}

fn decode_with_image(bytes: &[u8], format: Format) -> Result<Rgb8, Skip> {
    use image::ImageDecoder;
    let name = format!("{format:?}").to_uppercase();
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => Skip::TooLarge {
            width: 0,
            height: 0,
        },
        image::ImageError::Unsupported(u) => Skip::Unsupported(format!("{name}: {u}")),
        other => {
            let msg = other.to_string();
            if msg.contains("end of file")
                || msg.contains("EOF")
                || msg.contains("unexpected end")
                || msg.contains("UnexpectedEof")
            {
                Skip::Truncated(format!("{name}: {msg}"))
            } else {
                Skip::Corrupt(format!("{name}: {msg}"))
            }
        }
    };
    let cursor = std::io::Cursor::new(bytes);
    let image_format = match format {
        Format::Png => image::ImageFormat::Png,
        Format::Gif => image::ImageFormat::Gif,
        Format::Bmp => image::ImageFormat::Bmp,
        Format::WebP => image::ImageFormat::WebP,
        Format::Jpeg => image::ImageFormat::Jpeg,
    };
    let reader = image::ImageReader::with_format(cursor, image_format);
    let decoder = reader.into_decoder().map_err(corrupt)?;
    let (w, h) = decoder.dimensions();
    check_size(u64::from(w), u64::from(h))?;
    // ImageReader::decode also applies the default allocation limits; the size check above
    // gives the clearer reason first. GIF decoding yields the first frame.
    let img = image::DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    let rgb = img.into_rgb8();
    Ok(Rgb8 {
        width: rgb.width() as usize,
        height: rgb.height() as usize,
        data: rgb.into_raw(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(sniff(b""), Sniffed::Empty);
        assert_eq!(sniff(b"<html>404</html>\n"), Sniffed::Text);
        assert_eq!(
            sniff(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Sniffed::Image(Format::Jpeg)
        );
        assert_eq!(sniff(b"II*\0abcd"), Sniffed::Unsupported("TIFF"));
        assert_eq!(sniff(&[1, 2, 3, 0xFE]), Sniffed::Unknown);
        assert_eq!(sniff(b"BM just text here"), Sniffed::Text);
    }

    #[test]
    fn eoi_after_last_scan() {
        assert!(has_eoi_after_last_scan(&[0xFF, 0xDA, 1, 2, 0xFF, 0xD9]));
        assert!(has_eoi_after_last_scan(&[0xFF, 0xDA, 1, 0xFF, 0xD9, 0, 0]));
        assert!(!has_eoi_after_last_scan(&[0xFF, 0xD9, 0xFF, 0xDA, 1, 2]));
        assert!(!has_eoi_after_last_scan(&[0xFF, 0xD8, 0xFF, 0xD9]));
    }
}
