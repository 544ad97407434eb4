"""Throughput of the ImageNet input pipeline on this host, per core.

    python benchmarks/input_pipeline.py [--num_images=1024] [--batch_size=64] [--batches=12]
        [--width=500 --height=375] [--json=FILE]

Makes `--num_images` photo-like JPEGs (smooth colour fields plus grain, quality 90, around
ImageNet's typical 500x375), serves them as the TFDS imagenet2012 train split (through
tfds.testing.mock_data; no dataset needed) and times `create_train_iterator` end to end: shuffle,
stateless augmentation, decoding, batching and the copy to numpy, for both training
augmentations and both evaluation crops. A second table times decoding and resizing alone on one core,
decoding only the crop window (`decode_and_crop_jpeg`, what the pipeline does) against decoding
the whole image and then cropping, which is why the pipeline computes crop windows first.
Figures are images/second over the whole host and divided by the cores tf.data may use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from tensorflow_datasets.core import splits as splits_lib  # noqa: E402

from flax_resnet.config import CHOICES, default_config  # noqa: E402
from flax_resnet.data import augment, pipeline  # noqa: E402


def make_jpegs(count: int, height: int, width: int, seed: int = 0) -> list[bytes]:
  """Photo-like JPEGs: bilinearly upsampled coarse colour noise (large smooth regions, edges)
  plus fine grain, so file sizes and decode costs resemble photographs, not flat or white noise."""
  rng = np.random.default_rng(seed)
  jpegs = []
  for _ in range(count):
    h = int(height * rng.uniform(0.8, 1.2))
    w = int(width * rng.uniform(0.8, 1.2))
    coarse = rng.uniform(0, 255, (1, h // 24 + 2, w // 24 + 2, 3)).astype(np.float32)
    image = tf.image.resize(coarse, (h, w), method="bicubic")[0].numpy()
    image += rng.normal(0, 12, image.shape)
    jpeg = tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90)
    jpegs.append(jpeg.numpy())
  return jpegs


def serve_as_imagenet(jpegs: list[bytes], data_dir: str):
  """mock_data context serving `jpegs` as both imagenet2012 splits (metadata written to data_dir)."""
  builder = tfds.builder("imagenet2012", data_dir=data_dir)
  builder.info.set_splits(splits_lib.SplitDict(
      [splits_lib.SplitInfo(name=s, shard_lengths=[len(jpegs)], num_bytes=0)
       for s in ("train", "validation")]))
  builder.data_path.mkdir(parents=True, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)
  labels = np.arange(len(jpegs)) % 1000

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
    del self, split, decoders, read_config, shuffle_files, kwargs  # Always the whole split, raw.
    return tf.data.Dataset.from_tensor_slices({"image": jpegs, "label": labels})

  return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir,
                                as_dataset_fn=as_dataset)


def _config(**overrides):
  """The library's default config with `overrides`."""
  config = default_config()
  config.update(overrides)
  return config


def images_per_second(iterator, batch_size: int, batches: int, warmup: int = 2) -> float:
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch_size / (time.perf_counter() - start)


def decode_rates(jpegs, decode_fns, rounds: int) -> list[float]:
  """Best images/second of each `decode_fn(jpeg, seed)`, one image at a time on one core,
  measured in alternating rounds so that load from other processes hits all of them alike."""
  signature = [tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.int64)]
  functions = [tf.function(fn, input_signature=signature) for fn in decode_fns]
  seeds = [tf.constant([i, 0], tf.int64) for i in range(len(jpegs))]
  jpegs = [tf.constant(jpeg) for jpeg in jpegs]
  best = [0.0] * len(functions)
  for _ in range(rounds):
    for k, fn in enumerate(functions):
      start = time.perf_counter()
      for jpeg, seed in zip(jpegs, seeds):
        fn(jpeg, seed)
      best[k] = max(best[k], len(jpegs) / (time.perf_counter() - start))
  return best


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--num_images", type=int, default=1024, help="one epoch of the fake split")
  p.add_argument("--height", type=int, default=375)
  p.add_argument("--width", type=int, default=500)
  p.add_argument("--batch_size", type=int, default=64, help="per-host batch")
  p.add_argument("--batches", type=int, default=12,
                 help="timed batches per pipeline and round, after 2 warm-up batches, in one epoch")
  p.add_argument("--rounds", type=int, default=3, help="alternating rounds (the best is kept)")
  p.add_argument("--json", default="", help="also write the figures to this file")
  args = p.parse_args()

  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  jpegs = make_jpegs(args.num_images, args.height, args.width)
  mean_kb = np.mean([len(j) for j in jpegs]) / 1024
  print(f"{args.num_images} JPEGs around {args.width}x{args.height}, mean {mean_kb:.0f} KiB; "
        f"{cores} cores; per-host batch {args.batch_size}; tensorflow {tf.__version__}")
  results = {"cores": cores, "mean_jpeg_kib": mean_kb}

  with tempfile.TemporaryDirectory() as data_dir, serve_as_imagenet(jpegs, data_dir):
    base = dict(dataset="imagenet2012", data_dir=data_dir, batch_size=args.batch_size,
                eval_batch_size=args.batch_size, seed=0, image_size=224,
                shuffle_buffer_size=args.num_images)
    # Steady state: the streamed ImageNet pipeline restarts at each epoch boundary (once per
    # 1,251 steps on the real dataset), so time batches within the first epoch.
    timed_batches = min(args.batches, args.num_images // args.batch_size - 2)
    if timed_batches < 1:
      p.error("--num_images must hold at least 3 batches")
    pipelines = {}  # label -> function making a fresh iterator
    for augmentation, antialias in [("paper", False), ("inception", False), ("paper", True)]:
      config = _config(**base, imagenet_train_augmentation=augmentation,
                       image_resize_antialias=antialias)
      label = f"train, {augmentation}" + (", antialiased resize" if antialias else "")
      pipelines[label] = lambda c=config: pipeline.create_train_iterator(c, process_index=0,
                                                                         process_count=1)
    for crop in CHOICES["imagenet_eval_crop"]:
      config = _config(**base, imagenet_eval_crop=crop)
      pipelines[f"eval, {crop}"] = lambda c=config: pipeline.create_eval_iterator(
          c, process_index=0, process_count=1)
    # Each round runs every pipeline alone, from a fresh iterator; the best round is kept, so
    # load from other processes on a shared machine hits all pipelines alike.
    best = dict.fromkeys(pipelines, 0.0)
    for _ in range(args.rounds):
      for label, make in pipelines.items():
        best[label] = max(best[label], images_per_second(make(), args.batch_size, timed_batches))
    print("\npipeline (create_*_iterator, to numpy)    images/s   images/s/core")
    for label, rate in best.items():
      results[label] = rate
      print(f"  {label:<39} {rate:9.0f} {rate / cores:13.0f}")

  size = 224

  def full_decode_then_crop(jpeg, window):
    image = tf.io.decode_jpeg(jpeg, channels=3)
    return image[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]

  def crop_only(jpeg, window):
    return tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)

  windows = {
      "paper": lambda jpeg, seed: augment.paper_crop_window(tf.io.extract_jpeg_shape(jpeg), seed,
                                                            size),
      "inception": lambda jpeg, seed: augment.inception_crop_window(
          tf.io.extract_jpeg_shape(jpeg), seed, size),
      "center": lambda jpeg, seed: augment.center_crop_window(tf.io.extract_jpeg_shape(jpeg),
                                                              size),
  }
  print("\ndecode + resize to 224, one core  crop window  whole image   speed-up")
  for name, window_fn in windows.items():
    fns = [lambda jpeg, seed, d=decode, w=window_fn: augment.resize(d(jpeg, w(jpeg, seed)),
                                                                    [size, size])
           for decode in (crop_only, full_decode_then_crop)]
    rates = decode_rates(jpegs[:256], fns, args.rounds + 2)
    results[f"decode, {name}"] = {"crop_window": rates[0], "whole_image": rates[1]}
    print(f"  {name:<30} {rates[0]:12.0f} {rates[1]:12.0f} {rates[0] / rates[1]:9.2f}x")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
