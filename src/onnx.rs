//! `focalflow export --onnx`: a checkpoint's network as an ONNX model (opset 17, IR 8) that
//! onnxruntime, TensorRT and OpenVINO load.
//!
//! The graph takes NHWC images as focalflow and Keras do (`image`, `[batch, H, W, C]`):
//! uint8 pixels (cast, then times the f32 nearest 1/255, exactly as focalflow scales) or f32
//! values already in [0, 1]. It transposes to NCHW for ONNX's Conv and MaxPool (floor mode,
//! as Keras), transposes back to NHWC before the first dense layer so that Flatten keeps
//! Keras' (h, w, c) order, and ends in the logits divided by the calibrated temperature
//! (`logits`), or their softmax (`probabilities`; a sigmoid for a model trained with
//! `sigmoid-focal`). The class names are in the model's
//! metadata (`class_names`, a JSON array).
//!
//! The protobuf messages below are the fields of onnx.proto that are written.

use prost::Message;

use crate::checkpoint::Checkpoint;
use crate::model::Layer;
use crate::ops::Padding;
use crate::{Error, Result};

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

/// `AttributeProto.AttributeType`.
const ATTR_INT: i32 = 2;
const ATTR_INTS: i32 = 7;

#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

/// `TensorProto.DataType`.
pub const FLOAT: i32 = 1;
pub const UINT8: i32 = 2;

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    #[prost(oneof = "DimensionValue", tags = "1, 2")]
    pub value: Option<DimensionValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DimensionValue {
    #[prost(int64, tag = "1")]
    DimValue(i64),
    #[prost(string, tag = "2")]
    DimParam(String),
}

/// `--input`: what the exported model takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InputKind {
    /// uint8 pixels 0-255 (scaled inside the model, as focalflow scales them).
    U8,
    /// f32 values in [0, 1] (already scaled).
    F32,
}

/// What to export.
#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    pub input: InputKind,
    /// End in the softmax (`probabilities`) rather than the logits.
    pub probabilities: bool,
    /// Divide the logits by this (the calibrated temperature; 1 leaves them).
    pub temperature: f64,
}

/// Builds the graph node by node, naming each output.
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: v.to_vec(),
        r#type: ATTR_INTS,
        ..Default::default()
    }
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: ATTR_INT,
        ..Default::default()
    }
}

impl Graph {
    /// Adds `op_type(inputs) -> output` and returns the output's name.
    fn node(&mut self, op_type: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        let name = format!("{}_{}", op_type.to_lowercase(), self.nodes.len());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.clone()],
            name: name.clone(),
            op_type: op_type.into(),
            attribute,
        });
        name
    }
    /// An f32 constant.
    fn constant(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: FLOAT,
            name: name.into(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name.into()
    }
}

fn tensor_value(name: &str, elem_type: i32, dims: Vec<DimensionValue>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .into_iter()
                        .map(|value| Dimension { value: Some(value) })
                        .collect(),
                }),
            }),
        }),
    }
}

/// HWIO `[kh, kw, ci, co]` -> OIHW `[co, ci, kh, kw]`.
fn hwio_to_oihw(w: &[f32], kh: usize, kw: usize, ci: usize, co: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for y in 0..kh {
        for x in 0..kw {
            for i in 0..ci {
                for o in 0..co {
                    out[((o * ci + i) * kh + y) * kw + x] = w[((y * kw + x) * ci + i) * co + o];
                }
            }
        }
    }
    out
}

/// The ONNX model of `ck` (serialized).
pub fn export(ck: &Checkpoint, opts: &ExportOptions) -> Result<Vec<u8>> {
    if !(opts.temperature.is_finite() && opts.temperature > 0.0) {
        return Err(Error::invalid(format!(
            "temperature {}: must be a positive number",
            opts.temperature
        )));
    }
    let plan = ck.plan()?;
    let mut g = Graph {
        nodes: Vec::new(),
        initializers: Vec::new(),
    };
    let (input_type, mut x) = match opts.input {
        InputKind::U8 => {
            let cast = g.node("Cast", &["image"], vec![int("to", FLOAT as i64)]);
            let scale = g.constant("scale", &[], &[1.0f32 / 255.0]);
            (UINT8, g.node("Mul", &[&cast, &scale], vec![]))
        }
        InputKind::F32 => (FLOAT, "image".to_string()),
    };
    x = g.node("Transpose", &[&x], vec![ints("perm", &[0, 3, 1, 2])]);
    let mut nchw = true;
    for (op, i) in plan.ops.iter().zip(0..) {
        match op {
            Layer::Conv { shape, relu, param } => {
                let (kh, kw) = (shape.kernel_h, shape.kernel_w);
                let (top, left) = shape.pad_before();
                let (bottom, right) = match shape.padding {
                    Padding::Valid => (0, 0),
                    Padding::Same => (kh - 1 - top, kw - 1 - left),
                };
                let w = hwio_to_oihw(&ck.weights[*param], kh, kw, shape.in_c, shape.out_c);
                let w = g.constant(
                    &format!("conv{i}_kernel"),
                    &[shape.out_c, shape.in_c, kh, kw],
                    &w,
                );
                let b = g.constant(
                    &format!("conv{i}_bias"),
                    &[shape.out_c],
                    &ck.weights[param + 1],
                );
                let pads = [top, left, bottom, right].map(|p| p as i64);
                x = g.node(
                    "Conv",
                    &[&x, &w, &b],
                    vec![
                        ints("kernel_shape", &[kh as i64, kw as i64]),
                        ints("pads", &pads),
                        ints("strides", &[1, 1]),
                    ],
                );
                if *relu {
                    x = g.node("Relu", &[&x], vec![]);
                }
            }
            Layer::Pool { shape } => {
                let s = shape.size as i64;
                x = g.node(
                    "MaxPool",
                    &[&x],
                    vec![ints("kernel_shape", &[s, s]), ints("strides", &[s, s])],
                );
            }
            Layer::Dense { shape, relu, param } => {
                if nchw {
                    // Back to NHWC, so the flatten keeps Keras' (h, w, c) order.
                    x = g.node("Transpose", &[&x], vec![ints("perm", &[0, 2, 3, 1])]);
                    x = g.node("Flatten", &[&x], vec![int("axis", 1)]);
                    nchw = false;
                }
                let w = g.constant(
                    &format!("dense{i}_kernel"),
                    &[shape.inputs, shape.outputs],
                    &ck.weights[*param],
                );
                let b = g.constant(
                    &format!("dense{i}_bias"),
                    &[shape.outputs],
                    &ck.weights[param + 1],
                );
                x = g.node("Gemm", &[&x, &w, &b], vec![]);
                if *relu {
                    x = g.node("Relu", &[&x], vec![]);
                }
            }
        }
    }
    if opts.temperature != 1.0 {
        let t = g.constant("temperature", &[], &[opts.temperature as f32]);
        x = g.node("Div", &[&x, &t], vec![]);
    }
    if opts.probabilities {
        match plan.output {
            crate::loss::Output::Softmax => g.node("Softmax", &[&x], vec![int("axis", 1)]),
            // sigmoid-focal's models: each class on its own.
            crate::loss::Output::Sigmoid => g.node("Sigmoid", &[&x], vec![]),
        };
    }
    let output = if opts.probabilities {
        "probabilities"
    } else {
        "logits"
    };
    // The last node writes the graph's output.
    g.nodes.last_mut().expect("a plan has a head").output = vec![output.into()];
    let batch = || DimensionValue::DimParam("batch".into());
    let dim = |d: usize| DimensionValue::DimValue(d as i64);
    let shape = plan.input;
    let model = ModelProto {
        ir_version: 8,
        producer_name: "focalflow".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "{} on {}x{}x{} NHWC {} images; output: {output}",
            ck.arch,
            shape.height,
            shape.width,
            shape.channels,
            match opts.input {
                InputKind::U8 => "uint8 (0-255)",
                InputKind::F32 => "float32 ([0, 1])",
            }
        ),
        graph: Some(GraphProto {
            node: g.nodes,
            name: "focalflow".into(),
            initializer: g.initializers,
            input: vec![tensor_value(
                "image",
                input_type,
                vec![
                    batch(),
                    dim(shape.height),
                    dim(shape.width),
                    dim(shape.channels),
                ],
            )],
            output: vec![tensor_value(
                output,
                FLOAT,
                vec![batch(), dim(plan.classes)],
            )],
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        metadata_props: vec![
            StringStringEntryProto {
                key: "class_names".into(),
                value: serde_json::to_string(&ck.class_names).expect("JSON"),
            },
            StringStringEntryProto {
                key: "temperature".into(),
                value: opts.temperature.to_string(),
            },
            StringStringEntryProto {
                key: "arch".into(),
                value: ck.arch.to_string(),
            },
        ],
    };
    Ok(model.encode_to_vec())
}
