"""The training and evaluation iterators: tf.data over TFDS (ImageNet, CIFAR-10, Fashion-MNIST)
or over an image folder (data/image_folder.py), yielding numpy batches per host.

`create_train_iterator` and `create_eval_iterator` shard over hosts, order and seed examples
by (seed, process layout, step) (data/sharding.py) and apply the preprocessing the config chooses
(data/augment.py). Two ways to read the training split:
- Cached (config.cache; small datasets): the host's decoded split sits in host memory, epoch e
  is the exact random permutation `index_shuffle(., key(seed, host, e))` and each batch's
  augmentation is keyed on its step, so batch k is computed directly.
- Streamed (ImageNet, or cache=False): epoch e reads the TFDS files in an order seeded by
  (seed, host, e) through a seeded shuffle buffer, each example's augmentation is keyed on its
  position in the epoch, and a resume drops the first examples of its epoch before they are
  decoded. Each epoch yields `examples_per_host // batch` full batches (a different random
  remainder is left out each epoch).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from flax_resnet.data import augment, datasets, image_folder, sharding
from flax_resnet.data.catalog import DATASETS, image_size
from flax_resnet.data.datasets import dataset_info
from flax_resnet.data.tf_cpu_only import tf


@dataclasses.dataclass(frozen=True)
class _Preprocessors:
  train: Callable[[dict, tf.Tensor], tf.Tensor]  # (example, seed) -> image
  eval: Callable[[dict], tf.Tensor]  # example -> image
  decoders: dict | None  # TFDS decoders (ImageNet: keep the JPEG bytes).
  train_batch: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None  # (images, seed) -> images


def _preprocessors(config) -> _Preprocessors:
  """The dataset's train and eval preprocessing, plus random erasing and the mirrored eval
  view when configured."""
  base = _dataset_preprocessors(config)
  if config.eval_flip:
    single_view = base.eval
    base = dataclasses.replace(base, eval=lambda ex: augment.with_mirror(single_view(ex)))
  probability = config.random_erasing
  if probability <= 0:
    return base

  def erase(images, seed):  # its own stream: the dataset's augmentation keeps its draws
    return augment.random_erase(images, tf.random.experimental.stateless_fold_in(seed, 1),
                                probability)
  return dataclasses.replace(
      base,
      train=lambda ex, seed: erase(base.train(ex, seed)[None], seed)[0],
      train_batch=base.train_batch and (
          lambda images, seed: erase(base.train_batch(images, seed), seed)))


def eval_preprocessor(config) -> Callable[[dict], tf.Tensor]:
  """The evaluation preprocessing of one example {'image': ...} under `config`: the image as
  the dataset stores it (encoded bytes for ImageNet and image folders, uint8 pixels for
  CIFAR-10 and Fashion-MNIST) -> (H, W, C), or (V, H, W, C) for multi-view evaluation."""
  return _preprocessors(config).eval


def _dataset_preprocessors(config) -> _Preprocessors:
  name = config.dataset
  spec = DATASETS[name]
  if name in ("imagenet2012", "image_folder"):
    size, antialias = image_size(config), config.image_resize_antialias
    augmentation, crop = config.imagenet_train_augmentation, config.imagenet_eval_crop
    train_image, eval_image, decoders = (
        (augment.folder_train_image, augment.folder_eval_image, None) if name == "image_folder"
        else (augment.imagenet_train_image, augment.imagenet_eval_image,
              {"image": tfds.decode.SkipDecoding()}))
    return _Preprocessors(
        train=lambda ex, seed: train_image(ex["image"], seed, size, augmentation, antialias,
                                           spec.mean, spec.std),
        eval=lambda ex: eval_image(ex["image"], size, crop, antialias, spec.mean, spec.std),
        decoders=decoders)
  pad = spec.pad if config.crop_padding is None else config.crop_padding
  size = image_size(config)
  if size == spec.image_shape[0]:
    normalize = lambda images: augment.normalize(images, spec.mean, spec.std)
  else:  # resized after the crop, before normalization
    normalize = lambda images: augment.normalize(
        augment.resize(images, [size, size], config.image_resize_antialias), spec.mean, spec.std)
  # Batches and single images alike: pad_crop_flip and normalize are batched.
  return _Preprocessors(
      train=lambda ex, seed: normalize(augment.pad_crop_flip(ex["image"][None], seed, pad)[0]),
      eval=lambda ex: normalize(ex["image"]),
      decoders=None,
      train_batch=lambda images, seed: normalize(augment.pad_crop_flip(images, seed, pad)))


def _read(builder, split, decoders, *, shuffle_seed: int | None) -> tf.data.Dataset:
  """TFDS records of `split` (file order shuffled by `shuffle_seed` when given), undecoded
  where `decoders` says so. TFDS's automatic caching is off: we decide what to cache."""
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
  return builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                            decoders=decoders, read_config=read_config)


def create_train_iterator(config, *, start_step: int = 0, process_index=None,
                          process_count=None, info=None) -> Iterator[dict[str, np.ndarray]]:
  """Endless per-host training batches {'image': float32 (B, H, W, C), 'label': int32 (B,)}.

  B = config.batch_size // process_count. The batch yielded first is batch `start_step` of the
  stream that start_step=0 yields, for the same config.seed and process layout.
  config.cache holds the host's decoded split in memory and draws each epoch as an exact random
  permutation; otherwise examples stream from the TFDS files with a per-epoch file order and a
  shuffle buffer of config.shuffle_buffer_size. `info`: the run's DatasetInfo where it has
  one (RunPlan.info), else worked out from the config.
  """
  process_index, process_count = sharding.process(process_index, process_count)
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0.")
  datasets.check_cache(config)
  preprocess = _preprocessors(config)
  if config.dataset == "image_folder":
    return image_folder.train_iterator(config, preprocess, start_step, process_index,
                                       process_count)
  info = info or dataset_info(config)
  batch = sharding.train_batch(config, process_count)
  builder = datasets.prepared_builder(config)
  split = tfds.split_for_jax_process(info.train_split, process_index=process_index,
                                     process_count=process_count, drop_remainder=True)
  num_examples = builder.info.splits[split].num_examples
  sharding.check_batch_fits(batch, num_examples, config.dataset)
  host_seed = sharding.derive_seed(config.seed, process_index)
  if config.cache:
    ds = _in_memory_train_dataset(builder, split, preprocess, host_seed, batch, start_step)
    return ds.prefetch(config.prefetch).with_options(sharding.options()).as_numpy_iterator()

  def batches():
    epoch, step_in_epoch = divmod(start_step, num_examples // batch)
    while True:
      epoch_seed = sharding.derive_seed(host_seed, epoch)
      ds = _streamed_epoch_dataset(builder, split, preprocess, epoch_seed,
                                   config.shuffle_buffer_size, batch, skip=step_in_epoch * batch)
      ds = ds.prefetch(config.prefetch).with_options(sharding.options())
      yield from ds.as_numpy_iterator()
      epoch, step_in_epoch = epoch + 1, 0

  return batches()


def _in_memory_train_dataset(builder, split, preprocess: _Preprocessors, host_seed: int,
                             batch: int, start_step: int) -> tf.data.Dataset:
  """Endless batches from the decoded split held in memory, starting at `start_step`.

  Epoch e is the permutation index_shuffle(., key(host_seed, e)) of the examples, and a batch's
  augmentation is keyed on its step, so batch k is computed directly, without steps before it.
  """
  num_examples = builder.info.splits[split].num_examples
  epoch_steps = num_examples // batch
  examples = _in_memory(builder, split)
  host_key = tf.constant([host_seed, 0], tf.int64)

  def batch_at(step):
    indices, augment_seed = sharding.permuted_batch(host_key, step, epoch_steps, batch,
                                                 num_examples)
    images = tf.gather(examples["image"], indices)
    return {"image": preprocess.train_batch(images, augment_seed),
            "label": tf.cast(tf.gather(examples["label"], indices), tf.int32)}

  steps = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
  return steps.map(batch_at, num_parallel_calls=tf.data.AUTOTUNE)


def _in_memory(builder, split) -> dict[str, tf.Variable]:
  """The whole decoded split as host-memory variables, for random access by index inside tf.data
  (a variable is captured by reference; a constant would be copied into every traced graph)."""
  arrays = tfds.as_numpy(_read(builder, split, None, shuffle_seed=None).batch(
      builder.info.splits[split].num_examples).get_single_element())
  with tf.device("/cpu:0"):
    return {key: tf.Variable(arrays[key], trainable=False) for key in ("image", "label")}


def _streamed_epoch_dataset(builder, split, preprocess: _Preprocessors, epoch_seed: int,
                            buffer: int, batch: int, skip: int) -> tf.data.Dataset:
  """One epoch streamed from the TFDS files: file order and shuffle buffer seeded by the epoch,
  each example's augmentation keyed on its position in the epoch; the first `skip` examples are
  dropped before they are decoded. Yields the epoch's full batches."""
  records = _read(builder, split, preprocess.decoders, shuffle_seed=epoch_seed)
  records = records.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
  epoch_key = tf.constant([epoch_seed, 0], tf.int64)

  def augmented(position, example):
    example_seed = tf.random.experimental.stateless_fold_in(epoch_key, position)
    return {"image": preprocess.train(example, example_seed),
            "label": tf.cast(example["label"], tf.int32)}

  ds = records.enumerate().skip(skip).map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch, drop_remainder=True)


def create_eval_iterator(config, *, process_index=None, process_count=None,
                         info=None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over this host's share of the eval split, in per-host batches of
  config.eval_batch_size // process_count: {'image', 'label', 'mask'}, mask 1.0 for real examples
  and 0.0 for padding. All hosts yield the same number of batches; together they cover each
  example of the split exactly once. ImageNet ten_crop images are (B, 10, H, W, 3), and
  config.eval_flip's (B, 2, H, W, C): the image and its mirror. `info` as in
  create_train_iterator."""
  process_index, process_count = sharding.process(process_index, process_count)
  preprocess = _preprocessors(config)
  if config.dataset == "image_folder":
    return image_folder.eval_iterator(config, preprocess, process_index, process_count)
  info = info or dataset_info(config)
  batch = sharding.eval_batch(config, process_count)
  builder = datasets.prepared_builder(config)
  host_splits = tfds.even_splits(info.eval_split, n=process_count, drop_remainder=False)
  counts = [builder.info.splits[s].num_examples for s in host_splits]
  num_batches = math.ceil(max(counts) / batch)

  def prepare(example):
    return {"image": preprocess.eval(example), "label": tf.cast(example["label"], tf.int32),
            "mask": tf.constant(1.0, tf.float32)}

  ds = _read(builder, host_splits[process_index], preprocess.decoders, shuffle_seed=None)
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = sharding.padded_batches(ds, counts[process_index], num_batches, batch)
  return ds.prefetch(config.prefetch).with_options(sharding.options()).as_numpy_iterator()
