"""Using a trained ResNet: torchvision's ImageNet preprocessing, top-k predictions with class
names, and a fresh classifier for transfer learning.

The default preprocessing is torchvision's evaluation transform (Resize(256) -> CenterCrop(224)
-> ToTensor -> Normalize(ImageNet mean, std)) on PIL images, so converted torchvision weights
see the inputs they were trained for; the output is NHWC, as our models take it. A model
trained here brings its run's own evaluation preprocessing (`flax_resnet.load(...).preprocess`).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from flax_resnet.data.class_names import imagenet_class_names
from flax_resnet.data.statistics import IMAGENET_MEAN, IMAGENET_STD
from flax_resnet.models import ResNet, classifier


def load_image(image: str | os.PathLike | Image.Image | np.ndarray) -> Image.Image:
  """An RGB PIL image from a file path, a PIL image, or a HxW[xC] array (uint8, or floats in
  [0, 1])."""
  return open_image(image).convert("RGB")


def open_image(image: str | os.PathLike | Image.Image | np.ndarray) -> Image.Image:
  """A PIL image, its pixels read, in its own mode (grayscale stays grayscale), from a file
  path, a PIL image, or a HxW[xC] array (uint8, or floats in [0, 1])."""
  if isinstance(image, (str, os.PathLike)):
    if not os.path.exists(image):
      raise FileNotFoundError(f"no image file at {os.fspath(image)!r}")
    with Image.open(image) as opened:
      opened.load()
      return opened
  if isinstance(image, Image.Image):
    return image
  array = np.asarray(image)
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
    raise ValueError(f"an image array must be HxW or HxWxC with C in 1, 3, 4; got shape "
                     f"{array.shape}")
  if array.dtype != np.uint8:
    if not np.issubdtype(array.dtype, np.floating) or array.min() < 0 or array.max() > 1:
      raise ValueError(f"an image array must be uint8, or floats in [0, 1]; got {array.dtype} "
                       f"in [{array.min()}, {array.max()}]")
    array = np.round(array * 255).astype(np.uint8)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  return Image.fromarray(array)


def resized_size(width: int, height: int, shorter_side: int) -> tuple[int, int]:
  """(width, height) with the shorter side scaled to `shorter_side`, the longer one truncated
  as torchvision's Resize(int) does."""
  if width <= height:
    return shorter_side, int(shorter_side * height / width)
  return int(shorter_side * width / height), shorter_side


def preprocess(image, resize_size: int = 256, crop_size: int = 224) -> np.ndarray:
  """A (crop_size, crop_size, 3) float32 array: shorter side resized to `resize_size`
  (bilinear, antialiased as PIL does), center crop, scaled to [0, 1], ImageNet-normalized.

  torchvision's ResNet weights use 256/224 (IMAGENET1K_V1) or 232/224 (ResNet-50's V2).
  """
  if crop_size > resize_size:
    raise ValueError(f"crop_size {crop_size} must not exceed resize_size {resize_size}")
  img = load_image(image)
  img = img.resize(resized_size(*img.size, resize_size), Image.BILINEAR)
  width, height = img.size
  top = int(round((height - crop_size) / 2.0))
  left = int(round((width - crop_size) / 2.0))
  img = img.crop((left, top, left + crop_size, top + crop_size))
  x = np.asarray(img, np.float32) / np.float32(255)
  return (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)


def top_k(logits, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
  """(probabilities, class indices), each (batch, k) and sorted from most likely, of the
  softmax of (batch, num_classes) logits."""
  logits = jnp.asarray(logits, jnp.float32)
  if logits.ndim != 2:
    raise ValueError(f"logits must be (batch, num_classes); got shape {logits.shape}")
  if not 1 <= k <= logits.shape[-1]:
    raise ValueError(f"k must be in [1, {logits.shape[-1]}]; got {k}")
  probabilities, indices = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), k)
  return np.asarray(probabilities), np.asarray(indices)


@functools.partial(jax.jit, static_argnums=0)
def eval_logits(model: ResNet, variables, x):
  """Logits (B, num_classes) of images (B, H, W, C), or of several views of each image
  (B, V, H, W, C: an image and its mirror, ten crops) scored by the mean of the views' logits,
  as the training loop evaluates. Compiled once per model and input shape."""
  views = x.shape[1] if x.ndim == 5 else 0
  logits = model.apply(variables, x.reshape((-1, *x.shape[-3:])) if views else x, train=False)
  return logits.reshape((-1, views, logits.shape[-1])).mean(axis=1) if views else logits


class Prediction(NamedTuple):
  index: int
  probability: float
  name: str | None


def checked_class_names(model: ResNet, class_names: Sequence[str] | None):
  """`class_names`, or for a 1000-class model ImageNet's (first lemma of each class), or None;
  a ValueError where their number is not the model's."""
  if class_names is None and model.num_classes == 1000:
    class_names = imagenet_class_names()
  if class_names is not None and len(class_names) != model.num_classes:
    raise ValueError(f"{len(class_names)} class names for a model of {model.num_classes} "
                     "classes")
  return class_names


def classify(model: ResNet, variables: Mapping, images, k: int = 5,
             class_names: Sequence[str] | None = None) -> list[list[Prediction]]:
  """The k most likely classes of each of a batch of preprocessed images (B, [V,] H, W, C),
  most likely first."""
  class_names = checked_class_names(model, class_names)
  probabilities, indices = top_k(eval_logits(model, variables, jnp.asarray(images)), k)
  return [[Prediction(int(i), float(p), class_names[i] if class_names is not None else None)
           for p, i in zip(row_p, row_i)] for row_p, row_i in zip(probabilities, indices)]


def predict(model: ResNet, variables: Mapping, image, k: int = 5,
            class_names: Sequence[str] | None = None, resize_size: int = 256,
            crop_size: int = 224, preprocess_fn=None) -> list[Prediction]:
  """The k most likely classes of one image (path, PIL image or array), most likely first.

  Names come from `class_names`, or for a 1000-class model from ImageNet's (first lemma of each
  class); otherwise they are None. The image is preprocessed by `preprocess_fn` (image ->
  (H, W, C) or (V, H, W, C) array; a loaded run's is `run.preprocess`), by default
  torchvision's evaluation transform at `resize_size` and `crop_size`.
  """
  x = (preprocess(image, resize_size, crop_size) if preprocess_fn is None
       else preprocess_fn(image))
  return classify(model, variables, x[None], k, class_names)[0]


def replace_head(model: ResNet, variables: Mapping[str, Any], num_classes: int,
                 rng: jax.Array) -> tuple[ResNet, dict]:
  """(model, variables) for `num_classes` classes: the same backbone weights and BatchNorm
  statistics, and a freshly initialized classifier (as the model initializes its own fc).

  The model is `model` with only num_classes changed (what create_model(name, ...,
  num_classes=num_classes) gives for the same other fields).
  """
  params = variables.get("params", {})
  if "fc" not in params or "kernel" not in params["fc"]:
    raise ValueError("variables have no params/fc/kernel; pass the full {'params': ..., "
                     "'batch_stats': ...} of a ResNet")
  if num_classes < 1:
    raise ValueError(f"num_classes must be positive; got {num_classes}")
  in_features = params["fc"]["kernel"].shape[0]
  fc = classifier(num_classes, in_features).init(
      rng, jnp.zeros((1, in_features), jnp.float32))["params"]
  new_variables = {**variables, "params": {**params, "fc": fc}}
  return model.clone(num_classes=num_classes), new_variables
