//! The plan of a model: its layers and their shapes, validated, with the parameters they
//! need (before any backend is involved).

use super::arch::{Arch, LayerSpec};
use crate::loss::Output;
use crate::ops::{ConvShape, DenseShape, PoolShape};
use crate::{Error, Result};

/// Height, width and channels of one input image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageShape {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl ImageShape {
    pub fn len(&self) -> usize {
        self.height * self.width * self.channels
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One executable layer with its shapes for a single image (`batch == 1`); `with_batch`
/// gives the shapes of a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Layer {
    /// Convolution (+ ReLU); its kernel and bias are parameters `param` and `param + 1`.
    Conv {
        shape: ConvShape,
        relu: bool,
        param: usize,
    },
    Pool {
        shape: PoolShape,
    },
    /// Dense (+ ReLU); the flatten before it is free in NHWC row-major memory.
    Dense {
        shape: DenseShape,
        relu: bool,
        param: usize,
    },
}

impl Layer {
    /// Output elements per image.
    pub fn output_len(&self) -> usize {
        match self {
            Layer::Conv { shape, .. } => shape.output_len(),
            Layer::Pool { shape } => shape.output_len(),
            Layer::Dense { shape, .. } => shape.outputs,
        }
    }
    pub(super) fn conv(shape: &ConvShape, batch: usize) -> ConvShape {
        ConvShape { batch, ..*shape }
    }
    pub(super) fn pool(shape: &PoolShape, batch: usize) -> PoolShape {
        PoolShape { batch, ..*shape }
    }
    pub(super) fn dense(shape: &DenseShape, batch: usize) -> DenseShape {
        DenseShape { batch, ..*shape }
    }
    /// Forward FLOPs per image (convolutions and dense layers; pooling is not counted).
    pub fn forward_flops(&self) -> f64 {
        match self {
            Layer::Conv { shape, .. } => shape.forward_flops(),
            Layer::Pool { .. } => 0.0,
            Layer::Dense { shape, .. } => shape.forward_flops(),
        }
    }
}

/// Name and shape of one parameter tensor, Keras-style (`conv2d_1/kernel`, HWIO / [in, out]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The validated layer list for a given input shape and number of classes.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub arch: Arch,
    pub input: ImageShape,
    pub classes: usize,
    pub ops: Vec<Layer>,
    pub params: Vec<ParamSpec>,
    /// The head's activation (softmax unless the loss asks for sigmoids).
    pub output: Output,
}

impl Plan {
    /// Lays out `arch` (plus the `Dense(classes)` head) on `input`, with a clear error when a
    /// layer does not fit its input.
    pub fn new(arch: &Arch, input: ImageShape, classes: usize) -> Result<Plan> {
        if classes < 2 {
            return Err(Error::invalid(format!(
                "a classifier needs at least 2 classes, the data has {classes}"
            )));
        }
        if input.is_empty() {
            return Err(Error::invalid(format!("input shape {input:?} is empty")));
        }
        let (mut h, mut w, mut c) = (input.height, input.width, input.channels);
        let mut flat: Option<usize> = None; // Some(features) once flattened
        let mut ops = Vec::new();
        let mut params = Vec::new();
        let (mut convs, mut denses) = (0usize, 0usize);
        let keras_name = |base: &str, i: usize| {
            if i == 0 {
                base.to_string()
            } else {
                format!("{base}_{i}")
            }
        };
        let too_small = |i: usize, spec: &LayerSpec, h: usize, w: usize| {
            Error::invalid(format!(
                "--arch {arch}: layer {} (`{spec}`) gets a {h}x{w} input, too small for it; use a larger --image-size or fewer/smaller layers",
                i + 1
            ))
        };
        let mut add_dense = |units: usize,
                             features: usize,
                             relu: bool,
                             ops: &mut Vec<Layer>,
                             params: &mut Vec<ParamSpec>| {
            let name = keras_name("dense", denses);
            denses += 1;
            ops.push(Layer::Dense {
                shape: DenseShape {
                    batch: 1,
                    inputs: features,
                    outputs: units,
                },
                relu,
                param: params.len(),
            });
            params.push(ParamSpec {
                name: format!("{name}/kernel"),
                shape: vec![features, units],
            });
            params.push(ParamSpec {
                name: format!("{name}/bias"),
                shape: vec![units],
            });
        };
        for (i, spec) in arch.layers.iter().enumerate() {
            match *spec {
                LayerSpec::Conv {
                    filters,
                    kernel,
                    padding,
                } => {
                    if flat.is_some() {
                        return Err(Error::invalid(format!(
                            "--arch {arch}: layer {} (`{spec}`) is a convolution after a flatten/dense layer; put convolutions first",
                            i + 1
                        )));
                    }
                    let shape = ConvShape {
                        batch: 1,
                        in_h: h,
                        in_w: w,
                        in_c: c,
                        out_c: filters,
                        kernel_h: kernel,
                        kernel_w: kernel,
                        padding,
                    };
                    if h < kernel || w < kernel {
                        return Err(too_small(i, spec, h, w));
                    }
                    let name = keras_name("conv2d", convs);
                    convs += 1;
                    ops.push(Layer::Conv {
                        shape,
                        relu: true,
                        param: params.len(),
                    });
                    params.push(ParamSpec {
                        name: format!("{name}/kernel"),
                        shape: vec![kernel, kernel, c, filters],
                    });
                    params.push(ParamSpec {
                        name: format!("{name}/bias"),
                        shape: vec![filters],
                    });
                    (h, w, c) = (shape.out_h(), shape.out_w(), filters);
                }
                LayerSpec::Pool { size } => {
                    if flat.is_some() {
                        return Err(Error::invalid(format!(
                            "--arch {arch}: layer {} (`{spec}`) is a pooling after a flatten/dense layer; put pooling before dense layers",
                            i + 1
                        )));
                    }
                    if h < size || w < size {
                        return Err(too_small(i, spec, h, w));
                    }
                    let shape = PoolShape {
                        batch: 1,
                        in_h: h,
                        in_w: w,
                        channels: c,
                        size,
                    };
                    ops.push(Layer::Pool { shape });
                    (h, w) = (shape.out_h(), shape.out_w());
                }
                LayerSpec::Flatten => {
                    flat.get_or_insert(h * w * c);
                }
                LayerSpec::Dense { units } => {
                    let features = *flat.get_or_insert(h * w * c);
                    add_dense(units, features, true, &mut ops, &mut params);
                    flat = Some(units);
                }
            }
        }
        let features = *flat.get_or_insert(h * w * c);
        add_dense(classes, features, false, &mut ops, &mut params);
        // The kernels index a layer's outputs (per image) and parameters with 32-bit ints.
        let too_big = ops
            .iter()
            .map(|op| (op.output_len(), "outputs per image"))
            .chain(params.iter().map(|p| (p.len(), "parameters")))
            .find(|&(n, _)| n > i32::MAX as usize);
        if let Some((n, what)) = too_big {
            return Err(Error::invalid(format!(
                "--arch {arch}: a layer with {n} {what}, more than the {} a layer may have (and more memory than any machine has); use fewer filters or units or a smaller --image-size",
                i32::MAX
            )));
        }
        Ok(Plan {
            arch: arch.clone(),
            input,
            classes,
            ops,
            params,
            output: Output::Softmax,
        })
    }

    /// This plan with the head's activation `output`.
    pub fn with_output(mut self, output: Output) -> Plan {
        self.output = output;
        self
    }

    /// Forward FLOPs per image.
    pub fn forward_flops(&self) -> f64 {
        self.ops.iter().map(Layer::forward_flops).sum()
    }

    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(ParamSpec::len).sum()
    }

    /// Memory a training step with batches of `batch` needs, at least, with parameters of
    /// `element_bytes`: the parameters with their gradients and Adam moments, and the
    /// per-batch workspace.
    pub fn training_bytes(&self, batch: usize, element_bytes: usize) -> u64 {
        // Value, gradient and the two moments of each parameter; saturating, so that an
        // absurd --arch or --batch-size reads as "too much", never wraps to a small number.
        let params = (self.parameter_count() as u64).saturating_mul(4);
        // Every op's output, two gradient buffers of the largest, probabilities and their
        // gradient, and the batch itself (x and y).
        let lens = self.ops.iter().map(|op| op.output_len() as u64);
        let acts = lens.clone().fold(0u64, u64::saturating_add);
        let biggest = lens.max().unwrap_or(0);
        let per_image = [
            acts,
            biggest.saturating_mul(2),
            3 * self.classes as u64,
            self.input.len() as u64,
        ]
        .into_iter()
        .fold(0u64, u64::saturating_add);
        (element_bytes as u64)
            .saturating_mul(params.saturating_add(per_image.saturating_mul(batch as u64)))
    }

    /// Memory an inference pass over batches of `batch` needs, at least: the parameters
    /// and every op's output for the batch, with its input and its logits.
    pub fn inference_bytes(&self, batch: usize, element_bytes: usize) -> u64 {
        let params = self.parameter_count() as u64;
        let per_image = self.ops.iter().map(|op| op.output_len() as u64).fold(
            self.input.len() as u64 + self.classes as u64,
            u64::saturating_add,
        );
        (element_bytes as u64)
            .saturating_mul(params.saturating_add(per_image.saturating_mul(batch as u64)))
    }

    /// One line per layer, Keras `summary()`-like.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (op, i) in self.ops.iter().zip(0..) {
            let line = match op {
                Layer::Conv { shape, .. } => format!(
                    "conv {}x{} {:>4} -> {}x{}x{}",
                    shape.kernel_h,
                    shape.kernel_w,
                    shape.out_c,
                    shape.out_h(),
                    shape.out_w(),
                    shape.out_c
                ),
                Layer::Pool { shape } => {
                    format!(
                        "maxpool {}x{}   -> {}x{}x{}",
                        shape.size,
                        shape.size,
                        shape.out_h(),
                        shape.out_w(),
                        shape.channels
                    )
                }
                Layer::Dense { shape, relu, .. } => format!(
                    "dense {} -> {}{}",
                    shape.inputs,
                    shape.outputs,
                    if *relu {
                        " relu"
                    } else if self.output == Output::Sigmoid {
                        " sigmoid"
                    } else {
                        " softmax"
                    }
                ),
            };
            out.push_str(&format!("  {i:>2}  {line}\n"));
        }
        out.push_str(&format!(
            "  {} parameters, {:.1} MFLOP forward per image",
            self.parameter_count(),
            self.forward_flops() / 1e6
        ));
        out
    }
}
