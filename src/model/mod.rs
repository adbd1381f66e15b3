//! The model: a validated list of layers (the plan), its parameters on a backend, and the
//! forward pass, backward pass and Adam step written per layer (no general autograd).

pub mod arch;
mod plan;

use crate::loss::{LossConfig, Output};
use crate::ops::loss::{CountStep, uncounted};
use crate::ops::{AdamStep, Backend, Kernel};
use crate::optim::Adam;
use crate::rng::Rng;
use crate::{Element, Error, Result};
pub use arch::{Arch, LayerSpec, REFERENCE_ARCH};
pub use plan::{ImageShape, Layer, ParamSpec, Plan};

/// A parameter tensor with its gradient and Adam moments on the backend.
pub struct Param<Buf> {
    pub spec: ParamSpec,
    pub value: Buf,
    pub grad: Buf,
    pub m: Buf,
    pub v: Buf,
}

/// Per-batch buffers, allocated once for the largest batch seen and reused by every step.
struct Workspace<Buf> {
    capacity: usize,
    /// `acts[i]` is op i's output (after its ReLU); the last one holds the logits.
    acts: Vec<Buf>,
    probs: Buf,
    /// dLoss/dprobs (unused when the loss takes logits).
    dprobs: Buf,
    /// Ping-pong buffers for the activation gradients of the backward pass.
    grad_a: Buf,
    grad_b: Buf,
    /// `fused[i]`: the last forward pass ran op i (a convolution) and op i + 1 (its pool) as
    /// one fused block: `acts[i]` holds the pool's codes, not the convolution's output (see
    /// [`fused_blocks`]).
    fused: Vec<bool>,
}

impl<Buf> Workspace<Buf> {
    /// The last op's output: the logits.
    fn logits(&self) -> &Buf {
        self.acts.last().expect("a plan has at least the head")
    }
    /// What `loss` takes: the logits or the probabilities.
    fn loss_input(&self, loss: &LossConfig) -> &Buf {
        if loss.from_logits() {
            self.logits()
        } else {
            &self.probs
        }
    }
}

/// What one training step reports back to the host.
#[derive(Clone, Debug)]
pub struct StepOutput<E> {
    pub loss: E,
    /// Softmax probabilities, `[batch, classes]`.
    pub probs: Vec<E>,
}

pub struct Model<B: Backend> {
    pub plan: Plan,
    pub params: Vec<Param<B::Buf>>,
    pub optimizer: Adam,
    workspace: Option<Workspace<B::Buf>>,
    /// Fuse a convolution, its ReLU and the 2x2 pool after it where the backend can (true
    /// unless [`Model::keep_activations`] turned it off).
    fuse: bool,
}

/// Which ops of `ops` are a ReLU convolution that `backend` runs with the 2x2 max-pool after
/// it as one pass (`Conv2dOps::fuses_conv_relu_pool`: the CPU's direct first layer and its
/// Winograd layers), at `batch`: `fused[i]` for op i. The convolution's output, the largest
/// activation of its block (100 MB of the reference CNN's first at batch 32), is then never
/// stored, nor read back by the pool's passes.
pub fn fused_blocks<B: Backend>(ops: &[Layer], backend: &B, batch: usize) -> Vec<bool> {
    let mut fused = vec![false; ops.len()];
    for (i, pair) in ops.windows(2).enumerate() {
        if let [
            Layer::Conv {
                shape, relu: true, ..
            },
            Layer::Pool { shape: pool },
        ] = pair
        {
            let (s, p) = (Layer::conv(shape, batch), Layer::pool(pool, batch));
            fused[i] = backend.fuses_conv_relu_pool(&s, &p);
        }
    }
    fused
}

/// Glorot-uniform initial values (Keras' default kernel initialiser) for a kernel, zeros
/// for a bias: `U(-l, l)` with `l = sqrt(6 / (fan_in + fan_out))`, fans as Keras counts them
/// (receptive field times input/output channels for HWIO kernels).
pub fn glorot_uniform_init(spec: &ParamSpec, rng: &mut Rng) -> Vec<f64> {
    if spec.shape.len() < 2 {
        return vec![0.0; spec.len()];
    }
    let receptive: usize = spec.shape[..spec.shape.len() - 2].iter().product();
    let fan_in = receptive * spec.shape[spec.shape.len() - 2];
    let fan_out = receptive * spec.shape[spec.shape.len() - 1];
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
    (0..spec.len()).map(|_| rng.range(-limit, limit)).collect()
}

impl<B: Backend> Model<B> {
    /// A model with Glorot-uniform kernels and zero biases drawn from `seed`.
    pub fn new(backend: &B, plan: Plan, seed: u64) -> Result<Self> {
        let mut rng = Rng::derive(seed, 1);
        let values: Vec<Vec<B::E>> = plan
            .params
            .iter()
            .map(|spec| {
                glorot_uniform_init(spec, &mut rng)
                    .into_iter()
                    .map(B::E::of)
                    .collect()
            })
            .collect();
        Self::with_weights(backend, plan, &values)
    }

    /// A model with the given weights, in the order and layouts of `plan.params`.
    pub fn with_weights(backend: &B, plan: Plan, values: &[Vec<B::E>]) -> Result<Self> {
        if values.len() != plan.params.len() {
            return Err(Error::Shape(format!(
                "{} weight tensors given, the model has {}",
                values.len(),
                plan.params.len()
            )));
        }
        let mut params = Vec::with_capacity(values.len());
        for (spec, value) in plan.params.iter().zip(values) {
            if value.len() != spec.len() {
                return Err(Error::Shape(format!(
                    "{}: {} values given, shape {:?} needs {}",
                    spec.name,
                    value.len(),
                    spec.shape,
                    spec.len()
                )));
            }
            params.push(Param {
                spec: spec.clone(),
                value: backend.upload(value)?,
                grad: backend.zeros(spec.len())?,
                m: backend.zeros(spec.len())?,
                v: backend.zeros(spec.len())?,
            });
        }
        Ok(Model {
            plan,
            params,
            optimizer: Adam::default(),
            workspace: None,
            fuse: true,
        })
    }

    fn workspace(&mut self, backend: &B, batch: usize) -> Result<&mut Workspace<B::Buf>> {
        if self.workspace.as_ref().is_none_or(|w| w.capacity < batch) {
            let acts = self
                .plan
                .ops
                .iter()
                .map(|op| backend.zeros(op.output_len() * batch))
                .collect::<Result<Vec<_>>>()?;
            let biggest = self
                .plan
                .ops
                .iter()
                .map(Layer::output_len)
                .max()
                .unwrap_or(0)
                * batch;
            let logits = self.plan.classes * batch;
            self.workspace = Some(Workspace {
                capacity: batch,
                acts,
                probs: backend.zeros(logits)?,
                dprobs: backend.zeros(logits)?,
                grad_a: backend.zeros(biggest)?,
                grad_b: backend.zeros(biggest)?,
                fused: Vec::new(),
            });
        }
        Ok(self.workspace.as_mut().expect("workspace was just ensured"))
    }

    /// Runs the layers on `batch` images in `x` (NHWC), leaving the logits and the softmax
    /// probabilities in the workspace.
    pub fn forward(&mut self, backend: &B, x: &B::Buf, batch: usize) -> Result<()> {
        let classes = self.plan.classes;
        self.workspace(backend, batch)?;
        let fuse = self.fuse;
        let Model {
            plan,
            params,
            workspace,
            ..
        } = self;
        let ws = workspace.as_mut().expect("workspace was just ensured");
        let ops = &plan.ops;
        ws.fused = if fuse {
            fused_blocks(ops, backend, batch)
        } else {
            vec![false; ops.len()]
        };
        for (i, op) in ops.iter().enumerate() {
            if i > 0 && ws.fused[i - 1] {
                continue; // the pool ran with its convolution
            }
            let (done, rest) = ws.acts.split_at_mut(i);
            let input = if i == 0 { x } else { &done[i - 1] };
            if let (true, Layer::Conv { shape, param, .. }, Some(Layer::Pool { shape: pool })) =
                (ws.fused[i], op, ops.get(i + 1))
            {
                let (s, p) = (Layer::conv(shape, batch), Layer::pool(pool, batch));
                let (w, b) = (&params[*param].value, &params[param + 1].value);
                let (codes, pooled) = rest.split_at_mut(1);
                backend.conv2d_relu_pool_forward(
                    &s,
                    &p,
                    input,
                    w,
                    b,
                    &mut pooled[0],
                    &mut codes[0],
                )?;
                continue;
            }
            let out = &mut rest[0];
            match op {
                Layer::Conv { shape, relu, param } => {
                    let s = Layer::conv(shape, batch);
                    backend.conv2d_forward(
                        &s,
                        input,
                        &params[*param].value,
                        &params[param + 1].value,
                        out,
                        *relu,
                    )?
                }
                Layer::Pool { shape } => {
                    backend.maxpool2d_forward(&Layer::pool(shape, batch), input, out)?
                }
                Layer::Dense { shape, relu, param } => {
                    let s = Layer::dense(shape, batch);
                    backend.dense_forward(
                        &s,
                        input,
                        &params[*param].value,
                        &params[param + 1].value,
                        out,
                        *relu,
                    )?
                }
            }
        }
        let logits = ws.acts.last().expect("a plan has at least the head");
        match plan.output {
            Output::Softmax => backend.softmax_forward(batch, classes, logits, &mut ws.probs),
            Output::Sigmoid => backend.sigmoid_forward(batch * classes, logits, &mut ws.probs),
        }
    }

    /// The workspace of the last forward pass, or an error naming `caller` if there was none.
    fn last_forward(&self, caller: &str) -> Result<&Workspace<B::Buf>> {
        self.workspace
            .as_ref()
            .ok_or_else(|| Error::invalid(format!("{caller}() before forward()")))
    }

    /// Softmax probabilities of the last forward pass, `[batch, classes]`.
    pub fn probabilities(&self, backend: &B, batch: usize) -> Result<Vec<B::E>> {
        let ws = self.last_forward("probabilities")?;
        backend.read(&ws.probs, batch * self.plan.classes)
    }

    /// Logits of the last forward pass, `[batch, classes]`.
    pub fn logits(&self, backend: &B, batch: usize) -> Result<Vec<B::E>> {
        let ws = self.last_forward("logits")?;
        backend.read(ws.logits(), batch * self.plan.classes)
    }

    /// Output of op `index` in the last forward pass (after its ReLU), `batch` images. A
    /// fused block keeps no convolution output: call [`Model::keep_activations`] first to
    /// read it.
    pub fn activation(&self, backend: &B, index: usize, batch: usize) -> Result<Vec<B::E>> {
        let ws = self.last_forward("activation")?;
        if ws.fused.get(index) == Some(&true) {
            return Err(Error::invalid(format!(
                "activation({index}): the convolution ran fused with its pool and was not kept; call keep_activations() before forward()"
            )));
        }
        backend.read(&ws.acts[index], batch * self.plan.ops[index].output_len())
    }

    /// Every op's output is kept from the next forward pass on (no fused blocks), for
    /// [`Model::activation`]; the results are the same either way.
    pub fn keep_activations(&mut self) {
        self.fuse = false;
    }

    /// Forward pass on `x` and softmax probabilities back on the host.
    pub fn predict(&mut self, backend: &B, x: &B::Buf, batch: usize) -> Result<Vec<B::E>> {
        self.forward(backend, x, batch)?;
        self.probabilities(backend, batch)
    }

    /// Loss of the last forward pass against one-hot `y`, and every parameter's gradient
    /// (into `params[i].grad`). Returns the loss.
    pub fn backward(
        &mut self,
        backend: &B,
        loss: &LossConfig,
        x: &B::Buf,
        y: &B::Buf,
        batch: usize,
    ) -> Result<B::E> {
        let value = self.loss_gradient(backend, loss, y, batch)?;
        self.backward_layers(backend, x, batch, None)?;
        Ok(value)
    }

    /// The loss of the last forward pass against `y`, and its gradient in the workspace.
    fn loss_gradient(
        &mut self,
        backend: &B,
        loss: &LossConfig,
        y: &B::Buf,
        batch: usize,
    ) -> Result<B::E> {
        let classes = self.plan.classes;
        self.loss_gradient_with(backend, loss, batch, |pred, _probs, grad| {
            backend
                .loss(loss, batch, classes, y, pred, Some(grad), None)
                .map(uncounted)
        })
    }

    /// The gradient of the loss computed by `loss_call(pred, probs, grad)` with respect to
    /// the logits, into the workspace (where [`Self::backward_layers`] starts): `pred` is
    /// what the loss takes (logits or probabilities), `grad` receives dLoss/dpred.
    fn loss_gradient_with<V>(
        &mut self,
        backend: &B,
        loss: &LossConfig,
        batch: usize,
        loss_call: impl FnOnce(&B::Buf, &B::Buf, &mut B::Buf) -> Result<V>,
    ) -> Result<V> {
        let Model {
            plan, workspace, ..
        } = self;
        let classes = plan.classes;
        if loss.output() != plan.output {
            return Err(Error::invalid(format!(
                "{} trains a {} head, but this model's head is a {} (build its plan with Plan::with_output)",
                loss.cli_name(),
                loss.output().name(),
                plan.output.name()
            )));
        }
        let ws = workspace
            .as_mut()
            .ok_or_else(|| Error::invalid("backward() before forward()"))?;
        if ws.capacity < batch {
            return Err(Error::invalid(
                "backward() with a larger batch than the last forward()",
            ));
        }
        // dLoss/dlogits into grad_a.
        let value = if loss.from_logits() {
            let logits = ws.acts.last().expect("a plan has at least the head");
            loss_call(logits, &ws.probs, &mut ws.grad_a)?
        } else {
            let value = loss_call(&ws.probs, &ws.probs, &mut ws.dprobs)?;
            match plan.output {
                Output::Softmax => backend.softmax_backward(
                    batch,
                    classes,
                    &ws.probs,
                    &ws.dprobs,
                    &mut ws.grad_a,
                )?,
                Output::Sigmoid => backend.sigmoid_backward(
                    batch * classes,
                    &ws.probs,
                    &ws.dprobs,
                    &mut ws.grad_a,
                )?,
            }
            value
        };
        Ok(value)
    }

    /// Every layer's gradients from the loss gradient in the workspace, last layer first.
    /// With `adam` (a train step), the dense kernels whose backend fuses their Adam step
    /// into the backward pass are updated there, their gradients not stored: the returned
    /// flags mark those parameters (the rest wait for [`Self::update_params`]).
    fn backward_layers(
        &mut self,
        backend: &B,
        x: &B::Buf,
        batch: usize,
        adam: Option<AdamInBackward<'_, B>>,
    ) -> Result<Vec<bool>> {
        let Model {
            plan,
            params,
            workspace,
            ..
        } = self;
        let ops = &plan.ops;
        let ws = workspace
            .as_mut()
            .ok_or_else(|| Error::invalid("backward() before forward()"))?;
        let mut updated = vec![false; params.len()];
        let (mut grad, mut next) = (&mut ws.grad_a, &mut ws.grad_b);
        // Set by a pool that already applied the ReLU mask of the layer before it.
        let mut relu_done = false;
        for (i, op) in ops.iter().enumerate().rev() {
            if i > 0 && ws.fused[i - 1] {
                continue; // a fused block's pool: with its convolution, below
            }
            let input = if i == 0 { x } else { &ws.acts[i - 1] };
            let output = &ws.acts[i];
            if let (true, Layer::Conv { shape, param, .. }, Some(Layer::Pool { shape: pool })) =
                (ws.fused[i], op, ops.get(i + 1))
            {
                // A fused block: the pool's gradient (in `grad`) and its codes (in place of
                // the convolution's output) give the convolution's gradients directly.
                let (s, p) = (Layer::conv(shape, batch), Layer::pool(pool, batch));
                let (kernel, bias) = pair_mut(params, *param);
                backend.conv2d_relu_pool_backward_filter(
                    &s,
                    &p,
                    input,
                    output,
                    grad,
                    &mut kernel.grad,
                    &mut bias.grad,
                )?;
                if i > 0 {
                    backend.conv2d_relu_pool_backward_data(
                        &s,
                        &p,
                        output,
                        grad,
                        &kernel.value,
                        next,
                    )?;
                }
                std::mem::swap(&mut grad, &mut next);
                continue;
            }
            match op {
                Layer::Conv { shape, relu, param } => {
                    let s = Layer::conv(shape, batch);
                    if *relu && !std::mem::take(&mut relu_done) {
                        backend.relu_backward(s.output_len(), output, grad)?;
                    }
                    let (kernel, bias) = pair_mut(params, *param);
                    backend.conv2d_backward_filter(
                        &s,
                        input,
                        grad,
                        &mut kernel.grad,
                        &mut bias.grad,
                    )?;
                    if i > 0 {
                        backend.conv2d_backward_data(&s, grad, &kernel.value, next)?;
                    }
                }
                Layer::Pool { shape } => {
                    let s = Layer::pool(shape, batch);
                    // A pool right after a ReLU conv (the usual block) does both backward
                    // steps in one pass over the large pre-pool activations.
                    if i > 0 && matches!(ops[i - 1], Layer::Conv { relu: true, .. }) {
                        backend.maxpool2d_relu_backward(&s, input, grad, next)?;
                        relu_done = true;
                    } else {
                        backend.maxpool2d_backward(&s, input, grad, next)?;
                    }
                }
                Layer::Dense { shape, relu, param } => {
                    let s = Layer::dense(shape, batch);
                    if *relu {
                        backend.relu_backward(s.batch * s.outputs, output, grad)?;
                    }
                    let (kernel, bias) = pair_mut(params, *param);
                    let dx = if i > 0 { Some(&mut *next) } else { None };
                    match &adam {
                        Some(adam) if backend.fuses_dense_adam(&s) => {
                            let kernel = Kernel {
                                value: &mut kernel.value,
                                grad: &mut kernel.grad,
                                m: &mut kernel.m,
                                v: &mut kernel.v,
                            };
                            backend.dense_backward_adam(
                                &s,
                                input,
                                grad,
                                dx,
                                kernel,
                                &mut bias.grad,
                                &adam.step,
                                adam.counters,
                            )?;
                            updated[*param] = true;
                        }
                        _ => backend.dense_backward(
                            &s,
                            input,
                            &kernel.value,
                            grad,
                            dx,
                            &mut kernel.grad,
                            &mut bias.grad,
                        )?,
                    }
                }
            }
            std::mem::swap(&mut grad, &mut next);
        }
        Ok(updated)
    }

    /// Loss of the last forward pass against one-hot `y`, without gradients (validation).
    pub fn loss_of_forward(
        &self,
        backend: &B,
        loss: &LossConfig,
        y: &B::Buf,
        batch: usize,
    ) -> Result<B::E> {
        let ws = self.last_forward("loss_of_forward")?;
        backend
            .loss(
                loss,
                batch,
                self.plan.classes,
                y,
                ws.loss_input(loss),
                None,
                None,
            )
            .map(uncounted)
    }

    /// One Adam update of every parameter from its current gradient.
    pub fn apply_gradients(&mut self, backend: &B) -> Result<()> {
        let step = self.optimizer.next_step::<B::E>();
        self.update_params(backend, &step, None, &[])
    }

    /// A train step's backward pass and Adam step, from the loss gradient in the workspace:
    /// the parameters the backend updates inside the backward pass there, the rest after
    /// it; with `counters`, gated as [`Backend::adam_update`] gates them.
    fn backward_and_update(
        &mut self,
        backend: &B,
        x: &B::Buf,
        batch: usize,
        counters: Option<&B::Counters>,
    ) -> Result<()> {
        let step = self.optimizer.next_step::<B::E>();
        let adam = AdamInBackward { step, counters };
        let done = self.backward_layers(backend, x, batch, Some(adam))?;
        self.update_params(backend, &step, counters, &done)
    }

    /// Adam step `step` of every parameter but those `done` marks (updated in the backward
    /// pass); with `counters`, the update each parameter skips once they record a failed
    /// step ([`Backend::adam_update`]).
    fn update_params(
        &mut self,
        backend: &B,
        step: &AdamStep<B::E>,
        counters: Option<&B::Counters>,
        done: &[bool],
    ) -> Result<()> {
        for (i, p) in self.params.iter_mut().enumerate() {
            if done.get(i) == Some(&true) {
                continue;
            }
            let (len, value, m, v) = (p.spec.len(), &mut p.value, &mut p.m, &mut p.v);
            backend.adam_update(len, step, value, &p.grad, m, v, counters)?;
        }
        Ok(())
    }

    /// Forward, loss, backward and Adam on one batch. A non-finite loss is an error and
    /// leaves the weights untouched.
    pub fn train_step(
        &mut self,
        backend: &B,
        loss: &LossConfig,
        x: &B::Buf,
        y: &B::Buf,
        batch: usize,
    ) -> Result<StepOutput<B::E>> {
        self.forward(backend, x, batch)?;
        let value = self.loss_gradient(backend, loss, y, batch)?;
        if !value.f64().is_finite() {
            return Err(Error::NonFinite(format!("the loss is {value}")));
        }
        self.backward_and_update(backend, x, batch, None)?;
        Ok(StepOutput {
            loss: value,
            probs: self.probabilities(backend, batch)?,
        })
    }

    /// [`Self::train_step`] as step `step` of a pass, with nothing read back: the loss and
    /// the correctly classified images go to `counters`, and a non-finite loss is recorded
    /// there (see [`Backend::loss`]) and leaves the weights untouched, this step's
    /// and every later one's in the pass.
    #[allow(clippy::too_many_arguments)]
    pub fn train_step_counted(
        &mut self,
        backend: &B,
        loss: &LossConfig,
        x: &B::Buf,
        y: &B::Buf,
        batch: usize,
        step: usize,
        counters: &mut B::Counters,
    ) -> Result<()> {
        self.forward(backend, x, batch)?;
        let classes = self.plan.classes;
        self.loss_gradient_with(backend, loss, batch, |pred, probs, grad| {
            let count = CountStep {
                probs,
                step,
                counters: &mut *counters,
            };
            backend.loss(loss, batch, classes, y, pred, Some(grad), Some(count))
        })?;
        self.backward_and_update(backend, x, batch, Some(counters))
    }

    /// The loss of the last forward pass against one-hot `y`, added to `counters` as step
    /// `step` (validation: no gradient, nothing read back).
    pub fn count_loss_of_forward(
        &self,
        backend: &B,
        loss: &LossConfig,
        y: &B::Buf,
        batch: usize,
        step: usize,
        counters: &mut B::Counters,
    ) -> Result<()> {
        let ws = self.last_forward("count_loss_of_forward")?;
        let count = CountStep {
            probs: &ws.probs,
            step,
            counters,
        };
        let classes = self.plan.classes;
        backend.loss(
            loss,
            batch,
            classes,
            y,
            ws.loss_input(loss),
            None,
            Some(count),
        )?;
        Ok(())
    }

    /// Copies the logits of the last forward pass (`batch` rows) into `dst` from row
    /// `row` on, on the backend.
    pub fn copy_logits_into(
        &self,
        backend: &B,
        batch: usize,
        dst: &mut B::Buf,
        row: usize,
    ) -> Result<()> {
        let ws = self.last_forward("copy_logits_into")?;
        let classes = self.plan.classes;
        backend.copy_into(ws.logits(), batch * classes, dst, row * classes)
    }

    /// Every parameter's value, on the host, in `plan.params` order.
    pub fn weights(&self, backend: &B) -> Result<Vec<Vec<B::E>>> {
        self.params
            .iter()
            .map(|p| backend.read(&p.value, p.spec.len()))
            .collect()
    }

    /// Every parameter's gradient of the last [`Self::backward`], on the host. (A train
    /// step's dense kernels may not store theirs: see [`Self::backward_layers`].)
    pub fn gradients(&self, backend: &B) -> Result<Vec<Vec<B::E>>> {
        self.params
            .iter()
            .map(|p| backend.read(&p.grad, p.spec.len()))
            .collect()
    }
}

/// A train step's Adam step, for the parameters updated inside the backward pass
/// ([`Model::backward_layers`]), and the counters that gate it.
struct AdamInBackward<'a, B: Backend> {
    step: AdamStep<B::E>,
    counters: Option<&'a B::Counters>,
}

/// The kernel and the bias of a layer (two neighbouring parameters), both mutable.
fn pair_mut<T>(params: &mut [T], first: usize) -> (&mut T, &mut T) {
    let (a, b) = params[first..].split_at_mut(1);
    (&mut a[0], &mut b[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_needs_count_what_a_pass_holds() {
        // c2 on 4x4x1 -> 2x2x2 (8), flatten, head d3: 2*9+2 + 8*3+3 = 47 parameters.
        let shape = ImageShape {
            height: 4,
            width: 4,
            channels: 1,
        };
        let plan = Plan::new(&"c2".parse().unwrap(), shape, 3).unwrap();
        assert_eq!(plan.parameter_count(), 47);
        // Inference: the parameters, and per image the input (16), the conv (8) and the
        // head's (3) outputs and the logits (3).
        assert_eq!(
            plan.inference_bytes(10, 4),
            4 * (47 + 10 * (16 + 8 + 3 + 3))
        );
        // Training holds more: gradients, Adam's moments, gradient buffers.
        assert!(plan.training_bytes(10, 4) > plan.inference_bytes(10, 4));
        // Absurd sizes saturate instead of wrapping.
        assert_eq!(plan.inference_bytes(usize::MAX, 4), u64::MAX);
    }

    #[test]
    fn reference_cnn_shapes_and_parameter_count() {
        let plan = Plan::new(
            &Arch::default(),
            ImageShape {
                height: 224,
                width: 224,
                channels: 3,
            },
            2,
        )
        .unwrap();
        // 222 -> 111 -> 109 -> 54 -> 52 -> 26: flatten 26*26*64 = 43264, as in the brief.
        match plan.ops[6] {
            Layer::Dense { shape, .. } => assert_eq!((shape.inputs, shape.outputs), (43264, 256)),
            ref op => panic!("unexpected op {op:?}"),
        }
        // 448+16 + 4608+32 + 18432+64 + 43264*256+256 + 256*2+2 (counted by hand).
        assert_eq!(plan.parameter_count(), 448 + 4640 + 18496 + 11075840 + 514);
        assert_eq!(plan.params[0].name, "conv2d/kernel");
        assert_eq!(plan.params[9].name, "dense_1/bias");
    }

    #[test]
    fn too_small_input_is_a_clear_error() {
        let err = Plan::new(
            &Arch::default(),
            ImageShape {
                height: 20,
                width: 20,
                channels: 3,
            },
            2,
        )
        .unwrap_err();
        let msg = err.to_string();
        // 20 -> 18 -> 9 -> 7 -> 3 -> 1: the last pool gets 1x1.
        assert!(msg.contains("layer 6 (`p`) gets a 1x1 input"), "{msg}");
    }
}
