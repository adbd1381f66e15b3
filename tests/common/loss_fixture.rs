//! The loss fixtures made by the reference frameworks (tests/data/keras_losses.json by
//! scripts/keras_loss_fixtures.py, tests/data/torch_losses.json by
//! scripts/torch_loss_fixtures.py): one case per loss and option, its float32 inputs, and the
//! loss and gradient the framework computed in float32 and in float64 on the same inputs.

use focalflow::loss::LossConfig;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct Fixture {
    pub meta: serde_json::Value,
    pub cases: Vec<Case>,
}

#[derive(Clone, Deserialize)]
pub struct Case {
    pub name: String,
    /// The loss's command-line name.
    pub loss: String,
    /// The `LossConfig` fields beside its name.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// The `focalflow loss` flags of the case.
    pub args: Vec<String>,
    pub batch: usize,
    pub classes: usize,
    pub y_true: Vec<f64>,
    pub y_pred: Vec<f64>,
    pub loss_value: f64,
    pub loss_value_f64: f64,
    pub grad: Vec<f64>,
    /// The gradient in float64 (PyTorch's fixtures).
    #[serde(default)]
    pub grad_f64: Option<Vec<f64>>,
}

impl Case {
    /// The configuration the case describes (checked to be its `loss`).
    pub fn config(&self) -> LossConfig {
        let serde_name = match self.loss.as_str() {
            "ce" => "cross-entropy",
            other => other,
        };
        let mut obj = self.params.clone();
        obj.insert("name".into(), serde_name.into());
        let cfg: LossConfig = serde_json::from_value(obj.into())
            .unwrap_or_else(|e| panic!("{}: params do not describe a LossConfig: {e}", self.name));
        assert_eq!(cfg.cli_name(), self.loss);
        cfg
    }
    /// The labels and predictions as the f32 values they were made from.
    pub fn inputs_f32(&self) -> (Vec<f32>, Vec<f32>) {
        let cast = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        (cast(&self.y_true), cast(&self.y_pred))
    }
}

/// A fixture file's text (`include_str!`-ed by the test, so that a test binary carried to
/// another machine, as scripts/gpu-check.sh does, has it).
pub fn parse(text: &str) -> Fixture {
    serde_json::from_str(text).expect("valid fixture JSON")
}
