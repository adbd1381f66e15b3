//! The compact architecture notation of `--arch`, e.g. `c16,p,c32,p,c64,p,d256`.
//!
//! Tokens, separated by commas:
//! - `c<filters>` a 3x3 convolution with valid padding and ReLU; `c<filters>k<size>` another
//!   kernel size; a trailing `s` asks for same padding (`c32k5s`);
//! - `p` a 2x2 max-pooling; `p<size>` another window (stride = window);
//! - `d<units>` a dense layer with ReLU (a flatten is implied before the first one);
//! - `f` an explicit flatten (optional).
//!
//! The classifier head `Dense(classes)` + softmax is always appended: the number of classes
//! comes from the data.

use std::fmt;
use std::str::FromStr;

use crate::ops::Padding;
use crate::{Error, Result};

/// The reference CNN of the original experiment.
pub const REFERENCE_ARCH: &str = "c16,p,c32,p,c64,p,d256";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerSpec {
    Conv {
        filters: usize,
        kernel: usize,
        padding: Padding,
    },
    Pool {
        size: usize,
    },
    Flatten,
    Dense {
        units: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arch {
    pub layers: Vec<LayerSpec>,
}

impl Default for Arch {
    fn default() -> Self {
        REFERENCE_ARCH
            .parse()
            .expect("the reference architecture parses")
    }
}

/// A layer's count: positive, and at most 2^31 - 1 (what the kernels index with).
fn parse_count(token: &str, digits: &str, what: &str) -> Result<usize> {
    match digits.parse::<usize>() {
        Ok(n) if n > i32::MAX as usize => Err(Error::invalid(format!(
            "--arch: `{token}`: a {what} of {n} is more than the {} a layer may have",
            i32::MAX
        ))),
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Error::invalid(format!(
            "--arch: `{token}` needs a positive {what} (e.g. c16, c32k5s, p, p3, d256)"
        ))),
    }
}

impl FromStr for LayerSpec {
    type Err = Error;

    fn from_str(token: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(format!(
                "--arch: unknown layer `{token}`; use c<filters>[k<size>][s], p[<size>], d<units> or f, e.g. c16,p,c32,p,d256"
            ))
        };
        let (kind, rest) = token.split_at(token.chars().next().map_or(0, char::len_utf8));
        match kind {
            "c" => {
                let (rest, padding) = match rest.strip_suffix('s') {
                    Some(r) => (r, Padding::Same),
                    None => (rest, Padding::Valid),
                };
                let (filters, kernel) = match rest.split_once('k') {
                    Some((f, k)) => (
                        parse_count(token, f, "filter count")?,
                        parse_count(token, k, "kernel size")?,
                    ),
                    None => (parse_count(token, rest, "filter count")?, 3),
                };
                Ok(LayerSpec::Conv {
                    filters,
                    kernel,
                    padding,
                })
            }
            "p" if rest.is_empty() => Ok(LayerSpec::Pool { size: 2 }),
            "p" => Ok(LayerSpec::Pool {
                size: parse_count(token, rest, "pool size")?,
            }),
            "d" => Ok(LayerSpec::Dense {
                units: parse_count(token, rest, "unit count")?,
            }),
            "f" if rest.is_empty() => Ok(LayerSpec::Flatten),
            _ => Err(bad()),
        }
    }
}

impl FromStr for Arch {
    type Err = Error;

    /// Layers separated by commas; an empty list or an empty layer is an error (a plain
    /// linear classifier is `f`).
    fn from_str(s: &str) -> Result<Self> {
        if s.trim().is_empty() {
            return Err(Error::invalid(
                "--arch is empty: give the layers before the classifier head, e.g. c16,p,c32,p,d256 (f alone: a linear classifier)",
            ));
        }
        let layers = s
            .split(',')
            .map(str::trim)
            .map(|t| {
                if t.is_empty() {
                    Err(Error::invalid(format!(
                        "--arch {s}: an empty layer between two commas"
                    )))
                } else {
                    t.parse()
                }
            })
            .collect::<Result<Vec<LayerSpec>>>()?;
        Ok(Arch { layers })
    }
}

impl fmt::Display for LayerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LayerSpec::Conv {
                filters,
                kernel,
                padding,
            } => {
                write!(f, "c{filters}")?;
                if kernel != 3 {
                    write!(f, "k{kernel}")?;
                }
                if padding == Padding::Same {
                    write!(f, "s")?;
                }
                Ok(())
            }
            LayerSpec::Pool { size: 2 } => write!(f, "p"),
            LayerSpec::Pool { size } => write!(f, "p{size}"),
            LayerSpec::Flatten => write!(f, "f"),
            LayerSpec::Dense { units } => write!(f, "d{units}"),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tokens: Vec<String> = self.layers.iter().map(ToString::to_string).collect();
        write!(f, "{}", tokens.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let a: Arch = "c16,p,c32k5s,p3,f,d256".parse().unwrap();
        assert_eq!(
            a.layers,
            vec![
                LayerSpec::Conv {
                    filters: 16,
                    kernel: 3,
                    padding: Padding::Valid
                },
                LayerSpec::Pool { size: 2 },
                LayerSpec::Conv {
                    filters: 32,
                    kernel: 5,
                    padding: Padding::Same
                },
                LayerSpec::Pool { size: 3 },
                LayerSpec::Flatten,
                LayerSpec::Dense { units: 256 },
            ]
        );
        assert_eq!(a.to_string(), "c16,p,c32k5s,p3,f,d256");
        assert_eq!(Arch::default().to_string(), REFERENCE_ARCH);
    }

    #[test]
    fn rejects_an_empty_arch_and_empty_layers() {
        for bad in ["", " ", "c16,,p", "c16,", ",d8"] {
            let err = bad.parse::<Arch>().unwrap_err().to_string();
            assert!(
                err.starts_with("--arch") && err.contains("empty"),
                "{bad:?}: {err}"
            );
        }
        assert_eq!("f".parse::<Arch>().unwrap().to_string(), "f");
    }

    #[test]
    fn rejects_bad_tokens_naming_them() {
        for bad in ["x3", "c", "c0", "ck3", "d", "p0", "c16k", "fx"] {
            let err = bad.parse::<Arch>().unwrap_err().to_string();
            assert!(
                err.contains(bad) && err.starts_with("--arch"),
                "{bad}: {err}"
            );
        }
    }
}
