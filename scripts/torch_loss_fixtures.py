#!/usr/bin/env python3
"""Writes tests/data/torch_losses.json: the calibration and multi-label losses computed with
PyTorch on the CPU, which tests/torch_losses.rs checks every focalflow backend against.

Set-up (once; the CPU is enough):
    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch torchvision numpy
Run from the repository root:
    .venv-torch/bin/python scripts/torch_loss_fixtures.py [--out tests/data/torch_losses.json]

Each loss is written as its authors' code computes it (quoted per function below):
- sigmoid-focal: torchvision.ops.sigmoid_focal_loss(reduction="mean") itself for a scalar
  alpha; a per-class alpha (our extension, as Keras broadcasts one) with the same formula;
- flsd-53: Mukhoti et al.'s FocalLossAdaptive (torrvision/focal_calibration): gamma 5 where
  p_t < 0.2, else 3, taken from p_t without gradient, -(1 - p_t)^gamma log p_t, mean;
- adafocal: Ghosh et al.'s AdaFocal.forward (3mcloud/adafocal) with a given table of bins:
  the gamma of the bin holding p_t, -(1 - sign(gamma) p_t + 1e-20)^|gamma| log p_t, divided
  by the batch (the authors sum; focalflow takes the mean, as for every other loss);
  and its update_bin_stats, on validation confidences, for the gamma update;
- dual-focal: Tao et al.'s DualFocalLoss (Linwei94/DualFocalLoss): p_j the largest
  probability below p_k (top-1 of the masked softmax), -(1 - p_k + p_j)^gamma log p_k, mean.
From logits through log_softmax / the logits themselves; "probabilities" cases clip the
predictions to [1e-7, 1 - 1e-7] first (the clip focalflow's probability paths share with
Keras: no gradient strictly outside the bounds, the gradient passes at them). Gradients come from
autograd w.r.t. the prediction tensor. Every case is computed twice: in float32 (as the
model trains) and in float64 on the same float32 inputs (the value to ~1e-15).
"""

import argparse
import json
import math
import platform
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops import sigmoid_focal_loss

F32 = np.float32
# The clip bounds as float32 computes them (0.99999988 above): the float64 run uses the same
# bounds, so that it is the exact value of the float32 computation, not of another clip.
LO, HI = float(F32(1e-7)), float(F32(1.0 - 1e-7))


def clip(p):
    # Keras' clip_by_value semantics, which focalflow's probability paths share: the gradient
    # passes inside the bounds and at them, and is 0 strictly outside. (torch.clamp's
    # gradient is 0 at the bounds too, so it is not used for the gradient.)
    inside = (p >= LO) & (p <= HI)
    return torch.where(inside, p, p.detach().clamp(LO, HI))


def true_class(y):
    return y.argmax(dim=1)  # the first largest label, as focalflow


def log_probs(x, from_logits):
    return F.log_softmax(x, dim=1) if from_logits else torch.log(clip(x))


# --- the losses, as their authors wrote them -------------------------------------------------


def sigmoid_focal(y, x, from_logits, alpha, gamma):
    if from_logits and not isinstance(alpha, list):
        return sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction="mean")
    # torchvision's formula, with probabilities clipped or a per-class alpha.
    if from_logits:
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    else:
        p = clip(x)
        ce = F.binary_cross_entropy(p, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** gamma)
    a = torch.tensor(alpha if isinstance(alpha, list) else [alpha] * y.shape[1], dtype=x.dtype)
    alpha_t = torch.where(a < 0, torch.ones_like(loss), a * y + (1 - a) * (1 - y))
    return (alpha_t * loss).mean()


def flsd_53(y, x, from_logits):
    logpt = log_probs(x, from_logits).gather(1, true_class(y)[:, None])[:, 0]
    pt = logpt.exp()
    gamma = torch.where(pt.detach() < 0.2, 5.0, 3.0).to(x.dtype)
    return (-1 * (1 - pt) ** gamma * logpt).mean()


def adafocal_gamma(pt, edges, gammas):
    # get_gamma_per_sample: bin 0 below its upper edge, the last from its lower edge, else
    # lower <= pt < upper.
    out = []
    for v in pt.detach().tolist():
        b = 0
        while b < len(edges) and v >= edges[b]:
            b += 1
        out.append(gammas[b])
    return torch.tensor(out, dtype=pt.dtype)


def adafocal(y, x, from_logits, edges, gammas):
    logpt = log_probs(x, from_logits).gather(1, true_class(y)[:, None])[:, 0]
    pt = logpt.exp()
    gamma = adafocal_gamma(pt, edges, gammas)
    sign, mag = torch.sign(gamma), torch.abs(gamma)
    loss = -1 * ((1 - sign * pt + 1e-20) ** mag) * logpt
    return loss.sum() / y.shape[0]


def dual_focal(y, x, from_logits, gamma):
    if from_logits:
        logp = F.log_softmax(x, dim=1)
        p = logp.exp()
    else:
        p = clip(x)
        logp = torch.log(p)
    t = true_class(y)[:, None]
    logp_k = logp.gather(1, t)[:, 0]
    p_k = logp_k.exp() if from_logits else p.gather(1, t)[:, 0]
    mask = torch.lt(p, p_k.reshape(-1, 1)) * 1
    p_j = torch.topk(mask * p, 1)[0].squeeze(1)
    return (-1 * (1 - p_k + p_j) ** gamma * logp_k).mean()


def adafocal_update(confidences, correct, gammas, lam=1.0, switch=0.2, gmin=-2.0, gmax=20.0):
    """update_bin_stats on equal-mass validation bins (the authors' adaECE_error_mukhoti
    binning: edges np.interp(linspace(0, N, B+1), arange(N), sort(conf)), membership
    (lower, upper]). One stated difference: the first bin also holds its lower edge (their
    strict '>' drops the least confident image; focalflow keeps it)."""
    n, bins = len(confidences), len(gammas)
    edges = np.interp(np.linspace(0, n, bins + 1), np.arange(n), np.sort(confidences))
    conf, corr = np.asarray(confidences), np.asarray(correct, dtype=float)
    after = []
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        in_bin = (conf > lo) & (conf <= hi)
        if b == 0:
            in_bin |= conf == lo
        if in_bin.sum() > 0:
            gap = conf[in_bin].mean() - corr[in_bin].mean()
        else:
            gap = 0.0
        prev = gammas[b]
        nxt = prev * math.exp(lam * gap) if prev > 0 else prev * math.exp(-lam * gap)
        if abs(nxt) < switch:
            nxt = -switch if nxt > 0 else switch
        after.append(max(min(nxt, gmax), gmin))
    return {"edges": edges[1:-1].tolist(), "gammas": after}


# --- inputs -------------------------------------------------------------------------------


def one_hot(rng, b, k):
    y = np.zeros((b, k), F32)
    y[np.arange(b), rng.integers(0, k, b)] = 1
    return y


def multi_hot(rng, b, k):
    return (rng.random((b, k)) < 0.4).astype(F32)


def logits(rng, b, k, scale=3.0):
    return (rng.standard_normal((b, k)) * scale).astype(F32)


def probabilities(rng, b, k, edges=False):
    z = rng.standard_normal((b, k)) * 2
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    p = p.astype(F32)
    if edges:
        # At and beyond the clip bounds, near 0 and 1.
        special = [0.0, F32(2.0**-24), F32(LO), F32(HI), F32(1 - 2.0**-24), 1.0, F32(1e-6), F32(1 - 1e-6)]
        # (2^-24 is below the lower bound, 1 - 2^-24 above the upper one.)
        flat = p.reshape(-1)
        for i, v in enumerate(special[: flat.size]):
            flat[(i * 7) % flat.size] = v
    return p


def saturated(rng, b, k):
    z = logits(rng, b, k)
    z[0, :] = [60.0 if c == 0 else -60.0 for c in range(k)]
    if b > 1:
        z[1, :] = [-100.0 if c == 0 else 100.0 for c in range(k)]
    return z.astype(F32)


# --- the cases ------------------------------------------------------------------------------


def compute(fn, y, x):
    out = {}
    for dtype, tag in [(torch.float32, ""), (torch.float64, "_f64")]:
        yt = torch.tensor(y, dtype=dtype)
        xt = torch.tensor(x, dtype=dtype, requires_grad=True)
        loss = fn(yt, xt)
        loss.backward()
        out["loss_value" + tag] = float(loss.item())
        out["grad" + tag] = [float(v) for v in xt.grad.reshape(-1).tolist()]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/data/torch_losses.json")
    args = ap.parse_args()
    rng = np.random.default_rng(20261207)
    cases = []

    def add(name, loss, params, cli, y, x, fn):
        b, k = y.shape
        case = {
            "name": f"{name}-b{b}c{k}",
            "loss": loss,
            "params": params,
            "args": ["--loss", loss] + cli + (["--from-logits"] if params["from_logits"] else []),
            "batch": b,
            "classes": k,
            "y_true": [float(v) for v in y.reshape(-1)],
            "y_pred": [float(v) for v in x.reshape(-1)],
        }
        case.update(compute(fn, y, x))
        cases.append(case)

    shapes = [(1, 2), (7, 5), (6, 3), (3, 33)]
    for b, k in shapes:
        for from_logits in [False, True]:
            def pred(edges=False):
                return logits(rng, b, k) if from_logits else probabilities(rng, b, k, edges)

            tag = "logits" if from_logits else "probs"
            # sigmoid-focal: multi-hot labels; scalar alpha, per-class alpha with one off, no alpha.
            y = multi_hot(rng, b, k)
            for alpha, gamma, label in [(0.25, 2.0, "default"), (-1.0, 0.5, "no-alpha")]:
                x = pred(edges=True)
                add(f"sigmoid-focal-{label}-{tag}", "sigmoid-focal",
                    {"alpha": alpha, "gamma": gamma, "from_logits": from_logits},
                    ["--alpha", str(alpha), "--gamma", str(gamma)], y, x,
                    lambda yt, xt, a=alpha, g=gamma, fl=from_logits: sigmoid_focal(yt, xt, fl, a, g))
            per_class = [round(0.1 + 0.8 * c / k, 3) for c in range(k)]
            per_class[-1] = -1.0
            x = pred(edges=True)
            add(f"sigmoid-focal-per-class-{tag}", "sigmoid-focal",
                {"alpha": per_class, "gamma": 1.5, "from_logits": from_logits},
                ["--alpha", ",".join(str(a) for a in per_class), "--gamma", "1.5"], y, x,
                lambda yt, xt, fl=from_logits: sigmoid_focal(yt, xt, fl, per_class, 1.5))
            # Single-label losses: one-hot labels.
            y = one_hot(rng, b, k)
            x = pred(edges=True)
            add(f"flsd-53-{tag}", "flsd-53", {"from_logits": from_logits}, [], y, x,
                lambda yt, xt, fl=from_logits: flsd_53(yt, xt, fl))
            for gamma in [5.0, 0.5]:
                x = pred(edges=True)
                add(f"dual-focal-g{gamma}-{tag}", "dual-focal", {"gamma": gamma, "from_logits": from_logits},
                    ["--gamma", str(gamma)], y, x,
                    lambda yt, xt, g=gamma, fl=from_logits: dual_focal(yt, xt, fl, g))
            edges = [0.15, 0.35, 0.6, 0.85]
            gammas = [4.0, -1.5, 0.5, -0.3, 2.0]
            x = pred(edges=True)
            add(f"adafocal-{tag}", "adafocal",
                {"lambda": 1.0, "gamma_initial": 1.0, "switch": 0.2, "gamma_min": -2.0, "gamma_max": 20.0,
                 "bins": {"edges": edges, "gammas": gammas}, "from_logits": from_logits},
                [], y, x,
                lambda yt, xt, fl=from_logits: adafocal(yt, xt, fl, edges, gammas))
        # Saturated logits: confident right and confidently wrong samples.
        y = one_hot(rng, b, k)
        z = saturated(rng, b, k)
        add("flsd-53-saturated", "flsd-53", {"from_logits": True}, [], y, z,
            lambda yt, xt: flsd_53(yt, xt, True))
        add("dual-focal-saturated", "dual-focal", {"gamma": 5.0, "from_logits": True}, ["--gamma", "5.0"], y, z,
            lambda yt, xt: dual_focal(yt, xt, True, 5.0))
        ym = multi_hot(rng, b, k)
        add("sigmoid-focal-saturated", "sigmoid-focal", {"alpha": 0.25, "gamma": 2.0, "from_logits": True},
            ["--alpha", "0.25", "--gamma", "2.0"], ym, z,
            lambda yt, xt: sigmoid_focal(yt, xt, True, 0.25, 2.0))

    updates = []
    for n, bins, seed in [(30, 15, 1), (200, 15, 2), (64, 4, 3)]:
        r = np.random.default_rng(seed)
        conf = (0.3 + 0.7 * r.random(n) ** 0.5).tolist()
        correct = (r.random(n) < np.asarray(conf) - 0.1).tolist()
        gammas = (r.choice([1.0, 3.0, -0.5, 0.25, -1.5, 19.5], bins)).tolist()
        lam = [1.0, 3.0, 0.5][seed - 1]
        upd = adafocal_update(conf, correct, gammas, lam=lam)
        updates.append({"lambda": lam, "confidences": conf, "correct": correct, "gammas_before": gammas,
                        "edges_after": upd["edges"], "gammas_after": upd["gammas"]})

    meta = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "script": "scripts/torch_loss_fixtures.py",
    }
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "cases": cases, "adafocal_updates": updates}, f, indent=1)
    print(f"wrote {len(cases)} loss cases and {len(updates)} adafocal updates to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
