"""Image preprocessing and augmentation as TensorFlow ops, for use inside tf.data.

Pure functions of their arguments: randomness comes from stateless ops keyed on an explicit
`seed` (a shape-[2] integer tensor), so the same seed gives the same result, and the pipeline
decides which seed each image or batch gets. Nothing here reads a config.

ImageNet crops are computed on the JPEG's header shape and decoded with `decode_and_crop_jpeg`,
so only the crop window is decoded (benchmarks/input_pipeline.py compares with full decoding).
Images of other formats (an image folder) are decoded whole, then cropped.
"""

from __future__ import annotations

import math

from flax_resnet.data.statistics import IMAGENET_MEAN, IMAGENET_STD
from flax_resnet.data.tf_cpu_only import tf

PAPER_SCALE_RANGE = (256, 480)  # Shorter side resized to a random size in [256, 480].


def normalize(image: tf.Tensor, mean, std) -> tf.Tensor:
  """[0, 255] pixels -> float32 standardized per channel by `mean` and `std` (on [0, 1])."""
  mean = tf.constant(mean, tf.float32) * 255.0
  std = tf.constant(std, tf.float32) * 255.0
  return (tf.cast(image, tf.float32) - mean) / std


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """The (..., H, W, C) image mirrored horizontally with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(image, axis=[-2]), lambda: image)


def with_mirror(image: tf.Tensor) -> tf.Tensor:
  """(H, W, C) -> (2, H, W, C): the image and its horizontal mirror, scored as two views."""
  return tf.stack([image, tf.reverse(image, axis=[-2])])


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
  """Bilinear resize. Antialiasing (PIL/torchvision's behaviour when shrinking) costs about 4x
  the plain resize on one core, for windows that ImageNet's crops shrink by at most ~1.7x; off
  by default, as in Flax's and TF's ResNet pipelines (benchmarks/input_pipeline.py times it)."""
  return tf.image.resize(image, size, method="bilinear", antialias=antialias)


# ----------------------------------------------------------------------------------------------
# Crop windows [y, x, height, width] of an image of shape (H, W, ...).


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
  """The window of "resize the shorter side to size * 256/224, crop size x size at the center":
  a centered square of side round(shorter * 224/256), whatever `size` is."""
  del size  # The window is the same fraction of the image at every output size.
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


def train_crop_window(image_shape: tf.Tensor, seed: tf.Tensor, size: int, augmentation: str,
                      scale_range=PAPER_SCALE_RANGE) -> tf.Tensor:
  """The training crop: the paper's scale augmentation ('paper') or an Inception crop."""
  if augmentation == "paper":
    return paper_crop_window(image_shape, seed, size, scale_range)
  return inception_crop_window(image_shape, seed, size)


def ten_crops(jpeg: tf.Tensor, size: int, antialias: bool = False) -> tf.Tensor:
  """The 10-crop test of Krizhevsky et al. used by He et al.: shorter side resized to
  size * 256/224, the four corner and the center size x size crops, and their mirror images.
  Returns (10, size, size, 3): crops [corners TL, TR, BL, BR, center], then the same flipped."""
  return ten_crops_of(tf.io.decode_jpeg(jpeg, channels=3), size, antialias)


def ten_crops_of(image: tf.Tensor, size: int, antialias: bool = False) -> tf.Tensor:
  """ten_crops of a decoded (H, W, 3) image."""
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


# ----------------------------------------------------------------------------------------------
# Whole preprocessing of one encoded image.


def _decode_window(jpeg: tf.Tensor, window: tf.Tensor, size: int, antialias: bool) -> tf.Tensor:
  """Decodes only `window` = [y, x, h, w] of the JPEG and resizes it to size x size."""
  image = tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)
  return resize(image, [size, size], antialias)


def imagenet_train_image(jpeg: tf.Tensor, seed: tf.Tensor, size: int, augmentation: str,
                         antialias: bool = False, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD) -> tf.Tensor:
  """Encoded JPEG -> augmented, normalized (size, size, 3) float32."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  window = train_crop_window(tf.io.extract_jpeg_shape(jpeg), crop_seed, size, augmentation)
  image = random_flip(_decode_window(jpeg, window, size, antialias), flip_seed)
  return tf.ensure_shape(normalize(image, mean, std), [size, size, 3])


def imagenet_eval_image(jpeg: tf.Tensor, size: int, crop: str, antialias: bool = False,
                        mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tf.Tensor:
  """Encoded JPEG -> normalized center crop (size, size, 3) or ten crops (10, size, size, 3)."""
  if crop == "ten_crop":
    return normalize(ten_crops(jpeg, size, antialias), mean, std)
  window = center_crop_window(tf.io.extract_jpeg_shape(jpeg), size)
  image = _decode_window(jpeg, window, size, antialias)
  return tf.ensure_shape(normalize(image, mean, std), [size, size, 3])


def decode_any(encoded: tf.Tensor) -> tf.Tensor:
  """JPEG, PNG, GIF (first frame), BMP or WebP bytes -> uint8 (H, W, 3)."""
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def _crop_and_resize(image: tf.Tensor, window: tf.Tensor, size: int, antialias: bool):
  y, x, height, width = tf.unstack(window)
  return resize(image[y:y + height, x:x + width], [size, size], antialias)


def folder_train_image(encoded: tf.Tensor, seed: tf.Tensor, size: int, augmentation: str,
                       antialias: bool = False, mean=IMAGENET_MEAN,
                       std=IMAGENET_STD) -> tf.Tensor:
  """Encoded image of any size and format -> augmented, normalized (size, size, 3) float32:
  ImageNet's crops, the paper's scale range [256, 480] scaled by size / 224."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = decode_any(encoded)
  scale_range = tuple(max(size, round(size * s / 224)) for s in PAPER_SCALE_RANGE)
  window = train_crop_window(tf.shape(image), crop_seed, size, augmentation, scale_range)
  image = random_flip(_crop_and_resize(image, window, size, antialias), flip_seed)
  return tf.ensure_shape(normalize(image, mean, std), [size, size, 3])


def folder_eval_image(encoded: tf.Tensor, size: int, crop: str, antialias: bool = False,
                      mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tf.Tensor:
  """Encoded image -> normalized center crop (size, size, 3) or ten crops (10, size, size, 3)."""
  image = decode_any(encoded)
  if crop == "ten_crop":
    return normalize(ten_crops_of(image, size, antialias), mean, std)
  window = center_crop_window(tf.shape(image), size)
  image = _crop_and_resize(image, window, size, antialias)
  return tf.ensure_shape(normalize(image, mean, std), [size, size, 3])
