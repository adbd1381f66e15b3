"""Writes tests/data/tf_jpeg/: small JPEGs of the kinds found in real photo folders and the
pixels `tf.image.decode_jpeg(..., channels=3)` gives for each, so that
tests/data_pipeline.rs can check focalflow's JPEG decoding against TensorFlow's bit for bit.

    .venv-tf/bin/python scripts/tf_jpeg_fixtures.py

Needs tensorflow and pillow (scripts/requirements-keras.txt). The images are synthetic
(gradients, blobs, noise; odd sizes so that chroma subsampling meets ragged edges), encoded
by PIL: 4:2:0 baseline (the common camera/web case), 4:2:2, 4:4:4, progressive, with
restart markers, and greyscale. Each `NAME.jpg` has `NAME.rgb` beside it: height x width x 3
bytes, row-major; `index.json` lists the sizes and the versions used.
"""

import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import PIL
import tensorflow as tf
from PIL import Image

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "tf_jpeg"


def picture(width, height, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        img[..., c] = 40 + 150 * (x / width) * rng.uniform(0.3, 1) + 60 * (y / height)
    for _ in range(4):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(4, max(width, height) / 2)
        mask = ((x - cx) ** 2 + (y - cy) ** 2) < r * r
        img[mask] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


# (name, width, height, PIL save options, greyscale)
CASES = [
    ("baseline_420_q90", 67, 45, dict(quality=90, subsampling=2), False),
    ("baseline_422_q75", 50, 33, dict(quality=75, subsampling=1), False),
    ("baseline_444_q95", 41, 29, dict(quality=95, subsampling=0), False),
    ("progressive_420_q85", 58, 39, dict(quality=85, subsampling=2, progressive=True), False),
    ("restarts_420_q80", 64, 48, dict(quality=80, subsampling=2, restart_marker_blocks=2), False),
    ("grey_q90", 37, 53, dict(quality=90), True),
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    index = {
        "tensorflow": tf.__version__,
        "pillow": PIL.__version__,
        "decode": "tf.image.decode_jpeg(contents, channels=3) with its defaults",
        "images": [],
    }
    for i, (name, w, h, options, grey) in enumerate(CASES):
        pixels = picture(w, h, seed=i + 1)
        img = Image.fromarray(pixels)
        if grey:
            img = img.convert("L")
        path = OUT / f"{name}.jpg"
        img.save(path, "JPEG", **options)
        decoded = tf.image.decode_jpeg(path.read_bytes(), channels=3).numpy()
        assert decoded.shape == (h, w, 3), (name, decoded.shape)
        (OUT / f"{name}.rgb").write_bytes(decoded.tobytes())
        index["images"].append({"name": name, "width": w, "height": h, "pil_options": options})
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"wrote {len(CASES)} JPEGs and TensorFlow's pixels to {OUT}")


if __name__ == "__main__":
    main()
