//! `focalflow loss`: evaluates a configured loss (and its gradient) on arrays from `.npy`
//! files — for checking a loss setup and comparing with other frameworks.

use std::path::PathBuf;

use crate::cli::device::{self, on_device};
use crate::cli::flags::loss::LossFlags;
use crate::loss::LossConfig;
use crate::ops::Backend;
use crate::ops::loss::uncounted;
use crate::{Error, Result, npy};

/// Evaluate a loss on given labels and predictions; prints `{"loss": <number>}`.
#[derive(clap::Args, Debug)]
pub struct LossArgs {
    #[command(flatten)]
    pub loss: LossFlags,
    /// Labels: a 2-D .npy array [batch, classes] (f32 or f64, C order).
    #[arg(long = "y-true", value_name = "T.npy")]
    pub y_true: PathBuf,
    /// Predictions of the same shape: probabilities, or logits with --from-logits.
    #[arg(long = "y-pred", value_name = "P.npy")]
    pub y_pred: PathBuf,
    /// Write dLoss/dP (dLoss/dlogits with --from-logits) here as an f32 .npy of the same shape.
    #[arg(long = "grad-out", value_name = "G.npy")]
    pub grad_out: Option<PathBuf>,
    /// Where to compute: cpu, cuda, cuda-emu, or auto (cuda when a GPU and kernels are
    /// present, else cpu).
    #[arg(long, value_name = "D", default_value = "cpu")]
    pub device: String,
}

/// Runs `focalflow loss`: computes in f32 like training (inputs rounded to f32), prints one
/// JSON object on stdout and writes the gradient when asked.
pub fn run(args: &LossArgs) -> Result<()> {
    let device = device::resolve_str(&args.device)?;
    let cfg = args.loss.to_config()?;
    let (y_true, y_shape) = npy::read_2d_f32(&args.y_true)?;
    let (y_pred, p_shape) = npy::read_2d_f32(&args.y_pred)?;
    if y_shape != p_shape {
        return Err(Error::Shape(format!(
            "--y-true {} is {y_shape:?} but --y-pred {} is {p_shape:?}; they must have the same shape [batch, classes]",
            args.y_true.display(),
            args.y_pred.display()
        )));
    }
    // Through the backend's `loss` (on the cpu: loss_forward_backward::<f32>), which is f32
    // in every precision.
    let want_grad = args.grad_out.is_some();
    let fp32 = crate::precision::Precision::Fp32;
    let (loss, grad) = on_device!(device, fp32, |backend| {
        loss_of(backend, &cfg, &y_true, &y_pred, y_shape, want_grad)
    })?;
    if !loss.is_finite() {
        return Err(Error::NonFinite(format!(
            "{} evaluated to {loss} on these inputs",
            cfg.describe()
        )));
    }
    if let (Some(path), Some(g)) = (&args.grad_out, &grad) {
        npy::write_2d_f32(path, g, y_shape)?;
    }
    // An f32 widened to f64 prints with enough digits to round-trip the f32 exactly.
    println!("{}", serde_json::json!({ "loss": loss as f64 }));
    Ok(())
}

/// The loss (and its gradient when `want_grad`) of `[batch, classes]` host arrays, computed
/// by `b` (`Backend::loss`).
fn loss_of<B: Backend<E = f32>>(
    b: &B,
    cfg: &LossConfig,
    y_true: &[f32],
    y_pred: &[f32],
    [batch, classes]: [usize; 2],
    want_grad: bool,
) -> Result<(f32, Option<Vec<f32>>)> {
    let (t, p) = (b.upload(y_true)?, b.upload(y_pred)?);
    let mut g = if want_grad {
        Some(b.zeros(batch * classes)?)
    } else {
        None
    };
    let value = uncounted(b.loss(cfg, batch, classes, &t, &p, g.as_mut(), None)?);
    let grad = match &g {
        Some(g) => Some(b.read(g, batch * classes)?),
        None => None,
    };
    Ok((value, grad))
}
