"""The configured dataset, checked and prepared: its description (`dataset_info`, from the
static facts of data/catalog.py), steps per epoch, and the prepared TFDS builder, with one
clear `DataError` for data that is missing or unusable.

`check_data(config)` looks at everything the run will read before anything is written, for the
training loop to call right after `check_config` and before it creates the work directory.

Datasets come from TFDS in `config.data_dir` (None: TFDS's default): ImageNet must be prepared
by the user (its images need a manual download), Fashion-MNIST is prepared offline from the IDX
files in config.fashion_mnist_source_dir (data/fashion_mnist.py), CIFAR-10 is downloaded by TFDS.
An image folder (data/image_folder.py) takes its classes and sizes from its folders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys

import jax
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import download_manager

from flax_resnet.data import fashion_mnist, image_folder, sharding
from flax_resnet.data.catalog import CIFAR_VALIDATION_SIZE, DATASETS, image_size
from flax_resnet import fs
from flax_resnet.errors import ConfigError, DataError

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


def dataset_info(config) -> DatasetInfo:
  """Static description of `config.dataset`, with the 45k/5k CIFAR split, ImageNet image_size,
  config.eval_examples, and an image folder's classes and sizes."""
  name = config.dataset
  spec = DATASETS[name]
  limit = config.eval_examples
  if name == "image_folder":
    folder = image_folder.scan(config.data_dir)
    size = image_size(config)
    num_eval = len(image_folder.eval_subset(len(folder.eval.paths), limit))
    return DatasetInfo(name, len(folder.classes), (size, size, 3), len(folder.train.paths),
                       num_eval, folder.train.name, folder.eval.name)
  image_shape = spec.image_shape
  train_split = spec.train_split
  num_train, num_eval = spec.num_train_examples, spec.num_eval_examples
  eval_base, eval_start = spec.eval_split, 0
  size = image_size(config)
  image_shape = (size, size, image_shape[2])
  if name == "cifar10" and config.cifar_validation_split:
    num_train = spec.num_train_examples - CIFAR_VALIDATION_SIZE
    train_split, eval_base, eval_start = f"train[:{num_train}]", "train", num_train
    num_eval = CIFAR_VALIDATION_SIZE
  if 0 < limit < num_eval:  # config.eval_examples: the split's first `limit` examples
    num_eval = limit
  eval_split = (f"{eval_base}[{eval_start}:{eval_start + num_eval}]"
                if (eval_start or num_eval < spec.num_eval_examples) else eval_base)
  return DatasetInfo(name, spec.num_classes, image_shape, num_train, num_eval, train_split,
                     eval_split)


def steps_per_epoch(config, process_count: int | None = None,
                    info: DatasetInfo | None = None) -> int:
  """Training steps in one epoch, at least 1: each host yields (its equal slice of the training
  examples) // (per-host batch) batches. process_count: JAX's if None; info: the dataset's
  (as check_data returns it), worked out here if None."""
  process_count = jax.process_count() if process_count is None else process_count
  batch = sharding.train_batch(config, process_count)
  info = dataset_info(config) if info is None else info
  return max(1, (info.num_train_examples // process_count) // batch)


def check_cache(config) -> None:
  """ConfigError for config.cache=True where the decoded training split cannot be held."""
  if config.cache and not DATASETS[config.dataset].cacheable:
    why = ("images are read from their files every epoch" if config.dataset == "image_folder"
           else "the decoded training split does not fit in host memory")
    raise ConfigError(f"config.cache=True is not supported for {config.dataset} ({why}); set "
                      "config.cache=False")


def check_data(config, process_count: int | None = None) -> DatasetInfo:
  """The configured dataset's description (`dataset_info`), once its data is found usable;
  else a DataError (or ConfigError).

  Checks config.data_dir, that the TFDS dataset is prepared (preparing Fashion-MNIST from its
  local IDX files, or else downloading it or CIFAR-10 into data_dir, if needed), or scans and
  checks an image folder as config.image_folder_check says, and that a host's share of the
  training split holds one per-host batch (process_count: JAX's if None). Writes nothing but a
  dataset prepared into data_dir, and logs no TFDS warning about a missing dataset.
  """
  process_count = jax.process_count() if process_count is None else process_count
  check_cache(config)
  batch = sharding.train_batch(config, process_count)
  sharding.eval_batch(config, process_count)
  if config.dataset == "image_folder":
    where = image_folder.checked(config).root
  else:
    prepared_builder(config)
    where = config.dataset
  info = dataset_info(config)
  sharding.check_batch_fits(batch, info.num_train_examples // process_count, where)
  return info


# ----------------------------------------------------------------------------------------------
# Preparation.


def checked_data_dir(config) -> str | None:
  """config.data_dir with ~ expanded (None: TFDS's default), or a DataError if it is not a
  folder. A gs:// data_dir needs an existing bucket; its folder is made on first use."""
  if config.data_dir is None:
    return None
  fs.check_bucket(config.data_dir, "config.data_dir", DataError)
  path = fs.user_path(config.data_dir)
  data_dir = str(path)
  advice = ("point it at the folder that holds your TFDS datasets, or set it to None to use "
            "TFDS's default (~/tensorflow_datasets)")
  try:
    exists, is_dir = path.exists(), path.is_dir()
  except Exception as e:  # noqa: BLE001 - TensorFlow's OpError on gs://
    raise DataError(f"config.data_dir={data_dir!r} cannot be read: {fs.storage_problem(e)}"
                    ) from None
  if exists and not is_dir:
    raise DataError(f"config.data_dir={data_dir!r} is a file, not a folder; {advice}")
  if not is_dir and not fs.is_remote(data_dir):  # gs:// "folders" exist once they hold objects
    raise DataError(f"config.data_dir={data_dir!r} does not exist; create it (datasets are "
                    f"prepared there on first use) or {advice}")
  return data_dir


@contextlib.contextmanager
def _quiet_tfds():
  """Hides TFDS's warnings while it looks for a dataset that may not be prepared ("Variant folder
  ... has no dataset_info.json"): an unprepared dataset is reported by our own message."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def prepared_builder(config) -> tfds.core.DatasetBuilder:
  """The TFDS builder of config.dataset, prepared (offline where possible), or a DataError."""
  name = config.dataset
  data_dir = checked_data_dir(config)
  with _quiet_tfds():
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
      return builder
    # From local IDX files: Debian's where installed, or the folder the user names. Without
    # either, TFDS downloads it (where there is a network).
    source = config.fashion_mnist_source_dir
    if name == "fashion_mnist" and (fs.user_path(source).is_dir()
                                    or source != fashion_mnist.DEFAULT_SOURCE_DIR):
      return fashion_mnist.prepare(data_dir, source)
  where = builder.data_dir_root
  if name == "imagenet2012":
    raise DataError(
        f"ImageNet (imagenet2012) is not prepared in {where}, and TFDS cannot download it. Get "
        "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org, put them "
        f"in {fs.user_path(where) / 'downloads' / 'manual'}, then run once (hours): "
        f"`tfds build imagenet2012 --data_dir={where}`. Or set config.data_dir to a folder that "
        "already holds a prepared imagenet2012")
  print(f"Downloading and preparing TFDS {name} in {where} (once)...", file=sys.stderr, flush=True)
  try:
    builder.download_and_prepare()
  except (OSError, tfds.download.DownloadError,
          download_manager.NonMatchingChecksumError) as error:  # No network, a bad download.
    raise DataError(
        f"TFDS could not download and prepare {name} into {where} ({type(error).__name__}: "
        f"{error}). Without internet, run `tfds build {name} --data_dir=DIR` on a machine with "
        f"internet and copy DIR/{name} into {where}"
        + (" (or install Debian's dataset-fashion-mnist, or set config.fashion_mnist_source_dir "
           "to a folder that holds the four IDX files)" if name == "fashion_mnist" else "")
    ) from error
  return builder
