"""A folder of the user's images as a classification dataset: <root>/<split>/<class>/<image>.

Finds the splits, classes (the train split's sorted subfolder names) and image files, checks
that the files are images, and reads them as tf.data training and evaluation batches. A bad
file is reported as one DataError naming it rather than as a TensorFlow error in the middle of
tf.data: `check` looks before training (all files up to FULL_CHECK_LIMIT), and a file that fails
to decode while training or evaluating is named too.

Reading by index (data/sharding.py): the files are dealt to the hosts by a seeded permutation,
epoch e of a host is the exact permutation `index_shuffle(., key(seed, host, e))` and each
image's augmentation is keyed on its step (ImageNet's crops, with the paper's scale range scaled
to image_size), so batch k is computed directly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Callable, Iterator

import numpy as np

from flax_resnet import fs
from flax_resnet.data import sharding
from flax_resnet.data.tf_cpu_only import tf
from flax_resnet.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")  # tf.io.decode_image's
TRAIN_SPLIT = "train"
EVAL_SPLITS = ("val", "validation", "test")  # The first one present is evaluated.
FULL_CHECK_LIMIT = 20_000  # 'auto' decodes every image up front in folders up to this size.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
_LAYOUT = ("<data_dir>/train/<class name>/<image files> and "
           "<data_dir>/val/<class name>/<image files>")


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """The image files of one split, sorted by class then file name, and their labels."""
  name: str
  paths: np.ndarray  # str, (N,)
  labels: np.ndarray  # int32, (N,)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFolder:
  root: str
  classes: tuple[str, ...]
  train: Split
  eval: Split


_scans: dict[str, tuple[tuple, ImageFolder]] = {}  # root -> (folder signature, scan)
_checked: set[tuple] = set()  # (folder signature, mode) of the checks passed


def _subfolders(path) -> list[str]:
  return sorted(e.name for e in fs.user_path(path).iterdir()
                if not e.name.startswith(".") and e.is_dir())


def _signature(root: str) -> tuple:
  """Modification times of the root, split and class folders: adding, removing or renaming a
  file changes its folder's time, so an unchanged signature means an unchanged file list.
  Object stores (gs://) have no folder times: a remote folder is taken as unchanged while
  the process runs."""
  if fs.is_remote(root):
    return ("remote", root)
  # os.stat, local only: epath's stat rounds times to whole seconds.
  mtime = lambda path: os.stat(path).st_mtime_ns
  root_path = fs.user_path(root)
  parts = [mtime(root_path)]
  for split in _subfolders(root_path):
    split_dir = root_path / split
    parts.append((split, mtime(split_dir)))
    parts.extend((split, c, mtime(split_dir / c)) for c in _subfolders(split_dir))
  return tuple(parts)


def scan(data_dir) -> ImageFolder:
  """Classes and files of the folder dataset at `data_dir` (cached while the folders are
  unchanged), or a DataError that says how to fix the layout (ConfigError for no data_dir)."""
  if data_dir is None:
    raise ConfigError(f"config.dataset='image_folder' needs config.data_dir, a folder laid out as "
                      f"{_LAYOUT}.")
  fs.check_bucket(data_dir, "config.data_dir", DataError)
  root_path = fs.user_path(data_dir)
  root = str(root_path)
  if root_path.exists() and not root_path.is_dir():
    raise DataError(f"config.data_dir={root!r} is a file, not a folder; point it at a folder laid "
                    f"out as {_LAYOUT}.")
  if not root_path.is_dir():
    raise DataError(f"config.data_dir={root!r} does not exist; point it at a folder laid out "
                    f"as {_LAYOUT}.")
  train_dir = str(root_path / TRAIN_SPLIT)
  if not (root_path / TRAIN_SPLIT).is_dir():
    raise DataError(f"{root} has no '{TRAIN_SPLIT}' folder; image_folder expects "
                            f"{_LAYOUT}.")
  signature = _signature(root)
  cached = _scans.get(root)
  if cached and cached[0] == signature:
    return cached[1]
  classes = tuple(_subfolders(train_dir))
  if not classes:
    raise DataError(f"{train_dir} has no class folders; put each class's images in "
                    f"{train_dir}/<class name>/.")
  eval_name = next((s for s in EVAL_SPLITS if (root_path / s).is_dir()), None)
  if eval_name is None:
    raise DataError(f"{root} has no 'val' (or 'test') folder to evaluate on; move some of "
                    f"each class's images into {root}/val/<class name>/.")
  eval_dir = str(root_path / eval_name)
  strays = sorted(set(_subfolders(eval_dir)) - set(classes))
  if strays:
    raise DataError(f"{eval_dir} has class folder(s) {strays} that {train_dir} lacks; the "
                    f"classes are the train split's folders {list(classes)}.")
  folder = ImageFolder(root, classes, _split_files(train_dir, TRAIN_SPLIT, classes),
                       _split_files(eval_dir, eval_name, classes))
  _scans[root] = (signature, folder)
  return folder


def _split_files(split_dir: str, name: str, classes: tuple[str, ...]) -> Split:
  paths, labels = [], []
  for label, class_name in enumerate(classes):
    class_dir = fs.user_path(split_dir) / class_name
    if not class_dir.is_dir():
      continue  # An eval split may lack classes.
    # By name alone, without a stat of each file (a million of them on ImageNet, each one a
    # request on gs://); a folder named like an image fails the header check later.
    files = sorted(e.name for e in class_dir.iterdir()
                   if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise DataError(f"class folder {class_dir} holds no images (files ending in "
                      f"{', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder.")
    paths.extend(str(class_dir / f) for f in files)
    labels.extend([label] * len(files))
  return Split(name, np.array(paths, dtype=str), np.array(labels, dtype=np.int32))


# ----------------------------------------------------------------------------------------------
# Checking that files are images.


def header_problem(path: str) -> str | None:
  """Why the first bytes of `path` are not those of an image TensorFlow decodes, or None."""
  try:
    with fs.user_path(path).open("rb") as f:
      head = f.read(12)
  except OSError as e:
    return f"cannot be read: {e.strerror or e}"
  except Exception as e:  # noqa: BLE001 - TensorFlow's OpError on gs://
    return f"cannot be read: {fs.storage_problem(e)}"
  if not head:
    return "the file is empty"
  if head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
    return None
  return "not a JPEG, PNG, GIF, BMP or WebP file"


def decode_problem(path: str) -> str | None:
  """Why TensorFlow cannot decode `path`, or None: the same decoder as the pipeline's."""
  problem = header_problem(path)
  if problem:
    return problem
  try:
    image = tf.io.decode_image(fs.user_path(path).read_bytes(), channels=3,
                               expand_animations=False)
  except tf.errors.OpError as e:
    return _op_message(e)
  if 0 in image.shape:
    return "the image has no pixels"
  return None


def _op_message(error) -> str:
  """TensorFlow's reason alone, without the op and device decoration."""
  message = re.sub(r"\{\{[^}]*\}\}", "", error.message)
  return re.sub(r"\s*\[Op:\w+\]", "", message).strip().rstrip(".") or type(error).__name__


def bad_images_error(problems: list[tuple[str, str]]) -> DataError:
  """One message naming the bad files (the first few) and what to do."""
  if len(problems) == 1:
    path, why = problems[0]
    return DataError(f"{path} is not a readable image ({why}); remove or replace it.")
  listed = "; ".join(f"{path} ({why})" for path, why in problems[:5])
  more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
  return DataError(f"{len(problems)} files are not readable images: {listed}{more}; remove or "
                    "replace them.")


def find_bad_images(paths) -> list[tuple[str, str]]:
  """(path, reason) of each file of `paths` that TensorFlow cannot decode."""
  return [(str(p), why) for p in paths if (why := decode_problem(str(p)))]


def check(folder: ImageFolder, mode: str) -> None:
  """Raises bad_images_error for the folder's bad files, as thoroughly as `mode` says:
  'full' decodes every image (in parallel), 'header' reads each file's first bytes, each once
  per unchanged folder and process; 'lazy' reads nothing here (the pipeline names a file it
  fails to decode); 'auto' is 'full' up to FULL_CHECK_LIMIT images and 'lazy' beyond
  (config.image_folder_check, one of config.CHOICES['image_folder_check'])."""
  paths = np.concatenate([folder.train.paths, folder.eval.paths])
  if mode == "auto":
    mode = "full" if len(paths) <= FULL_CHECK_LIMIT else "lazy"
  if mode == "lazy":
    return
  signature = _scans[folder.root][0]
  if (signature, mode) in _checked or (signature, "full") in _checked:
    return  # this unchanged folder passed this check (or the fuller one) in this process
  if mode == "header":
    problems = [(str(p), why) for p in paths if (why := header_problem(str(p)))]
  else:
    problems = find_bad_images(paths[_undecodable(paths)])
  if problems:
    raise bad_images_error(problems)
  _checked.add((signature, mode))


def _undecodable(paths: np.ndarray) -> np.ndarray:
  """Indices of the files that TensorFlow fails to decode, found by a parallel tf.data pass
  that drops failing elements."""

  def decodes(index, path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return index, tf.size(image) > 0

  ds = tf.data.Dataset.from_tensor_slices(paths).enumerate()
  ds = ds.map(decodes, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
  ok = np.zeros(len(paths), bool)
  for index, nonempty in ds.as_numpy_iterator():
    ok[index] = nonempty
  return np.flatnonzero(~ok)


def checked(config) -> ImageFolder:
  """The scanned folder of config.data_dir, its files checked as config.image_folder_check says."""
  folder = scan(config.data_dir)
  check(folder, config.image_folder_check)
  return folder


def eval_subset(num_files: int, limit: int) -> np.ndarray:
  """Indices of the eval files that config.eval_examples keeps: all of them for 0, else
  `limit` spread evenly over the files (sorted by class, so every class keeps its share)."""
  if not 0 < limit < num_files:
    return np.arange(num_files)
  return np.linspace(0, num_files - 1, limit).round().astype(np.int64)


# ----------------------------------------------------------------------------------------------
# tf.data batches. `preprocess` is data/pipeline.py's: .train(example, seed) and .eval(example)
# of an example {'image': encoded bytes, 'label'}.


def _read_file(path: tf.Tensor, label: tf.Tensor) -> dict[str, tf.Tensor]:
  return {"image": tf.io.read_file(path), "label": label}


def _naming_bad_images(batches: Iterator, paths_of_batch: Callable[[int], np.ndarray]):
  """`batches`, but a decoding error becomes a DataError naming the bad file(s) of the failing
  batch (batch k's files are known: `paths_of_batch(k)`). An error no file explains is raised
  as it is."""
  k = 0
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError:
      problems = find_bad_images(paths_of_batch(k))
      if not problems:
        raise
      raise bad_images_error(problems) from None
    yield batch
    k += 1


def train_iterator(config, preprocess, start_step: int, process_index: int,
                   process_count: int) -> Iterator[dict[str, np.ndarray]]:
  """Per-host batches of the folder's train split; see pipeline.create_train_iterator."""
  folder = checked(config)
  batch = sharding.train_batch(config, process_count)
  # Hosts get equal, disjoint slices of one seeded permutation (the files are sorted by class).
  per_host = len(folder.train.paths) // process_count
  dealt = np.random.default_rng(sharding.derive_seed(config.seed)).permutation(
      len(folder.train.paths))
  mine = dealt[process_index * per_host:(process_index + 1) * per_host]
  paths, labels = folder.train.paths[mine], folder.train.labels[mine]
  sharding.check_batch_fits(batch, per_host, folder.root)
  epoch_steps = per_host // batch
  host_key = tf.constant([sharding.derive_seed(config.seed, process_index), 0], tf.int64)

  def batch_indices_and_seeds(step):
    """The files of batch `step` (exact per-epoch permutation) and their augmentation seeds."""
    indices, augment_seed = sharding.permuted_batch(host_key, step, epoch_steps, batch, per_host)
    return indices, tf.random.experimental.stateless_split(augment_seed, batch)

  paths_t, labels_t = tf.constant(paths), tf.constant(labels)

  def example(index, example_seed):
    ex = _read_file(tf.gather(paths_t, index), tf.gather(labels_t, index))
    return {"image": preprocess.train(ex, example_seed), "label": ex["label"]}

  steps = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
  ds = steps.map(batch_indices_and_seeds).unbatch()
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE).batch(batch, drop_remainder=True)
  ds = ds.prefetch(config.prefetch).with_options(sharding.options())
  return _naming_bad_images(
      ds.as_numpy_iterator(),
      lambda k: paths[batch_indices_and_seeds(tf.constant(start_step + k, tf.int64))[0].numpy()])


def eval_iterator(config, preprocess, process_index: int,
                  process_count: int) -> Iterator[dict[str, np.ndarray]]:
  """This host's contiguous share of the folder's eval split, padded; see
  pipeline.create_eval_iterator."""
  folder = checked(config)
  batch = sharding.eval_batch(config, process_count)
  kept = eval_subset(len(folder.eval.paths), config.eval_examples)
  shares = np.array_split(kept, process_count)
  mine = shares[process_index]
  paths, labels = folder.eval.paths[mine], folder.eval.labels[mine]
  num_batches = math.ceil(max(len(s) for s in shares) / batch)

  def prepare(path, label):
    return {"image": preprocess.eval(_read_file(path, label)), "label": label,
            "mask": tf.constant(1.0, tf.float32)}

  ds = tf.data.Dataset.from_tensor_slices((paths, labels))
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = sharding.padded_batches(ds, len(mine), num_batches, batch).prefetch(config.prefetch)
  return _naming_bad_images(ds.with_options(sharding.options()).as_numpy_iterator(),
                            lambda k: paths[k * batch:(k + 1) * batch])
