"""A folder of the user's images as a classification dataset: <root>/<split>/<class>/<image>.

Finds the splits, classes (the train split's sorted subfolder names) and image files, and
checks that the files are images, so that a bad file is reported as one message naming it
rather than as a TensorFlow error in the middle of tf.data. The tf.data pipeline that reads
these files is in input_pipeline.py.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")  # tf.io.decode_image's
TRAIN_SPLIT = "train"
EVAL_SPLITS = ("val", "validation", "test")  # The first one present is evaluated.
CHECKS = ("auto", "full", "header", "lazy")
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
_checked: set[tuple] = set()  # signatures of folders whose images passed a full check


def _subfolders(path: str) -> list[str]:
  return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _signature(root: str) -> tuple:
  """Modification times of the root, split and class folders: adding, removing or renaming a
  file changes its folder's time, so an unchanged signature means an unchanged file list."""
  parts = [os.stat(root).st_mtime_ns]
  for split in _subfolders(root):
    split_dir = os.path.join(root, split)
    parts.append((split, os.stat(split_dir).st_mtime_ns))
    parts.extend((split, c, os.stat(os.path.join(split_dir, c)).st_mtime_ns)
                 for c in _subfolders(split_dir))
  return tuple(parts)


def scan(data_dir) -> ImageFolder:
  """Classes and files of the folder dataset at `data_dir` (cached while the folders are
  unchanged), or a FileNotFoundError/ValueError that says how to fix the layout."""
  if data_dir is None:
    raise ValueError(f"config.dataset='image_folder' needs config.data_dir, a folder laid out as "
                     f"{_LAYOUT}.")
  root = os.path.abspath(os.path.expanduser(str(data_dir)))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"config.data_dir={root!r} does not exist; point it at a folder laid "
                            f"out as {_LAYOUT}.")
  train_dir = os.path.join(root, TRAIN_SPLIT)
  if not os.path.isdir(train_dir):
    raise FileNotFoundError(f"{root} has no '{TRAIN_SPLIT}' folder; image_folder expects "
                            f"{_LAYOUT}.")
  signature = _signature(root)
  cached = _scans.get(root)
  if cached and cached[0] == signature:
    return cached[1]
  classes = tuple(_subfolders(train_dir))
  if not classes:
    raise FileNotFoundError(f"{train_dir} has no class folders; put each class's images in "
                            f"{train_dir}/<class name>/.")
  eval_name = next((s for s in EVAL_SPLITS if os.path.isdir(os.path.join(root, s))), None)
  if eval_name is None:
    raise FileNotFoundError(f"{root} has no 'val' (or 'test') folder to evaluate on; move some of "
                            f"each class's images into {root}/val/<class name>/.")
  eval_dir = os.path.join(root, eval_name)
  strays = sorted(set(_subfolders(eval_dir)) - set(classes))
  if strays:
    raise ValueError(f"{eval_dir} has class folder(s) {strays} that {train_dir} lacks; the classes "
                     f"are the train split's folders {list(classes)}.")
  folder = ImageFolder(root, classes, _split_files(train_dir, TRAIN_SPLIT, classes),
                       _split_files(eval_dir, eval_name, classes))
  _scans[root] = (signature, folder)
  return folder


def _split_files(split_dir: str, name: str, classes: tuple[str, ...]) -> Split:
  paths, labels = [], []
  for label, class_name in enumerate(classes):
    class_dir = os.path.join(split_dir, class_name)
    if not os.path.isdir(class_dir):
      continue  # An eval split may lack classes.
    files = sorted(e.name for e in os.scandir(class_dir) if e.is_file()
                   and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise ValueError(f"class folder {class_dir} holds no images (files ending in "
                       f"{', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder.")
    paths.extend(os.path.join(class_dir, f) for f in files)
    labels.extend([label] * len(files))
  return Split(name, np.array(paths, dtype=str), np.array(labels, dtype=np.int32))


# ----------------------------------------------------------------------------------------------
# Checking that files are images.


def header_problem(path: str) -> str | None:
  """Why the first bytes of `path` are not those of an image TensorFlow decodes, or None."""
  try:
    with open(path, "rb") as f:
      head = f.read(12)
  except OSError as e:
    return f"cannot be read: {e.strerror}"
  if not head:
    return "the file is empty"
  if head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
    return None
  return "not a JPEG, PNG, GIF, BMP or WebP file"


def decode_problem(path: str) -> str | None:
  """Why TensorFlow cannot decode `path`, or None: the same decoder as the pipeline's."""
  import tensorflow as tf
  problem = header_problem(path)
  if problem:
    return problem
  try:
    with open(path, "rb") as f:
      image = tf.io.decode_image(f.read(), channels=3, expand_animations=False)
  except tf.errors.OpError as e:
    return _op_message(e)
  if 0 in image.shape:
    return "the image has no pixels"
  return None


def _op_message(error) -> str:
  """TensorFlow's reason alone, without the op and device decoration."""
  message = re.sub(r"\{\{[^}]*\}\}", "", error.message)
  return re.sub(r"\s*\[Op:\w+\]", "", message).strip().rstrip(".") or type(error).__name__


def bad_images_error(problems: list[tuple[str, str]]) -> ValueError:
  """One message naming the bad files (the first few) and what to do."""
  if len(problems) == 1:
    path, why = problems[0]
    return ValueError(f"{path} is not a readable image ({why}); remove or replace it.")
  listed = "; ".join(f"{path} ({why})" for path, why in problems[:5])
  more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
  return ValueError(f"{len(problems)} files are not readable images: {listed}{more}; remove or "
                    "replace them.")


def find_bad_images(paths) -> list[tuple[str, str]]:
  """(path, reason) of each file of `paths` that TensorFlow cannot decode."""
  return [(str(p), why) for p in paths if (why := decode_problem(str(p)))]


def check(folder: ImageFolder, mode: str = "auto") -> None:
  """Raises bad_images_error for the folder's bad files, as thoroughly as `mode` says:
  'full' decodes every image (in parallel, once per unchanged folder), 'header' reads each
  file's first bytes, 'lazy' reads nothing here (the pipeline names a file it fails to decode);
  'auto' is 'full' up to FULL_CHECK_LIMIT images and 'lazy' beyond."""
  if mode not in CHECKS:
    raise ValueError(f"config.image_folder_check={mode!r}; choose one of {CHECKS}.")
  paths = np.concatenate([folder.train.paths, folder.eval.paths])
  if mode == "auto":
    mode = "full" if len(paths) <= FULL_CHECK_LIMIT else "lazy"
  if mode == "lazy":
    return
  if mode == "header":
    problems = [(str(p), why) for p in paths if (why := header_problem(str(p)))]
  else:
    signature = _scans[folder.root][0]
    if signature in _checked:
      return
    problems = find_bad_images(paths[_undecodable(paths)])
  if problems:
    raise bad_images_error(problems)
  if mode == "full":
    _checked.add(signature)


def _undecodable(paths: np.ndarray) -> np.ndarray:
  """Indices of the files that TensorFlow fails to decode, found by a parallel tf.data pass
  that drops failing elements."""
  import tensorflow as tf

  def decodes(index, path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    return index, tf.size(image) > 0

  ds = tf.data.Dataset.from_tensor_slices(paths).enumerate()
  ds = ds.map(decodes, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
  ok = np.zeros(len(paths), bool)
  for index, nonempty in ds.as_numpy_iterator():
    ok[index] = nonempty
  return np.flatnonzero(~ok)
