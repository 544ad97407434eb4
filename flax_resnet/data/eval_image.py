"""One image, from a file or an array, preprocessed as a run's evaluation preprocesses its eval
split, for predictions with a trained model (flax_resnet/workdir.py, flax_resnet/predict.py).

The run's own TensorFlow ops do the work (`pipeline.eval_preprocessor`): for ImageNet and
image folders, the file's bytes are decoded and center-cropped as an image folder's eval
split is (JPEG, PNG, GIF, BMP and WebP as they are; other formats PIL reads go through a
lossless PNG); for CIFAR-10 and Fashion-MNIST, an image of the dataset's own size is used as
it is, and another is center-cropped to a square and resized (PIL, bilinear) to that size
first. A grayscale model (Fashion-MNIST's) refuses colour images; a colour model takes a
grayscale image as RGB, as the run's decoding does.
"""

from __future__ import annotations

import io
import os
from typing import Callable

import ml_collections
import numpy as np
from PIL import Image

from flax_resnet import fs
from flax_resnet.errors import DataError

TF_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")  # what the run's decode_image reads
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")


def read_image(source) -> tuple[Image.Image, bytes | None]:
  """(PIL image, its file's bytes where TensorFlow decodes that format) of a path (local or
  gs://), or (image, None) of a PIL image or an array; a DataError in one line for a missing
  file, a folder or a file that is not a readable image."""
  from flax_resnet.inference import open_image
  if not isinstance(source, (str, os.PathLike)):
    try:
      return open_image(source), None
    except ValueError as e:
      raise DataError(f"image: {e}") from None
  path = fs.user_path(source)
  if not path.exists():
    raise DataError(f"{source}: no such file")
  if path.is_dir():
    raise DataError(f"{source}: a folder, not an image file")
  data = path.read_bytes()
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise DataError(f"{source}: not a readable image ({' '.join(str(e).split())[:200]})"
                    ) from None
  return image, (data if image.format in TF_FORMATS else None)


def is_grayscale(image: Image.Image) -> bool:
  """Whether the image has one channel, or three equal ones."""
  if image.mode in GRAYSCALE_MODES:
    return True
  if image.mode != "RGB":
    return False
  pixels = np.asarray(image)
  return bool((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all())


def _square_resized(image: Image.Image, height: int, width: int) -> Image.Image:
  """The centered square of the image's shorter side, resized to (height, width)."""
  w, h = image.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  return image.crop((left, top, left + side, top + side)).resize((width, height),
                                                                 Image.BILINEAR)


def eval_preprocessor(config: ml_collections.ConfigDict, channels: int
                      ) -> Callable[..., np.ndarray]:
  """A function: image (path, PIL image or array) -> float32 (H, W, C), or (V, H, W, C) where
  the run scores several views (config.eval_flip, ten crops), as `config`'s evaluation gives
  them to a model of `channels` input channels. Bad images raise DataError in one line."""
  from flax_resnet.data import pipeline  # imports TensorFlow
  from flax_resnet.data.catalog import DATASETS
  from flax_resnet.data.tf_cpu_only import tf

  stored_shape = DATASETS[config.dataset].image_shape
  reads_files = stored_shape is None or config.dataset == "imagenet2012"
  if config.dataset == "imagenet2012":  # the same crop and statistics, for any image format
    config = ml_collections.ConfigDict(config.to_dict())
    config.dataset = "image_folder"
  evaluate = pipeline.eval_preprocessor(config)

  def preprocess(source) -> np.ndarray:
    image, data = read_image(source)
    if channels == 1 and not is_grayscale(image):
      raise DataError(f"{source if isinstance(source, (str, os.PathLike)) else 'image'}: a "
                      f"colour image ({image.mode}); this model takes grayscale images "
                      "(1 channel)")
    if reads_files:
      if data is None:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        data = buffer.getvalue()
      x = evaluate({"image": tf.constant(data)})
    else:
      image = image.convert("L" if channels == 1 else "RGB")
      height, width = stored_shape[:2]
      if image.size != (width, height):
        image = _square_resized(image, height, width)
      pixels = np.asarray(image, np.uint8).reshape((height, width, channels))
      x = evaluate({"image": tf.constant(pixels)})
    return np.asarray(x, np.float32)

  return preprocess
