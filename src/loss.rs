//! Losses as data: one validated configuration type ([`LossConfig`]) with its parameters
//! ([`Alpha`], the clip margin, the names the command line accepts). The formulas, and the
//! CPU reference that computes them ([`loss_forward_backward`](crate::ops::loss::loss_forward_backward)),
//! are in `src/ops/loss/cpu/`; the CUDA kernels in `kernels/loss.cu`.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Keras' `backend.epsilon()`: the clip margin of the probability paths.
pub const CLIP_EPSILON: f64 = 1e-7;

/// The loss names accepted on the command line, in the order they are documented.
pub const LOSS_NAMES: [&str; 8] = [
    "focal",
    "calibrated-mse",
    "keras-focal",
    "ce",
    "flsd-53",
    "dual-focal",
    "adafocal",
    "sigmoid-focal",
];

/// The activation of a model's head, chosen by its loss: softmax (one class per image), or
/// an independent sigmoid per class (`sigmoid-focal`: multi-label data, or single-label data
/// trained one-vs-rest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    #[default]
    Softmax,
    Sigmoid,
}

impl Output {
    pub fn name(self) -> &'static str {
        match self {
            Output::Softmax => "softmax",
            Output::Sigmoid => "sigmoid",
        }
    }
}

/// AdaFocal's number of equal-mass bins (the paper's and the authors' default, as ECE's 15).
pub const ADAFOCAL_BINS: usize = 15;

/// The most bins a [`GammaBins`] may have (the kernels keep the table in registers' reach).
pub const MAX_GAMMA_BINS: usize = 64;

/// A focusing parameter chosen per sample from the probability of its true class (`p_t`, the
/// first largest label of the row): bin `b` holds `edges[b-1] <= p_t < edges[b]` (the first
/// bin everything below `edges[0]`, the last everything from `edges[last]` up), and its gamma
/// is `gammas[b]`. The gamma is a constant of the sample in the gradient (as in Mukhoti et
/// al.'s and Ghosh et al.'s code). A negative gamma is AdaFocal's inverse-focal form,
/// `-(1 + p_t)^|gamma| log p_t`. A fixed gamma is one bin without edges.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GammaBins {
    /// Ascending, one fewer than `gammas`.
    pub edges: Vec<f64>,
    pub gammas: Vec<f64>,
}

impl GammaBins {
    /// One gamma for every sample.
    pub fn fixed(gamma: f64) -> Self {
        GammaBins {
            edges: Vec::new(),
            gammas: vec![gamma],
        }
    }
    /// FLSD-53 (Mukhoti et al., NeurIPS 2020): 5 where `p_t < 0.2`, else 3.
    pub fn flsd_53() -> Self {
        GammaBins {
            edges: vec![0.2],
            gammas: vec![5.0, 3.0],
        }
    }
    /// `bins` equal-width bins over [0, 1], each with `gamma` (AdaFocal before its first
    /// update).
    pub fn uniform(bins: usize, gamma: f64) -> Self {
        GammaBins {
            edges: (1..bins).map(|b| b as f64 / bins as f64).collect(),
            gammas: vec![gamma; bins],
        }
    }
    /// The bin of a sample whose true class has probability `p_t`.
    pub fn bin_of(&self, p_t: f64) -> usize {
        self.edges.partition_point(|&e| e <= p_t)
    }
    /// The shape and values a loss can use: 1 to [`MAX_GAMMA_BINS`] finite gammas, one more
    /// than the ascending finite edges.
    pub fn validate(&self) -> Result<()> {
        let n = self.gammas.len();
        let ok = (1..=MAX_GAMMA_BINS).contains(&n)
            && self.edges.len() + 1 == n
            && self.gammas.iter().chain(&self.edges).all(|v| v.is_finite())
            && self.edges.windows(2).all(|w| w[0] <= w[1]);
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "gamma bins: {} gammas and {} edges; need 1 to {MAX_GAMMA_BINS} finite gammas and one fewer ascending finite edges",
                n,
                self.edges.len()
            )))
        }
    }
}

/// AdaFocal's settings (Ghosh et al., NeurIPS 2022; defaults and flag names as the authors'
/// code, 3mcloud/adafocal): after each epoch every bin's gamma is multiplied by
/// `exp(lambda * (C_b - A_b))` (by `exp(-lambda * ..)` while negative), switched to the other
/// form at `|gamma| < switch` and clipped to `[gamma_min, gamma_max]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaFocalSettings {
    pub lambda: f64,
    pub gamma_initial: f64,
    pub switch: f64,
    pub gamma_min: f64,
    pub gamma_max: f64,
}

impl Default for AdaFocalSettings {
    fn default() -> Self {
        AdaFocalSettings {
            lambda: 1.0,
            gamma_initial: 1.0,
            switch: 0.2,
            gamma_min: -2.0,
            gamma_max: 20.0,
        }
    }
}

/// The class weight of the focal losses: one value for every class, or one per class.
///
/// Serialised untagged: `0.25` or `[0.25, 0.75]`.
/// A per-class alpha for `keras-focal` is an extension of ours: Keras documents a float, and
/// it broadcasts a list over the class axis exactly as we do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Alpha {
    Scalar(f64),
    PerClass(Vec<f64>),
}

impl Alpha {
    /// The weight of class `class` (a per-class alpha must have been validated for the
    /// number of classes first).
    pub fn at(&self, class: usize) -> f64 {
        match self {
            Alpha::Scalar(a) => *a,
            Alpha::PerClass(v) => v[class],
        }
    }

    fn describe(&self) -> String {
        match self {
            Alpha::Scalar(a) => format!("{a}"),
            Alpha::PerClass(v) => {
                let parts: Vec<String> = v.iter().map(|a| format!("{a}")).collect();
                format!("[{}]", parts.join(","))
            }
        }
    }

    /// Every value in [0, 1]; with `negative_off` (sigmoid-focal, as torchvision) also any
    /// finite negative value, which turns the weighting off.
    fn validate_values(&self, negative_off: bool) -> Result<()> {
        let check = |a: f64, what: String| -> Result<()> {
            if (0.0..=1.0).contains(&a) || (negative_off && a.is_finite() && a < 0.0) {
                Ok(())
            } else if negative_off {
                Err(Error::invalid(format!(
                    "--alpha{what} must be in [0, 1], or negative to turn the weighting off, got {a}"
                )))
            } else {
                Err(Error::invalid(format!(
                    "--alpha{what} must be in [0, 1], got {a}"
                )))
            }
        };
        match self {
            Alpha::Scalar(a) => check(*a, String::new()),
            Alpha::PerClass(v) => {
                if v.is_empty() {
                    return Err(Error::invalid(
                        "--alpha: the per-class list is empty; give A or A1,A2,.. with values in [0, 1]",
                    ));
                }
                v.iter()
                    .enumerate()
                    .try_for_each(|(c, &a)| check(a, format!(" (class {c})")))
            }
        }
    }
}

impl Default for Alpha {
    fn default() -> Self {
        Alpha::Scalar(0.25)
    }
}

/// A loss and its parameters. Serialised with the loss name in the field `name`
/// (e.g. `{"name":"focal","alpha":0.25,"gamma":2.0,...}`; `CrossEntropy` is
/// `"cross-entropy"` there and `ce` on the command line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum LossConfig {
    /// The practitioner's categorical focal loss with L1/L2 terms on the (clipped) probabilities.
    Focal {
        alpha: Alpha,
        gamma: f64,
        l1: f64,
        l2: f64,
        from_logits: bool,
    },
    /// `mean((y-p)^2) + facture * mean((0.5-p)^2)`.
    CalibratedMse { facture: f64, from_logits: bool },
    /// Keras 3 `CategoricalFocalCrossentropy`.
    KerasFocal {
        alpha: Alpha,
        gamma: f64,
        label_smoothing: f64,
        from_logits: bool,
    },
    /// Keras 3 `CategoricalCrossentropy` (CLI name `ce`).
    CrossEntropy {
        label_smoothing: f64,
        from_logits: bool,
    },
    /// The sample-dependent focal loss FLSD-53 of Mukhoti et al. (NeurIPS 2020,
    /// "Calibrating Deep Neural Networks using Focal Loss"): `-(1 - p_t)^gamma log p_t`,
    /// mean over the batch, gamma [`GammaBins::flsd_53`].
    #[serde(rename = "flsd-53")]
    Flsd53 { from_logits: bool },
    /// Dual focal loss (Tao et al., ICML 2023): `-(1 - p_k + p_j)^gamma log p_k`, `p_j` the
    /// largest probability strictly below the true class's `p_k` (0 if none), mean over the
    /// batch; the gradient flows through `p_k` and `p_j` (as in the authors' code).
    DualFocal { gamma: f64, from_logits: bool },
    /// AdaFocal (Ghosh et al., NeurIPS 2022): `-(1 - p_t)^gamma log p_t` with the gamma of
    /// the sample's bin (`bins`, updated after each epoch from the validation split's
    /// calibration, see `crate::adafocal`), `-(1 + p_t)^|gamma| log p_t` where it is
    /// negative; mean over the batch (the authors sum; the mean keeps the learning rate
    /// comparable with the other losses here).
    #[serde(rename = "adafocal")]
    AdaFocal {
        #[serde(flatten)]
        settings: AdaFocalSettings,
        /// The gammas in use: uniform bins at `gamma_initial` until the first update.
        bins: GammaBins,
        from_logits: bool,
    },
    /// torchvision's `sigmoid_focal_loss` (Lin et al. 2017, RetinaNet) on independent
    /// sigmoid outputs: per element `alpha_t * BCE * (1 - p_t)^gamma` with
    /// `p_t = p y + (1-p)(1-y)`, `alpha_t = alpha y + (1-alpha)(1-y)` (no weighting where
    /// alpha < 0), mean over batch x classes. The model's head is a sigmoid ([`Output`]).
    SigmoidFocal {
        alpha: Alpha,
        gamma: f64,
        from_logits: bool,
    },
}

impl LossConfig {
    /// `focal` with alpha 0.25, gamma 2, l1 = l2 = 0, on probabilities.
    pub fn default_focal() -> Self {
        LossConfig::Focal {
            alpha: Alpha::default(),
            gamma: 2.0,
            l1: 0.0,
            l2: 0.0,
            from_logits: false,
        }
    }
    /// `calibrated-mse` with facture 0.1, on probabilities.
    pub fn default_calibrated_mse() -> Self {
        LossConfig::CalibratedMse {
            facture: 0.1,
            from_logits: false,
        }
    }
    /// `keras-focal` with alpha 0.25, gamma 2, no label smoothing, on probabilities.
    pub fn default_keras_focal() -> Self {
        LossConfig::KerasFocal {
            alpha: Alpha::default(),
            gamma: 2.0,
            label_smoothing: 0.0,
            from_logits: false,
        }
    }
    /// `ce` without label smoothing, on probabilities.
    pub fn default_cross_entropy() -> Self {
        LossConfig::CrossEntropy {
            label_smoothing: 0.0,
            from_logits: false,
        }
    }

    /// The defaults of the loss named `name` (one of [`LOSS_NAMES`]).
    pub fn default_for(name: &str) -> Result<Self> {
        match name {
            "focal" => Ok(Self::default_focal()),
            "calibrated-mse" => Ok(Self::default_calibrated_mse()),
            "keras-focal" => Ok(Self::default_keras_focal()),
            "ce" => Ok(Self::default_cross_entropy()),
            "flsd-53" => Ok(LossConfig::Flsd53 { from_logits: false }),
            "dual-focal" => Ok(LossConfig::DualFocal {
                gamma: 5.0,
                from_logits: false,
            }),
            "adafocal" => Ok(Self::adafocal(AdaFocalSettings::default(), false)),
            "sigmoid-focal" => Ok(LossConfig::SigmoidFocal {
                alpha: Alpha::default(),
                gamma: 2.0,
                from_logits: false,
            }),
            other => Err(Error::invalid(format!(
                "--loss {other:?} is not a known loss; valid: {}",
                LOSS_NAMES.join(", ")
            ))),
        }
    }

    /// `adafocal` with `settings`, before its first update.
    pub fn adafocal(settings: AdaFocalSettings, from_logits: bool) -> Self {
        LossConfig::AdaFocal {
            bins: GammaBins::uniform(ADAFOCAL_BINS, settings.gamma_initial),
            settings,
            from_logits,
        }
    }

    /// Whether the predictions are logits (the loss applies the head's softmax or sigmoid
    /// itself).
    pub fn from_logits(&self) -> bool {
        match self {
            LossConfig::Focal { from_logits, .. }
            | LossConfig::CalibratedMse { from_logits, .. }
            | LossConfig::KerasFocal { from_logits, .. }
            | LossConfig::CrossEntropy { from_logits, .. }
            | LossConfig::Flsd53 { from_logits }
            | LossConfig::DualFocal { from_logits, .. }
            | LossConfig::AdaFocal { from_logits, .. }
            | LossConfig::SigmoidFocal { from_logits, .. } => *from_logits,
        }
    }

    /// The per-sample gammas of `flsd-53` and `adafocal` (None for the other losses).
    pub fn sample_gammas(&self) -> Option<GammaBins> {
        match self {
            LossConfig::Flsd53 { .. } => Some(GammaBins::flsd_53()),
            LossConfig::AdaFocal { bins, .. } => Some(bins.clone()),
            _ => None,
        }
    }

    /// The activation of the model's head this loss trains.
    pub fn output(&self) -> Output {
        match self {
            LossConfig::SigmoidFocal { .. } => Output::Sigmoid,
            _ => Output::Softmax,
        }
    }

    /// The name of this loss on the command line.
    pub fn cli_name(&self) -> &'static str {
        match self {
            LossConfig::Focal { .. } => "focal",
            LossConfig::CalibratedMse { .. } => "calibrated-mse",
            LossConfig::KerasFocal { .. } => "keras-focal",
            LossConfig::CrossEntropy { .. } => "ce",
            LossConfig::Flsd53 { .. } => "flsd-53",
            LossConfig::DualFocal { .. } => "dual-focal",
            LossConfig::AdaFocal { .. } => "adafocal",
            LossConfig::SigmoidFocal { .. } => "sigmoid-focal",
        }
    }

    /// One line for logs, e.g. `focal(alpha=0.25, gamma=2, l1=0, l2=0)`.
    pub fn describe(&self) -> String {
        let body = match self {
            LossConfig::Focal {
                alpha,
                gamma,
                l1,
                l2,
                ..
            } => {
                format!(
                    "alpha={}, gamma={gamma}, l1={l1}, l2={l2}",
                    alpha.describe()
                )
            }
            LossConfig::CalibratedMse { facture, .. } => format!("facture={facture}"),
            LossConfig::KerasFocal {
                alpha,
                gamma,
                label_smoothing,
                ..
            } => format!(
                "alpha={}, gamma={gamma}, label_smoothing={label_smoothing}",
                alpha.describe()
            ),
            LossConfig::CrossEntropy {
                label_smoothing, ..
            } => {
                format!("label_smoothing={label_smoothing}")
            }
            LossConfig::Flsd53 { .. } => {
                let g = GammaBins::flsd_53();
                format!(
                    "gamma={} where p_t<{}, else {}",
                    g.gammas[0], g.edges[0], g.gammas[1]
                )
            }
            LossConfig::DualFocal { gamma, .. } => format!("gamma={gamma}"),
            LossConfig::AdaFocal { settings: s, .. } => format!(
                "lambda={}, gamma_initial={}, switch={}, gamma in [{}, {}]",
                s.lambda, s.gamma_initial, s.switch, s.gamma_min, s.gamma_max
            ),
            LossConfig::SigmoidFocal { alpha, gamma, .. } => {
                format!("alpha={}, gamma={gamma}", alpha.describe())
            }
        };
        let logits = if self.from_logits() {
            ", from_logits"
        } else {
            ""
        };
        format!("{}({body}{logits})", self.cli_name())
    }

    /// Checks the parameters that do not depend on the data (everything but the length of
    /// a per-class alpha). Called by the CLI as soon as the flags are parsed.
    pub fn validate_params(&self) -> Result<()> {
        fn non_negative(flag: &str, v: f64) -> Result<()> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "{flag} must be a finite number >= 0, got {v}"
                )))
            }
        }
        fn smoothing(v: f64) -> Result<()> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "--label-smoothing must be in [0, 1], got {v}"
                )))
            }
        }
        match self {
            LossConfig::Focal {
                alpha,
                gamma,
                l1,
                l2,
                ..
            } => {
                alpha.validate_values(false)?;
                non_negative("--gamma", *gamma)?;
                non_negative("--l1", *l1)?;
                non_negative("--l2", *l2)
            }
            LossConfig::CalibratedMse { facture, .. } => non_negative("--facture", *facture),
            LossConfig::KerasFocal {
                alpha,
                gamma,
                label_smoothing,
                ..
            } => {
                alpha.validate_values(false)?;
                non_negative("--gamma", *gamma)?;
                smoothing(*label_smoothing)
            }
            LossConfig::CrossEntropy {
                label_smoothing, ..
            } => smoothing(*label_smoothing),
            LossConfig::Flsd53 { .. } => Ok(()),
            LossConfig::DualFocal { gamma, .. } => non_negative("--gamma", *gamma),
            LossConfig::AdaFocal { settings, bins, .. } => {
                settings.validate()?;
                bins.validate()
            }
            LossConfig::SigmoidFocal { alpha, gamma, .. } => {
                alpha.validate_values(true)?;
                non_negative("--gamma", *gamma)
            }
        }
    }

    /// Checks every parameter for data with `classes` classes.
    pub fn validate(&self, classes: usize) -> Result<()> {
        self.validate_params()?;
        if let LossConfig::Focal {
            alpha: Alpha::PerClass(v),
            ..
        }
        | LossConfig::KerasFocal {
            alpha: Alpha::PerClass(v),
            ..
        }
        | LossConfig::SigmoidFocal {
            alpha: Alpha::PerClass(v),
            ..
        } = self
            && v.len() != classes
        {
            return Err(Error::invalid(format!(
                "--alpha has {} values but the data has {classes} classes; give one value, or one per class",
                v.len()
            )));
        }
        Ok(())
    }
}
