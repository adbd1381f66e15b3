#!/usr/bin/env python3
"""PyTorch reference of `focalflow bench`: the same CNN, loss and optimizer in true fp32
(TF32 off) with cuDNN, timed with CUDA events after warm-up. The speed anchor that the
CUDA backend is measured against (issue: at least PyTorch+cuDNN fp32 on the same GPU).

Model (the reference CNN, `c16,p,c32,p,c64,p,d256` + a 2-class head): 3x3 valid convs with
ReLU, 2x2 max-pools, dense 43264->256 ReLU, dense 256->2, on 224x224x3 images. Loss: the
categorical focal loss from logits (alpha 0.25, gamma 2, summed over classes, mean over
the batch). Adam (lr 1e-3, eps 1e-7, fused). Each training step ends with `loss.item()`
and a copy of the probabilities to the host, as focalflow's step returns the loss and the
probabilities (one synchronisation per step on both sides). Inference: forward + softmax +
copy to the host.

With --end-to-end N, also the plain training loop a PyTorch user writes (the reference of
`focalflow bench --end-to-end N`): N uint8 images kept on the GPU, each epoch a random
permutation, each batch gathered, converted to float, scaled by 1/255 and one-hot labelled
on the GPU, then forward, loss, backward, Adam and `loss.item()` every step; 3 epochs, the
first one untimed (focalflow's end-to-end run has the same shape).

Prints one JSON object per batch size on stdout, e.g.
  {"framework": "pytorch", "device": "...", "batch_size": 32, "train_images_per_second": ...}
"""

import argparse
import json
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", default="32,128")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--channels-last", action="store_true", help="NHWC memory format (as focalflow)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (for a dry run)")
    ap.add_argument("--end-to-end", type=int, default=0, metavar="N",
                    help="also time the uint8-on-the-GPU training loop on N generated images")
    ap.add_argument("--profile-ops", action="store_true",
                    help="also print the kernels' times over a few training steps (torch.profiler, to stderr)")
    args = ap.parse_args()

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    # True fp32: no TF32 in cuDNN convolutions or matmuls.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.benchmark = True  # let cuDNN pick its fastest algorithms
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_bench.py: CUDA is not available to PyTorch")

    def make_model():
        side = args.image_size
        for _ in range(3):
            side = (side - 2) // 2
        return nn.Sequential(
            nn.Conv2d(3, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * side * side, 256), nn.ReLU(), nn.Linear(256, 2),
        )

    def focal_loss(logits, y, alpha=0.25, gamma=2.0):
        logp = F.log_softmax(logits, dim=1)
        p = logp.exp()
        return (-(alpha * (1 - p) ** gamma * logp) * y).sum(dim=1).mean()

    def timer():
        if dev.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            return lambda: (e.record(), e.synchronize(), s.elapsed_time(e) / 1e3)[2]
        t0 = time.perf_counter()
        return lambda: time.perf_counter() - t0

    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        torch.manual_seed(0)
        model = make_model().to(dev)
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        model = model.to(memory_format=fmt)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7, fused=dev.type == "cuda")
        x = torch.rand(batch, 3, args.image_size, args.image_size, device=dev).to(memory_format=fmt)
        y = F.one_hot(torch.arange(batch, device=dev) % 2, 2).float()

        def train_step():
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = focal_loss(logits, y)
            loss.backward()
            opt.step()
            probs = logits.detach().softmax(dim=1).cpu()
            return loss.item(), probs

        for _ in range(args.warmup):
            train_step()
        stop = timer()
        for _ in range(args.steps):
            train_step()
        train_s = stop() / args.steps

        model.eval()
        with torch.no_grad():
            for _ in range(args.warmup):
                model(x).softmax(dim=1).cpu()
            stop = timer()
            for _ in range(args.steps):
                model(x).softmax(dim=1).cpu()
            infer_s = stop() / args.steps
        model.train()

        end_to_end = None
        if args.end_to_end:
            end_to_end = uint8_loop(args, torch, F, dev, make_model, focal_loss, batch, timer)

        if args.profile_ops:
            from torch.profiler import ProfilerActivity, profile
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
            with profile(activities=acts) as prof:
                for _ in range(5):
                    train_step()
            key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
            print(f"torch.profiler, batch {batch}, 5 training steps:", file=sys.stderr)
            print(prof.key_averages().table(sort_by=key, row_limit=30), file=sys.stderr, flush=True)

        print(json.dumps({
            "framework": "pytorch",
            "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "tf32": False,
            "channels_last": args.channels_last,
            "image_size": args.image_size,
            "batch_size": batch,
            "train_images_per_second": batch / train_s,
            "inference_images_per_second": batch / infer_s,
            "train_step_ms": train_s * 1e3,
            "inference_batch_ms": infer_s * 1e3,
            "end_to_end_images": args.end_to_end or None,
            "end_to_end_images_per_second": end_to_end,
        }), flush=True)


def uint8_loop(args, torch, F, dev, make_model, focal_loss, batch, timer):
    """Training images/s of epochs 2 and 3 of the plain uint8-on-the-GPU loop."""
    n, side = args.end_to_end, args.image_size
    gen = torch.Generator(device=dev).manual_seed(0)
    data = torch.randint(0, 256, (n, side, side, 3), dtype=torch.uint8, device=dev, generator=gen)
    labels = torch.arange(n, device=dev) % 2
    torch.manual_seed(0)
    model = make_model().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7, fused=dev.type == "cuda")
    seconds = 0.0
    for epoch in range(3):
        stop = timer()
        order = torch.randperm(n, device=dev)
        for first in range(0, n, batch):
            idx = order[first:first + batch]
            x = data[idx].permute(0, 3, 1, 2).float().div_(255.0).contiguous()
            y = F.one_hot(labels[idx], 2).float()
            opt.zero_grad(set_to_none=True)
            loss = focal_loss(model(x), y)
            loss.backward()
            opt.step()
            loss.item()
        if epoch > 0:
            seconds += stop()
    return 2 * n / seconds


if __name__ == "__main__":
    main()
