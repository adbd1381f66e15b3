//! What decoding one file gives: the image's size (and the decoder's warning), or why the
//! file is left out; shared by the decoders (decode.rs, libjpeg.rs).

/// Images above this many pixels are skipped as "too large" (PIL's decompression-bomb limit
/// is 179 MP; 100 MP is a 10000x10000 photo, far beyond any training image).
pub const MAX_PIXELS: u64 = 100_000_000;

/// Why a file was left out. `category` groups them in the summary line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    Empty,
    NotImage(String),
    Unsupported(String),
    Truncated(String),
    Corrupt(String),
    TooLarge { width: u64, height: u64 },
    Unreadable(String),
}

impl Skip {
    /// A short fixed name for grouping ("corrupt data", "not an image", ...).
    pub fn category(&self) -> &'static str {
        match self {
            Skip::Empty => "empty file",
            Skip::NotImage(_) => "not an image",
            Skip::Unsupported(_) => "unsupported format",
            Skip::Truncated(_) => "truncated",
            Skip::Corrupt(_) => "corrupt data",
            Skip::TooLarge { .. } => "too large",
            Skip::Unreadable(_) => "unreadable",
        }
    }

    /// The category with its detail, one line.
    pub fn describe(&self) -> String {
        format!("{}: {}", self.category(), self.detail())
    }

    /// What exactly went wrong, one line.
    pub fn detail(&self) -> String {
        let detail = match self {
            Skip::Empty => "0 bytes".to_string(),
            Skip::NotImage(d) | Skip::Unsupported(d) | Skip::Truncated(d) => d.clone(),
            Skip::Corrupt(d) | Skip::Unreadable(d) => d.clone(),
            Skip::TooLarge { width, height } => {
                format!("{width}x{height} is above the {MAX_PIXELS}-pixel limit")
            }
        };
        detail.replace(['\n', '\t'], " ")
    }
}

/// What decoding into a buffer gives: the size, and the decoder's warning when the data
/// had recoverable damage (the image is kept, as TensorFlow and PIL keep it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub width: usize,
    pub height: usize,
    pub warning: Option<String>,
}

impl Decoded {
    pub(crate) fn size(width: usize, height: usize) -> Decoded {
        Decoded {
            width,
            height,
            warning: None,
        }
    }
}

pub(crate) fn check_size(width: u64, height: u64) -> Result<(), Skip> {
    if width == 0 || height == 0 {
        return Err(Skip::Corrupt(format!("image size {width}x{height}")));
    }
    if width * height > MAX_PIXELS {
        return Err(Skip::TooLarge { width, height });
    }
    Ok(())
}
