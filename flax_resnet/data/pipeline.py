"""Input pipelines: TFDS + tf.data for ImageNet, CIFAR-10 and Fashion-MNIST, and tf.data over a
folder of the user's images ('image_folder'), yielding numpy batches.

The training loop sees three functions: `dataset_info`, `create_train_iterator` and
`create_eval_iterator`. Design choices:
- Multi-host: each process reads a disjoint slice of the training split (`split_for_jax_process`
  with equal slices), so every host has the same steps per epoch. Evaluation splits the eval set
  without dropping anything; every host pads its tail to the same number of batches and marks
  real examples with `mask` (1.0) and padding with 0.0, so metrics cover each example exactly once
  and collectives see the same number of batches on every host.
- Deterministic and resumable: batch k is a function of (seed, process layout, k) only, and
  `start_step=k` starts there without producing the batches before it. Small datasets (CIFAR-10,
  Fashion-MNIST; config.cache) sit decoded in host memory: epoch e is the exact random
  permutation `index_shuffle(., key(seed, host, e))` and each batch's augmentation is keyed on its
  step, so batch k is computed directly. ImageNet streams from the TFDS files: epoch e reads the
  files in an order seeded by (seed, host, e) through a seeded shuffle buffer, each example's
  augmentation is keyed on its position in the epoch, and a resume drops the first examples of
  its epoch before they are decoded. Each epoch yields `examples_per_host // batch` full batches
  (a different random remainder is left out each epoch). All randomness is stateless.
- ImageNet crops are computed on the JPEG's header shape and decoded with `decode_and_crop_jpeg`,
  so only the crop window is decoded (benchmarks/input_pipeline.py compares with full decoding).
- image_folder (<data_dir>/<split>/<class>/<images>, see image_folder.py) takes its classes and
  sizes from the folders and reads files by index: the files are dealt to the hosts by a seeded
  permutation, epoch e of a host is the exact permutation `index_shuffle(., key(seed, host, e))`
  and each image's augmentation is keyed on its step (ImageNet's crops, with the paper's scale
  range scaled to image_size), so batch k is computed directly. A file TensorFlow fails to
  decode is named in a ValueError (image_folder.check looks before training, up to a size).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Callable, Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from flax_resnet.data import fashion_mnist as fashion_mnist_local
from flax_resnet.data import image_folder

# tf.data runs on the host: keep a GPU build of TensorFlow from claiming accelerator memory that
# JAX needs (a no-op with tensorflow-cpu; fails harmlessly once TF has initialized its devices).
try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:
  pass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-channel statistics of the training images on the [0, 1] scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

IMAGENET_TRAIN_AUGMENTATIONS = ("paper", "inception")
IMAGENET_EVAL_CROPS = ("center", "ten_crop")
PAPER_SCALE_RANGE = (256, 480)  # Shorter side resized to a random size in [256, 480].
CIFAR_VALIDATION_SIZE = 5000  # The paper's 45k/5k train/validation split.
DEFAULT_SHUFFLE_BUFFER = 16_384  # Examples, for datasets that are not cached in memory.


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Static facts about a supported dataset; None: read from the dataset's folder."""
  num_classes: int | None
  image_shape: tuple[int, int, int] | None  # After preprocessing (ImageNet: at image_size 224).
  train_split: str | None
  eval_split: str | None
  num_train_examples: int | None
  num_eval_examples: int | None
  mean: tuple[float, ...]
  std: tuple[float, ...]
  pad: int = 0  # Zero padding before the random crop of the small-image augmentation.
  cache: bool = False  # Decoded training set fits in host memory.


DATASETS: dict[str, DatasetSpec] = {
    "imagenet2012": DatasetSpec(1000, (224, 224, 3), "train", "validation", 1_281_167, 50_000,
                                IMAGENET_MEAN, IMAGENET_STD),
    "cifar10": DatasetSpec(10, (32, 32, 3), "train", "test", 50_000, 10_000,
                           CIFAR10_MEAN, CIFAR10_STD, pad=4, cache=True),
    "fashion_mnist": DatasetSpec(10, (28, 28, 1), "train", "test", 60_000, 10_000,
                                 FASHION_MNIST_MEAN, FASHION_MNIST_STD, pad=4, cache=True),
    # The user's images in config.data_dir (image_folder.py), at config.image_size.
    "image_folder": DatasetSpec(None, None, None, None, None, None, IMAGENET_MEAN, IMAGENET_STD),
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the training loop needs to know about the configured dataset."""
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train_examples: int
  num_eval_examples: int
  train_split: str
  eval_split: str


def _get(config, name: str, default=None):
  value = config.get(name, default)
  return default if value is None else value


def _dataset_name(config) -> str:
  name = config.get("dataset", None)
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r} in config.dataset; choose one of {sorted(DATASETS)}.")
  return name


def dataset_info(config) -> DatasetInfo:
  """Static description of `config.dataset`, with the 45k/5k CIFAR split, ImageNet image_size,
  and an image folder's classes and sizes."""
  name = _dataset_name(config)
  spec = DATASETS[name]
  limit = int(_get(config, "eval_examples", 0))
  if name == "image_folder":
    folder = image_folder.scan(config.get("data_dir", None))
    size = int(_get(config, "image_size", 224))
    num_eval = len(_folder_eval_subset(len(folder.eval.paths), limit))
    return DatasetInfo(name, len(folder.classes), (size, size, 3), len(folder.train.paths),
                       num_eval, folder.train.name, folder.eval.name)
  image_shape = spec.image_shape
  train_split = spec.train_split
  num_train, num_eval = spec.num_train_examples, spec.num_eval_examples
  eval_base, eval_start = spec.eval_split, 0
  if name == "imagenet2012":
    size = int(_get(config, "image_size", 224))
    image_shape = (size, size, 3)
  if name == "cifar10" and _get(config, "cifar_validation_split", False):
    num_train = spec.num_train_examples - CIFAR_VALIDATION_SIZE
    train_split, eval_base, eval_start = f"train[:{num_train}]", "train", num_train
    num_eval = CIFAR_VALIDATION_SIZE
  if 0 < limit < num_eval:  # config.eval_examples: the split's first `limit` examples
    num_eval = limit
  eval_split = (f"{eval_base}[{eval_start}:{eval_start + num_eval}]"
                if (eval_start or num_eval < spec.num_eval_examples) else eval_base)
  return DatasetInfo(name, spec.num_classes, image_shape, num_train, num_eval, train_split,
                     eval_split)


def _folder_eval_subset(num_files: int, limit: int) -> np.ndarray:
  """Indices of the eval files that config.eval_examples keeps: all of them for 0, else
  `limit` spread evenly over the files (sorted by class, so every class keeps its share)."""
  if not 0 < limit < num_files:
    return np.arange(num_files)
  return np.linspace(0, num_files - 1, limit).round().astype(np.int64)


def steps_per_epoch(config, process_count: int | None = None) -> int:
  """Training steps in one epoch: each host yields (its equal slice) // (per-host batch) batches."""
  process_count = jax.process_count() if process_count is None else process_count
  per_host_batch = _per_host_batch(config, "batch_size", process_count)
  return (dataset_info(config).num_train_examples // process_count) // per_host_batch


# ----------------------------------------------------------------------------------------------
# Dataset preparation and clear errors.


def _data_dir(config) -> str | None:
  data_dir = config.get("data_dir", None)
  if data_dir is None:
    return None
  data_dir = os.path.expanduser(str(data_dir))
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(
        f"config.data_dir={data_dir!r} does not exist. Create it (datasets are prepared there on "
        "first use), point it at the folder that holds your TFDS datasets, or set it to None to "
        "use TFDS's default (~/tensorflow_datasets).")
  return data_dir


def _prepared_builder(config) -> tfds.core.DatasetBuilder:
  """The TFDS builder of config.dataset, prepared (offline where possible) or a clear error."""
  name = _dataset_name(config)
  data_dir = _data_dir(config)
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  where = builder.data_dir_root
  if name == "imagenet2012":
    raise FileNotFoundError(
        f"ImageNet (imagenet2012) is not prepared in {where}, and TFDS cannot download it. Get "
        "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org, put them "
        f"in {os.path.join(where, 'downloads', 'manual')}, then run once (hours): "
        f"`tfds build imagenet2012 --data_dir={where}`. Or set config.data_dir to a folder that "
        "already holds a prepared imagenet2012.")
  if name == "fashion_mnist":
    source_dir = config.get("fashion_mnist_source_dir", None)
    try:
      return fashion_mnist_local.prepare(data_dir,
                                         source_dir or fashion_mnist_local.DEFAULT_SOURCE_DIR)
    except FileNotFoundError:
      if source_dir is not None:  # The user named a folder: say what is missing there.
        raise
  print(f"Downloading and preparing TFDS {name} in {where} (once)...", file=sys.stderr, flush=True)
  try:
    builder.download_and_prepare()
  except Exception as error:  # Network errors come in many types; all lead to the same advice.
    hint = (" or install Debian's dataset-fashion-mnist / set config.fashion_mnist_source_dir to "
            "a folder with the four IDX files" if name == "fashion_mnist" else "")
    raise FileNotFoundError(
        f"TFDS could not download and prepare {name} into {where} ({type(error).__name__}: "
        f"{error}). Without internet, run `tfds build {name} --data_dir=DIR` on a machine with "
        f"internet and copy DIR/{name} into {where}{hint}.") from error
  return builder


def _per_host_batch(config, field: str, process_count: int) -> int:
  global_batch = int(_get(config, field, None) or _get(config, "batch_size", 0))
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(f"config.{field}={global_batch} must be a positive multiple of the process "
                     f"count {process_count}.")
  return global_batch // process_count


def _process(process_index, process_count) -> tuple[int, int]:
  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
  return process_index, process_count


def _derive_seed(*ints: int) -> int:
  """A 31-bit seed derived from integers (seed, process, epoch): distinct tuples, distinct seeds."""
  return int(np.random.SeedSequence([int(i) for i in ints]).generate_state(1)[0] >> 1)


# ----------------------------------------------------------------------------------------------
# Preprocessing (TensorFlow ops inside tf.data).


def _normalize(image: tf.Tensor, spec: DatasetSpec) -> tf.Tensor:
  """[0, 255] -> per-channel standardized float32."""
  mean = tf.constant(spec.mean, tf.float32) * 255.0
  std = tf.constant(spec.std, tf.float32) * 255.0
  return (tf.cast(image, tf.float32) - mean) / std


def _random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(image, axis=[-2]), lambda: image)


def pad_crop_flip(images: tf.Tensor, seed: tf.Tensor, pad: int) -> tf.Tensor:
  """The CIFAR augmentation of He et al. on a batch (N, H, W, C): zero-pad `pad` pixels, crop
  H x W at a random offset, flip horizontally with probability 1/2, independently per image.
  Padding is on the raw image (black), as torchvision's RandomCrop. Crop and flip are one
  gather per axis, so a whole batch costs a few vectorized ops."""
  height, width = images.shape[1], images.shape[2]
  count = tf.shape(images)[0]
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  offsets = tf.random.stateless_uniform(tf.stack([count, 2]), crop_seed, 0, 2 * pad + 1,
                                        dtype=tf.int32)
  flips = tf.random.stateless_uniform(tf.expand_dims(count, 0), flip_seed) < 0.5
  padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
  rows = offsets[:, :1] + tf.range(height)[None]
  cols = offsets[:, 1:] + tf.where(flips[:, None], tf.range(width - 1, -1, -1)[None],
                                   tf.range(width)[None])
  cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
  return tf.gather(cropped, cols, axis=2, batch_dims=1)


def random_erase(images: tf.Tensor, seed: tf.Tensor, probability: float,
                 area: tuple[float, float] = (0.02, 0.4),
                 aspect: tuple[float, float] = (0.3, 1 / 0.3)) -> tf.Tensor:
  """Random erasing (Zhong et al., 2020) on a normalized batch (N, H, W, C): with
  `probability`, one rectangle per image, of `area` fraction of the image and aspect ratio
  (height/width) log-uniform in `aspect`, is replaced by standard normal noise (per pixel, as
  timm's mode='pixel'; noise in normalized units is random pixel values). Rectangles are
  clipped to the image instead of resampled; one mask per batch, no per-image control flow."""
  height, width = images.shape[1], images.shape[2]
  count = tf.shape(images)[0]
  seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
  uniform = lambda s, low=0.0, high=1.0: tf.random.stateless_uniform(
      tf.expand_dims(count, 0), s, low, high)
  erase = uniform(seeds[0]) < probability
  target = uniform(seeds[1], *area) * (height * width)
  ratio = tf.exp(uniform(seeds[2], math.log(aspect[0]), math.log(aspect[1])))
  rect_h = tf.clip_by_value(tf.round(tf.sqrt(target * ratio)), 1, height)
  rect_w = tf.clip_by_value(tf.round(tf.sqrt(target / ratio)), 1, width)
  offsets = tf.random.stateless_uniform(tf.stack([count, 2]), seeds[3])
  top = tf.floor(offsets[:, 0] * (height - rect_h + 1))
  left = tf.floor(offsets[:, 1] * (width - rect_w + 1))
  rows = tf.range(height, dtype=tf.float32)[None]
  cols = tf.range(width, dtype=tf.float32)[None]
  in_rows = (rows >= top[:, None]) & (rows < (top + rect_h)[:, None])
  in_cols = (cols >= left[:, None]) & (cols < (left + rect_w)[:, None])
  mask = in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None]
  noise = tf.random.stateless_normal(tf.shape(images), seeds[4], dtype=images.dtype)
  return tf.where(mask[..., None], noise, images)


def resize(image: tf.Tensor, size, antialias: bool = False) -> tf.Tensor:
  """Bilinear resize. Antialiasing (PIL/torchvision's behaviour when shrinking) costs about 1.6 ms
  more per 224 x 224 output on one core, about 4x the plain resize, for windows that ImageNet's
  crops shrink by at most ~1.7x; off by default, as in Flax's and TF's ResNet pipelines."""
  return tf.image.resize(image, size, method="bilinear", antialias=antialias)


def _decode_window(jpeg: tf.Tensor, window: tf.Tensor, size: int, antialias: bool) -> tf.Tensor:
  """Decodes only `window` = [y, x, h, w] of the JPEG and resizes it to size x size."""
  image = tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)
  return resize(image, [size, size], antialias)


def paper_crop_window(image_shape: tf.Tensor, seed: tf.Tensor, size: int,
                      scale_range=PAPER_SCALE_RANGE) -> tf.Tensor:
  """He et al.'s scale augmentation as a window of the original image.

  Resizing the shorter side to S ~ U{256..480} and cropping size x size at a random position is
  the same geometric map as cropping a square of side size * short / S from the original and
  resizing that square to size x size; computing the window first lets us decode only it.
  """
  height, width = image_shape[0], image_shape[1]
  shorter = tf.minimum(height, width)
  scale_seed, y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  target = tf.random.stateless_uniform([], scale_seed, scale_range[0], scale_range[1] + 1,
                                       dtype=tf.int32)
  side = tf.cast(tf.round(size * tf.cast(shorter, tf.float32) / tf.cast(target, tf.float32)),
                 tf.int32)
  side = tf.clip_by_value(side, 1, shorter)
  y = tf.random.stateless_uniform([], y_seed, 0, height - side + 1, dtype=tf.int32)
  x = tf.random.stateless_uniform([], x_seed, 0, width - side + 1, dtype=tf.int32)
  return tf.stack([y, x, side, side])


def center_crop_window(image_shape: tf.Tensor, size: int) -> tf.Tensor:
  """The window of "resize the shorter side to size * 256/224, crop size x size at the center"."""
  height, width = image_shape[0], image_shape[1]
  shorter = tf.cast(tf.minimum(height, width), tf.float32)
  side = tf.cast(tf.round(shorter * 224.0 / 256.0), tf.int32)
  side = tf.maximum(side, 1)
  return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def inception_crop_window(image_shape: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
  """Inception-style random-resized crop (8%-100% of the area, aspect 3/4-4/3, 10 attempts),
  falling back to the center crop when no attempt fits, as Flax's and TF's ResNet recipes do."""
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
  failed = tf.reduce_all(tf.equal(crop_size[:2], image_shape[:2]))
  return tf.cond(failed, lambda: center_crop_window(image_shape, size), lambda: window)


def ten_crops(jpeg: tf.Tensor, size: int, antialias: bool = False) -> tf.Tensor:
  """The 10-crop test of Krizhevsky et al. used by He et al.: shorter side resized to
  size * 256/224, the four corner and the center size x size crops, and their mirror images.
  Returns (10, size, size, 3): crops [corners TL, TR, BL, BR, center], then the same flipped."""
  return _ten_crops_of(tf.io.decode_jpeg(jpeg, channels=3), size, antialias)


def _ten_crops_of(image: tf.Tensor, size: int, antialias: bool) -> tf.Tensor:
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  resize_short = round(size * 256 / 224)
  scale = resize_short / tf.cast(tf.minimum(height, width), tf.float32)
  new_h = tf.maximum(size, tf.cast(tf.round(tf.cast(height, tf.float32) * scale), tf.int32))
  new_w = tf.maximum(size, tf.cast(tf.round(tf.cast(width, tf.float32) * scale), tf.int32))
  image = resize(image, [new_h, new_w], antialias)
  offsets = [(0, 0), (0, new_w - size), (new_h - size, 0), (new_h - size, new_w - size),
             ((new_h - size) // 2, (new_w - size) // 2)]
  crops = tf.stack([image[y:y + size, x:x + size] for y, x in offsets])
  crops = tf.ensure_shape(crops, [5, size, size, 3])
  return tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)


def train_crop_window(image_shape: tf.Tensor, seed: tf.Tensor, size: int, augmentation: str,
                      scale_range=PAPER_SCALE_RANGE) -> tf.Tensor:
  """The training crop: the paper's scale augmentation ('paper') or an Inception crop."""
  if augmentation == "paper":
    return paper_crop_window(image_shape, seed, size, scale_range)
  return inception_crop_window(image_shape, seed, size)


def imagenet_train_image(jpeg: tf.Tensor, seed: tf.Tensor, size: int, augmentation: str,
                         antialias: bool = False,
                         spec: DatasetSpec = DATASETS["imagenet2012"]) -> tf.Tensor:
  """Encoded JPEG -> augmented, normalized (size, size, 3) float32."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  window = train_crop_window(tf.io.extract_jpeg_shape(jpeg), crop_seed, size, augmentation)
  image = _random_flip(_decode_window(jpeg, window, size, antialias), flip_seed)
  return tf.ensure_shape(_normalize(image, spec), [size, size, 3])


def imagenet_eval_image(jpeg: tf.Tensor, size: int, crop: str, antialias: bool = False,
                        spec: DatasetSpec = DATASETS["imagenet2012"]) -> tf.Tensor:
  """Encoded JPEG -> normalized center crop (size, size, 3) or ten crops (10, size, size, 3)."""
  if crop == "ten_crop":
    return _normalize(ten_crops(jpeg, size, antialias), spec)
  window = center_crop_window(tf.io.extract_jpeg_shape(jpeg), size)
  image = _decode_window(jpeg, window, size, antialias)
  return tf.ensure_shape(_normalize(image, spec), [size, size, 3])


def _decode_any(encoded: tf.Tensor) -> tf.Tensor:
  """JPEG, PNG, GIF (first frame), BMP or WebP bytes -> uint8 (H, W, 3)."""
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def _crop_and_resize(image: tf.Tensor, window: tf.Tensor, size: int, antialias: bool):
  y, x, height, width = tf.unstack(window)
  return resize(image[y:y + height, x:x + width], [size, size], antialias)


def folder_train_image(encoded: tf.Tensor, seed: tf.Tensor, size: int, augmentation: str,
                       antialias: bool = False,
                       spec: DatasetSpec = DATASETS["image_folder"]) -> tf.Tensor:
  """Encoded image of any size and format -> augmented, normalized (size, size, 3) float32:
  ImageNet's crops, the paper's scale range [256, 480] scaled by size / 224."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = _decode_any(encoded)
  scale_range = tuple(max(size, round(size * s / 224)) for s in PAPER_SCALE_RANGE)
  window = train_crop_window(tf.shape(image), crop_seed, size, augmentation, scale_range)
  image = _random_flip(_crop_and_resize(image, window, size, antialias), flip_seed)
  return tf.ensure_shape(_normalize(image, spec), [size, size, 3])


def folder_eval_image(encoded: tf.Tensor, size: int, crop: str, antialias: bool = False,
                      spec: DatasetSpec = DATASETS["image_folder"]) -> tf.Tensor:
  """Encoded image -> normalized center crop (size, size, 3) or ten crops (10, size, size, 3)."""
  image = _decode_any(encoded)
  if crop == "ten_crop":
    return _normalize(_ten_crops_of(image, size, antialias), spec)
  window = center_crop_window(tf.shape(image), size)
  image = _crop_and_resize(image, window, size, antialias)
  return tf.ensure_shape(_normalize(image, spec), [size, size, 3])


# ----------------------------------------------------------------------------------------------
# Pipelines.


@dataclasses.dataclass(frozen=True)
class _Preprocessors:
  train: Callable[[dict, tf.Tensor], tf.Tensor]  # (example, seed) -> image
  eval: Callable[[dict], tf.Tensor]  # example -> image
  decoders: dict | None  # TFDS decoders (ImageNet: keep the JPEG bytes).
  train_batch: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None  # (images, seed) -> images


def with_mirror(image: tf.Tensor) -> tf.Tensor:
  """(H, W, C) -> (2, H, W, C): the image and its horizontal mirror, scored as two views."""
  return tf.stack([image, tf.reverse(image, axis=[-2])])


def _preprocessors(config) -> _Preprocessors:
  """The dataset's train and eval preprocessing, plus random erasing and the mirrored eval
  view when configured."""
  base = _dataset_preprocessors(config)
  if _get(config, "eval_flip", False):
    single_view = base.eval
    base = dataclasses.replace(base, eval=lambda ex: with_mirror(single_view(ex)))
  probability = float(_get(config, "random_erasing", 0.0))
  if probability <= 0:
    return base

  def erase(images, seed):  # its own stream: the dataset's augmentation keeps its draws
    return random_erase(images, tf.random.experimental.stateless_fold_in(seed, 1), probability)
  return dataclasses.replace(
      base,
      train=lambda ex, seed: erase(base.train(ex, seed)[None], seed)[0],
      train_batch=base.train_batch and (
          lambda images, seed: erase(base.train_batch(images, seed), seed)))


def _dataset_preprocessors(config) -> _Preprocessors:
  name = _dataset_name(config)
  spec = DATASETS[name]
  if name in ("imagenet2012", "image_folder"):
    size = int(_get(config, "image_size", 224))
    augmentation = _get(config, "imagenet_train_augmentation", "paper")
    crop = _get(config, "imagenet_eval_crop", "center")
    antialias = bool(_get(config, "image_resize_antialias", False))
    if augmentation not in IMAGENET_TRAIN_AUGMENTATIONS:
      raise ValueError(f"config.imagenet_train_augmentation={augmentation!r}; choose one of "
                       f"{IMAGENET_TRAIN_AUGMENTATIONS}.")
    if crop not in IMAGENET_EVAL_CROPS:
      raise ValueError(f"config.imagenet_eval_crop={crop!r}; choose one of {IMAGENET_EVAL_CROPS}.")
  if name == "image_folder":
    return _Preprocessors(
        train=lambda ex, seed: folder_train_image(ex["image"], seed, size, augmentation,
                                                  antialias, spec),
        eval=lambda ex: folder_eval_image(ex["image"], size, crop, antialias, spec),
        decoders=None)
  if name == "imagenet2012":
    return _Preprocessors(
        train=lambda ex, seed: imagenet_train_image(ex["image"], seed, size, augmentation,
                                                    antialias, spec),
        eval=lambda ex: imagenet_eval_image(ex["image"], size, crop, antialias, spec),
        decoders={"image": tfds.decode.SkipDecoding()})
  pad = int(_get(config, "crop_padding", spec.pad))
  # Batches and single images alike: pad_crop_flip and _normalize are batched.
  return _Preprocessors(
      train=lambda ex, seed: _normalize(pad_crop_flip(ex["image"][None], seed, pad)[0], spec),
      eval=lambda ex: _normalize(ex["image"], spec),
      decoders=None,
      train_batch=lambda images, seed: _normalize(pad_crop_flip(images, seed, pad), spec))


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True  # Parallel map and interleave keep their input order.
  options.experimental_optimization.map_parallelization = True
  options.threading.max_intra_op_parallelism = 1
  return options


def _read(builder, split, decoders, *, shuffle_seed: int | None) -> tf.data.Dataset:
  """TFDS records of `split` (file order shuffled by `shuffle_seed` when given), undecoded
  where `decoders` says so. TFDS's automatic caching is off: we decide what to cache."""
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
  return builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                            decoders=decoders, read_config=read_config)


def create_train_iterator(config, *, start_step: int = 0, process_index=None,
                          process_count=None) -> Iterator[dict[str, np.ndarray]]:
  """Endless per-host training batches {'image': float32 (B, H, W, C), 'label': int32 (B,)}.

  B = config.batch_size // process_count. The batch yielded first is batch `start_step` of the
  stream that start_step=0 yields, for the same config.seed and process layout.
  config.cache (default: True for CIFAR-10 and Fashion-MNIST) holds the host's decoded split in
  memory and draws each epoch as an exact random permutation; otherwise examples stream from the
  TFDS files with a per-epoch file order and a shuffle buffer of config.shuffle_buffer_size.
  """
  process_index, process_count = _process(process_index, process_count)
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0.")
  name = _dataset_name(config)
  if name == "image_folder":
    return _folder_train_iterator(config, start_step, process_index, process_count)
  info = dataset_info(config)
  batch = _per_host_batch(config, "batch_size", process_count)
  preprocess = _preprocessors(config)
  cache = bool(_get(config, "cache", DATASETS[name].cache))
  if cache and preprocess.train_batch is None:
    raise ValueError(f"config.cache=True keeps the decoded training split in host memory, which "
                     f"{name} does not fit; set config.cache=False.")
  builder = _prepared_builder(config)
  split = tfds.split_for_jax_process(info.train_split, process_index=process_index,
                                     process_count=process_count, drop_remainder=True)
  num_examples = builder.info.splits[split].num_examples
  if num_examples < batch:
    raise ValueError(f"The per-host batch {batch} is larger than this host's {num_examples} "
                     f"training examples of {name}; lower config.batch_size.")
  host_seed = _derive_seed(int(_get(config, "seed", 0)), process_index)
  prefetch = int(_get(config, "prefetch", 2))
  if cache:
    ds = _in_memory_train_dataset(builder, split, preprocess, host_seed, batch, start_step)
    return ds.prefetch(prefetch).with_options(_options()).as_numpy_iterator()
  buffer = int(_get(config, "shuffle_buffer_size", DEFAULT_SHUFFLE_BUFFER))

  def batches():
    epoch, step_in_epoch = divmod(start_step, num_examples // batch)
    while True:
      ds = _streamed_epoch_dataset(builder, split, preprocess, _derive_seed(host_seed, epoch),
                                   buffer, batch, skip=step_in_epoch * batch)
      yield from ds.prefetch(prefetch).with_options(_options()).as_numpy_iterator()
      epoch, step_in_epoch = epoch + 1, 0

  return batches()


def permuted_batch(host_key: tf.Tensor, step, epoch_steps: int, batch: int,
                   num_examples: int):
  """Indices of training batch `step` in an exact random permutation of each epoch, and the
  step's augmentation seed: both functions of (host_key, step) alone, so a resumed run
  computes batch k directly."""
  epoch = step // epoch_steps
  positions = (step - epoch * epoch_steps) * batch + tf.range(batch, dtype=tf.int64)
  epoch_key = tf.random.experimental.stateless_fold_in(host_key, epoch)
  order_key, augment_key = tf.unstack(tf.random.experimental.stateless_split(epoch_key, 2))
  indices = tf.random.experimental.index_shuffle(
      positions, order_key, tf.constant(num_examples - 1, tf.int64))
  return indices, tf.random.experimental.stateless_fold_in(augment_key, step)


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
    indices, augment_seed = permuted_batch(host_key, step, epoch_steps, batch, num_examples)
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

  def augment(position, example):
    example_seed = tf.random.experimental.stateless_fold_in(epoch_key, position)
    return {"image": preprocess.train(example, example_seed),
            "label": tf.cast(example["label"], tf.int32)}

  ds = records.enumerate().skip(skip).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch, drop_remainder=True)


def create_eval_iterator(config, *, process_index=None,
                         process_count=None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over this host's share of the eval split, in per-host batches of
  config.eval_batch_size // process_count: {'image', 'label', 'mask'}, mask 1.0 for real examples
  and 0.0 for padding. All hosts yield the same number of batches; together they cover each
  example of the split exactly once. ImageNet ten_crop images are (B, 10, H, W, 3), and
  config.eval_flip's (B, 2, H, W, C): the image and its mirror."""
  process_index, process_count = _process(process_index, process_count)
  if _dataset_name(config) == "image_folder":
    return _folder_eval_iterator(config, process_index, process_count)
  info = dataset_info(config)
  batch = _per_host_batch(config, "eval_batch_size", process_count)
  preprocess = _preprocessors(config)
  builder = _prepared_builder(config)
  host_splits = tfds.even_splits(info.eval_split, n=process_count, drop_remainder=False)
  counts = [builder.info.splits[s].num_examples for s in host_splits]
  num_batches = math.ceil(max(counts) / batch)
  num_padding = num_batches * batch - counts[process_index]

  def prepare(example):
    return {"image": preprocess.eval(example), "label": tf.cast(example["label"], tf.int32),
            "mask": tf.constant(1.0, tf.float32)}

  ds = _read(builder, host_splits[process_index], preprocess.decoders, shuffle_seed=None)
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  ds = ds.batch(batch, drop_remainder=True).prefetch(int(_get(config, "prefetch", 2)))
  return ds.with_options(_options()).as_numpy_iterator()


# ----------------------------------------------------------------------------------------------
# A folder of the user's images.


def _checked_folder(config) -> image_folder.ImageFolder:
  folder = image_folder.scan(config.get("data_dir", None))
  image_folder.check(folder, _get(config, "image_folder_check", "auto"))
  return folder


def _read_file(path: tf.Tensor, label: tf.Tensor) -> dict[str, tf.Tensor]:
  return {"image": tf.io.read_file(path), "label": label}


def _naming_bad_images(batches: Iterator, paths_of_batch: Callable[[int], np.ndarray]):
  """`batches`, but a decoding error becomes image_folder's message naming the bad file(s) of
  the failing batch (batch k's files are known: `paths_of_batch(k)`)."""
  k = 0
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError:
      problems = image_folder.find_bad_images(paths_of_batch(k))
      if not problems:
        raise
      raise image_folder.bad_images_error(problems) from None
    yield batch
    k += 1


def _folder_train_iterator(config, start_step: int, process_index: int, process_count: int):
  """Per-host batches of the folder's train split; see create_train_iterator."""
  if _get(config, "cache", False):
    raise ValueError("config.cache=True is not supported for image_folder (images are read from "
                     "their files every epoch); set config.cache=False.")
  folder = _checked_folder(config)
  batch = _per_host_batch(config, "batch_size", process_count)
  preprocess = _preprocessors(config)
  seed = int(_get(config, "seed", 0))
  # Hosts get equal, disjoint slices of one seeded permutation (the files are sorted by class).
  per_host = len(folder.train.paths) // process_count
  dealt = np.random.default_rng(_derive_seed(seed)).permutation(len(folder.train.paths))
  mine = dealt[process_index * per_host:(process_index + 1) * per_host]
  paths, labels = folder.train.paths[mine], folder.train.labels[mine]
  if per_host < batch:
    raise ValueError(f"The per-host batch {batch} is larger than this host's {per_host} training "
                     f"images in {folder.root}; lower config.batch_size.")
  epoch_steps = per_host // batch
  host_key = tf.constant([_derive_seed(seed, process_index), 0], tf.int64)

  def batch_indices_and_seeds(step):
    """The files of batch `step` (exact per-epoch permutation) and their augmentation seeds."""
    indices, augment_seed = permuted_batch(host_key, step, epoch_steps, batch, per_host)
    return indices, tf.random.experimental.stateless_split(augment_seed, batch)

  paths_t, labels_t = tf.constant(paths), tf.constant(labels)

  def example(index, example_seed):
    ex = _read_file(tf.gather(paths_t, index), tf.gather(labels_t, index))
    return {"image": preprocess.train(ex, example_seed), "label": ex["label"]}

  steps = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
  ds = steps.map(batch_indices_and_seeds).unbatch()
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE).batch(batch, drop_remainder=True)
  ds = ds.prefetch(int(_get(config, "prefetch", 2))).with_options(_options())
  return _naming_bad_images(
      ds.as_numpy_iterator(),
      lambda k: paths[batch_indices_and_seeds(tf.constant(start_step + k, tf.int64))[0].numpy()])


def _folder_eval_iterator(config, process_index: int, process_count: int):
  """This host's contiguous share of the folder's eval split, padded; see create_eval_iterator."""
  folder = _checked_folder(config)
  batch = _per_host_batch(config, "eval_batch_size", process_count)
  preprocess = _preprocessors(config)
  kept = _folder_eval_subset(len(folder.eval.paths), int(_get(config, "eval_examples", 0)))
  shares = np.array_split(kept, process_count)
  mine = shares[process_index]
  paths, labels = folder.eval.paths[mine], folder.eval.labels[mine]
  num_batches = math.ceil(max(len(s) for s in shares) / batch)

  def prepare(path, label):
    return {"image": preprocess.eval(_read_file(path, label)), "label": label,
            "mask": tf.constant(1.0, tf.float32)}

  ds = tf.data.Dataset.from_tensor_slices((paths, labels))
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_batches * batch - len(mine)))
  ds = ds.batch(batch, drop_remainder=True).prefetch(int(_get(config, "prefetch", 2)))
  return _naming_bad_images(ds.with_options(_options()).as_numpy_iterator(),
                            lambda k: paths[k * batch:(k + 1) * batch])
