//! The loss flags shared by `focalflow loss` and `focalflow train`
//! (`#[command(flatten)]` them; keep the flag names exactly).

use crate::class_balance::AutoAlpha;
use crate::loss::{Alpha, LossConfig};
use crate::{Error, Result};

/// Which loss to use and its parameters. A parameter left out takes the loss's default
/// (focal: alpha 0.25, gamma 2, l1 0, l2 0; calibrated-mse: facture 0.1; keras-focal:
/// alpha 0.25, gamma 2, label smoothing 0; ce: label smoothing 0). A parameter that the
/// chosen loss does not have is an error, not silently ignored.
#[derive(clap::Args, Debug, Clone)]
pub struct LossFlags {
    /// The loss: focal, calibrated-mse, keras-focal, ce, flsd-53, dual-focal, adafocal or
    /// sigmoid-focal (sigmoid outputs: multi-label data).
    #[arg(long = "loss", value_name = "NAME", default_value = "focal")]
    pub loss: String,
    /// Class weight of focal, keras-focal and sigmoid-focal: one value in [0, 1], or one per
    /// class (A1,A2,..), or (train only, focal and keras-focal) `auto` from the training-split
    /// class counts: auto = auto:effective (Cui et al., beta 0.999; auto:effective=BETA), or
    /// auto:inverse (inverse frequency). sigmoid-focal: a negative value turns it off.
    #[arg(long, value_name = "A|A1,A2,..", allow_hyphen_values = true)]
    pub alpha: Option<String>,
    /// Focusing parameter of focal, keras-focal, dual-focal and sigmoid-focal (>= 0).
    #[arg(long, value_name = "G", allow_hyphen_values = true)]
    pub gamma: Option<f64>,
    /// Weight of the L1 term of focal: l1 * sum |p| over the whole batch (>= 0).
    #[arg(long, value_name = "W", allow_hyphen_values = true)]
    pub l1: Option<f64>,
    /// Weight of the L2 term of focal: l2 * sum p^2 over the whole batch (>= 0).
    #[arg(long, value_name = "W", allow_hyphen_values = true)]
    pub l2: Option<f64>,
    /// Weight of the calibration term of calibrated-mse: facture * mean((0.5-p)^2) (>= 0).
    #[arg(long, value_name = "F", allow_hyphen_values = true)]
    pub facture: Option<f64>,
    /// Label smoothing of keras-focal and ce, in [0, 1]: y*(1-S) + S/classes.
    #[arg(long = "label-smoothing", value_name = "S", allow_hyphen_values = true)]
    pub label_smoothing: Option<f64>,
    /// The predictions are logits: the loss applies the softmax itself (fused and stable for
    /// focal). `focalflow loss` defaults to false (it takes probabilities); `train` and
    /// `bench` default to true, and `--from-logits=false` trains through the softmax output
    /// exactly as the original Keras loss does (see README: the clipping trap).
    #[arg(long = "from-logits", value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub from_logits: Option<bool>,
    /// adafocal: the step of each bin's gamma update, gamma * exp(LAMBDA * (C - A)) (default 1).
    #[arg(
        long = "adafocal-lambda",
        value_name = "LAMBDA",
        allow_hyphen_values = true
    )]
    pub adafocal_lambda: Option<f64>,
    /// adafocal: every bin's gamma before the first update (default 1).
    #[arg(
        long = "adafocal-gamma-initial",
        value_name = "G",
        allow_hyphen_values = true
    )]
    pub adafocal_gamma_initial: Option<f64>,
    /// adafocal: a gamma whose magnitude falls below this switches form, focal <-> inverse
    /// focal (default 0.2).
    #[arg(
        long = "adafocal-switch-pt",
        value_name = "S",
        allow_hyphen_values = true
    )]
    pub adafocal_switch_pt: Option<f64>,
    /// adafocal: the lowest gamma (negative: inverse focal; default -2, at least -20).
    #[arg(
        long = "adafocal-gamma-min",
        value_name = "G",
        allow_hyphen_values = true
    )]
    pub adafocal_gamma_min: Option<f64>,
    /// adafocal: the highest gamma (default 20).
    #[arg(
        long = "adafocal-gamma-max",
        value_name = "G",
        allow_hyphen_values = true
    )]
    pub adafocal_gamma_max: Option<f64>,
}

impl Default for LossFlags {
    fn default() -> Self {
        LossFlags {
            loss: "focal".into(),
            alpha: None,
            gamma: None,
            l1: None,
            l2: None,
            facture: None,
            label_smoothing: None,
            from_logits: None,
            adafocal_lambda: None,
            adafocal_gamma_initial: None,
            adafocal_switch_pt: None,
            adafocal_gamma_min: None,
            adafocal_gamma_max: None,
        }
    }
}

/// Parses `--alpha`: `A` or `A1,A2,..` (ranges are checked by [`LossConfig::validate_params`]).
pub fn parse_alpha(text: &str) -> Result<Alpha> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("auto") {
        return Err(Error::invalid(
            "--alpha auto needs the class counts of a data set: only `focalflow train` derives it; here give A or A1,A2,.. with values in [0, 1]",
        ));
    }
    let values = text
        .split(',')
        .map(|part| {
            let part = part.trim();
            part.parse::<f64>().map_err(|_| {
                Error::invalid(format!(
                    "--alpha {text:?}: {part:?} is not a number; expected A or A1,A2,.. with values in [0, 1]"
                ))
            })
        })
        .collect::<Result<Vec<f64>>>()?;
    Ok(if values.len() == 1 && !text.contains(',') {
        Alpha::Scalar(values[0])
    } else {
        Alpha::PerClass(values)
    })
}

impl LossFlags {
    /// The loss configuration these flags describe, with its parameters checked (all but
    /// the length of a per-class alpha, which needs the number of classes).
    pub fn to_config(&self) -> Result<LossConfig> {
        self.to_config_with_default(false)
    }

    /// As [`Self::to_config`], with `from_logits` taking `default_from_logits` when the flag
    /// is absent.
    pub fn to_config_with_default(&self, default_from_logits: bool) -> Result<LossConfig> {
        self.build(default_from_logits, false)
    }

    /// `--alpha auto..` (`train` only): the rule that derives the alpha from the class
    /// counts of the training split; None when `--alpha` is absent or gives values.
    pub fn auto_alpha(&self) -> Result<Option<AutoAlpha>> {
        self.alpha.as_deref().and_then(AutoAlpha::parse).transpose()
    }

    /// As [`Self::to_config_with_default`], for `train`, where `--alpha` may also be `auto..`
    /// ([`Self::auto_alpha`]): the configuration then keeps the loss's default alpha until
    /// [`crate::class_balance::with_alpha`] puts in the one the class counts give. `auto` is
    /// checked as any `--alpha` is: with a loss that has no alpha it is an error.
    pub fn to_config_with_auto_alpha(&self, default_from_logits: bool) -> Result<LossConfig> {
        self.build(default_from_logits, true)
    }

    /// The configuration; `--alpha auto..` is read as a rule when `auto_alpha` (train), else
    /// it is [`parse_alpha`]'s error.
    fn build(&self, default_from_logits: bool, auto_alpha: bool) -> Result<LossConfig> {
        let flag_from_logits = self.from_logits.unwrap_or(default_from_logits);
        let mut cfg = LossConfig::default_for(self.loss.trim())?;
        let name = cfg.cli_name();
        let not_for = |flag: &str, owners: &str| {
            Error::invalid(format!(
                "{flag} applies only to --loss {owners}, not to --loss {name}"
            ))
        };
        let alpha = match self.alpha.as_deref() {
            None => None,
            // The default stays until the class counts give the alpha.
            Some(text) if auto_alpha && AutoAlpha::parse(text).transpose()?.is_some() => None,
            Some(text) => Some(parse_alpha(text)?),
        };
        // A flag of another loss is an error, not silently ignored.
        let takes: &[&str] = match cfg {
            LossConfig::Focal { .. } => &["--alpha", "--gamma", "--l1", "--l2"],
            LossConfig::CalibratedMse { .. } => &["--facture"],
            LossConfig::KerasFocal { .. } => &["--alpha", "--gamma", "--label-smoothing"],
            LossConfig::CrossEntropy { .. } => &["--label-smoothing"],
            LossConfig::Flsd53 { .. } => &[],
            LossConfig::DualFocal { .. } => &["--gamma"],
            LossConfig::SigmoidFocal { .. } => &["--alpha", "--gamma"],
            LossConfig::AdaFocal { .. } => &[
                "--adafocal-lambda",
                "--adafocal-gamma-initial",
                "--adafocal-switch-pt",
                "--adafocal-gamma-min",
                "--adafocal-gamma-max",
            ],
        };
        for (flag, given, owners) in self.loss_specific_flags() {
            if given && !takes.contains(&flag) {
                return Err(not_for(flag, owners));
            }
        }
        match &mut cfg {
            LossConfig::Focal {
                alpha: a,
                gamma,
                l1,
                l2,
                from_logits,
            } => {
                if let Some(v) = alpha {
                    *a = v;
                }
                *gamma = self.gamma.unwrap_or(*gamma);
                *l1 = self.l1.unwrap_or(*l1);
                *l2 = self.l2.unwrap_or(*l2);
                *from_logits = flag_from_logits;
            }
            LossConfig::CalibratedMse {
                facture,
                from_logits,
            } => {
                *facture = self.facture.unwrap_or(*facture);
                *from_logits = flag_from_logits;
            }
            LossConfig::KerasFocal {
                alpha: a,
                gamma,
                label_smoothing,
                from_logits,
            } => {
                if let Some(v) = alpha {
                    *a = v;
                }
                *gamma = self.gamma.unwrap_or(*gamma);
                *label_smoothing = self.label_smoothing.unwrap_or(*label_smoothing);
                *from_logits = flag_from_logits;
            }
            LossConfig::CrossEntropy {
                label_smoothing,
                from_logits,
            } => {
                *label_smoothing = self.label_smoothing.unwrap_or(*label_smoothing);
                *from_logits = flag_from_logits;
            }
            LossConfig::Flsd53 { from_logits } => *from_logits = flag_from_logits,
            LossConfig::DualFocal { gamma, from_logits } => {
                *gamma = self.gamma.unwrap_or(*gamma);
                *from_logits = flag_from_logits;
            }
            LossConfig::SigmoidFocal {
                alpha: a,
                gamma,
                from_logits,
            } => {
                if auto_alpha && self.auto_alpha()?.is_some() {
                    return Err(Error::invalid(
                        "--alpha auto applies to focal and keras-focal; give sigmoid-focal A or A1,A2,.. (negative: no weighting)",
                    ));
                }
                if let Some(v) = alpha {
                    *a = v;
                }
                *gamma = self.gamma.unwrap_or(*gamma);
                *from_logits = flag_from_logits;
            }
            LossConfig::AdaFocal { settings, .. } => {
                let s = settings.clone();
                let settings = crate::loss::AdaFocalSettings {
                    lambda: self.adafocal_lambda.unwrap_or(s.lambda),
                    gamma_initial: self.adafocal_gamma_initial.unwrap_or(s.gamma_initial),
                    switch: self.adafocal_switch_pt.unwrap_or(s.switch),
                    gamma_min: self.adafocal_gamma_min.unwrap_or(s.gamma_min),
                    gamma_max: self.adafocal_gamma_max.unwrap_or(s.gamma_max),
                };
                cfg = LossConfig::adafocal(settings, flag_from_logits);
            }
        }
        cfg.validate_params()?;
        Ok(cfg)
    }

    /// The flags only some losses take: (flag, given, the losses that take it), in the
    /// order their errors are reported.
    fn loss_specific_flags(&self) -> [(&'static str, bool, &'static str); 11] {
        [
            (
                "--alpha",
                self.alpha.is_some(),
                "focal, keras-focal and sigmoid-focal",
            ),
            (
                "--gamma",
                self.gamma.is_some(),
                "focal, keras-focal, dual-focal and sigmoid-focal",
            ),
            ("--l1", self.l1.is_some(), "focal"),
            ("--l2", self.l2.is_some(), "focal"),
            ("--facture", self.facture.is_some(), "calibrated-mse"),
            (
                "--label-smoothing",
                self.label_smoothing.is_some(),
                "keras-focal and ce",
            ),
            (
                "--adafocal-lambda",
                self.adafocal_lambda.is_some(),
                "adafocal",
            ),
            (
                "--adafocal-gamma-initial",
                self.adafocal_gamma_initial.is_some(),
                "adafocal",
            ),
            (
                "--adafocal-switch-pt",
                self.adafocal_switch_pt.is_some(),
                "adafocal",
            ),
            (
                "--adafocal-gamma-min",
                self.adafocal_gamma_min.is_some(),
                "adafocal",
            ),
            (
                "--adafocal-gamma-max",
                self.adafocal_gamma_max.is_some(),
                "adafocal",
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::LOSS_NAMES;

    fn flags(loss: &str) -> LossFlags {
        LossFlags {
            loss: loss.into(),
            ..LossFlags::default()
        }
    }

    #[test]
    fn from_logits_default_is_the_callers_and_the_flag_overrides_it() {
        assert!(!flags("focal").to_config().unwrap().from_logits());
        assert!(
            flags("focal")
                .to_config_with_default(true)
                .unwrap()
                .from_logits()
        );
        let off = LossFlags {
            from_logits: Some(false),
            ..flags("focal")
        };
        assert!(!off.to_config_with_default(true).unwrap().from_logits());
    }

    #[test]
    fn defaults_per_loss() {
        for name in LOSS_NAMES {
            let cfg = flags(name).to_config().unwrap();
            assert_eq!(cfg, LossConfig::default_for(name).unwrap());
            assert_eq!(cfg.cli_name(), name);
        }
    }

    #[test]
    fn parameters_are_taken() {
        let f = LossFlags {
            alpha: Some("0.1, 0.9".into()),
            gamma: Some(0.5),
            l1: Some(1e-3),
            l2: Some(2e-3),
            from_logits: Some(true),
            ..flags("focal")
        };
        assert_eq!(
            f.to_config().unwrap(),
            LossConfig::Focal {
                alpha: Alpha::PerClass(vec![0.1, 0.9]),
                gamma: 0.5,
                l1: 1e-3,
                l2: 2e-3,
                from_logits: true
            }
        );
        let f = LossFlags {
            label_smoothing: Some(0.1),
            ..flags("ce")
        };
        assert_eq!(
            f.to_config().unwrap(),
            LossConfig::CrossEntropy {
                label_smoothing: 0.1,
                from_logits: false
            }
        );
        assert_eq!(parse_alpha("0.3").unwrap(), Alpha::Scalar(0.3));
        assert!(
            parse_alpha("0.3,")
                .unwrap_err()
                .to_string()
                .contains("not a number")
        );
    }

    #[test]
    fn auto_alpha_is_a_rule_and_the_config_keeps_the_default_until_the_counts_give_it() {
        let f = LossFlags {
            alpha: Some("auto:inverse".into()),
            ..flags("focal")
        };
        assert_eq!(f.auto_alpha().unwrap(), Some(AutoAlpha::Inverse));
        assert_eq!(
            f.to_config_with_auto_alpha(true).unwrap(),
            flags("focal").to_config_with_default(true).unwrap()
        );
        // Outside train there are no class counts: `auto` is an error.
        assert!(f.to_config_with_default(true).is_err());
        // Still an --alpha: a loss without one refuses it.
        let ce = LossFlags {
            alpha: Some("auto".into()),
            ..flags("ce")
        };
        assert!(
            ce.to_config_with_auto_alpha(true)
                .unwrap_err()
                .to_string()
                .contains("--alpha applies only to --loss focal, keras-focal and sigmoid-focal, not to --loss ce")
        );
        let values = LossFlags {
            alpha: Some("0.3".into()),
            ..flags("focal")
        };
        assert_eq!(values.auto_alpha().unwrap(), None);
        assert_eq!(
            values.to_config_with_auto_alpha(true).unwrap(),
            values.to_config_with_default(true).unwrap()
        );
    }

    #[test]
    fn clear_errors() {
        let cases: Vec<(LossFlags, &str)> = vec![
            (
                flags("hinge"),
                "valid: focal, calibrated-mse, keras-focal, ce, flsd-53, dual-focal",
            ),
            (
                LossFlags {
                    facture: Some(0.2),
                    ..flags("focal")
                },
                "--facture applies only to --loss calibrated-mse, not to --loss focal",
            ),
            (
                LossFlags {
                    alpha: Some("0.5".into()),
                    ..flags("ce")
                },
                "--alpha applies only to --loss focal, keras-focal and sigmoid-focal",
            ),
            (
                LossFlags {
                    gamma: Some(1.0),
                    ..flags("calibrated-mse")
                },
                "--gamma applies only",
            ),
            (
                LossFlags {
                    l1: Some(1.0),
                    ..flags("keras-focal")
                },
                "--l1 applies only to --loss focal",
            ),
            (
                LossFlags {
                    l2: Some(1.0),
                    ..flags("ce")
                },
                "--l2 applies only to --loss focal",
            ),
            (
                LossFlags {
                    label_smoothing: Some(0.1),
                    ..flags("focal")
                },
                "--label-smoothing applies only",
            ),
            (
                LossFlags {
                    alpha: Some("auto".into()),
                    ..flags("focal")
                },
                "--alpha auto",
            ),
            (
                LossFlags {
                    alpha: Some("x".into()),
                    ..flags("focal")
                },
                "\"x\" is not a number",
            ),
            (
                LossFlags {
                    alpha: Some("1.5".into()),
                    ..flags("focal")
                },
                "--alpha must be in [0, 1], got 1.5",
            ),
            (
                LossFlags {
                    gamma: Some(-1.0),
                    ..flags("keras-focal")
                },
                "--gamma must be a finite number >= 0, got -1",
            ),
            (
                LossFlags {
                    facture: Some(f64::NAN),
                    ..flags("calibrated-mse")
                },
                "--facture must be",
            ),
            (
                LossFlags {
                    label_smoothing: Some(1.5),
                    ..flags("ce")
                },
                "--label-smoothing must be in [0, 1]",
            ),
        ];
        for (f, want) in cases {
            let msg = f.to_config().unwrap_err().to_string();
            assert!(msg.contains(want), "{msg:?} should contain {want:?}");
        }
    }
}
