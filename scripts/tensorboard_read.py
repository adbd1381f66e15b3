#!/usr/bin/env python3
"""Reads a run folder's TensorBoard event files with TensorBoard's own reader
(EventAccumulator) and prints one JSON object: {"scalars": {tag: [[step, value], ...]},
"images": {tag: [[step, width, height, bytes], ...]}}. Used by tests/trainer_cli.rs in CI."""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator as ea

acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
acc.Reload()
tags = acc.Tags()
print(json.dumps({
    "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
    "images": {t: [[e.step, e.width, e.height, len(e.encoded_image_string)] for e in acc.Images(t)]
               for t in tags["images"]},
}))
