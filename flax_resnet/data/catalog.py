"""The static facts of the supported datasets: names, classes, image shapes, splits, sizes,
normalization statistics and default folders, and the image size a config trains at.

Imports nothing but `statistics`, so that the config check and inference read these facts
without TensorFlow; the data modules read them from here too.
"""

from __future__ import annotations

import dataclasses

from flax_resnet.data.statistics import (CIFAR10_MEAN, CIFAR10_STD, FASHION_MNIST_MEAN,
                                         FASHION_MNIST_STD, IMAGENET_MEAN, IMAGENET_STD)

# Where Debian's dataset-fashion-mnist package puts the four IDX files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CIFAR_VALIDATION_SIZE = 5000  # The paper's 45k/5k train/validation split.
DEFAULT_CROP_SIZE = 224  # ImageNet's and an image folder's crops where config.image_size is 0


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
  cacheable: bool = False  # The decoded training split fits in host memory (config.cache).


DATASETS: dict[str, DatasetSpec] = {
    "imagenet2012": DatasetSpec(1000, (224, 224, 3), "train", "validation", 1_281_167, 50_000,
                                IMAGENET_MEAN, IMAGENET_STD),
    "cifar10": DatasetSpec(10, (32, 32, 3), "train", "test", 50_000, 10_000,
                           CIFAR10_MEAN, CIFAR10_STD, pad=4, cacheable=True),
    "fashion_mnist": DatasetSpec(10, (28, 28, 1), "train", "test", 60_000, 10_000,
                                 FASHION_MNIST_MEAN, FASHION_MNIST_STD, pad=4, cacheable=True),
    # The user's images in config.data_dir (image_folder.py), at config.image_size.
    "image_folder": DatasetSpec(None, None, None, None, None, None, IMAGENET_MEAN, IMAGENET_STD),
}


def image_size(config) -> int:
  """The side of the images the model sees: config.image_size, or where it is 0 the
  dataset's own (ImageNet's and image folders' crops: 224). CIFAR-10 and Fashion-MNIST images
  are resized to a size other than their own after augmentation (bilinear), for example to
  give ImageNet-style networks, whose stem downsamples by 4, larger feature maps."""
  if config.image_size:
    return config.image_size
  shape = DATASETS[config.dataset].image_shape
  return DEFAULT_CROP_SIZE if shape is None else shape[0]
