#!/usr/bin/env python3
"""Checks ONNX models written by `focalflow export` with ONNX's own checker and runs them
with onnxruntime. Used by tests/trainer_cli.rs in CI.

usage: onnx_check.py N H W C  MODEL PIXELS DTYPE [MODEL PIXELS DTYPE ...]
PIXELS: a raw NHWC file of N images (uint8, or little-endian float32 for DTYPE f32).
Prints one JSON object: {"outputs": [rows of each model's only output], "metadata": [...]}."""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort

n, h, w, c = (int(v) for v in sys.argv[1:5])
rest = sys.argv[5:]
outputs, metadata = [], []
for model_path, pixels_path, dtype in zip(rest[0::3], rest[1::3], rest[2::3]):
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    metadata.append({p.key: p.value for p in model.metadata_props})
    x = np.fromfile(pixels_path, dtype=np.uint8 if dtype == "u8" else "<f4").reshape(n, h, w, c)
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"image": x})
    outputs.append(y.astype(np.float64).tolist())
print(json.dumps({"outputs": outputs, "metadata": metadata}))
