//! Adam, as Keras 3 computes it.

use crate::Element;
use crate::ops::AdamStep;

/// Adam's hyperparameters and step counter. Defaults are Keras': lr 1e-3, beta1 0.9,
/// beta2 0.999, epsilon 1e-7.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Adam {
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    /// Steps taken so far.
    pub iterations: u64,
}

impl Default for Adam {
    fn default() -> Self {
        Adam {
            learning_rate: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            iterations: 0,
        }
    }
}

impl Adam {
    pub fn with_learning_rate(learning_rate: f64) -> Self {
        Adam {
            learning_rate,
            ..Adam::default()
        }
    }

    /// Advances the step counter and returns the scalars of this step:
    /// `step_size = lr * sqrt(1 - beta2^t) / (1 - beta1^t)`.
    ///
    /// Keras keeps the learning rate and the betas of the bias correction in float32
    /// variables even when the model runs in float64, so they are rounded to f32 first;
    /// that is what makes the f64 path reproduce Keras' f64 dump exactly.
    pub fn next_step<T: Element>(&mut self) -> AdamStep<T> {
        self.iterations += 1;
        let f32_of = |x: f64| T::of(x as f32 as f64);
        let t = T::of(self.iterations as f64);
        let beta1_power = f32_of(self.beta1).powf(t);
        let beta2_power = f32_of(self.beta2).powf(t);
        AdamStep {
            step_size: f32_of(self.learning_rate) * (T::one() - beta2_power).sqrt()
                / (T::one() - beta1_power),
            one_minus_beta1: T::of(1.0 - self.beta1),
            one_minus_beta2: T::of(1.0 - self.beta2),
            epsilon: T::of(self.epsilon),
        }
    }
}
