"""Decode + resize speed of PIL and tf.image on the JPEGs that `cargo bench --bench
preprocess` wrote: the anchor for focalflow's preprocessor.

    python scripts/preprocess_anchor.py --tool pil DIR [--size 224] [--rounds 3]
    python scripts/preprocess_anchor.py --tool tf DIR

Each tool reads every file, decodes to RGB and resizes to SIZExSIZE as a practitioner
would: PIL `Image.open(p).convert("RGB").resize((S, S), Image.BILINEAR)` then a uint8 array;
TensorFlow `tf.io.read_file` + `tf.image.decode_jpeg(channels=3)` + `tf.image.resize`
(bilinear, what Keras' image_dataset_from_directory does) + cast to uint8 inside a
`tf.data` map. Timed with 1 thread and with all threads (PIL: a thread pool, as PIL
releases the GIL while decoding and resizing; tf.data: num_parallel_calls and TF's own
thread pools set to 1 or to all cores), best of ROUNDS rounds. Prints one JSON line with
images/s and the process CPU time per image (all threads; the fairer figure on a shared
machine, and it shows when "1 thread" uses more than one core).
"""

import argparse
import glob
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor


def timing(n, start, cpu):
    """(images per second, process CPU milliseconds per image) since start/cpu."""
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return (n / wall, 1000.0 * cpu / n)


def pil_rate(paths, size, threads, rounds):
    import numpy as np
    from PIL import Image

    def one(p):
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))

    best = (0.0, 0.0)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(rounds):
            start, cpu = time.perf_counter(), time.process_time()
            for _ in pool.map(one, paths):
                pass
            best = max(best, timing(len(paths), start, cpu))
    return best


def tf_rate(paths, size, threads, rounds):
    import tensorflow as tf

    def one(p):
        img = tf.image.decode_jpeg(tf.io.read_file(p), channels=3)
        img = tf.image.resize(img, (size, size), method="bilinear")
        return tf.cast(tf.round(img), tf.uint8)

    ds = tf.data.Dataset.from_tensor_slices(paths).map(one, num_parallel_calls=threads)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)
    best = (0.0, 0.0)
    for _ in range(rounds):
        start, cpu = time.perf_counter(), time.process_time()
        for _ in ds:
            pass
        best = max(best, timing(len(paths), start, cpu))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--tool", choices=["pil", "tf"], required=True)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    paths = sorted(glob.glob(os.path.join(a.dir, "*.jpg")))
    if not paths:
        raise SystemExit(f"{a.dir}: no *.jpg; run `cargo bench --bench preprocess` first")
    if a.tool == "tf":
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(a.threads)
        tf.config.threading.set_intra_op_parallelism_threads(a.threads)
        rate = tf_rate
        version = tf.__version__
    else:
        import PIL

        rate = pil_rate
        version = PIL.__version__
    rate(paths[:20], a.size, 1, 1)  # warm-up: page cache, imports, graph tracing
    one = rate(paths, a.size, 1, a.rounds)
    many = rate(paths, a.size, a.threads, a.rounds)
    print(json.dumps({"tool": a.tool, "version": version, "images": len(paths),
                      "size": a.size, "threads_1": round(one[0], 1),
                      "cpu_ms_1": round(one[1], 3), "threads_all": round(many[0], 1),
                      "cpu_ms_all": round(many[1], 3), "threads": a.threads}))


if __name__ == "__main__":
    main()
