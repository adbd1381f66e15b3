//! Configurations of the calibration and multi-label losses that every loss matrix covers
//! (tests/losses.rs, tests/gradcheck.rs, tests/ops.rs): adafocal with focal and
//! inverse-focal bins, sigmoid-focal with a scalar alpha and a per-class one with a class
//! turned off.

use focalflow::loss::{AdaFocalSettings, Alpha, GammaBins, LossConfig};

pub fn calibration_losses(classes: usize, from_logits: bool) -> Vec<LossConfig> {
    vec![
        LossConfig::AdaFocal {
            settings: AdaFocalSettings::default(),
            // A focal, an inverse-focal and two more bins.
            bins: GammaBins {
                edges: vec![0.2, 0.45, 0.7],
                gammas: vec![3.0, -1.5, 0.5, 2.0],
            },
            from_logits,
        },
        LossConfig::SigmoidFocal {
            alpha: Alpha::Scalar(0.25),
            gamma: 2.0,
            from_logits,
        },
        LossConfig::SigmoidFocal {
            alpha: Alpha::PerClass(
                (0..classes)
                    .map(|c| if c == 1 { -1.0 } else { 0.7 })
                    .collect(),
            ),
            gamma: 0.5,
            from_logits,
        },
    ]
}
