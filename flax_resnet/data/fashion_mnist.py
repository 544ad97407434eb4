"""Prepares the TFDS 'fashion_mnist' dataset from local IDX files, without network access.

TFDS's own builder downloads Zalando's four .gz files and checks them against recorded
checksums. Debian's dataset-fashion-mnist package ships the same images, re-gzipped (another
gzip header, hence another checksum), so TFDS's download manager rejects them. Rather than
disabling checksum verification or faking the download cache, this module subclasses TFDS's
builder and only replaces where the examples come from: the decompressed IDX content, which it
checks against the SHA-256 of the official images and labels. Examples, keys, features and
version are TFDS's, so the prepared folder is what `tfds.builder('fashion_mnist')` reads
afterwards, on any machine.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import sys

import numpy as np
from etils import epath
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from flax_resnet.data.catalog import DEBIAN_FASHION_MNIST_DIR
from flax_resnet import fs
from flax_resnet.errors import DataError

DEFAULT_SOURCE_DIR = DEBIAN_FASHION_MNIST_DIR

# File stem -> (IDX magic number, shape, SHA-256 of the decompressed file). The digests are those
# of the official Fashion-MNIST release (identical in Zalando's and Debian's archives); they catch
# a truncated download or a different dataset (e.g. digit MNIST) under the same file names.
IDX_FILES = {
    "train-images-idx3-ubyte": (
        0x00000803, (60000, 28, 28),
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (
        0x00000801, (60000,),
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (
        0x00000803, (10000, 28, 28),
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (
        0x00000801, (10000,),
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}


def find_idx_files(source_dir: str | os.PathLike) -> dict[str, epath.Path]:
  """Maps each IDX file stem to its path in `source_dir` (local or gs://; gzipped `.gz` or
  raw)."""
  source = fs.user_path(source_dir)
  found, missing = {}, []
  for stem in IDX_FILES:
    for candidate in (source / f"{stem}.gz", source / stem):
      if candidate.is_file():
        found[stem] = candidate
        break
    else:
      missing.append(stem)
  if missing:
    raise DataError(
        f"Fashion-MNIST IDX files not found in {source}: missing {', '.join(missing)} (.gz or raw). "
        "Install Debian's package (`apt-get install dataset-fashion-mnist`, files in "
        f"{DEFAULT_SOURCE_DIR}), or download the four files from "
        "https://github.com/zalandoresearch/fashion-mnist into a folder and set "
        "config.fashion_mnist_source_dir to it (or copy a TFDS fashion_mnist prepared elsewhere "
        "into config.data_dir).")
  return found


def read_idx(path: str | os.PathLike, *, verify: bool = True) -> np.ndarray:
  """Reads one Fashion-MNIST IDX file (gzipped or raw) as a uint8 array, checking its header."""
  path = fs.user_path(path)
  stem = path.name[:-3] if path.name.endswith(".gz") else path.name
  if stem not in IDX_FILES:
    raise ValueError(f"{path} is not one of the Fashion-MNIST files {sorted(IDX_FILES)}.")
  magic, shape, sha256 = IDX_FILES[stem]
  try:
    content = path.read_bytes()
    if path.name.endswith(".gz"):
      content = gzip.decompress(content)
  except (OSError, EOFError, gzip.BadGzipFile) as error:  # Unreadable, or a damaged or truncated .gz.
    raise DataError(f"{path} cannot be read ({error}); reinstall dataset-fashion-mnist or "
                    "download the file again.") from error
  if verify and hashlib.sha256(content).hexdigest() != sha256:
    raise DataError(
        f"{path} does not hold the official Fashion-MNIST {stem} content (SHA-256 mismatch): the "
        "file is truncated or is another dataset. Reinstall dataset-fashion-mnist or download "
        "the file again.")
  header_size = 4 * (1 + len(shape))
  header = np.frombuffer(content[:header_size], dtype=">u4")
  if header[0] != magic or tuple(int(d) for d in header[1:]) != shape:
    raise DataError(f"{path}: IDX header {header.tolist()} does not describe {shape} uint8 data.")
  return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(shape)


class LocalFashionMNIST(tfds_mnist.FashionMNIST, skip_registration=True):
  """TFDS's Fashion-MNIST builder, fed from local IDX files instead of the download manager.

  Same name, version, features and example keys as `tfds.builder('fashion_mnist')`, so the
  prepared dataset is indistinguishable from one TFDS downloaded itself.
  """

  name = "fashion_mnist"

  def __init__(self, *, source_dir: str | os.PathLike = DEFAULT_SOURCE_DIR, **kwargs):
    self._source_files = find_idx_files(source_dir)
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {
        "train": self._generate_examples_from_idx("train"),
        "test": self._generate_examples_from_idx("t10k"),
    }

  def _generate_examples_from_idx(self, prefix: str):
    images = read_idx(self._source_files[f"{prefix}-images-idx3-ubyte"])
    labels = read_idx(self._source_files[f"{prefix}-labels-idx1-ubyte"])
    # Keys are the example indices, as in TFDS's MNIST builders: TFDS orders the written
    # examples by a hash of the key, so equal keys give the same on-disk order.
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image[..., None], "label": int(label)}


def prepare(data_dir: str | os.PathLike | None = None,
            source_dir: str | os.PathLike = DEFAULT_SOURCE_DIR) -> tfds.core.DatasetBuilder:
  """Prepares 'fashion_mnist' in `data_dir` (TFDS default if None) unless already there.

  Returns the standard registered TFDS builder for the prepared data. Takes about 30 s.
  """
  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  if builder.is_prepared():
    return builder
  local = LocalFashionMNIST(source_dir=source_dir, data_dir=data_dir)
  print(f"Preparing TFDS fashion_mnist {local.version} in {local.data_dir} from the local IDX files "
        f"in {source_dir} (once, about 30 s; no network)...", file=sys.stderr, flush=True)
  # Our one line says what happens; TFDS's progress bars and log lines would only repeat it.
  tfds.display_progress_bar(False)
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.WARNING)
  try:
    local.download_and_prepare(download_config=tfds.download.DownloadConfig(
        try_download_gcs=False,  # Never reach for TFDS's GCS mirror: this path must work offline.
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
  finally:
    absl_logger.setLevel(level)
    tfds.display_progress_bar(True)
  return tfds.builder("fashion_mnist", data_dir=data_dir)
