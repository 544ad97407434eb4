"""Shared by the data tests: complete configs, and ImageNet and CIFAR-10 served offline by
tfds.testing.mock_data with small, sliceable fake splits."""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import splits as splits_lib

from flax_resnet.config import default_config


def make_config(**overrides):
  """flax_resnet's default config with `overrides`: every config the library reads is complete."""
  config = default_config()
  config.update(overrides)
  return config


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def single_rectangle(mask):
  """(height, width) of the one axis-aligned rectangle that `mask` (H, W) holds, else None."""
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  if not rows.size:
    return None
  height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
  assert mask.sum() == height * width and mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
  return height, width


FAKE_SPLITS = {
    "imagenet2012": {"train": 20, "validation": 13},
    "cifar10": {"train": 50000, "test": 30},
}


def fake_example(name, index, decoders):
  """Deterministic example `index`. ImageNet: a JPEG of varying size, label = index (an id);
  CIFAR-10: red and green spell the index (index % 256, index // 256) in every pixel, blue is
  random."""
  seed = tf.stack([index, tf.constant(17, tf.int64)])
  if name == "imagenet2012":
    height, width = 48 + index % 41, 64 + (index * 13) % 57
    image = tf.random.stateless_uniform(tf.stack([height, width, 3]), seed, 0, 256, tf.int32)
    jpeg = tf.io.encode_jpeg(tf.cast(image, tf.uint8))
    image = jpeg if decoders and "image" in decoders else tf.io.decode_jpeg(jpeg, channels=3)
    return {"image": image, "label": index}
  blue = tf.random.stateless_uniform([32, 32, 1], seed, 0, 256, tf.int32)
  ids = tf.cast(tf.stack([index % 256, index // 256]), tf.int32)
  image = tf.concat([tf.broadcast_to(ids, [32, 32, 2]), blue], axis=-1)
  return {"image": tf.cast(image, tf.uint8), "label": index % 10}


def fake_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
  """Replaces reading the TFDS files: honors sub-splits (even_splits, slices) as the real reader
  does."""
  del read_config, shuffle_files, kwargs
  instructions = splits_lib.AbstractSplit.from_spec(split).to_absolute(self.info.splits)
  ds = None
  for instruction in instructions:
    end = instruction.to
    if end is None:
      end = self.info.splits[instruction.splitname].num_examples
    part = tf.data.Dataset.range(instruction.from_ or 0, end)
    ds = part if ds is None else ds.concatenate(part)
  return ds.map(lambda i: fake_example(self.name, i, decoders))


def write_fake_metadata(data_dir):
  """TFDS metadata only, in data_dir: the true features, FAKE_SPLITS's sizes."""
  for name, sizes in FAKE_SPLITS.items():
    builder = tfds.builder(name, data_dir=data_dir)
    builder.info.set_splits(splits_lib.SplitDict(
        [splits_lib.SplitInfo(name=split, shard_lengths=[n], num_bytes=0)
         for split, n in sizes.items()]))
    builder.data_path.mkdir(parents=True)
    builder.info.write_to_directory(builder.data_dir)


def serve_fake_data(data_dir):
  """mock_data serving fake examples for the metadata's splits in data_dir."""
  return tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir,
                                as_dataset_fn=fake_as_dataset)
